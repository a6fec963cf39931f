"""The nginx equivalent of the shipped HAProxy topology (deploy/nginx/nginx.conf, only its addresses and
paths changed): two `aib serve` replicas behind real nginx, load at c=32; SIGTERM of one, then kill -9
of the other once the first is back: not one request fails. And both shipped files pass their own
checker (`haproxy -c`, `nginx -t`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aib.devtools.balancer import Balancer, render_haproxy, render_nginx, shipped
from aib.devtools.llamacpp import free_port
from gateway_harness import fake_openai_process, stop_process, write_config
from scaleout_support import CONCURRENCY, Replica, body, start_replica, until

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_the_shipped_files_pass_their_checker(kind: str, tmp_path: Path) -> None:
    b = Balancer(kind, free_port(), [free_port(), free_port(), free_port()])
    try:
        result = b.check()
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        b.close()
    render = render_haproxy if kind == "haproxy" else render_nginx
    out = render(shipped(kind), 1234, [11, 22], tmp_path)
    assert "127.0.0.1:1234" in out and "127.0.0.1:11" in out and "127.0.0.1:22" in out
    assert "127.0.0.1:4001" not in out and "127.0.0.1:4003" not in out


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[list[Replica], Path, dict[str, str]]]:
    with fake_openai_process() as fake:
        cdir = write_config(
            tmp_path / "cfg",
            f'providers:\n  fake: {{type: openai_compatible, base_url: "{fake.base_url}", models: [fake]}}\n',
            "models:\n  plain: {provider: fake, upstream: fake}\n",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
        env.update(AIB_REQUEST_LOG="off", AIB_RELOAD_WATCH="0")
        reps = [Replica(i, free_port(), tmp_path / f"r{i}.log") for i in (1, 2)]
        try:
            for r in reps:
                start_replica(r, cdir, env)
            yield reps, cdir, env
        finally:
            for r in reps:
                if r.proc is not None:
                    stop_process(r.proc, timeout=10)


def test_nginx_in_front_of_two_replicas_loses_no_request(
    replicas: tuple[list[Replica], Path, dict[str, str]],
) -> None:
    reps, cdir, env = replicas
    results: list[tuple[float, int, str]] = []

    async def main() -> None:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=CONCURRENCY // 2)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def worker(n: int) -> None:
                while not stop.is_set() and len(results) < 20_000:
                    t = time.monotonic()
                    try:
                        r = await client.post(f"{lb.url}/v1/chat/completions", json=body("plain", f"p{n}"))
                        results.append((t, r.status_code, r.text[:100] if r.status_code != 200 else ""))
                    except httpx.HTTPError as exc:
                        results.append((t, 0, repr(exc)))

            tasks = [asyncio.ensure_future(worker(n)) for n in range(CONCURRENCY // 2)]
            await until(lambda: len(results) >= 150, 60, "load")
            assert reps[0].proc is not None
            reps[0].proc.send_signal(signal.SIGTERM)  # drains; nginx moves on at the refused connection
            termed = time.monotonic()
            await until(lambda: sum(t > termed + 1 for t, _, _ in results) >= 150, 60, "load after SIGTERM")
            assert reps[0].proc.wait(30) == 0
            await asyncio.to_thread(start_replica, reps[0], cdir, env)  # back, then the other one dies
            await asyncio.sleep(6)  # past fail_timeout: nginx tries replica 1 again
            assert reps[1].proc is not None
            os.kill(reps[1].proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            await until(lambda: sum(t > killed + 1 for t, _, _ in results) >= 150, 60, "load after kill -9")
            stop.set()
            await asyncio.gather(*tasks)

    with Balancer("nginx", free_port(), [r.port for r in reps]) as lb:
        asyncio.run(main())
    failed = [x for x in results if x[1] != 200]
    assert failed == [], failed[:5]
