"""The breaker drill of issue 17, as a test: no "no deployment" answer while a server is up.

Two instant fake upstreams (A, B: ``aib.devtools.fake_openai`` processes) behind one round-robin route,
``aib serve`` in front (probes every 2 s, breakers: 5 failures, 30 s cool-down), 64 connections
sending back to back. A is killed, restarted 6 s later on the same port; once the probes see it up,
B is killed. Before the fix, A's breaker stayed open for the rest of its 30 s cool-down although
its probes said it was up, and after B went down every request got 503 "no deployment" (54,304 of
them in ~10 s). Now a good probe half-opens A's breaker, and if breakers shut out everything the
probes vouch for, requests go there anyway.

The drill prints its figures (``-s``): answers by outcome and phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from textwrap import dedent

import pytest

from aib.devtools.llamacpp import free_port
from config_support import write_files
from serve_support import Served, aib_serve

pytestmark = pytest.mark.integration

CONNECTIONS = 64
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Upstream:
    """One fake_openai process on a fixed port, which can be killed and started again there."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = name, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aib.devtools.fake_openai",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # a crash, not a drain
            self.proc.wait(10)


@contextlib.contextmanager
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    a, b = Upstream("a", free_port()), Upstream("b", free_port())
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.kill()
        b.kill()


async def _listening(port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _health(port: int) -> dict[str, object]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
    return dict(json.loads(data.split(b"\r\n\r\n", 1)[1]))


class Drill:
    def __init__(self, served: Served, a: Upstream, b: Upstream) -> None:
        self.served, self.a, self.b = served, a, b
        self.answers: list[tuple[float, int, str]] = []  # (time, status, error code)
        self.marks: dict[str, float] = {}
        self.t0 = 0.0
        self.stop = False

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def worker(self) -> None:
        port = self.served.port
        req = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        while not self.stop:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            try:
                while not self.stop:
                    w.write(req)
                    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    assert m is not None, head
                    body = await asyncio.wait_for(r.readexactly(int(m.group(1))), 10)
                    status = int(head.split(b" ", 2)[1])
                    code = "" if status == 200 else str(json.loads(body)["error"]["code"])
                    self.answers.append((self.now(), status, code))
                    if b"connection: close" in head.lower():
                        break
            finally:
                w.close()

    async def conductor(self) -> None:
        port = self.served.port
        await asyncio.sleep(2)
        self.a.kill()
        self.marks["A killed"] = self.now()
        await asyncio.sleep(6)
        self.a.start()
        await _listening(self.a.port, 10)
        self.marks["A restarted"] = self.now()
        deadline = time.monotonic() + 10
        while True:  # the probes (every 2 s) see it up
            providers = (await _health(port))["providers"]
            assert isinstance(providers, dict)
            if providers["a"]["status"] in ("healthy", "degraded"):
                break
            assert time.monotonic() < deadline, providers["a"]
            await asyncio.sleep(0.1)
        self.marks["probes see A up"] = self.now()
        await asyncio.sleep(0.5)
        self.b.kill()
        self.marks["B killed"] = self.now()
        await asyncio.sleep(8)
        self.stop = True

    async def run(self) -> None:
        self.t0 = time.monotonic()
        workers = [asyncio.ensure_future(self.worker()) for _ in range(CONNECTIONS)]
        await asyncio.wait_for(self.conductor(), 60)
        await asyncio.wait_for(asyncio.gather(*workers), 30)

    def phase(self, start: str | None, end: str | None) -> Counter[str]:
        lo = self.marks[start] if start else 0.0
        hi = self.marks[end] if end else float("inf")
        return Counter(f"{s} {c}".strip() for t, s, c in self.answers if lo <= t < hi)


def test_breaker_drill_no_refusals_while_a_server_is_up(tmp_path: Path) -> None:
    with upstreams() as (a, b):
        providers = f"""
            providers:
              a: {{type: openai_compatible, base_url: "http://127.0.0.1:{a.port}", models: [m],
                  health: {{interval_s: 2, timeout_s: 1}}}}
              b: {{type: openai_compatible, base_url: "http://127.0.0.1:{b.port}", models: [m],
                  health: {{interval_s: 2, timeout_s: 1}}}}
        """
        mappings = """
            defaults:
              timeouts: {connect_s: 1, first_byte_s: 5, total_s: 10}
              breaker: {failure_threshold: 5, cooldown_s: 30}
            models:
              m:
                strategy: round_robin
                deployments:
                  - {provider: a, upstream: m}
                  - {provider: b, upstream: m}
        """
        write_files(tmp_path / "config", dedent(providers), dedent(mappings))
        with aib_serve(tmp_path / "config", tmp_path / "serve.log") as served:
            asyncio.run(_listening(a.port, 10))
            asyncio.run(_listening(b.port, 10))
            drill = Drill(served, a, b)
            asyncio.run(drill.run())
    phases = {
        "both up": drill.phase(None, "A killed"),
        "A down": drill.phase("A killed", "A restarted"),
        "A back, probes not yet": drill.phase("A restarted", "probes see A up"),
        "A back and seen": drill.phase("probes see A up", "B killed"),
        "B down, A up": drill.phase("B killed", None),
    }
    print("\nbreaker drill: marks (s)", {k: round(v, 2) for k, v in drill.marks.items()})
    for name, counts in phases.items():
        print(f"  {name:24} {dict(counts)}")
    refused = sum(
        c for k, c in Counter(f"{s} {c}".strip() for _, s, c in drill.answers).items() if "no_healthy" in k
    )
    assert refused == 0, phases
    after_b = phases["B down, A up"]
    assert after_b["200"] > 100, after_b  # A serves once B is gone
    assert set(after_b) == {"200"}, after_b  # every request: B's failures go on to A within the request
    assert phases["both up"]["200"] > 100 and set(phases["both up"]) == {"200"}
