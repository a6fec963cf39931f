"""Providers do not flap: probes and requests never reuse a keep-alive connection the server is closing.

Found on ``make demo``: the llama.cpp providers went down and up about once a minute under UI traffic,
each time with ``Connection reset by peer``. llama-cpp-python runs under uvicorn, which closes a
keep-alive connection after 5 s idle, and the demo probes every 5 s: the probe was written on the old
connection just as the server closed it. The gateway now reuses a connection only while it is young
(``aib.gateway.upstream``: probes within one check, requests up to 4 s idle).

* :class:`ClosingKeepAlive` behaves as uvicorn does at that moment, every time: a request on a
  connection idle for ``close_after_s`` or more meets a reset. It makes the race certain.
* The real llama.cpp servers, generating while they are probed every 5 s for a while: no flap.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from aib.devtools.llamacpp import LlamaCppServer
from gateway_client import CHAT
from gateway_harness import (
    RunningGateway,
    chat_completion,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration


class ClosingKeepAlive:
    """An OpenAI-compatible stand-in (``GET /v1/models``, ``POST /v1/chat/completions``) on a free port,
    in a thread. A request arriving on a connection idle for ``close_after_s`` or more is answered with a
    reset (SO_LINGER 0): the server had closed that connection; the client wrote before it saw the FIN."""

    def __init__(self, close_after_s: float) -> None:
        self.close_after_s = close_after_s
        self.connections = 0
        self.resets = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        last = time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if time.monotonic() - last >= self.close_after_s:
                    self.resets += 1
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET"):
                    body = orjson.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
                else:
                    body = orjson.dumps(chat_completion("hi"))
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
                last = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def __enter__(self) -> ClosingKeepAlive:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await self._stop.wait()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the stand-in server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextlib.contextmanager
def gateway_on(tmp_path: Path, server: ClosingKeepAlive) -> Iterator[RunningGateway]:
    providers = f"""
        providers:
          kept:
            type: openai_compatible
            base_url: {server.base_url}
            models: [m]
            health: {{interval_s: 3600}}
    """
    plan = plan_from_yaml(tmp_path, providers, "models:\n  m: {provider: kept}\n")
    with running_gateway(plan, gateway_settings(health_checks=True)) as gw:
        gw.wait_first_probe()
        yield gw


def test_a_probe_after_a_pause_does_not_meet_a_closing_connection(tmp_path: Path) -> None:
    with ClosingKeepAlive(close_after_s=1.5) as server, gateway_on(tmp_path, server) as gw:
        health = gw.gateway.state.health["kept"]
        assert health.healthy is True
        for _ in range(2):
            time.sleep(1.7)  # longer than the server keeps an idle connection
            gw.probe_now()
            assert health.healthy is True, health.last_error
        assert server.resets == 0 and server.connections >= 3


def test_a_request_after_a_five_second_pause_does_not_meet_a_closing_connection(tmp_path: Path) -> None:
    with ClosingKeepAlive(close_after_s=5.0) as server, gateway_on(tmp_path, server) as gw:  # uvicorn's
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            assert (
                client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT}).status_code == 200
            )
            time.sleep(5.1)
            resp = client.post("/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert resp.status_code == 200 and resp.headers["x-aib-fallbacks"] == "0", resp.text
        assert server.resets == 0


# --------------------------------------------------------------------------- the real llama.cpp servers

SOAK_S = 40.0


def test_llama_cpp_providers_do_not_flap_while_generating_and_probed(
    llama_servers: list[LlamaCppServer], tmp_path: Path
) -> None:
    """Streams and plain chats to both servers with pauses around 5 s (the keep-alive), probes every
    5 s (as `make demo` does) for SOAK_S seconds: no provider is ever marked down, no request fails."""
    a, b = llama_servers
    providers = f"""
        providers:
          llama_a: {{type: llamacpp, base_url: {a.root_url}, models: [smollm2], health: {{interval_s: 5, timeout_s: 30}}}}
          llama_b: {{type: llamacpp, base_url: {b.root_url}, models: [smollm2], health: {{interval_s: 5, timeout_s: 30}}}}
    """
    mappings = """
        defaults:
          breaker: {failure_threshold: 2, cooldown_s: 10}
        models:
          smollm2:
            strategy: round_robin
            deployments:
              - {provider: llama_a, upstream: smollm2}
              - {provider: llama_b, upstream: smollm2}
    """
    plan = plan_from_yaml(tmp_path, providers, mappings)
    seen: dict[str, list[bool | None]] = {"llama_a": [], "llama_b": []}
    statuses: list[tuple[int, str]] = []
    with running_gateway(plan, gateway_settings(health_checks=True)) as gw:
        gw.wait_first_probe(30)
        state = gw.gateway.state
        stop = threading.Event()

        def watch() -> None:  # a flap lasts until the next probe (5 s): polling at 50 ms sees every one
            while not stop.is_set():
                for name, states in seen.items():
                    h = state.health.get(name)
                    now = h.healthy if h is not None else None
                    if not states or states[-1] is not now:
                        states.append(now)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        pauses = [4.8, 0.2, 5.2, 1.0, 5.0, 0.0, 4.9]
        end = time.monotonic() + SOAK_S
        with httpx.Client(base_url=gw.base_url, timeout=120) as client:
            i = 0
            while time.monotonic() < end:
                body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a short story."}]}
                body.update(max_tokens=48, stream=i % 2 == 0)
                resp = client.post("/v1/chat/completions", json=body)
                statuses.append((resp.status_code, resp.headers.get("x-aib-fallbacks", "?")))
                time.sleep(min(pauses[i % len(pauses)], max(end - time.monotonic(), 0)))
                i += 1
        stop.set()
        watcher.join(5)
        wait_until(lambda: not watcher.is_alive(), 5, what="the watcher to stop")
    for name, states in seen.items():
        assert states == [True], f"{name} flapped: {states}"
    assert len(statuses) >= 6 and set(statuses) == {(200, "0")}, statuses
