"""Anthropic's streaming events <-> the internal stream of OpenAI chunks.

:class:`MessageStreamEncoder` (the front door) writes Anthropic's exact sequence from OpenAI chunks:
``message_start``, then per content block ``content_block_start``, ``content_block_delta``
(``text_delta`` or ``input_json_delta`` for tool input), ``content_block_stop``; a ``ping`` after the
first block starts; ``message_delta`` with ``stop_reason`` and ``usage``; ``message_stop``. Every event
is named (``event: <type>``): Anthropic's SDKs skip events without a name. A broken stream ends with
``event: error``.

:class:`MessageStreamDecoder` (the outbound adapter) reads Anthropic's events and writes OpenAI chunks
ending with ``data: [DONE]``; an ``error`` event stops it: what came before is returned, the error is
kept in ``error`` (:class:`StreamError` is raised for it by :meth:`MessageStreamDecoder.check`).
"""

from __future__ import annotations

from typing import Any

import orjson

from aib.codecs.anthropic import FINISH_REASON, STOP_REASON, error_from_openai, tool_use_id, usage_to_openai
from aib.codecs.common import JsonObj, event_fields, index_of, split_events, sub, usage_counts
from aib.codecs.openai_sse import DONE_EVENT, chunk_event

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_TEXT_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}\n\n'
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'
_JSON_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"input_json_delta","partial_json":%s}}\n\n'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


class StreamError(Exception):
    """The upstream reported an error in the middle of a stream."""


def _event(name: bytes, obj: JsonObj) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


class MessageStreamEncoder:
    """OpenAI chunks -> Anthropic events, for one streamed answer."""

    __slots__ = ("_block", "_kind", "_model", "_msg_id", "_pinged", "_stop", "_tools", "_usage")

    def __init__(self, model: str, msg_id: str) -> None:
        self._model = model
        self._msg_id = msg_id
        self._block = -1  # index of the open content block (-1: none yet)
        self._kind = ""  # "text" or "tool" while a block is open
        self._tools: dict[int, int] = {}  # OpenAI tool-call index -> Anthropic block index
        self._pinged = False
        self._stop: str | None = None
        self._usage: Any = None

    def start(self) -> bytes:
        message: JsonObj = {
            "id": self._msg_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event(b"message_start", {"type": "message_start", "message": message})

    def chunk(self, c: JsonObj) -> bytes:
        if c.get("usage"):
            self._usage = c["usage"]
        choices = c.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        delta = choice.get("delta")
        out = b""
        if delta:
            text = delta.get("content")
            if text:
                if self._kind != "text":
                    out = self._open(_TEXT_START, "text")
                out += _TEXT_DELTA % (self._block, orjson.dumps(text))
            calls = delta.get("tool_calls")
            if calls:
                out += self._tool_deltas(calls)
        finish = choice.get("finish_reason")
        if finish:
            self._stop = STOP_REASON.get(finish, "end_turn")
        return out

    def _open(self, start: bytes, kind: str) -> bytes:
        out = _BLOCK_STOP % self._block if self._block >= 0 else b""
        self._block += 1
        self._kind = kind
        out += start % self._block if kind == "text" else start
        if not self._pinged:
            self._pinged = True
            out += _PING
        return out

    def _tool_deltas(self, calls: Any) -> bytes:
        out = b""
        for frag in calls:
            if not isinstance(frag, dict):
                continue
            idx = index_of(frag, len(self._tools))
            fn = sub(frag, "function")
            block = self._tools.get(idx)
            if block is None:
                block_obj = {
                    "type": "tool_use",
                    "id": tool_use_id(frag.get("id"), self._msg_id, idx),
                    "name": str(fn.get("name") or ""),
                    "input": {},
                }
                start = _event(
                    b"content_block_start",
                    {"type": "content_block_start", "index": self._block + 1, "content_block": block_obj},
                )
                out += self._open(start, "tool")
                block = self._tools[idx] = self._block
            args = fn.get("arguments")
            if args:
                if block != self._block:  # fragments of an earlier call after a later one started
                    continue
                out += _JSON_DELTA % (block, orjson.dumps(args))
        return out

    def done(self) -> bytes:
        """The end of a complete stream (``[DONE]``)."""
        out = _BLOCK_STOP % self._block if self._block >= 0 else b""
        self._block = -1
        prompt, completion, cached = usage_counts(self._usage)
        stop = self._stop or "end_turn"
        if self._tools and stop == "end_turn":
            stop = "tool_use"
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {
                "input_tokens": prompt - cached,
                "cache_read_input_tokens": cached,
                "output_tokens": completion,
            },
        }
        return out + _event(b"message_delta", delta) + _STOP

    def error(self, status: int, err: Any) -> bytes:
        """The stream broke (``err``: the ``error`` object of the gateway's envelope)."""
        return _event(b"error", error_from_openai(status, err))


class MessageStreamDecoder:
    """Anthropic events -> OpenAI chunks, for one streamed answer from an Anthropic upstream."""

    __slots__ = ("_base", "_created", "_rest", "_stop", "_tool_blocks", "_usage", "error")

    def __init__(self, created: int) -> None:
        self._created = created
        self._rest = b""
        self._base: JsonObj = {
            "id": "chatcmpl-anthropic",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "",
        }
        self._tool_blocks: dict[int, int] = {}  # Anthropic block index -> OpenAI tool-call index
        self._usage: JsonObj = {}
        self._stop = "stop"
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        """The OpenAI chunks of the complete events in ``data``; after an error event, nothing more."""
        if self.error is not None:
            return b""
        buf = self._rest + data if self._rest else data
        events, self._rest = split_events(buf)
        out = []
        for ev in events:
            name, payload = event_fields(ev)
            if payload is None:
                continue
            try:
                obj = orjson.loads(payload)
                kind = obj.get("type") if isinstance(obj, dict) else None
                if kind is None:
                    kind = name.decode() if name else ""
                out.append(self._event(str(kind), obj))
            except orjson.JSONDecodeError:
                self.error = "Anthropic sent a malformed stream event"
                break
            except StreamError as exc:
                self.error = str(exc)
                break
        return b"".join(out)

    def check(self) -> None:
        if self.error is not None:
            raise StreamError(self.error)

    def _chunk(self, delta: JsonObj, finish: str | None = None) -> bytes:
        return chunk_event({**self._base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def _event(self, kind: str, obj: JsonObj) -> bytes:
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if dtype == "input_json_delta":
                idx = self._tool_blocks.get(obj.get("index", -1))
                if idx is None:
                    return b""
                return self._chunk(
                    {"tool_calls": [{"index": idx, "function": {"arguments": delta.get("partial_json", "")}}]}
                )
            if dtype == "thinking_delta":
                return self._chunk({"reasoning_content": delta.get("thinking", "")})
            return b""
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") != "tool_use":
                return b""
            idx = self._tool_blocks[obj.get("index", -1)] = len(self._tool_blocks)
            call = {
                "index": idx,
                "id": block.get("id", ""),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "message_start":
            msg = obj.get("message") or {}
            self._base = {
                **self._base,
                "id": f"chatcmpl-{msg.get('id') or 'anthropic'}",
                "model": msg.get("model", ""),
            }
            self._usage.update(msg.get("usage") or {})
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "message_delta":
            delta = obj.get("delta") or {}
            self._stop = FINISH_REASON.get(str(delta.get("stop_reason")), "stop")
            self._usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})
            return b""
        if kind == "message_stop":
            usage = chunk_event({**self._base, "choices": [], "usage": usage_to_openai(self._usage)})
            return self._chunk({}, self._stop) + usage + DONE_EVENT
        if kind == "error":
            err = obj.get("error") or {}
            raise StreamError(
                f"{err.get('type', 'error')}: {err.get('message', 'Anthropic reported an error')}"
            )
        return b""  # ping, content_block_stop, and event types added later

    @property
    def usage(self) -> JsonObj:
        return usage_to_openai(self._usage)
