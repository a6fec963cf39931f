"""A leader and a follower worker in this process (each on its own thread and event loop), so that the
worker side of ``aib serve --workers N`` runs where coverage sees it: ``build_gateway(worker=...)``,
the worker server with the leader's unix socket, the follower's reload service (build from what the
leader published, follow, forward admin requests), and the shared metrics.

The test stands in for the supervisor: its PID is the workers' ``supervisor_pid``, it counts the
leader's SIGUSR1 ("I applied a configuration") and then has the follower load it, as the supervisor's
SIGHUP would. Each worker gets a listening socket of its own, so a request can be sent to one of them.
Traffic: 127.0.0.1 only; both workers and the fake upstream are stopped here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from aib.config.load import MAPPINGS_FILE
from aib.gateway.app import Gateway
from aib.gateway.server import _serve_worker, _WorkerTag, build_gateway
from aib.gateway.settings import GatewaySettings
from aib.gateway.workers import WorkerSpec
from aib.observe.settings import ObserveSettings
from aib.observe.shared import WorkerMetrics
from aib.reload.cluster import Cluster
from aib.reload.service import ReloadService
from gateway_harness import FakeOpenAIProcess, fake_openai_process, wait_until
from reload_support import mappings_yaml, provider_yaml

pytestmark = pytest.mark.integration
HOST = "127.0.0.1"


@dataclass
class Worker:
    """One worker's gateway served on a thread of its own until :meth:`stop`."""

    spec: WorkerSpec
    app: Gateway
    port: int
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    stop_event: asyncio.Event | None = None
    thread: threading.Thread | None = None
    error: list[BaseException] = field(default_factory=list)

    def start(self, settings: GatewaySettings) -> Worker:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            await _serve_worker(self.app, settings, self.spec, self.stop_event)

        def run() -> None:
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:  # reported by the test, never swallowed
                self.error.append(exc)
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, name=f"worker-{self.spec.index}", daemon=True)
        self.thread.start()
        wait_until(
            lambda: self.stop_event is not None and self.app.ready, 30, what=f"worker {self.spec.index}"
        )
        return self

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive() and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(40)
        assert self.thread is None or not self.thread.is_alive(), "a worker did not stop"
        assert not self.error, self.error


def reload_service(app: Gateway) -> ReloadService:
    for hooks in (app.on_startup,):
        for hook in hooks:
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, ReloadService):
                return owner
    raise AssertionError("no reload service installed")


@pytest.fixture
def usr1(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """This process plays the supervisor: SIGUSR1 (the leader telling it) is counted, never fatal, and
    the workers' "is my supervisor still my parent?" check sees it as their parent."""
    seen: list[int] = []
    monkeypatch.setattr(os, "getppid", os.getpid)
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIProcess]:
    with fake_openai_process() as f:
        yield f


def write(cdir: Path, fake: FakeOpenAIProcess, models: tuple[str, ...]) -> None:
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "providers.yaml").write_text(provider_yaml({"fake": fake.base_url}, models=("m1", "m2")))
    (cdir / MAPPINGS_FILE).write_text(mappings_yaml(dict.fromkeys(models, "fake")))


def make_worker(index: int, run_dir: Path, cdir: Path, settings: GatewaySettings) -> Worker:
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    ready_r, ready_w = os.pipe()
    os.close(ready_r)  # nobody reads it here: the worker's write fails quietly, as when a supervisor left
    spec = WorkerSpec(
        index=index, count=2, listen_fd=sock.detach(), ready_fd=ready_w, run_dir=str(run_dir),
        supervisor_pid=os.getpid(), host=HOST, port=port,
        config_dir=str(cdir), health_checks=False, log_level="info",
    )  # fmt: skip
    observe = ObserveSettings(metrics=True, access_log=False, request_log=None)
    app = build_gateway(settings, observe, spec)
    for hook in app.on_startup:  # two workers in one process: one snapshot file each (named by PID
        shared = getattr(hook, "__self__", None)  # in real life), the second not a live PID
        if isinstance(shared, WorkerMetrics):
            shared.path = shared.folder / f"{os.getpid() if index == 0 else 2**22 + index}.marshal"
    return Worker(spec, app, port)


def chat(port: int, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"http://{HOST}:{port}/v1/chat/completions", json=body, timeout=10)


def test_a_leader_and_a_follower(fake: FakeOpenAIProcess, tmp_path: Path, usr1: list[int]) -> None:
    cdir, run_dir = tmp_path / "config", tmp_path / "run"
    run_dir.mkdir()
    write(cdir, fake, ("m1",))
    # no file watching: the reloads here are the ones the test asks for (the watcher has its own tests)
    settings = GatewaySettings(config_dir=cdir, health_checks=False, drain_timeout_s=5.0, watch_config=False)
    leader = make_worker(0, run_dir, cdir, settings).start(settings)
    follower: Worker | None = None
    try:
        # the leader publishes what it serves and tells the supervisor
        wait_until(lambda: bool(usr1), 10, what="the leader's first publish")
        published = Cluster(run_dir, False, os.getpid()).read_published()
        assert published is not None and b"m1" in (published.mappings or b"")
        assert (run_dir / "leader.sock").exists()

        # a follower starts from what was published, not from the files (which are broken meanwhile)
        good = (cdir / MAPPINGS_FILE).read_text()
        (cdir / MAPPINGS_FILE).write_text("models: [m1\n")
        follower = make_worker(1, run_dir, cdir, settings).start(settings)
        assert chat(follower.port, "m1").status_code == 200
        (cdir / MAPPINGS_FILE).write_text(good)
        # /health says whose view it is (health, breakers and in-flight are per worker)
        health = httpx.get(f"http://{HOST}:{follower.port}/health", timeout=10).json()
        assert health["worker"] == {"index": 1, "count": 2, "pid": os.getpid()}

        # an admin reload sent to the follower runs in the leader; the follower follows on "SIGHUP"
        write(cdir, fake, ("m1", "m2"))
        before = len(usr1)
        r = httpx.post(f"http://{HOST}:{follower.port}/admin/reload", json={"by": "alice"}, timeout=30)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["result"] == "applied" and report["by"] == f"alice from {HOST}"
        assert len(usr1) > before  # the leader told the supervisor
        assert chat(leader.port, "m2").status_code == 200
        assert chat(follower.port, "m2").status_code == 404  # not before the supervisor's SIGHUP
        service = reload_service(follower.app)
        follower.loop.call_soon_threadsafe(service._on_sighup)  # what the SIGHUP handler does
        wait_until(lambda: chat(follower.port, "m2").status_code == 200, 10, what="the follower to follow")
        assert follower.call(service.controller.follow(published)) == "applied"  # back to m1 only...
        assert chat(follower.port, "m2").status_code == 404
        follower.call(service._follow())  # ...and forward again to what the leader serves
        assert chat(follower.port, "m2").status_code == 200

        # the history through the follower is the leader's (one reload, by alice)
        hist = httpx.get(f"http://{HOST}:{follower.port}/admin/reloads", timeout=10).json()
        assert [h["by"] for h in hist["reloads"]] == [f"alice from {HOST}"]
        # a body that is not JSON is answered by the leader, passed on unchanged
        bad = httpx.post(f"http://{HOST}:{follower.port}/admin/reload", content=b"{", timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_body"

        # metrics: each counts its own, a scrape on either adds the other's snapshot (1 s)
        for _ in range(3):
            assert chat(leader.port, "m1").status_code == 200
        for _ in range(2):
            assert chat(follower.port, "m1").status_code == 200

        def total(port: int) -> float:
            text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("aib_requests_total{") and 'route="m1"' in line and 'status="200"' in line
            )

        # 1 + 2 on the follower, 3 on the leader: 6 on either
        wait_until(lambda: total(leader.port) == total(follower.port) == 6, 10, what="both scrapes to say 6")
    finally:
        leader.stop()
    try:
        # the leader is gone: admin requests to the follower get a clear 503, not a hang
        r = httpx.post(f"http://{HOST}:{follower.port}/admin/reload", timeout=30)  # type: ignore[union-attr]
        assert r.status_code == 503 and r.json()["error"]["code"] == "leader_unavailable"
        assert r.headers["retry-after"] == "2"
    finally:
        if follower is not None:
            follower.stop()


def test_worker_log_lines_are_tagged() -> None:
    import logging

    tag = _WorkerTag(3)
    record = logging.LogRecord("aib.gateway", logging.INFO, __file__, 1, "hello", None, None)
    assert tag.filter(record) and tag.filter(record)
    assert record.name == "aib.gateway[w3]"  # tagged once, whatever the number of handlers
