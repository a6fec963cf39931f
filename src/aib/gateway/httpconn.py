"""One client connection of :mod:`aib.gateway.httpserver`: parse requests, run them in order, write
their answers, and hold the edge against abuse.

What bounds a connection (each limit is a field of :class:`ServerLimits`):

* **Pipelining**: at most ``max_pipeline`` requests wait on one connection; past that, reading
  pauses and the bytes already read are held unparsed. Big reads are fed to the parser one request
  head (or one known-length body) at a time, so one read cannot queue thousands of requests. The
  next request starts only while the transport's write buffer is below its high-water mark: answers
  that nobody reads never pile up.
* **Request head**: bytes are counted as they arrive, before httptools buffers a header value whole;
  past ``max_head_bytes`` (or ``max_headers`` lines) the answer is 431. A head still incomplete after
  ``head_timeout_s``: 408.
* **Request body**: a running request whose body is not complete ``body_timeout_s`` after it started
  gets 408 (a client sending one byte at a time holds nothing for long).
* **Writes**: a connection whose write buffer stays above its high-water mark (the client stopped
  reading) for ``write_timeout_s`` is cut; its request sees the client gone and releases the upstream.
* **Errors**: a malformed request gets its 400 (431, 408) after the answers of the requests before it;
  the connection then stops reading requests, shuts its write side and discards what still arrives for
  a short while (a "lingering close", so the client can read the answer instead of a reset).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from aib.gateway.httprequest import (
    READ_HIGH_WATER,
    ClientDisconnected,
    HttpRequest,
    error_response,
)

if TYPE_CHECKING:
    from aib.gateway.httpserver import HttpServer

log = logging.getLogger("aib.gateway.http")

FAST_FEED = 4096  # a read up to this size, on a connection with nothing in flight, is parsed whole
SLICE = 64 * 1024  # otherwise reads are parsed up to the next head end, at most this much at a time
LINGER_S = 2.0  # after an error answer: how long what the client still sends is read and dropped
_ASGI = {"version": "3.0", "spec_version": "2.3"}


def origin_form(url: bytes) -> bytes:
    """The path and query of an absolute-form request target (``http://host/v1/models?x``, RFC 9112
    3.2.2); other targets (``*``) are returned as they are."""
    at = url.find(b"://")
    if at <= 0:
        return url
    cut = len(url)
    for sep in (b"/", b"?"):
        i = url.find(sep, at + 3)
        if 0 <= i < cut:
            cut = i
    rest = url[cut:]
    return rest if rest.startswith(b"/") else b"/" + rest


class _TooLarge(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs them one after another, writes their answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = lim = server.limits
        self.max_head = lim.max_head_bytes  # read on every request: kept at hand
        self.max_headers = lim.max_headers
        self.max_pipeline = lim.max_pipeline
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused_writing = False
        self.paused_reading = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.queue: deque[HttpRequest] = deque()  # the first one is running; the rest wait (pipelining)
        self.current: HttpRequest | None = None  # the request being parsed
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_left = lim.max_head_bytes  # bytes the head being received may still use
        self.fast_limit = FAST_FEED  # reads up to this size are parsed whole (0: every read is sliced)
        self.held: bytes | None = None  # read but not parsed: too many requests wait
        self.error: bytes | None = None  # the error answer; the parser is done, reads are dropped
        self.expect = False
        self.counted = False  # counts against max_connections
        self.idle_since: float | None = None
        self.head_since: float | None = None  # a request's head is being received since then
        self.stalled_since = 0.0  # the write buffer went above its high-water mark then
        self.closing_since: float | None = None
        self.linger_since: float | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.connections.add(self)
        if server.open >= self.limits.max_connections:
            self.lost = True  # never parsed: answered at once
            self.fast_limit = 0  # what it sends goes to _feed_sliced, which drops it
            self.error = error_response(
                503,
                f"The gateway has {self.limits.max_connections} open connections "
                "(AIB_MAX_CONNECTIONS); retry shortly.",
                "too_many_connections",
                b"retry-after: 1\r\n",
            )
            self._linger()
            return
        self.counted = True
        server.open += 1
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.local = (sock[0], sock[1]) if isinstance(sock, tuple) else None
        self.idle_since = server.clock

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.counted:
            self.counted = False
            self.server.open -= 1
        for req in self.queue:
            req.lost()
        if self.current is not None and self.current not in self.queue:
            self.current.wake()
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_exception(ClientDisconnected("the client closed the connection"))
        self.transport = None
        self.held = None

    def data_received(self, data: bytes) -> None:
        if len(data) <= self.fast_limit and not self.queue:  # the common case: one request, nothing in flight
            try:  # _feed, inlined: this runs for every request
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass  # no protocol switching: the request is answered as plain HTTP
            except httptools.HttpParserError as exc:
                self._parse_error(exc)
            if self.head_since is not None:  # a head spans reads (slowly sent, or large)
                self._head_spans(len(data))
            if len(self.queue) > self.max_pipeline:
                self._hold(b"")
        else:
            self._feed_sliced(data)

    def _head_spans(self, n: int) -> None:
        """``n`` more bytes of an incomplete head: past the limit, 431; else the next reads are sliced
        so that the parser never holds more than the limit."""
        self.head_left -= n
        if self.head_left < 0:
            self._too_large()
        else:
            self.fast_limit = 0

    def _feed_sliced(self, data: bytes) -> None:
        """Parse ``data`` a request head (or a known-length body) at a time: stop when too many
        requests wait (the rest is held), or when a head grows past its limit (431)."""
        if self.error is not None:
            return  # an error was answered: what follows is dropped
        if self.held is not None:
            self.held += data
            return
        pos, end = 0, len(data)
        while pos < end:
            if len(self.queue) > self.max_pipeline:
                self._hold(data[pos:])
                return
            cur = self.current
            n = -1
            in_body = self.head_since is None and cur is not None and not cur.complete
            if in_body and cur is not None:
                n = cur.body_left()  # a body of known length: all of it at once
            if n <= 0:
                i = data.find(b"\r\n\r\n", pos, pos + SLICE)
                n = i + 4 - pos if i >= 0 else SLICE
                if not in_body:  # in a head, or a head starts here: never past its limit (+1)
                    n = min(n, (self.head_left if self.head_since is not None else self.max_head) + 1)
            part = data if pos == 0 and n >= end else data[pos : pos + n]
            pos += len(part)
            self._feed(part)
            if self.error is not None:
                return
            if self.head_since is not None:
                self.head_left -= len(part)
                if self.head_left < 0:
                    self._too_large()
                    return
        if self.head_since is None and self.held is None:
            self.fast_limit = FAST_FEED

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol switching: the request is answered as plain HTTP
        except httptools.HttpParserError as exc:
            self._parse_error(exc)

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc.__context__, _TooLarge):  # a callback's exception arrives wrapped in it
            self._too_large()
        else:
            self.reject(400, f"Malformed HTTP request: {exc}", "bad_request")

    def _too_large(self) -> None:
        lim = self.limits
        self.reject(
            431,
            f"The request line and headers exceed {lim.max_head_bytes} bytes or {lim.max_headers} lines "
            "(AIB_MAX_HEAD_BYTES, AIB_MAX_HEADERS).",
            "headers_too_large",
        )

    def _hold(self, rest: bytes) -> None:
        """Too many requests wait: stop reading, keep ``rest`` unparsed until they are answered."""
        self.held = rest
        self.fast_limit = 0
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def _unhold(self) -> None:
        data = self.held
        if data is None or len(self.queue) > self.max_pipeline:
            return
        self.held = None
        if data:
            self._feed_sliced(data)
        self.maybe_resume()

    def maybe_resume(self) -> None:
        """Read again unless something still needs the pause (held bytes, an unread large body)."""
        if not self.paused_reading or self.transport is None or self.held is not None:
            return
        if self.error is not None and self.linger_since is None:
            return  # an error waits for the answers before it: nothing more is read until then
        cur = self.current
        if cur is not None and not cur.complete and cur.body_size > READ_HIGH_WATER:
            return
        self.paused_reading = False
        self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.paused_writing = True
        self.stalled_since = self.server.clock

    def resume_writing(self) -> None:
        self.paused_writing = False
        w = self.drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        q = self.queue
        if q and q[0].task is None and not self.lost:  # held back while the buffer was full
            self._start(q[0])

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

    # ---------------------------------------------------------------- errors

    def reject(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` after the requests already complete, then stop (see the module doc)."""
        if self.transport is None or self.error is not None:
            return
        self.error = error_response(status, message, code)
        self.held = None
        self.fast_limit = 0
        if not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()
        q = self.queue
        cur = self.current
        if cur is not None and not cur.complete and q and q[-1] is cur:  # its own request is broken
            if q[0] is not cur:
                q.pop()  # never started: the requests before it are answered first
            elif not cur.started or cur.status:  # running, nothing sent: the error is its answer
                q.clear()
                self.lost = True  # for the app, the client is gone
                cur.lost()
            else:  # its answer has begun: nothing honest can be added
                self.transport.close()
                return
        if not q:
            self._linger()

    def _linger(self) -> None:
        """Write the error answer, shut the write side, drop what arrives for ``LINGER_S``."""
        t = self.transport
        if t is None or self.linger_since is not None:
            return
        self.linger_since = self.server.clock
        if self.error is not None:
            t.write(self.error)
        if t.can_write_eof():
            t.write_eof()
        else:  # pragma: no cover - TCP and unix transports can
            t.close()
        if self.paused_reading:
            self.paused_reading = False
            t.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # the client is done sending: close (after what is still to be written)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.expect = False
        self.idle_since = None
        self.head_since = self.server.clock
        self.head_left = self.max_head

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.max_head:
            raise _TooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.max_head or len(self.headers) >= self.max_headers:
            raise _TooLarge()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_since = None
        parser = self.parser
        url = self.url
        if url[0] != 0x2F:  # not "/": an absolute-form target (as sent to a proxy) or "*"
            url = origin_form(url)
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
        req = HttpRequest(self, scope, keep, self.expect)
        scope["extensions"] = {"aib.on_disconnect": req.notify_disconnect}
        self.current = req
        self.queue.append(req)
        if len(self.queue) == 1 and not self.paused_writing:
            self._start(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req is None:  # pragma: no cover - httptools calls on_headers_complete first
            return
        req.received += len(body)
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

    def _start(self, req: HttpRequest) -> None:
        req.started_at = self.server.clock
        req.task = self.loop.create_task(self._run(req))

    async def _run(self, req: HttpRequest) -> None:
        server = self.server
        server.inflight += 1
        try:
            await server.app(req.scope, req.receive, req.send)
        except ClientDisconnected:  # the client left while its answer was written: nothing to report
            log.debug("client %s left before its answer was complete", self.client)
            self._finished(req)
        except Exception:
            if not req.started or req.status:  # nothing sent yet: say so in the envelope
                log.exception("unhandled error in the application")
                if not self.lost:
                    self.write(error_response(500, "Internal server error.", "internal_error"))
            else:
                log.exception("application error after the response started")
            self._finished(req)
        except asyncio.CancelledError:
            self._finished(req)
            raise
        finally:
            server.inflight -= 1
            if not req.done:  # the app returned without finishing its response
                if not self.lost and not req.started:
                    self.write(error_response(500, "The application sent no response.", "internal_error"))
                self._finished(req)

    def _finished(self, req: HttpRequest) -> None:
        req.keep_alive = False
        req.done = True
        self.request_done(req)

    def request_done(self, req: HttpRequest) -> None:
        q = self.queue
        if not q or q[0] is not req:
            return
        q.popleft()
        if not req.keep_alive or self.lost:
            if self.transport is not None:
                self.transport.close()
            return
        if self.held is not None:
            self._unhold()
        if q:
            if q[0].task is None and not self.paused_writing:
                self._start(q[0])
        elif self.error is not None:
            self._linger()
        else:
            self.idle_since = self.server.clock
            if self.server.stopping and self.transport is not None:
                self.transport.close()

    def sweep(self, now: float) -> None:
        """Once a second: close what idles, cut what stalls, answer 408 to what is too slow."""
        t = self.transport
        if t is None:
            return
        lim = self.limits
        if self.paused_writing and now - self.stalled_since >= lim.write_timeout_s:
            log.info("client %s stopped reading for %gs: connection cut", self.client, lim.write_timeout_s)
            t.abort()
        elif t.is_closing():  # waiting for its last bytes to be read
            if self.closing_since is None:
                self.closing_since = now
            elif now - self.closing_since >= lim.write_timeout_s:
                t.abort()
        elif self.linger_since is not None:
            if now - self.linger_since >= LINGER_S:
                t.close()
        elif not self.queue:
            since = self.idle_since
            if since is not None and now - since >= lim.keepalive_s:
                t.close()
            elif self.head_since is not None and now - self.head_since >= lim.head_timeout_s:
                self.reject(
                    408,
                    f"The request line and headers took longer than {lim.head_timeout_s:g}s.",
                    "request_timeout",
                )
        else:
            req = self.queue[0]
            waiting_on_app = self.paused_reading and req.body_size > READ_HIGH_WATER
            late = now - req.started_at >= lim.body_timeout_s
            if not req.complete and req.task is not None and late and not waiting_on_app:
                self.reject(
                    408,
                    f"The request body took longer than {lim.body_timeout_s:g}s (AIB_BODY_TIMEOUT_S).",
                    "request_timeout",
                )
            elif self.head_since is not None and now - self.head_since >= lim.head_timeout_s:
                self.reject(
                    408,
                    f"The request line and headers took longer than {lim.head_timeout_s:g}s.",
                    "request_timeout",
                )
