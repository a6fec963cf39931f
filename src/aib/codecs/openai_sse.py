"""The internal stream: OpenAI chat-completion chunks as ``data: {...}`` events, then ``data: [DONE]``.

:class:`ChunkReader` turns the bytes the request path sends into parsed events; :func:`chunk_event`
and :data:`DONE_EVENT` write them (the outbound adapters produce this stream from Ollama's and
Anthropic's). An event ``{"error": {...}}`` is the gateway's own report of a stream that broke.
:class:`ToolCalls` puts streamed tool-call fragments back together.
"""

from __future__ import annotations

from typing import Any

import orjson

from aib.codecs.common import JsonObj, event_fields, split_events, sub

DONE_EVENT = b"data: [DONE]\n\n"
BROKEN = {"error": {"message": "the upstream sent a malformed stream event", "type": "upstream_error"}}


def chunk_event(obj: JsonObj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class ChunkReader:
    """Feeds on stream bytes; returns each complete event's object, ``None`` for ``[DONE]``."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[JsonObj | None]:
        buf = self._rest + data if self._rest else data
        events, self._rest = split_events(buf)
        out: list[JsonObj | None] = []
        for ev in events:
            _, payload = event_fields(ev)
            if payload is None:
                continue
            if payload == b"[DONE]":
                out.append(None)
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                obj = BROKEN
            out.append(obj if isinstance(obj, dict) else BROKEN)
        return out

    def one(self, data: bytes) -> JsonObj | None:
        """The fast path: ``data`` is exactly one complete ``data: {...}`` event and nothing is pending
        (how the request path sends streams); None when it is anything else (then use :meth:`feed`)."""
        if (
            self._rest
            or not data.startswith(b"data: {")
            or not data.endswith(b"}\n\n")
            or data.count(b"\n\n") != 1
        ):
            return None
        try:
            obj = orjson.loads(data[6:-2])
        except orjson.JSONDecodeError:
            return None
        return obj if type(obj) is dict else None

    def close(self) -> list[JsonObj | None]:
        """What is left when the stream ends (a last event without its blank line)."""
        if not self._rest.strip():
            return []
        return self.feed(b"\n\n")


class ToolCalls:
    """Tool calls put together from streamed fragments (``delta.tool_calls``), in index order."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: dict[int, JsonObj] = {}

    def add(self, fragments: Any) -> list[int]:
        """Merge fragments; returns the indexes seen for the first time."""
        new: list[int] = []
        if not isinstance(fragments, list):
            return new
        for frag in fragments:
            if not isinstance(frag, dict):
                continue
            idx = frag.get("index")
            if not isinstance(idx, int):
                idx = len(self.calls)
            call = self.calls.get(idx)
            fn = sub(frag, "function")
            if call is None:
                call = self.calls[idx] = {"id": frag.get("id") or "", "name": "", "arguments": ""}
                new.append(idx)
            elif frag.get("id"):
                call["id"] = frag["id"]
            if fn.get("name") and not call["name"]:  # some servers repeat the name in every fragment
                call["name"] = fn["name"]
            if fn.get("arguments"):
                call["arguments"] += fn["arguments"]
        return new

    def ordered(self) -> list[JsonObj]:
        return [self.calls[i] for i in sorted(self.calls)]
