"""A small pooled HTTP/1.1 client for the request path: ``asyncio.Protocol`` + ``httptools``.

Measured, not assumed: aiohttp's request/response machinery costs ~70 µs of CPU per request more than
this, which kept the gateway at 14-20 % of direct throughput (docs/performance.md). This client does
only what the gateway needs: POST a prepared body to one upstream over keep-alive connections, hand
back the status, headers and the body (whole, or chunk by chunk as it arrives), nothing re-encoded.

What it takes care of:
- a per-upstream connection limit with a FIFO wait queue; idle connections closed after a timeout;
- a pooled connection found dead before any response byte is replaced once, transparently;
- ``Content-Length``, chunked and read-until-close bodies; ``Connection: close`` honoured;
- back-pressure: reading pauses while a stream's unread buffer is large;
- a cap on buffered (non-stream) bodies; TLS for https upstreams; TCP_NODELAY (uvloop's default);
- a cap on the answer's head (bytes, counted as they arrive, and header lines): a flood of headers is
  a quick ProtocolError, never seconds of joining repeated values; interim ``1xx`` answers (``100``,
  ``103``) are skipped, ``101`` is a ProtocolError;
- an HTTP proxy from the provider's ``proxy`` or the environment, a CA bundle per provider
  (:mod:`aib.gateway.egress`).
Timeouts live on the connection, one timer at a time, and raise :class:`TimeoutError`: a deadline
for the answer (``request(deadline=...)``, moved later with :meth:`Response.set_deadline`) and, for
streams, an idle limit between chunks (:meth:`Response.set_idle_timeout`) checked by one timer per
period rather than one per chunk. No ``asyncio.timeout`` on the request path: each costs a timer, a
context object and a task lookup per use.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from aib.gateway.egress import Egress, Proxy, ProxyError, choose_proxy, open_tunnel, tls_context

MAX_BODY = 64 * 1024 * 1024
PROBE_MAX_BODY = 16 * 1024 * 1024  # a model list (Ollama's /api/tags of hundreds of models is ~200 KB)
INF = float("inf")
PAUSE_AT = 1024 * 1024  # unread stream bytes before reading from the upstream pauses


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange."""


class ConnectError(UpstreamError):
    pass


class ProtocolError(UpstreamError):
    pass


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_buffered",
        "_complete",
        "_deadline",
        "_deadline_at",
        "_error",
        "_head_bytes",
        "_headers_done",
        "_paused",
        "_repeats",
        "_timer",
        "_waiter",
        "activity",
        "got_bytes",
        "headers",
        "idle_s",
        "idle_since",
        "keep_alive",
        "loop",
        "lost",
        "parser",
        "pool",
        "reset",
        "status",
        "transport",
        "until_close",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.reset = False  # lost by a reset (RST), not a clean close
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()  # the protocol factory runs inside the loop
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = INF  # loop time the exchange must end by
        self._deadline_at = INF  # when the armed deadline timer fires (INF: none armed)
        # one parser for the connection's life: llhttp parses keep-alive responses one after another
        self.parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buf: list[bytes] = []
        self._buffered = 0
        self._headers_done = False
        self._head_bytes = 0
        self._repeats = 0  # header lines folded into an earlier one of the same name
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.got_bytes = False
        self.keep_alive = True
        self.until_close = False
        self.activity = False
        self.idle_s = 0.0

    # asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.activity = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _TooManyHeaders):
                self._broken(f"more than {self.pool.max_headers} header lines in the answer")
            else:
                self._broken(f"malformed HTTP response: {exc}")
            return
        except httptools.HttpParserUpgrade:
            self._broken("the upstream switched protocols (101); an HTTP answer was expected")
            return
        if not self._headers_done:  # a head that spans reads: count it (the read that ends it is bounded)
            self._head_bytes += len(data)
            if self._head_bytes > self.pool.max_head_bytes and not self.lost:
                self._broken(f"the answer's headers exceed {self.pool.max_head_bytes} bytes")

    def _broken(self, message: str) -> None:
        self._fail(ProtocolError(message))
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cancel_timer()
        self.reset = exc is not None
        if self._headers_done and self.until_close and exc is None and not self._complete:
            self.on_message_complete()  # body delimited by the close
        elif not self._complete:
            detail = f": {exc}" if exc else ""
            self._fail(ProtocolError(f"connection closed before the response was complete{detail}"))
        self.pool._forget(self)

    # httptools callbacks ----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower().decode("latin-1")
        v = value.decode("latin-1")
        prev = self.headers.get(key)
        if prev is None:
            self.headers[key] = v
        else:  # joined as RFC 9110 says; each join copies, so their number is bounded
            self._repeats += 1
            if self._repeats + len(self.headers) > self.pool.max_headers:
                raise _TooManyHeaders()
            self.headers[key] = f"{prev}, {v}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:  # the parser stops at an upgrade: data_received reports it
                return
            self.headers = {}  # 100 Continue, 103 Early Hints, ...: the real answer follows
            self._repeats = 0
            return  # its bytes still count against the head limit: endless 1xx answers end too
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        te = self.headers.get("transfer-encoding", "")
        self.until_close = "content-length" not in self.headers and "chunked" not in te.lower()
        if self.until_close:
            self.keep_alive = False
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._buf.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_AT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.status:  # the end of an interim 1xx answer (its status is never kept)
            return
        self._complete = True
        self._wake()

    # internals ----------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    # timers -------------------------------------------------------------------------------
    def set_deadline(self, when: float | None) -> None:
        """Fail the exchange with TimeoutError at loop time ``when`` (None: no limit).

        Moving a deadline later keeps the timer armed (it re-arms itself if it fires early): one
        timer per request instead of one per step."""
        if when is not None and self._timer is not None and self._deadline_at <= when:
            self._deadline = when
            return
        self.cancel_timer()
        if when is not None:
            self._deadline = self._deadline_at = when
            self._timer = self.loop.call_at(when, self._deadline_passed)

    def set_idle_timeout(self, seconds: float) -> None:
        """Fail the exchange when no byte arrives for ``seconds`` (streams)."""
        self.cancel_timer()
        self.idle_s = seconds
        self.activity = False
        self._timer = self.loop.call_later(seconds, self._idle_check)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._deadline_at = INF  # no deadline timer armed

    def _deadline_passed(self) -> None:
        self._timer = None
        self._deadline_at = INF
        if self._complete:
            return
        if self._deadline > self.loop.time():  # moved later since the timer was armed
            self._deadline_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)
            return
        self._fail(TimeoutError("deadline passed"))

    def _idle_check(self) -> None:
        self._timer = None
        if self._complete:
            return
        if self.activity:  # something arrived during the last period: look again one period later
            self.activity = False
            self._timer = self.loop.call_later(self.idle_s, self._idle_check)
        else:
            self._fail(TimeoutError(f"no data for {self.idle_s:g}s"))

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def wait_headers(self) -> None:
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read_chunk(self) -> bytes:
        """The bytes that arrived since the last call; b"" at the end of the body."""
        while True:
            if self._buf:
                data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
                self._buf.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()


class _TooManyHeaders(Exception):
    pass


def _expire(fut: asyncio.Future[None], limit: int) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError(f"all {limit} connections busy until the deadline"))


class Response:
    """Status and headers of an upstream answer; the body is read with :meth:`read` or :meth:`chunks`."""

    __slots__ = ("_conn", "_pool", "_released", "headers", "status")

    def __init__(self, pool: Pool, conn: _Conn) -> None:
        self._pool = pool
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    async def read(self, limit: int = MAX_BODY) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await self._conn.read_chunk():
            size += len(chunk)
            if size > limit:
                self.close()
                raise ProtocolError(f"response body larger than {limit} bytes")
            parts.append(chunk)
        self.release()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def set_deadline(self, when: float | None) -> None:
        """The whole answer must be in by loop time ``when``; reading raises TimeoutError after it."""
        self._conn.set_deadline(when)

    def set_idle_timeout(self, seconds: float) -> None:
        """Reading raises TimeoutError once nothing arrived for ``seconds`` (checked once per period)."""
        self._conn.set_idle_timeout(seconds)

    async def readany(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at the end (then the connection is pooled)."""
        chunk = await self._conn.read_chunk()
        if not chunk:
            self.release()
        return chunk

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.readany():
            yield chunk

    def release(self) -> None:
        """Give the connection back: to the pool when the exchange is complete, else close it."""
        if not self._released:
            self._released = True
            self._pool._release(self._conn)

    def close(self) -> None:
        """Abort the exchange (the client went away): the upstream sees the connection drop."""
        if not self._released:
            self._released = True
            self._conn.keep_alive = False
            self._pool._release(self._conn)


class Pool:
    """Keep-alive connections to one upstream (scheme, host and port of ``base_url``)."""

    def __init__(
        self, base_url: str, limit: int = 100, idle_timeout_s: float = 30.0, egress: Egress | None = None
    ) -> None:
        parts = urlsplit(base_url)
        egress = egress or Egress()
        self.egress = egress
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = 443 if self.tls else 80
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.limit = limit
        self.idle_timeout_s = idle_timeout_s
        self.max_head_bytes = egress.max_head_bytes
        self.max_headers = egress.max_headers
        self._idle: collections.deque[_Conn] = collections.deque()
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None
        self.proxy: Proxy | None = None
        self._setup_error: str | None = None  # a bad proxy URL or CA file: every request says so
        try:
            self.proxy = choose_proxy(base_url, egress.proxy)
            if self.tls:
                self._ssl = tls_context(egress.ca_file, egress.tls_verify)
        except (ValueError, OSError, ssl.SSLError) as exc:
            self._setup_error = str(exc)
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def request_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The fixed start of a request: request line, Host and the given headers (no length yet).
        Through a proxy, an http upstream gets the absolute form of the target and the proxy's
        credentials (an https one is reached through a tunnel: nothing changes)."""
        target = f"{self.prefix}{path}"
        proxy = self.proxy
        lines = []
        if proxy is not None and not self.tls:
            target = f"http://{self.host_header}{target}"
            if proxy.authorization:
                lines.append(f"proxy-authorization: {proxy.authorization}")
        lines = [f"{method} {target} HTTP/1.1", f"host: {self.host_header}", *lines]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def request(
        self,
        head: bytes,
        body: bytes,
        extra: bytes = b"",
        connect_timeout_s: float = 5.0,
        deadline: float | None = None,
    ) -> Response:
        """Send ``head`` + ``extra`` header lines + Content-Length + ``body``; return at the headers.

        ``deadline`` (loop time) bounds the wait for the answer; the connect has its own limit."""
        payload = b"%s%scontent-length: %d\r\n\r\n%s" % (head, extra, len(body), body)
        fresh = False
        for attempt in (0, 1):
            conn, reused = await self._acquire(connect_timeout_s, fresh, deadline)
            assert conn.transport is not None
            if deadline is not None:
                conn.set_deadline(deadline)
            conn.transport.write(payload)
            try:
                await conn.wait_headers()
            except ProtocolError:
                if reused and attempt == 0 and not conn.got_bytes and not conn.reset:
                    # the upstream closed this idle keep-alive connection as we reused it (a clean
                    # close, no answer): once more on a fresh connection. A reset is a real failure.
                    fresh = True
                    continue
                raise
            except BaseException:
                conn.keep_alive = False
                self._release(conn)
                raise
            return Response(self, conn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, target: str, headers: dict[str, str], timeout_s: float) -> tuple[int, bytes]:
        """``GET target`` (a path, with its query) and the whole answer, within ``timeout_s`` in all.
        For health probes and model discovery: off the request path, so nothing is cached."""
        loop = self._loop()
        deadline = loop.time() + timeout_s
        head = self.request_head("GET", target, headers)
        resp = await self.request(head, b"", b"", timeout_s, deadline)
        try:
            resp.set_deadline(deadline)
            body = await resp.read(PROBE_MAX_BODY)
        finally:
            resp.release()
        return resp.status, body

    async def _acquire(
        self, connect_timeout_s: float, fresh: bool = False, deadline: float | None = None
    ) -> tuple[_Conn, bool]:
        if self.closed:
            raise ConnectError("the connection pool was closed (provider removed)")
        if self._setup_error is not None:
            raise ConnectError(self._setup_error)
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()  # most recently used: warmest, least likely closed
            if conn.lost or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.idle_timeout_s:
                conn.transport.close()
                continue
            conn._reset()
            return conn, True
        while self._open >= self.limit:  # every connection is busy: wait for one, until the deadline
            loop = self._loop()
            fut = loop.create_future()
            self._waiters.append(fut)
            timer = None if deadline is None else loop.call_at(deadline, _expire, fut, self.limit)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    fut.cancel()
            if self._idle and not fresh:
                return await self._acquire(connect_timeout_s, False, deadline)
        self._open += 1
        loop = self._loop()
        via = f" through the proxy {self.proxy.where}" if self.proxy is not None else ""
        try:
            async with asyncio.timeout(connect_timeout_s):
                proto = await self._connect(loop)
        except TimeoutError:
            self._open -= 1
            self._wake_one()
            raise ConnectError(
                f"connect to {self.host}:{self.port}{via} timed out after {connect_timeout_s:g}s"
            ) from None
        except (OSError, ProxyError) as exc:  # ssl.SSLError is an OSError
            self._open -= 1
            self._wake_one()
            detail = getattr(exc, "strerror", None) or exc
            raise ConnectError(f"cannot connect to {self.host}:{self.port}{via}: {detail}") from None
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        return proto, False

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        proxy = self.proxy
        if proxy is None:
            _, proto = await loop.create_connection(
                lambda: _Conn(self),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self.tls else None,
            )
            return proto
        if not self.tls:  # requests go to the proxy in absolute form (request_head)
            _, proto = await loop.create_connection(lambda: _Conn(self), proxy.host, proxy.port)
            return proto
        assert self._ssl is not None
        return await open_tunnel(loop, lambda: _Conn(self), proxy, self.host, self.port, self._ssl)

    def _loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        return self.loop

    def _release(self, conn: _Conn) -> None:
        conn.cancel_timer()
        t = conn.transport
        if (
            not self.closed
            and conn.keep_alive
            and conn._complete
            and not conn.lost
            and t is not None
            and not t.is_closing()
        ):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        elif t is not None and not conn.lost:
            t.abort() if not conn._complete else t.close()
        self._wake_one()

    def _forget(self, conn: _Conn) -> None:
        """connection_lost: the connection no longer counts against the limit."""
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    @property
    def busy(self) -> int:
        """Connections carrying a request now (open and not idle)."""
        return max(self._open - len(self._idle), 0)

    @property
    def stats(self) -> dict[str, int]:
        return {"open": self._open, "idle": len(self._idle), "waiting": len(self._waiters)}

    def close(self) -> None:
        self.closed = True
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                # TLS: no close_notify round trip (it could outlive the loop at shutdown); an idle
                # keep-alive connection has nothing to truncate
                conn.transport.abort() if self.tls else conn.transport.close()
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(ConnectError("the connection pool was closed"))
