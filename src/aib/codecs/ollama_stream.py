"""Ollama's NDJSON streams <-> the internal stream of OpenAI chunks.

:class:`NdjsonEncoder` (the front door) writes one JSON object per line (``application/x-ndjson``):
``{"model", "created_at", "message": {"role": "assistant", "content": ...}, "done": false}`` per
piece of text (``"response"`` instead of ``"message"`` for ``/api/generate``); tool calls are sent
whole, as Ollama sends them, once their streamed fragments are complete; the last object has
``"done": true``, ``done_reason``, the token counts and the durations. A broken stream ends with
``{"error": "..."}``, as Ollama's own streams do.

:class:`NdjsonDecoder` (the outbound adapter) reads Ollama's lines and writes OpenAI chunks ending
with ``data: [DONE]``; an ``{"error": ...}`` line stops it: what came before is returned, the error is
kept in ``error``. ``final`` keeps the last object (``prompt_eval_count`` tells whether the prompt was
cut).
"""

from __future__ import annotations

from typing import Any

import orjson

from aib.codecs.common import JsonObj, sub
from aib.codecs.ollama import (
    FINISH_TO_DONE,
    error_message,
    finish_of,
    metrics,
    tool_calls_from_openai,
    usage_to_openai,
)
from aib.codecs.openai_sse import DONE_EVENT, ToolCalls, chunk_event


class StreamError(Exception):
    """The upstream reported an error in the middle of a stream."""


class NdjsonEncoder:
    """OpenAI chunks -> Ollama NDJSON lines, for one streamed ``/api/chat`` or ``/api/generate``."""

    __slots__ = ("_chat", "_finish", "_head", "_model", "_tools", "_usage", "first_token")

    def __init__(self, model: str, chat: bool) -> None:
        self._model = model
        self._chat = chat
        self._head = b'{"model":' + orjson.dumps(model) + b',"created_at":"'
        self._tools = ToolCalls()
        self._finish: str | None = None
        self._usage: Any = None
        self.first_token = False  # set once text (or a tool call) was sent: the clock's cue

    def chunk(self, c: JsonObj, created_at: str) -> bytes:
        if c.get("usage"):
            self._usage = c["usage"]
        choices = c.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        out = b""
        delta = choice.get("delta")  # /api/generate goes upstream as a chat too
        text = delta.get("content") if delta else choice.get("text")
        if text:
            self.first_token = True
            if self._chat:
                out = b'%s%s","message":{"role":"assistant","content":%s},"done":false}\n' % (
                    self._head,
                    created_at.encode(),
                    orjson.dumps(text),
                )
            else:
                out = b'%s%s","response":%s,"done":false}\n' % (
                    self._head,
                    created_at.encode(),
                    orjson.dumps(text),
                )
        if delta and len(delta) > (1 if text else 0):  # more than text: a role, reasoning, tool calls
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                msg = {"role": "assistant", "content": "", "thinking": reasoning}
                out += self._line(
                    {"model": self._model, "created_at": created_at, "message": msg, "done": False}
                )
            if delta.get("tool_calls"):
                self._tools.add(delta["tool_calls"])
        finish = choice.get("finish_reason")
        if finish:
            self._finish = finish
            out += self._flush_tools(created_at)
        return out

    def _flush_tools(self, created_at: str) -> bytes:
        if not self._tools.calls:
            return b""
        self.first_token = True
        calls = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in self._tools.ordered()
        ]
        self._tools = ToolCalls()
        msg = {"role": "assistant", "content": "", "tool_calls": tool_calls_from_openai(calls)}
        return self._line({"model": self._model, "created_at": created_at, "message": msg, "done": False})

    @staticmethod
    def _line(obj: JsonObj) -> bytes:
        return orjson.dumps(obj) + b"\n"

    def done(self, created_at: str, timings: tuple[int, int, int]) -> bytes:
        """The final object (``timings``: total, prompt-eval and eval durations in ns)."""
        out = self._flush_tools(created_at)
        final: JsonObj = {"model": self._model, "created_at": created_at}
        if self._chat:
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        final["done"] = True
        final["done_reason"] = FINISH_TO_DONE.get(str(self._finish), "stop")
        final.update(metrics(self._usage, timings))
        return out + self._line(final)

    @staticmethod
    def error(status: int, err: Any) -> bytes:
        message = err.get("message") if isinstance(err, dict) else None
        return orjson.dumps({"error": str(message or f"HTTP {status}")}) + b"\n"


class NdjsonDecoder:
    """Ollama NDJSON lines -> OpenAI chunks, for one streamed answer from an Ollama upstream."""

    __slots__ = ("_calls", "_chat", "_created", "_id", "_rest", "_role", "error", "final")

    def __init__(self, chat: bool, created: int, cid: str) -> None:
        self._chat = chat
        self._created = created
        self._id = cid
        self._rest = b""
        self._role = True  # the first chunk carries the role
        self._calls = 0
        self.final: JsonObj | None = None
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        """The OpenAI chunks of the complete lines in ``data``; after an error line, nothing more."""
        if self.error is not None:
            return b""
        buf = self._rest + data if self._rest else data
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                out.append(self._line(line))
            except StreamError as exc:
                self.error = str(exc)
                break
        return b"".join(out)

    def close(self) -> bytes:
        rest, self._rest = self._rest, b""
        return self.feed(rest + b"\n") if rest.strip() else b""

    def _chunk(self, model: str, delta: JsonObj, finish: str | None = None) -> bytes:
        if self._chat:
            obj: JsonObj = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        else:
            obj = {
                "id": self._id,
                "object": "text_completion",
                "created": self._created,
                "model": model,
                "choices": [
                    {"index": 0, "text": delta.get("content", ""), "logprobs": None, "finish_reason": finish}
                ],
            }
        return chunk_event(obj)

    def _line(self, line: bytes) -> bytes:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise StreamError("Ollama sent a line that is not JSON") from None
        if not isinstance(obj, dict):
            raise StreamError("Ollama sent a line that is not a JSON object")
        if "error" in obj:
            raise StreamError(error_message(obj, 500))
        model = str(obj.get("model") or "")
        out = b""
        delta: JsonObj = {}
        if self._role and self._chat:
            delta["role"] = "assistant"
        if self._chat:
            m = sub(obj, "message")
            if m.get("content"):
                delta["content"] = m["content"]
            if m.get("thinking"):
                delta["reasoning_content"] = m["thinking"]
            if m.get("tool_calls"):
                calls = []
                for tc in m["tool_calls"]:
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    if not isinstance(fn, dict):
                        continue
                    args = fn.get("arguments")
                    calls.append(
                        {
                            "index": self._calls,
                            "id": str(tc.get("id") or f"call_{self._calls}"),
                            "type": "function",
                            "function": {
                                "name": str(fn.get("name") or ""),
                                "arguments": args
                                if isinstance(args, str)
                                else orjson.dumps(args or {}).decode(),
                            },
                        }
                    )
                    self._calls += 1
                delta["tool_calls"] = calls
        elif obj.get("response"):
            delta["content"] = obj["response"]
        if len(delta) > (1 if "role" in delta else 0) or (self._role and self._chat):
            self._role = False
            out = self._chunk(model, delta)
        if obj.get("done"):
            self.final = obj
            finish = finish_of(obj, self._calls > 0)
            out += self._chunk(model, {}, finish)
            usage: JsonObj = {
                "id": self._id,
                "object": "chat.completion.chunk" if self._chat else "text_completion",
                "created": self._created,
                "model": model,
                "choices": [],
                "usage": usage_to_openai(obj),
            }
            out += chunk_event(usage) + DONE_EVENT
        return out
