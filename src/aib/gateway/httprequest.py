"""One request of :mod:`aib.gateway.httpconn`: its ASGI ``receive`` and ``send``, and the limits and
error answers the server shares."""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aib.gateway.httpconn import HttpConnection

READ_HIGH_WATER = 1024 * 1024  # unread request body bytes before reading pauses
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_DISCONNECT = {"type": "http.disconnect"}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one server lets a client hold (docs/security.md). Defaults are GatewaySettings' and the
    ``AIB_*`` variables'."""

    keepalive_s: float = 5.0  # an idle keep-alive connection is closed after this long
    head_timeout_s: float = 30.0  # request line + headers must be complete within (408)
    body_timeout_s: float = 60.0  # a running request's body must be complete within (408)
    write_timeout_s: float = 30.0  # the client must drain the write buffer within, else it is cut
    max_connections: int = 1000  # open client connections; past it new ones get 503 and are closed
    max_pipeline: int = 4  # requests waiting on one connection before reading pauses
    max_head_bytes: int = 64 * 1024  # request line + headers (431)
    max_headers: int = 100  # header lines (431)


class ClientDisconnected(OSError):
    """The client closed the connection; nothing more can be sent to it."""


def error_response(status: int, message: str, code: str, extra: bytes = b"") -> bytes:
    """A whole HTTP answer in the OpenAI error envelope, closing the connection."""
    body = b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":"%s"}}' % (
        message.replace('"', "'").encode(),
        code.encode(),
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
        % (status, _REASONS.get(status, b""), len(body), extra, body)
    )


class HttpRequest:
    """One request on a connection: its scope, its body as it arrives, the state of its response."""

    __slots__ = (
        "body",
        "body_sent",
        "body_size",
        "chunked",
        "complete",
        "conn",
        "done",
        "expect_continue",
        "head_only",
        "headers",
        "keep_alive",
        "length",
        "on_gone",
        "received",
        "scope",
        "started",
        "started_at",
        "status",
        "task",
        "waiter",
    )
    length: int  # Content-Length (-1: none): set by body_left() when first needed
    started_at: float  # (server clock) when the app began to run it: set by the connection's _start

    def __init__(self, conn: HttpConnection, scope: dict[str, Any], keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.body_size = 0  # unread by the app
        self.received = 0  # body bytes received in all
        self.complete = False
        self.body_sent = False
        self.waiter: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.head_only = scope["method"] == "HEAD"
        self.started = False  # http.response.start received
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False  # the head went out with transfer-encoding: chunked
        self.done = False  # the last body message was sent
        self.task: asyncio.Task[None] | None = None
        self.on_gone: Callable[[], None] | None = None

    def body_left(self) -> int:
        """Body bytes still to come when the length is known, else -1 (only when reads are sliced:
        ``length`` is looked up then, not on the common path)."""
        length: int | None = getattr(self, "length", None)
        if length is None:
            length = -1
            for name, value in self.scope["headers"]:
                if name == b"content-length" and value.isdigit():
                    length = int(value)
                    break
            self.length = length
        return length - self.received if length >= 0 else -1

    def notify_disconnect(self, callback: Callable[[], None] | None) -> None:
        """The ``aib.on_disconnect`` extension: call ``callback`` once if the client goes away before
        the response is complete (None: stop). Costs nothing until it happens, unlike a task waiting
        on ``receive()``."""
        self.on_gone = callback
        if callback is not None and self.conn.lost and not self.done:
            self.on_gone = None
            callback()

    def lost(self) -> None:
        self.wake()
        cb = self.on_gone
        if cb is not None and not self.done:
            self.on_gone = None
            cb()

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if not self.body_sent:
            while not self.complete and not self.body and not conn.lost:
                if self.expect_continue:
                    self.expect_continue = False
                    conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self._wait()
            if conn.lost and not self.complete:
                self.body_sent = True
                return _DISCONNECT
            data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body.clear()
            self.body_size = 0
            if conn.paused_reading:
                conn.maybe_resume()
            if self.complete:
                self.body_sent = True
            return {"type": "http.request", "body": data, "more_body": not self.complete}
        while not conn.lost and not self.done:  # a body was read in full: wait for the end
            await self._wait()
        return _DISCONNECT

    async def _wait(self) -> None:
        self.waiter = self.conn.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.done:
                raise RuntimeError("http.response.body before http.response.start, or after the last one")
            conn = self.conn
            if conn.lost:
                raise ClientDisconnected("the client closed the connection")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.status:  # the head is not out yet: it goes with this body
                out = self._head(len(body) if not more else None)
                self.status = 0
            else:
                out = b""
            if self.head_only:
                body = b""
            if self.chunked:
                if body:
                    out += b"%x\r\n%s\r\n" % (len(body), body)
                if not more:
                    out += b"0\r\n\r\n"
            else:
                out += body
            if out:
                conn.write(out)
            if not more:
                self.done = True
                self.wake()
                conn.request_done(self)
            elif conn.paused_writing:
                await conn.drain()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = message["status"]
            headers = message.get("headers", ())
            self.headers = headers if type(headers) is list else list(headers)  # any iterable (ASGI)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _head(self, length: int | None) -> bytes:
        headers = self.headers
        block = b"".join([b"%s: %s\r\n" % nv for nv in headers])
        n = len(headers)
        if block.count(b"\n") != n or block.count(b"\r") != n:  # CR or LF inside a name or value
            raise RuntimeError("invalid response header (CR or LF in a name or value)")
        names = [nv[0].lower() for nv in headers]
        extra = b""
        if b"connection" in names and headers[names.index(b"connection")][1].lower() == b"close":
            self.keep_alive = False
        if b"content-length" not in names and self.status >= 200 and self.status not in (204, 304):
            if length is not None:
                extra = b"content-length: %d\r\n" % length
            elif self.scope["http_version"] == "1.1":
                self.chunked = True
                extra = b"transfer-encoding: chunked\r\n"
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        if not self.keep_alive or not self.complete or self.conn.server.stopping:
            self.keep_alive = False
            extra += b"connection: close\r\n"
        return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (self.status, _REASONS.get(self.status, b""), block, extra)
