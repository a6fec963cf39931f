"""A small HTTP/1.1 server for ASGI applications, built for the gateway's hot path.

Why not uvicorn: measured in ``bench/choose_stack.py`` and ``docs/performance.md``, uvicorn's
per-request work (two regexes per response header, head and body written as two syscalls, a
flow-control object and a task per cycle) costs more CPU than everything the gateway itself does.
This server keeps what the gateway needs and nothing else:

* HTTP/1.1 and 1.0 with keep-alive, pipelining (answered in order), chunked request bodies,
  ``Expect: 100-continue``, ``HEAD``; percent-decoded ``path``; the ASGI 3 ``http`` and ``lifespan``
  scopes (no WebSocket);
* one write per whole response (head and body together), chunked encoding for streamed bodies;
* back-pressure both ways: reading pauses while a request body waits unread, ``send`` waits while
  the client's socket buffer is full;
* ``receive()`` returns ``http.disconnect`` once the client has gone or the response is complete,
  and ``send`` raises :class:`ClientDisconnected` (an ``OSError``) after the client left;
* limits: request line + headers ≤ 64 KiB and ≤ 100 headers (431), malformed requests (400);
  idle keep-alive connections closed after ``keepalive_s``; a request whose line and headers are not
  complete after ``head_timeout_s`` gets 408 and is closed (slow-header clients hold no connection);
* graceful stop: stop accepting, close idle connections, let requests in flight finish (bounded),
  then the lifespan shutdown.

Errors the server itself answers use the OpenAI error envelope, like the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httptools

log = logging.getLogger("aib.gateway.http")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
READ_HIGH_WATER = 1024 * 1024
SWEEP_EVERY_S = 1.0  # idle and slow-head connections are looked at this often  # unread request body bytes before reading pauses
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_DISCONNECT = {"type": "http.disconnect"}


class ClientDisconnected(OSError):
    """The client closed the connection; nothing more can be sent to it."""


def _error_response(status: int, message: str, code: str) -> bytes:
    body = b'{"error":{"message":"%s","type":"invalid_request_error","param":null,"code":"%s"}}' % (
        message.encode(),
        code.encode(),
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status, _REASONS.get(status, b""), len(body), body)
    )


class _Request:
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
        "on_gone",
        "scope",
        "started",
        "status",
        "task",
        "waiter",
    )

    def __init__(self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.body_size = 0
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
            conn.resume_reading()
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


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs them one after another, writes their answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused_writing = False
        self.paused_reading = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.queue: deque[_Request] = deque()  # the first one is running; the rest wait (pipelining)
        self.current: _Request | None = None  # the request being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.expect = False
        self.idle_since: float | None = None
        self.head_since: float | None = None  # a request's head is being received since then
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.local = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        self.idle_since = self.server.clock
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        for req in self.queue:
            req.lost()
        if self.current is not None and self.current not in self.queue:
            self.current.wake()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_exception(ClientDisconnected("the client closed the connection"))
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol switching: the request is answered as plain HTTP
        except httptools.HttpParserError as exc:  # a callback's exception arrives wrapped in it
            if isinstance(exc.__context__, _TooLarge):
                self._reject(
                    431,
                    f"The request line and headers exceed {MAX_HEAD_BYTES // 1024} KiB or {MAX_HEADERS} headers.",
                    "headers_too_large",
                )
            else:
                self._reject(400, f"Malformed HTTP request: {exc}", "bad_request")

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def drain(self) -> None:
        if self.lost:
            raise ClientDisconnected("the client closed the connection")
        self.drain_waiter = self.loop.create_future()
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def resume_reading(self) -> None:
        if self.paused_reading and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()

    def _reject(self, status: int, message: str, code: str) -> None:
        if self.transport is None:
            return
        if not self.queue:  # nothing running: answer now; else the running request's answer is the last
            self.transport.write(_error_response(status, message.replace('"', "'"), code))
        self.transport.close()

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.expect = False
        self.idle_since = None
        self.head_since = self.server.clock

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _TooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES or len(self.headers) >= MAX_HEADERS:
            raise _TooLarge()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_since = None
        parser = self.parser
        url = self.url
        q = url.find(b"?")
        raw_path, query = (url, b"") if q < 0 else (url[:q], url[q + 1 :])
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
        }
        keep = parser.should_keep_alive() and not self.server.stopping
        req = _Request(self, scope, keep, self.expect)
        scope["extensions"] = {"aib.on_disconnect": req.notify_disconnect}
        self.current = req
        self.queue.append(req)
        if len(self.queue) == 1:
            self._start(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is None:  # pragma: no cover - httptools calls on_headers_complete first
            return
        if not req.body_sent:
            req.body.append(body)
            req.body_size += len(body)
            if req.body_size > READ_HIGH_WATER and not self.paused_reading and self.transport is not None:
                self.paused_reading = True
                self.transport.pause_reading()
        req.wake()

    def on_message_complete(self) -> None:
        req = self.current
        if req is not None:
            req.complete = True
            req.wake()

    # ---------------------------------------------------------------- running requests

    def _start(self, req: _Request) -> None:
        req.task = self.loop.create_task(self._run(req))

    async def _run(self, req: _Request) -> None:
        server = self.server
        server.inflight += 1
        try:
            await server.app(req.scope, req.receive, req.send)
        except Exception:
            if not req.started or req.status:  # nothing sent yet: say so in the envelope
                log.exception("unhandled error in the application")
                if not self.lost:
                    self.write(_error_response(500, "Internal server error.", "internal_error"))
            else:
                log.exception("application error after the response started")
            req.keep_alive = False
            req.done = True
            self.request_done(req)
        except asyncio.CancelledError:
            req.keep_alive = False
            req.done = True
            self.request_done(req)
            raise
        finally:
            server.inflight -= 1
            if not req.done:  # the app returned without finishing its response
                if not self.lost and not req.started:
                    self.write(_error_response(500, "The application sent no response.", "internal_error"))
                req.keep_alive = False
                req.done = True
                self.request_done(req)

    def request_done(self, req: _Request) -> None:
        if not self.queue or self.queue[0] is not req:
            return
        self.queue.popleft()
        if not req.keep_alive or self.lost:
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            self._start(self.queue[0])
        else:
            self.idle_since = self.server.clock
            if self.server.stopping and self.transport is not None:
                self.transport.close()

    def sweep(self, now: float, idle_s: float, head_s: float) -> None:
        """Close an idle keep-alive connection; answer 408 to a request head that takes too long."""
        if self.transport is None:
            return
        since = self.idle_since
        if not self.queue and since is not None and now - since >= idle_s:
            self.transport.close()
        elif self.head_since is not None and now - self.head_since >= head_s:
            self._reject(
                408, f"The request line and headers took longer than {head_s:g}s.", "request_timeout"
            )


class _TooLarge(Exception):
    pass


class HttpServer:
    """Serve one ASGI application on one listening socket (see the module docstring)."""

    def __init__(self, app: ASGIApp, keepalive_s: float = 5.0, head_timeout_s: float = 30.0) -> None:
        self.app = app
        self.keepalive_s = keepalive_s
        self.head_timeout_s = head_timeout_s
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time()  # a coarse clock for the sweeper, updated once a second
        self.connections: set[_Connection] = set()
        self.inflight = 0
        self.stopping = False
        self.force = False  # a second signal: stop without waiting
        self._server: asyncio.Server | None = None
        self._extra: list[asyncio.Server] = []  # more listening sockets (a leader worker's unix socket)
        self._sweeper: asyncio.TimerHandle | None = None
        self._lifespan: _Lifespan | None = None

    async def start(self, sock: socket.socket | None = None, host: str = "127.0.0.1", port: int = 0) -> int:
        """Run the lifespan startup, then listen (on ``sock`` when given). Returns the port."""
        self._lifespan = _Lifespan(self.app)
        await self._lifespan.startup()
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.setblocking(False)
        self._server = await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=2048)
        self._sweep()
        name = sock.getsockname()
        return int(name[1]) if isinstance(name, tuple) else 0

    async def listen_also(self, sock: socket.socket) -> None:
        """Serve the same application on one more listening socket (TCP or unix), stopped with the rest."""
        sock.setblocking(False)
        self._extra.append(await self.loop.create_server(lambda: _Connection(self), sock=sock, backlog=128))

    def _sweep(self) -> None:
        now = self.clock = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now, self.keepalive_s, self.head_timeout_s)
        self._sweeper = self.loop.call_later(SWEEP_EVERY_S, self._sweep)

    async def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let requests in flight finish (at most ``drain_s``), then shut the app down."""
        self.stopping = True
        for srv in (self._server, *self._extra):
            if srv is not None:
                srv.close()
        for conn in list(self.connections):
            if not conn.queue and conn.transport is not None:
                conn.transport.close()
        deadline = self.loop.time() + drain_s
        while self.connections and self.loop.time() < deadline and not self.force:
            if all(not c.queue for c in self.connections):
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            for req in conn.queue:
                if req.task is not None and not req.task.done():
                    req.task.cancel()
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._lifespan is not None:
            await self._lifespan.shutdown()


class _Lifespan:
    """The ASGI lifespan protocol: startup before listening, shutdown after the last request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _send(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)

    async def _run(self) -> None:
        try:
            await self.app({"type": "lifespan", "asgi": _ASGI, "state": {}}, self.inbox.get, self._send)
        except Exception as exc:
            if self.outbox.empty():  # the app does not speak lifespan (allowed by the spec)
                self.supported = False
                log.debug("lifespan not supported: %r", exc)
            await self.outbox.put({"type": "lifespan.unsupported"})
        else:
            await self.outbox.put({"type": "lifespan.unsupported"})

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        msg = await self.outbox.get()
        if msg["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"application startup failed: {msg.get('message', '')}")
        if msg["type"] == "lifespan.unsupported":
            self.supported = False

    async def shutdown(self) -> None:
        if not self.supported or self.task is None:
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        msg = await self.outbox.get()
        if msg["type"] == "lifespan.shutdown.failed":
            log.error("application shutdown failed: %s", msg.get("message", ""))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 5.0)


__all__ = ["ClientDisconnected", "HttpServer"]
