"""The exchange every translating door shares: it holds a whole answer back until it can re-encode
it (and its ``content-length``), and re-encodes a stream event by event as it passes.

A door subclasses :class:`CodecExchange` and fills in the hooks: :meth:`decode_object` (the request),
:meth:`answer` (a whole OpenAI answer), :meth:`error_body` (an OpenAI error envelope),
:meth:`encoder` (a stream encoder: ``start()``, ``chunk(obj)``, ``done()``, ``error(status, err)``)
and, for answers already in the door's shape (``Native.raw``), :meth:`raw_event` and
:meth:`raw_error`. The clock is read here, never in a codec.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import orjson

from aib.codecs.common import JsonObj, event_fields, parse_object, split_events
from aib.codecs.openai_sse import ChunkReader
from aib.doors.base import DoorPayload, Native, Scope, Send

JSON = b"application/json"
_PLAIN, _STREAM, _RAW = 0, 1, 2
_GONE = {"message": "the answer ended before it was complete", "type": "upstream_error"}


class StreamEncoder(Protocol):
    def start(self) -> bytes: ...
    def chunk(self, c: JsonObj) -> bytes: ...
    def done(self) -> bytes: ...
    def error(self, status: int, err: Any) -> bytes: ...


def is_envelope(obj: Any) -> bool:
    """The gateway's (OpenAI's) error envelope: ``{"error": {"message": ...}}``."""
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict) and "type" not in obj


class CodecExchange:
    """One request through a translating door (see the module docstring)."""

    stream_type = b"text/event-stream"  # content type of a streamed answer in the door's API

    def __init__(self, scope: Scope, send: Send) -> None:
        self._send = send
        self.scope = scope
        self.native: Native | None = None
        self.model = ""
        self.stream = False
        self.request_id = ""
        self.t0 = time.perf_counter_ns()
        self.t_first = 0  # perf_counter_ns of the first token sent (streams)
        self._mode = _PLAIN
        self._held: dict[str, Any] | None = None
        self._parts: list[bytes] = []
        self._reader: ChunkReader | None = None
        self._enc: StreamEncoder | None = None
        self._ended = False
        self._rest = b""  # an incomplete event of a same-API stream

    # ------------------------------------------------------------------ hooks

    def decode_object(self, body: JsonObj) -> tuple[JsonObj, Native]:
        """(the internal payload, the request as sent): sets :attr:`model` and :attr:`stream`."""
        raise NotImplementedError

    def answer(self, completion: JsonObj) -> bytes:
        raise NotImplementedError

    def error_body(self, status: int, err: JsonObj) -> bytes:
        raise NotImplementedError

    def encoder(self) -> StreamEncoder:
        raise NotImplementedError

    def raw_event(self, event: bytes, data: bytes) -> bytes:
        """One event of a same-API upstream's stream, as the client gets it."""
        return event + b"\n\n"

    def raw_error(self, err: JsonObj) -> bytes:
        return self.encoder().error(502, err)

    # ------------------------------------------------------------------ DoorExchange

    def decode(self, body: bytes) -> tuple[dict[str, Any], str, bool]:
        payload, native = self.decode_object(parse_object(body))
        self.native = native
        return DoorPayload(payload, native), self.model, self.stream

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body":
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            if self._mode == _PLAIN:
                self._parts.append(body)
                if not more:
                    await self._plain()
                return
            out = self._streamed(body, more)
            if out or not more:
                await self._send({"type": "http.response.body", "body": out, "more_body": more})
        else:
            await self._send(message)

    async def _start(self, message: dict[str, Any]) -> None:
        headers = message.get("headers") or []
        ctype = b""
        for k, v in headers:
            if k == b"content-type":
                ctype = v
            elif k == b"x-request-id":
                self.request_id = v.decode("latin-1")
        if message.get("status") == 200 and ctype.startswith(b"text/event-stream"):
            raw = self.native is not None and self.native.raw
            self._mode = _RAW if raw else _STREAM
            if not raw:
                self._reader = ChunkReader()
                self._enc = self.encoder()
            out = [(k, v) for k, v in headers if k not in (b"content-type", b"content-length")]
            out.append((b"content-type", self.stream_type))
            await self._send({**message, "headers": out})
            if not raw:
                assert self._enc is not None
                start = self._enc.start()
                if start:
                    await self._send({"type": "http.response.body", "body": start, "more_body": True})
        else:
            self._held = message

    async def _plain(self) -> None:
        held = self._held or {"type": "http.response.start", "status": 500, "headers": []}
        status = int(held["status"])
        data = b"".join(self._parts)
        self._parts = []
        data = self._translate(status, data)
        headers = [
            (k, v) for k, v in held.get("headers") or [] if k not in (b"content-type", b"content-length")
        ]
        headers.append((b"content-type", JSON))
        headers.append((b"content-length", b"%d" % len(data)))
        await self._send({**held, "headers": headers})
        await self._send({"type": "http.response.body", "body": data})

    def _translate(self, status: int, data: bytes) -> bytes:
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            obj = None
        if status >= 400:
            if is_envelope(obj):
                assert isinstance(obj, dict)
                return self.error_body(status, obj["error"])
            if isinstance(obj, dict):  # already in the door's own shape (a same-API upstream's error)
                return data
            text = data[:300].decode("utf-8", "replace")
            return self.error_body(status, {"message": text or f"HTTP {status}", "type": "upstream_error"})
        if self.native is not None and self.native.raw:
            return data
        if not isinstance(obj, dict):
            return self.error_body(
                502, {"message": "the upstream's answer could not be read", "type": "upstream_error"}
            )
        return self.answer(obj)

    def _streamed(self, body: bytes, more: bool) -> bytes:
        if self._ended:
            return b""
        if self._mode == _RAW:
            return self._raw(body, more)
        reader, enc = self._reader, self._enc
        assert reader is not None and enc is not None
        if more:  # the common case, one chunk per message: no list, no second look
            obj = reader.one(body)
            if obj is not None and "choices" in obj:
                return enc.chunk(obj)
        events = reader.feed(body) if body else []
        if not more:
            events += reader.close()
        out = []
        for ev in events:
            if ev is None:
                out.append(enc.done())
                self._ended = True
                break
            if "error" in ev and "choices" not in ev:
                out.append(enc.error(502, ev["error"]))
                self._ended = True
                break
            out.append(enc.chunk(ev))
        if not more and not self._ended:
            out.append(enc.error(502, _GONE))
            self._ended = True
        return b"".join(out)

    def _raw(self, body: bytes, more: bool) -> bytes:
        events, self._rest = split_events(self._rest + body)
        if not more and self._rest.strip():
            events.append(self._rest)
        out = []
        for ev in events:
            name, data = event_fields(ev)
            if data is None or data == b"[DONE]":
                continue
            if name is None and data.startswith(b'{"error"'):  # the gateway's own report of a broken stream
                try:
                    err = orjson.loads(data).get("error")
                except (orjson.JSONDecodeError, AttributeError):
                    err = None
                out.append(self.raw_error(err if isinstance(err, dict) else _GONE))
                continue
            out.append(self.raw_event(ev, data))
        return b"".join(out)

    # ------------------------------------------------------------------ for the doors

    def elapsed(self) -> tuple[int, int, int]:
        """(total, prompt-eval, eval) in ns: request start -> now, split at the first token sent."""
        now = time.perf_counter_ns()
        total = now - self.t0
        if self.t_first:
            return total, self.t_first - self.t0, now - self.t_first
        return total, 0, total

    def header(self, name: bytes) -> str | None:
        for k, v in self.scope.get("headers") or ():
            if k == name:
                return str(v.decode("latin-1"))
        return None

    def item_id(self) -> str:
        """An id for this request's answer items (the request id, made safe for ids)."""
        rid = self.request_id or f"{self.t0:x}"
        if rid.isalnum():  # the gateway's own ids (hex): no copy
            return rid[:64]
        return "".join(c for c in rid if c.isalnum() or c in "-_")[:64]
