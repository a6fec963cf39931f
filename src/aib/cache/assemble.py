"""From an answer as sent to the whole answer worth storing (pure functions, no I/O).

* :func:`check_answer`: is a whole JSON answer complete? Every choice finished, and a choice that
  calls tools does so with a finish reason that says so and arguments that are whole JSON (a tool
  call cut short by ``max_tokens`` is never stored).
* :class:`StreamAssembler`: the events of a streamed answer (chat or text completions), fed as they
  are sent, folded into the ``chat.completion`` / ``text_completion`` object the same request without
  ``stream`` would have got. Only a stream that ended with ``[DONE]``, had no error event and finished
  every choice yields one.
"""

from __future__ import annotations

from typing import Any

import orjson

TOOL_FINISH = frozenset({"tool_calls", "function_call", "stop"})
_SEP = b"\n\n"


def check_answer(endpoint: str, answer: Any) -> str | None:
    """None when ``answer`` may be stored, else why not."""
    if not isinstance(answer, dict):
        return "not a JSON object"
    if "error" in answer:
        return "an error"
    if endpoint == "embeddings":
        return None if isinstance(answer.get("data"), list) and answer["data"] else "no embeddings"
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    for ch in choices:
        if not isinstance(ch, dict) or not ch.get("finish_reason"):
            return "a choice did not finish"
        msg = ch.get("message")
        calls = msg.get("tool_calls") if isinstance(msg, dict) else None
        if calls:
            if ch["finish_reason"] not in TOOL_FINISH:
                return f"a tool call ended by {ch['finish_reason']!r}"
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                args = fn.get("arguments") if isinstance(fn, dict) else None
                if not isinstance(args, str):
                    return "a tool call without arguments"
                try:
                    orjson.loads(args or "{}")
                except orjson.JSONDecodeError:
                    return "a tool call with unfinished arguments"
    return None


class _Choice:
    __slots__ = ("fields", "finish", "logprobs", "role", "text", "tools")

    def __init__(self) -> None:
        self.role: str | None = None
        self.fields: dict[str, str] = {}  # content, refusal, reasoning_content, ... (strings, joined)
        self.text: list[str] = []  # text completions
        self.tools: dict[int, dict[str, Any]] = {}
        self.logprobs: Any = None
        self.finish: str | None = None


class StreamAssembler:
    """Fold a stream's events into the whole answer (see the module doc). ``limit``: give up past
    this many bytes of events (the answer would be too large to store anyway)."""

    def __init__(self, endpoint: str, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self.size = 0
        self.top: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.broken: str | None = None  # why the stream cannot be stored

    def feed(self, data: bytes) -> None:
        """Whole events, as the proxy sends them."""
        if self.broken is not None or not data:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.broken = "too large"
            return
        if b"\r\n" in data:
            data = data.replace(b"\r\n", b"\n")
        for event in data.split(_SEP):
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, raw: bytes) -> None:
        if raw == b"[DONE]":
            self.done = True
            return
        if self.done or self.broken is not None:
            return
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.broken = "an event that is not JSON"
            return
        if not isinstance(obj, dict) or "error" in obj:
            self.broken = "an error event"
            return
        if not self.top:
            self.top = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if k in obj}
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for ch in obj.get("choices") or ():
            if isinstance(ch, dict):
                self._choice(ch)

    def _choice(self, ch: dict[str, Any]) -> None:
        idx = ch.get("index", 0)
        c = self.choices.get(idx) if type(idx) is int else None
        if c is None:
            if type(idx) is not int:
                self.broken = "a choice without an index"
                return
            c = self.choices[idx] = _Choice()
        delta = ch.get("delta")
        if isinstance(delta, dict):
            for k, v in delta.items():
                if k == "role" and isinstance(v, str):
                    c.role = v
                elif k == "tool_calls" and isinstance(v, list):
                    self._tools(c, v)
                elif isinstance(v, str):
                    c.fields[k] = c.fields.get(k, "") + v
        text = ch.get("text")
        if isinstance(text, str):
            c.text.append(text)
        lp = ch.get("logprobs")
        if isinstance(lp, dict):
            c.logprobs = _merge_logprobs(c.logprobs, lp)
        if ch.get("finish_reason"):
            c.finish = ch["finish_reason"]

    def _tools(self, c: _Choice, calls: list[Any]) -> None:
        for call in calls:
            if not isinstance(call, dict):
                continue
            idx = call.get("index", len(c.tools))
            t = c.tools.get(idx)
            if t is None:
                t = c.tools[idx] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            if call.get("id"):
                t["id"] = call["id"]
            if call.get("type"):
                t["type"] = call["type"]
            fn = call.get("function")
            if isinstance(fn, dict):
                if isinstance(fn.get("name"), str):
                    t["function"]["name"] += fn["name"]
                if isinstance(fn.get("arguments"), str):
                    t["function"]["arguments"] += fn["arguments"]

    def answer(self, usage: dict[str, Any] | None = None) -> bytes | None:
        """The whole answer as JSON, or None when the stream may not be stored (see :attr:`broken`).
        ``usage``: the request's token counts, when the stream itself carried none to this point."""
        if self.broken is not None:
            return None
        if not self.done:
            self.broken = "the stream did not end with [DONE]"
            return None
        if not self.choices:
            self.broken = "no choices"
            return None
        chat = self.endpoint == "chat/completions"
        choices = []
        for idx in sorted(self.choices):
            c = self.choices[idx]
            if chat:
                fields = dict(c.fields)
                msg: dict[str, Any] = {"role": c.role or "assistant", "content": fields.pop("content", None)}
                msg.update(fields)
                if c.tools:
                    msg["tool_calls"] = [c.tools[i] for i in sorted(c.tools)]
                choices.append(
                    {"index": idx, "message": msg, "logprobs": c.logprobs, "finish_reason": c.finish}
                )
            else:
                choices.append(
                    {"index": idx, "text": "".join(c.text), "logprobs": c.logprobs, "finish_reason": c.finish}
                )
        out = {
            "id": self.top.get("id"),
            "object": "chat.completion" if chat else "text_completion",
            "created": self.top.get("created"),
            "model": self.top.get("model"),
            **(
                {"system_fingerprint": self.top["system_fingerprint"]}
                if "system_fingerprint" in self.top
                else {}
            ),
            "choices": choices,
        }
        used = self.usage or usage
        if used is not None:
            out["usage"] = used
        why = check_answer(self.endpoint, out)
        if why is not None:
            self.broken = why
            return None
        return orjson.dumps(out)


def _merge_logprobs(have: Any, new: dict[str, Any]) -> Any:
    """Chat: {"content": [...], "refusal": [...]}; text completions: {"tokens": [...], ...}: lists
    are joined key by key."""
    if not isinstance(have, dict):
        return {k: list(v) if isinstance(v, list) else v for k, v in new.items()}
    for k, v in new.items():
        if isinstance(v, list):
            cur = have.get(k)
            have[k] = (cur if isinstance(cur, list) else []) + v
        elif k not in have:
            have[k] = v
    return have
