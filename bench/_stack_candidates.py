"""Minimal forwarding proxies used by ``bench/choose_stack.py`` (one server x one upstream client each).

Every proxy does exactly what the gateway's hot path must do at minimum: read the
``POST /v1/chat/completions`` body, parse it with orjson, rewrite ``model``, re-serialise, forward it to
the upstream over a pooled keep-alive client, and pass the response through (bytes at once for
non-streaming; chunk by chunk, as they arrive, for ``"stream": true``).

Servers: ``uvicorn`` (raw ASGI), granian ``asgi_app`` / ``rsgi_app``, ``aiohttp-web`` (Application + router),
``aiohttp-lowlevel`` (``web.Server``), ``raw`` (hand-written asyncio.Protocol + httptools, reference only).
Clients: ``aiohttp`` (tuned session), ``aiohttp-default``, ``httpx``, ``raw`` (pooled asyncio.Protocol +
httptools keep-alive client: the prototype for the gateway's upstream client; no timeouts/retries/TLS yet).

Run directly (every server except granian)::

    python bench/_stack_candidates.py --server uvicorn --client aiohttp --port 4100 --upstream http://127.0.0.1:9001

Granian imports ``asgi_app`` / ``rsgi_app`` from this module in its worker; configuration then comes from the
environment variables ``AIB_BENCH_CLIENT`` and ``AIB_BENCH_UPSTREAM``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

REWRITTEN_MODEL = "rewritten-model"
PATH = "/v1/chat/completions"
JSON_CT = "application/json"

# (status, content-type, full body) for non-streaming; (status, content-type, chunk iterator) for streaming.
Forward = Callable[[bytes, bool], Awaitable[tuple[int, str, Any]]]


def rewrite(body: bytes) -> tuple[bytes, bool]:
    obj = orjson.loads(body)
    obj["model"] = REWRITTEN_MODEL
    return orjson.dumps(obj), obj.get("stream") is True


# --------------------------------------------------------------------------- upstream clients


def make_aiohttp(upstream: str, tuned: bool) -> Forward:
    import aiohttp
    from yarl import URL

    if tuned:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=512, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=60
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookie bookkeeping per request/response
            auto_decompress=False,  # pass bytes through untouched
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            trust_env=False,
        )
        url: Any = URL(upstream + PATH, encoded=True)  # parsed once, not per request
        headers = {"Content-Type": JSON_CT}
    else:
        session = aiohttp.ClientSession()
        url = upstream + PATH
        headers = {"Content-Type": JSON_CT}

    async def forward(body: bytes, stream: bool) -> tuple[int, str, Any]:
        resp = await session.post(url, data=body, headers=headers)
        ctype = resp.headers.get("Content-Type", JSON_CT)
        if not stream:
            try:
                return resp.status, ctype, await resp.read()
            finally:
                resp.release()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            finally:
                resp.release()

        return resp.status, ctype, chunks()

    return forward


def make_httpx(upstream: str) -> Forward:
    import httpx

    client = httpx.AsyncClient(
        base_url=upstream,
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=512, keepalive_expiry=60),
        timeout=httpx.Timeout(30.0, connect=5.0),
        trust_env=False,
    )
    headers = {"content-type": JSON_CT}

    async def forward(body: bytes, stream: bool) -> tuple[int, str, Any]:
        req = client.build_request("POST", PATH, content=body, headers=headers)
        resp = await client.send(req, stream=stream)
        ctype = resp.headers.get("content-type", JSON_CT)
        if not stream:
            return resp.status_code, ctype, resp.content

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return resp.status_code, ctype, chunks()

    return forward


class _UpstreamConn(asyncio.Protocol):
    """One keep-alive upstream connection; httptools parses the response, body goes to a future or queue."""

    def __init__(self, pool: _RawPool) -> None:
        import httptools

        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.ctype = JSON_CT
        self.body = bytearray()
        self.headers_fut: asyncio.Future[None] | None = None
        self.done_fut: asyncio.Future[bytes] | None = None
        self.queue: asyncio.Queue[bytes | None] | None = None
        self.keep = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep = False
        err = exc or ConnectionError("upstream closed")
        for fut in (self.headers_fut, self.done_fut):
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if self.queue is not None:
            self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.ctype = value.decode()

    def on_headers_complete(self) -> None:
        self.keep = self.parser.should_keep_alive()
        if self.headers_fut is not None and not self.headers_fut.done():
            self.headers_fut.set_result(None)

    def on_body(self, data: bytes) -> None:
        if self.queue is not None:
            self.queue.put_nowait(data)
        else:
            self.body += data

    def on_message_complete(self) -> None:
        if self.queue is not None:
            self.queue.put_nowait(None)
        elif self.done_fut is not None and not self.done_fut.done():
            self.done_fut.set_result(bytes(self.body))

    def start(self, request: bytes, stream: bool) -> None:
        loop = asyncio.get_running_loop()
        self.body, self.ctype = bytearray(), JSON_CT
        self.headers_fut = loop.create_future()
        self.done_fut = None if stream else loop.create_future()
        self.queue = asyncio.Queue() if stream else None
        self.transport.write(request)


class _RawPool:
    def __init__(self, upstream: str) -> None:
        hostport = upstream.removeprefix("http://").rstrip("/")
        host, _, port = hostport.partition(":")
        self.host, self.port = host, int(port or 80)
        self.head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: " % (
            PATH.encode(),
            hostport.encode(),
        )
        self.idle: list[_UpstreamConn] = []

    async def acquire(self) -> _UpstreamConn:
        while self.idle:
            conn = self.idle.pop()
            if conn.keep and not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _UpstreamConn(self), self.host, self.port)
        return conn

    def release(self, conn: _UpstreamConn) -> None:
        if conn.keep and not conn.transport.is_closing():
            self.idle.append(conn)
        else:
            conn.transport.close()

    async def forward(self, body: bytes, stream: bool) -> tuple[int, str, Any]:
        conn = await self.acquire()
        conn.start(self.head + b"%d\r\n\r\n" % len(body) + body, stream)
        if not stream:
            assert conn.done_fut is not None
            out = await conn.done_fut
            self.release(conn)
            return conn.parser.get_status_code(), conn.ctype, out
        assert conn.headers_fut is not None and conn.queue is not None
        await conn.headers_fut
        queue = conn.queue

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk
            conn.queue = None
            self.release(conn)

        return conn.parser.get_status_code(), conn.ctype, chunks()


def make_client(name: str, upstream: str) -> Forward:
    if name == "aiohttp":
        return make_aiohttp(upstream, tuned=True)
    if name == "aiohttp-default":
        return make_aiohttp(upstream, tuned=False)
    if name == "httpx":
        return make_httpx(upstream)
    if name == "raw":
        return _RawPool(upstream).forward
    raise SystemExit(f"unknown client {name!r}")


class LazyForward:
    """Create the client on first use, inside the server's running event loop (works for every server)."""

    def __init__(self, client: str, upstream: str) -> None:
        self.client, self.upstream = client, upstream
        self.fn: Forward | None = None

    def __call__(self, body: bytes, stream: bool) -> Awaitable[tuple[int, str, Any]]:
        if self.fn is None:
            self.fn = make_client(self.client, self.upstream)
        return self.fn(body, stream)


FORWARD = LazyForward(os.environ.get("AIB_BENCH_CLIENT", "aiohttp"), os.environ.get("AIB_BENCH_UPSTREAM", ""))

# --------------------------------------------------------------------------- servers


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Raw ASGI app (no framework): used by uvicorn and granian --interface asgi."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    msg = await receive()
    body: bytes = msg.get("body", b"")
    while msg.get("more_body"):
        msg = await receive()
        body += msg.get("body", b"")
    payload, stream = rewrite(body)
    status, ctype, out = await FORWARD(payload, stream)
    if not stream:
        headers = [(b"content-type", ctype.encode()), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        return
    headers = [(b"content-type", ctype.encode()), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    async for chunk in out:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def rsgi_app(scope: Any, proto: Any) -> None:
    """Granian RSGI app."""
    payload, stream = rewrite(await proto())
    status, ctype, out = await FORWARD(payload, stream)
    if not stream:
        proto.response_bytes(status, [("content-type", ctype)], out)
        return
    transport = proto.response_stream(status, [("content-type", ctype), ("cache-control", "no-cache")])
    async for chunk in out:
        await transport.send_bytes(chunk)


def run_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(
        asgi_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        backlog=2048,
    )


async def _aiohttp_handler(request: Any) -> Any:
    from aiohttp import web

    payload, stream = rewrite(await request.read())
    status, ctype, out = await FORWARD(payload, stream)
    if not stream:
        return web.Response(body=out, status=status, headers={"Content-Type": ctype})
    resp = web.StreamResponse(status=status, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
    await resp.prepare(request)
    async for chunk in out:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


def run_aiohttp_web(port: int) -> None:
    import uvloop
    from aiohttp import web

    app = web.Application()
    app.router.add_post(PATH, _aiohttp_handler)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        backlog=2048,
        loop=uvloop.new_event_loop(),
    )


def run_aiohttp_lowlevel(port: int) -> None:
    import signal

    import uvloop
    from aiohttp import web

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = web.Server(_aiohttp_handler, access_log=None)
        srv = await loop.create_server(server, "127.0.0.1", port, backlog=2048)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        srv.close()
        await server.shutdown(1.0)

    uvloop.run(main())


class _RawServer(asyncio.Protocol):
    """Reference only: hand-rolled HTTP/1.1 server (httptools), no ASGI, one task per request."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.body = bytearray()
        self.pending: list[tuple[bytes, bool]] = []
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = bytearray()

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.pending.append((bytes(self.body), self.parser.should_keep_alive()))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while self.pending and self.transport is not None:
            body, keep = self.pending.pop(0)
            payload, stream = rewrite(body)
            status, ctype, out = await FORWARD(payload, stream)
            head = b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\n" % (status, ctype.encode())
            if self.transport is None:
                break
            if not stream:
                self.transport.write(head + b"content-length: %d\r\n\r\n" % len(out) + out)
            else:
                self.transport.write(head + b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
                async for chunk in out:
                    if self.transport is not None:
                        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if self.transport is not None:
                    self.transport.write(b"0\r\n\r\n")
            if not keep and self.transport is not None:
                self.transport.close()
        self.busy = False


def run_raw(port: int) -> None:
    import signal

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_RawServer, "127.0.0.1", port, backlog=2048)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        srv.close()

    uvloop.run(main())


SERVERS: dict[str, Callable[[int], None]] = {
    "uvicorn": run_uvicorn,
    "aiohttp-web": run_aiohttp_web,
    "aiohttp-lowlevel": run_aiohttp_lowlevel,
    "raw": run_raw,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=sorted(SERVERS), required=True)
    ap.add_argument("--client", default="aiohttp")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    a = ap.parse_args()
    FORWARD.client, FORWARD.upstream = a.client, a.upstream
    SERVERS[a.server](a.port)


if __name__ == "__main__":
    main()
