"""A stored whole answer as the stream a streaming client expects (pure function, no I/O).

For chat: one chunk carrying each choice's whole message as its delta (role, content and every other
text field, tool calls with their index), one chunk with each choice's finish reason, the usage chunk
when the request asked for it (``stream_options.include_usage``), then ``data: [DONE]``. Text
completions the same with ``text``. What the OpenAI SDK's own stream accumulator builds from it is
the stored answer (tests/unit/test_cache_codec.py checks this with the SDK).
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def stream_of(answer: bytes, endpoint: str, include_usage: bool) -> bytes:
    """The SSE bytes of ``answer`` (a stored chat.completion or text_completion)."""
    whole = orjson.loads(answer)
    chat = endpoint == "chat/completions"
    head: dict[str, Any] = {
        "id": whole.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": whole.get("created"),
        "model": whole.get("model"),
    }
    if whole.get("system_fingerprint") is not None:
        head["system_fingerprint"] = whole["system_fingerprint"]
    body, ends = [], []
    for ch in whole.get("choices") or ():
        idx = ch.get("index", 0)
        if chat:
            msg = ch.get("message") or {}
            delta = {k: v for k, v in msg.items() if v is not None and k != "tool_calls"}
            calls = msg.get("tool_calls")
            if calls:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
            first: dict[str, Any] = {"index": idx, "delta": delta, "finish_reason": None}
            if ch.get("logprobs") is not None:
                first["logprobs"] = ch["logprobs"]
            body.append(first)
            ends.append({"index": idx, "delta": {}, "finish_reason": ch.get("finish_reason")})
        else:
            body.append(
                {
                    "index": idx,
                    "text": ch.get("text", ""),
                    "logprobs": ch.get("logprobs"),
                    "finish_reason": None,
                }
            )
            ends.append(
                {"index": idx, "text": "", "logprobs": None, "finish_reason": ch.get("finish_reason")}
            )
    out = [_event({**head, "choices": body}), _event({**head, "choices": ends})]
    if include_usage and isinstance(whole.get("usage"), dict):
        out.append(_event({**head, "choices": [], "usage": whole["usage"]}))
    out.append(DONE)
    return b"".join(out)
