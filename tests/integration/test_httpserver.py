"""The gateway's HTTP/1.1 server (``aib.gateway.httpserver``) on a real loopback socket.

Each test starts the server with a small ASGI app inside the test's event loop, talks to it with raw
asyncio streams (so every byte on the wire is checked) and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aib.gateway.httpserver import MAX_HEAD_BYTES, ClientDisconnected, HttpServer, ServerLimits
from aib.gateway.server import serve_app

pytestmark = pytest.mark.integration

Scope = dict[str, Any]


class Recorder:
    """An ASGI app whose behaviour is chosen by the request path."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.bodies: list[bytes] = []
        self.events: list[str] = []
        self.gate = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.send_error: BaseException | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                self.events.append(msg["type"])
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.scopes.append(scope)
        path = scope["path"]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.bodies.append(body)
        if path == "/echo":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-n", b"1")]})
            await send({"type": "http.response.body", "body": body or b"empty"})
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                await send({"type": "http.response.body", "body": b"part%d;" % i, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/slow":
            await self.gate.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
        elif path == "/hang":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            msg = await receive()  # blocks until the client goes away
            self.events.append(msg["type"])
            self.disconnected.set()
            try:
                await send({"type": "http.response.body", "body": b"y"})
            except ClientDisconnected as exc:
                self.send_error = exc
        elif path == "/boom":
            raise ValueError("broken handler")
        elif path == "/boom-late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"half", "more_body": True})
            raise ValueError("broken mid-way")
        elif path == "/nothing":
            return
        elif path == "/bad-header":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x", b"a\r\nb: c")]})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/close":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b"bye"})
        elif path == "/no-content":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"nope"})


@contextlib.asynccontextmanager
async def serving(app: Any, **limits: Any) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(app, ServerLimits(**limits))
    port = await server.start(host="127.0.0.1", port=0)
    try:
        yield server, port
    finally:
        await server.stop(2.0)


async def exchange(port: int, raw: bytes, wait_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), wait_s)
    finally:
        writer.close()


async def test_one_request_one_write_with_length_and_keepalive() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(3):  # the same connection serves one request after another
            writer.write(b"POST /echo?x=%d HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" % i)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"x-n: 1\r\n" in head and b"content-length: 5\r\n" in head
            assert b"connection: close" not in head
            assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.close()
    scope = app.scopes[0]
    assert scope["method"] == "POST" and scope["path"] == "/echo" and scope["query_string"] == b"x=0"
    assert scope["http_version"] == "1.1" and scope["client"][0] == "127.0.0.1"
    assert (b"content-length", b"5") in scope["headers"] and (b"host", b"a") in scope["headers"]
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_percent_encoded_path_is_decoded_and_raw_path_kept() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(port, b"GET /v1/models/a%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert app.scopes[0]["path"] == "/v1/models/a/b" and app.scopes[0]["raw_path"] == b"/v1/models/a%2Fb"


async def test_pipelined_requests_are_answered_in_order() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\none"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\ntwo"
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthree"
        )
        data = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
    bodies = [part.split(b"\r\n\r\n", 1)[1][:5] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert [b.rstrip(b"H") for b in bodies] == [b"one", b"two", b"three"]
    assert app.bodies == [b"one", b"two", b"three"]


async def test_chunked_request_body_and_streamed_chunked_response() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(
            port,
            b"POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head and b"connection: close" in head
    assert body == b"6\r\npart0;\r\n6\r\npart1;\r\n6\r\npart2;\r\n0\r\n\r\n"
    assert app.bodies == [b"abcde"]


async def test_http10_stream_ends_with_the_connection() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(port, b"GET /stream HTTP/1.0\r\n\r\n")
    head, body = out.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head and b"connection: close" in head
    assert body == b"part0;part1;part2;"


async def test_head_request_gets_headers_only() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(port, b"HEAD /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5" in out
    assert out.endswith(b"\r\n\r\n")  # no body bytes after the head


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"data"
        writer.close()


async def test_204_has_no_length_and_connection_close_header_closes() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(port, b"GET /no-content HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 204 No Content\r\n") and b"content-length" not in out
        # the app asked to close: the server closes after the body although the client wants keep-alive
        out = await exchange(port, b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.endswith(b"\r\n\r\nbye")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, b"bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400, b"bad_request"),
        (b"GET /" + b"a" * (MAX_HEAD_BYTES + 10) + b" HTTP/1.1\r\n\r\n", 431, b"headers_too_large"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(120)) + b"\r\n",
            431,
            b"headers_too_large",
        ),
    ],
    ids=["garbage", "bad-length", "long-url", "too-many-headers"],
)
async def test_malformed_or_oversized_requests_get_an_error_envelope(
    raw: bytes, status: int, code: bytes
) -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        out = await exchange(port, raw)
    assert out.startswith(b"HTTP/1.1 %d " % status)
    assert b'"code":"%s"' % code in out and b'"type":"invalid_request_error"' in out
    assert b"connection: close" in out
    assert app.scopes == []


async def test_app_error_before_the_response_is_a_500_envelope(caplog: pytest.LogCaptureFixture) -> None:
    app = Recorder()
    with caplog.at_level(logging.ERROR, "aib.gateway.http"):
        async with serving(app) as (_, port):
            out = await exchange(port, b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")
            nothing = await exchange(port, b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
            late = await exchange(port, b"GET /boom-late HTTP/1.1\r\nHost: a\r\n\r\n")
            bad = await exchange(port, b"GET /bad-header HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 500 ") and b'"code":"internal_error"' in out
    assert b"Traceback" not in out and b"broken handler" not in out  # no internals leak to the client
    assert nothing.startswith(b"HTTP/1.1 500 ") and b"sent no response" in nothing
    # after the head went out, the only honest signal is to close the connection mid-body
    assert late.startswith(b"HTTP/1.1 200 OK") and b"half" in late and not late.endswith(b"0\r\n\r\n")
    assert bad.startswith(b"HTTP/1.1 500 ") and b"a\r\nb: c" not in bad  # no header injection
    assert "broken handler" in caplog.text and "broken mid-way" in caplog.text


async def test_client_gone_is_told_to_the_app_and_send_raises() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"x\r\n"), 5)
        writer.close()
        await asyncio.wait_for(app.disconnected.wait(), 5)
        for _ in range(100):
            if app.send_error is not None:
                break
            await asyncio.sleep(0.01)
    assert app.events[-2:] == ["http.disconnect", "lifespan.shutdown"] or "http.disconnect" in app.events
    assert isinstance(app.send_error, ClientDisconnected) and isinstance(app.send_error, OSError)


async def test_idle_keepalive_connections_are_closed() -> None:
    app = Recorder()
    async with serving(app, keepalive_s=0.2) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"empty"), 5)
        # the sweeper runs every second: the idle connection is closed within ~1.2 s
        assert await asyncio.wait_for(reader.read(-1), 5) == b""
        writer.close()


async def test_a_request_head_that_never_completes_gets_408() -> None:
    app = Recorder()
    async with serving(app, head_timeout_s=0.5) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nX-Slow: ")  # and then nothing
        out = await asyncio.wait_for(reader.read(-1), 5)  # the sweeper runs every second
        writer.close()
    assert out.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in out
    assert app.scopes == []


async def slow_request_in_flight() -> tuple[
    Recorder, HttpServer, int, asyncio.StreamReader, asyncio.StreamWriter
]:
    """A started server with one /slow request received and waiting for ``app.gate``."""
    app = Recorder()
    server = HttpServer(app)
    port = await server.start(host="127.0.0.1", port=0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(200):
        if app.scopes:
            break
        await asyncio.sleep(0.01)
    return app, server, port, reader, writer


async def test_stop_lets_a_request_in_flight_finish_and_refuses_new_ones() -> None:
    app, server, port, reader, writer = await slow_request_in_flight()
    stopping = asyncio.create_task(server.stop(5.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waiting for /slow
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer listening
    app.gate.set()
    out = await asyncio.wait_for(reader.read(-1), 5)
    await asyncio.wait_for(stopping, 5)
    writer.close()
    assert out.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in out and out.endswith(b"late")
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_stop_after_the_drain_time_cancels_what_is_left() -> None:
    _app, server, _port, reader, writer = await slow_request_in_flight()
    await asyncio.wait_for(server.stop(0.2), 5)
    assert await asyncio.wait_for(reader.read(-1), 5) == b""  # closed without an answer
    writer.close()
    assert server.inflight == 0


async def test_large_body_pauses_reading_until_the_app_reads() -> None:
    received: list[int] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")  # allowed by the spec: the server carries on
        await asyncio.sleep(0.2)  # let the client fill the buffers first
        total = 0
        while True:
            msg = await receive()
            total += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        received.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % total})

    size = 8 * 1024 * 1024
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size
        )
        chunk = b"z" * 65536
        for _ in range(size // len(chunk)):
            writer.write(chunk)
            await writer.drain()
        out = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
    assert out.endswith(b"\r\n\r\n%d" % size) and received == [size]


async def test_serve_app_stops_on_its_event_and_reports_the_port() -> None:
    app = Recorder()
    stop = asyncio.Event()
    ports: list[int] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    task = asyncio.create_task(serve_app(app, sock=sock, stop=stop, on_ready=ports.append, drain_s=1))
    for _ in range(200):
        if ports:
            break
        await asyncio.sleep(0.01)
    out = await exchange(ports[0], b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert out.endswith(b"empty")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


async def test_a_request_sent_byte_by_byte_then_a_whole_one() -> None:
    """A head and body that span many reads (parsed under the head limit, slice by slice), then an
    ordinary request on the same connection (parsed whole again)."""
    app = Recorder()
    async with serving(app) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for b in b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc":
            writer.write(bytes([b]))
            await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and await reader.readexactly(3) == b"abc"
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        assert (await asyncio.wait_for(reader.read(-1), 5)).endswith(b"\r\n\r\nok")
        writer.close()
    assert app.bodies == [b"abc", b"ok"]
