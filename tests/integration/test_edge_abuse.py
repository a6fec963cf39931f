"""The HTTP edge under abuse (issue #13, "The HTTP edge holds under abuse"): each probe that once broke
our server (``aib.gateway.httpconn``) or client (``aib.gateway.httpclient``), as a regression test.

Memory is read from a real ``aib serve`` child (``/proc``: VmHWM, the peak, so nothing is missed
between two looks) and compared with its own value before the probe. Everything runs on 127.0.0.1
with bounded loops; docs/security.md lists each abuse, its limit and its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from edge_support import get_once, peak_rss, push, read_answer, served_gateway
from gateway_harness import (
    HOST,
    Reply,
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

PROVIDERS = """
    providers:
      up:
        type: openai_compatible
        base_url: {url}
        max_connections: 2
        models: [m]
"""
MAPPINGS = """
    defaults:
      breaker: {failure_threshold: 1000, cooldown_s: 1}
      timeouts: {first_byte_s: 8}
    models:
      m: {provider: up}
"""


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, up: ScriptedUpstream) -> Iterator[RunningGateway]:
    """A gateway with short body and write-stall limits, over ``up`` (2 connections at most)."""
    plan = plan_from_yaml(tmp_path_factory.mktemp("edge"), PROVIDERS.format(url=up.base_url), MAPPINGS)
    with running_gateway(plan, gateway_settings(body_timeout_s=1.0, write_timeout_s=1.0)) as gw:
        yield gw


@pytest.fixture
def gw(edge: RunningGateway, up: ScriptedUpstream) -> RunningGateway:
    up.clear()
    return edge


def raw(port: int, data: bytes, max_s: float = 10.0) -> bytes:
    """Send ``data``, read until the gateway closes."""
    with socket.create_connection((HOST, port), timeout=max_s) as s:
        s.sendall(data)
        return read_answer(s, max_s=max_s)


def small_window(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer: when it stops reading, the gateway notices soon."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    return s


# --------------------------------------------------------------------------- 1. pipelining


def test_200k_pipelined_gets_never_read_keep_memory_bounded(tmp_path: Path) -> None:
    """Three floods of 200,000 pipelined GETs whose answers are never read (once: RSS 62 -> 1,369 MB):
    reading pauses while requests wait, so the peak RSS barely moves and others are still served."""
    flood = b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n" * 200_000
    with served_gateway(tmp_path) as sg:
        for _ in range(20):
            assert get_once(sg.port).startswith(b"HTTP/1.1 200")
        before = peak_rss(sg.pid)
        for round_no in range(3):
            with small_window(sg.port) as s:
                sent, _ = push(s, flood, max_s=30, stall_s=1.0)
                assert sent > 100_000  # the flood did reach the gateway
                assert get_once(sg.port).startswith(b"HTTP/1.1 200")  # served while the flood waits
                grown = peak_rss(sg.pid) - before
                assert grown < 24 * MB, f"round {round_no}: peak RSS +{grown / MB:.0f} MB"


async def test_pipelined_requests_wait_unparsed_while_answers_are_unread() -> None:
    """The mechanism behind the bound: at most ``max_pipeline`` requests wait, the rest of the bytes
    stay unparsed, and no answer is started while the write buffer is above its high-water mark."""
    from aib.gateway.httpserver import HttpServer, ServerLimits

    started = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal started
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        started += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 4096})

    n = 20_000
    server = HttpServer(app, ServerLimits(max_pipeline=4))
    port = await server.start(host=HOST)
    try:
        s = small_window(port)
        loop = asyncio.get_running_loop()
        sent, _ = await loop.run_in_executor(
            None, push, s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * n, 10.0, 0.5
        )
        await asyncio.sleep(0.2)
        conn = next(iter(server.connections))
        assert started < n // 4, f"{started} of {n} answers were produced for a client that reads none"
        assert len(conn.queue) <= 5
        assert conn.held is not None and conn.paused_reading
        s.close()
    finally:
        await server.stop(1.0)
    assert sent > 0


# --------------------------------------------------------------------------- 2. slow bodies, the cap


def test_a_hundred_slow_bodies_get_408_and_hold_nothing(gw: RunningGateway) -> None:
    """100 connections sending a body one byte at a time (once: held a whole minute, counted in
    flight): each gets 408 after the body time limit (1 s here), and others are served meanwhile."""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 1000\r\n\r\n{"
    socks = [socket.create_connection((HOST, gw.port), timeout=5) for _ in range(100)]
    answers: dict[int, bytes] = {}
    try:
        for s in socks:
            s.sendall(head)
            s.setblocking(False)
        served_meanwhile = False
        deadline = time.monotonic() + 15
        while len(answers) < len(socks) and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                if i not in answers:
                    with contextlib.suppress(OSError):
                        s.send(b" ")
            if not served_meanwhile:
                served_meanwhile = get_once(gw.port).startswith(b"HTTP/1.1 200")
            readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in answers], [], [], 0.2)
            for s in readable:
                with contextlib.suppress(OSError):
                    answers[socks.index(s)] = s.recv(4096)
    finally:
        for s in socks:
            s.close()
    assert served_meanwhile
    assert len(answers) == 100, f"{100 - len(answers)} slow bodies still held after 15 s"
    assert all(a.startswith(b"HTTP/1.1 408 ") and b'"code":"request_timeout"' in a for a in answers.values())
    wait_until(lambda: gw.gateway.inflight == 0, 5, what="no request in flight")


def test_connections_past_the_cap_get_503(tmp_path: Path, up: ScriptedUpstream) -> None:
    plan = plan_from_yaml(tmp_path, PROVIDERS.format(url=up.base_url), MAPPINGS)
    with running_gateway(plan, gateway_settings(max_connections=10, keepalive_s=30.0)) as gw:
        wait_until(lambda: get_once(gw.port).startswith(b"HTTP/1.1 200"), 5, what="the gateway")
        held = []
        try:
            for _ in range(10):  # ten idle keep-alive connections fill the cap
                s = socket.create_connection((HOST, gw.port), timeout=5)
                s.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
                held.append(s)
            body = orjson.dumps(CHAT)
            refused = raw(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
                          b"x-request-id: refused-1\r\n\r\n%s" % (len(body), body))  # fmt: skip
            assert refused.startswith(b"HTTP/1.1 503 ") and refused.count(b"HTTP/1.1") == 1
            assert b"retry-after: 1\r\n" in refused and b'"code":"too_many_connections"' in refused
            held.pop().close()
            with httpx.Client(base_url=gw.base_url, timeout=20) as client:
                wait_until(lambda: client.get("/health/live").status_code == 200, 5, what="a free slot")
                resp = client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "after-1"})
            assert resp.status_code == 200
            gw.observer.wait_for("after-1")
            assert gw.observer.find("refused-1") is None  # a refused connection's request never runs
        finally:
            for s in held:
                s.close()


# --------------------------------------------------------------------------- 3. stalled stream readers


def test_a_stream_reader_that_stops_is_cut_and_the_upstream_released(
    gw: RunningGateway, up: ScriptedUpstream
) -> None:
    """Two clients stop reading their streams with the socket open; the provider allows two
    connections (once: both held until the clients left, a third request got 504). After the write
    stall limit (1 s here) both are cut, the upstream sees them go, and the third is served."""
    chunk = "x" * 2000
    up.enqueue(Reply.sse([chunk] * 50_000), Reply.sse([chunk] * 50_000))
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
    request += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    stalled = [small_window(gw.port) for _ in range(2)]
    try:
        for s in stalled:
            s.sendall(request)
            assert s.recv(1024).startswith(b"HTTP/1.1 200")  # the stream began; now nobody reads
        up.wait_requests(2, timeout=10)
        with httpx.Client(base_url=gw.base_url, timeout=20) as client:
            resp = client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200, resp.text
        gone = lambda: sum(r.disconnected for r in up.requests[:2]) == 2  # noqa: E731
        wait_until(gone, 10, what="the upstream to see both stalled streams dropped")
    finally:
        for s in stalled:
            s.close()


# --------------------------------------------------------------------------- 4. a header that never ends


def test_a_50_mb_header_value_gets_431_without_being_buffered(tmp_path: Path) -> None:
    """One header value of 50 MB that never ends (once: buffered whole, RSS +70 MB, others delayed
    4 s): head bytes are counted as they arrive and the answer is 431 at 64 KiB."""
    with served_gateway(tmp_path) as sg:
        for _ in range(20):
            get_once(sg.port)
        before = peak_rss(sg.pid)
        with socket.create_connection((HOST, sg.port), timeout=10) as s:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\nX-Big: ")
            sent, answer = push(s, b"a" * (50 * MB), max_s=30, stall_s=2.0)
            answer = read_answer(s, answer, max_s=5)
            assert get_once(sg.port).startswith(b"HTTP/1.1 200")  # others were never held up
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"code":"headers_too_large"' in answer
        grown = peak_rss(sg.pid) - before
        assert grown < 8 * MB, f"peak RSS +{grown / MB:.1f} MB for a header of which {sent} bytes were sent"


# --------------------------------------------------------------------------- 5. upstream heads


def test_an_upstream_flooding_one_header_is_a_quick_502(gw: RunningGateway, up: ScriptedUpstream) -> None:
    """5 MB of one repeated header (once: joined value by value, the gateway blocked for 7 s): the
    number of header lines is capped, and a single endless value is cut at the byte limit."""
    lines = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"x-flood: yes\r\n" * 400_000
    up.enqueue(Reply(raw=lines + b"content-length: 2\r\n\r\n{}"))
    up.enqueue(Reply(raw=b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (5 * MB) + b"\r\n\r\n"))
    with httpx.Client(base_url=gw.base_url, timeout=20) as client:
        many = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1})
        big = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert many.status_code == 502 and "more than 100 header lines" in many.json()["error"]["message"]
    assert big.status_code == 502 and "headers exceed 65536 bytes" in big.json()["error"]["message"]


def test_interim_1xx_answers_are_skipped(gw: RunningGateway, up: ScriptedUpstream) -> None:
    """``100 Continue`` and ``103 Early Hints`` before the answer (once: 502)."""
    body = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":1}}'
    up.enqueue(
        Reply(
            raw=(
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(body), body),
            ),
            chunk_delay_s=0.2,  # each interim answer arrives on its own
        )
    )
    with httpx.Client(base_url=gw.base_url, timeout=20) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.content == body


def test_a_101_answer_is_a_clean_502(
    gw: RunningGateway, up: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    up.enqueue(
        Reply(raw=b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
    )
    with caplog.at_level(logging.WARNING), httpx.Client(base_url=gw.base_url, timeout=20) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502 and "switched protocols (101)" in resp.json()["error"]["message"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# --------------------------------------------------------------------------- 6. smaller ones


def test_a_bad_chunk_size_gets_400(gw: RunningGateway) -> None:
    out = raw(
        gw.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 400 ") and b'"code":"bad_request"' in out
    wait_until(lambda: gw.gateway.inflight == 0, 5, what="no request in flight")


def test_a_valid_request_followed_by_junk_keeps_its_answer(gw: RunningGateway) -> None:
    out = raw(gw.port, b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n\x00\x01junk\r\n\r\n")
    first, _, rest = out.partition(b'{"status":"alive"}')
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and rest.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in rest


def test_an_8_mb_model_name_is_refused_before_any_log(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.base_url, timeout=20) as client:
        resp = client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "m" * (8 * MB)},
            headers={"x-request-id": "long-model"},
        )
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (
        err["param"] == "model" and err["code"] == "invalid_value" and "AIB_MAX_MODEL_CHARS" in err["message"]
    )
    assert len(resp.content) < 1000  # the name is not echoed
    record = gw.observer.wait_for("long-model")
    assert len(record.model) <= 256 and record.status == 400


def test_an_absolute_form_target_is_served_like_origin_form(gw: RunningGateway) -> None:
    out = raw(gw.port, b"GET http://%s:%d/v1/models?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % (
        HOST.encode(), gw.port))  # fmt: skip
    assert out.startswith(b"HTTP/1.1 200 OK") and b'"object":"list"' in out and b'"id":"m"' in out


async def test_a_client_leaving_while_its_answer_is_written_logs_no_traceback(
    tmp_path: Path, up: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway's own /health/live handler writes its answer after the client reset the
    connection (once: a traceback per hang-up). The hang-up is made to land first by holding the
    request until the server has seen the connection go."""
    from aib.gateway.app import create_app
    from aib.gateway.httpserver import HttpServer

    gateway = create_app(plan_from_yaml(tmp_path, PROVIDERS.format(url=up.base_url), MAPPINGS)[0],
                         gateway_settings())  # fmt: skip
    gate = asyncio.Event()
    answered: list[BaseException | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await gateway(scope, receive, send)
        await gate.wait()
        try:
            await gateway(scope, receive, send)
        except BaseException as exc:
            answered.append(exc)
            raise
        answered.append(None)

    server = HttpServer(app)
    port = await server.start(host=HOST)
    try:
        with caplog.at_level(logging.DEBUG, "aib"):
            for _ in range(3):
                _, writer = await asyncio.open_connection(HOST, port)
                writer.write(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
                await writer.drain()
                for _ in range(500):
                    if server.inflight:
                        break
                    await asyncio.sleep(0.01)
                conn = next(c for c in server.connections if c.queue)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()  # a reset
                for _ in range(500):
                    if conn.lost:
                        break
                    await asyncio.sleep(0.01)
                gate.set()
                for _ in range(500):
                    if not server.inflight:
                        break
                    await asyncio.sleep(0.01)
                gate.clear()
    finally:
        await server.stop(1.0)
    assert len(answered) == 3 and all(e is not None for e in answered)  # each send met a lost client
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
