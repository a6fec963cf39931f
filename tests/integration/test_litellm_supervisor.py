"""The LiteLLM engine's supervisor, driven with a stand-in ``litellm`` executable (tests/fake_litellm.py).

Restart on crash with back-off, giving up on a child that never gets ready, clean stop, SIGKILL of a
child that ignores SIGTERM, and ``aib serve --engine litellm`` passing SIGINT/SIGTERM on and
regenerating the config on SIGHUP. Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from aib.devtools.llamacpp import free_port, pid_alive
from aib.engines.litellm import LiteLLMEngine, http_ok
from aib.engines.supervisor import Backoff, Supervisor, SupervisorError
from gateway_harness import wait_until, write_config
from litellm_support import STANDIN_MAPPINGS, STANDIN_PROVIDERS, fake_bin, fake_env, fake_events

pytestmark = pytest.mark.integration


def supervisor(tmp_path: Path, mode: str, port: int, **kw: Any) -> Supervisor:
    cmd = [str(fake_bin(tmp_path)), "--config", "none", "--host", "127.0.0.1", "--port", str(port)]
    return Supervisor(
        "fake-litellm",
        cmd,
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/health/readiness", timeout=0.5),
        env=fake_env(tmp_path, mode, **kw.pop("extra_env", {})),
        log_path=tmp_path / "child.log",
        poll_s=0.02,
        **kw,
    )


@pytest.fixture
def run_in_thread() -> Iterator[Any]:
    """Run a supervisor's ``run()`` in a thread; always stopped and joined at the end."""
    started: list[tuple[Supervisor, threading.Thread, dict[str, Any]]] = []

    def go(sup: Supervisor) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def target() -> None:
            try:
                out["code"] = sup.run()
            except BaseException as exc:
                out["error"] = exc

        t = threading.Thread(target=target, name="supervisor", daemon=True)
        t.start()
        started.append((sup, t, out))
        return out

    yield go
    for sup, t, _ in started:
        sup.request_stop()
        t.join(20)
        assert not t.is_alive(), "supervisor did not stop"
        assert not sup.running()


def test_restarts_a_crashing_child_with_growing_back_off(tmp_path: Path, run_in_thread: Any) -> None:
    backoff = Backoff(initial_s=0.05, factor=2.0, max_s=0.2, stable_s=60)
    sup = supervisor(
        tmp_path, "crash-after-ready", free_port(), backoff=backoff, extra_env={"FAKE_LITELLM_UPTIME": "0.2"}
    )
    out = run_in_thread(sup)
    wait_until(lambda: len(sup.exits) >= 4, timeout=30, what="four crashes")
    sup.request_stop()
    wait_until(lambda: "code" in out or "error" in out, timeout=20, what="run() to return")
    assert out == {"code": 0}
    first = sup.exits[:4]
    assert [e.code for e in first] == [7, 7, 7, 7]
    assert all(e.was_ready for e in first)
    assert [e.restart_in_s for e in first] == [0.05, 0.1, 0.2, 0.2]  # doubles, then capped
    pids = [e["pid"] for e in fake_events(tmp_path, "start")]
    assert len(pids) >= 4 and len(set(pids)) == len(pids)
    assert len(sup.ready_times) >= 4
    assert not any(pid_alive(p) for p in pids)


def test_back_off_starts_over_after_a_stable_run(tmp_path: Path, run_in_thread: Any) -> None:
    backoff = Backoff(initial_s=0.05, factor=2.0, max_s=1.0, stable_s=0.1)  # 0.3 s up counts as stable
    sup = supervisor(tmp_path, "crash-after-ready", free_port(), backoff=backoff)
    run_in_thread(sup)
    wait_until(lambda: len(sup.exits) >= 3, timeout=30, what="three crashes")
    assert [e.restart_in_s for e in sup.exits[:3]] == [0.05, 0.05, 0.05]


def test_gives_up_on_a_child_that_never_gets_ready(tmp_path: Path, run_in_thread: Any) -> None:
    sup = supervisor(
        tmp_path, "crash", free_port(), backoff=Backoff(initial_s=0.01, max_s=0.02), max_start_failures=3
    )
    out = run_in_thread(sup)
    wait_until(lambda: "error" in out or "code" in out, timeout=30, what="the supervisor to give up")
    err = out["error"]
    assert isinstance(err, SupervisorError)
    assert "exited 3 times in a row before it became ready" in str(err)
    assert "last exit code 3" in str(err)
    assert "crashing before ready" in str(err)  # the child's own output is in the message
    assert len(fake_events(tmp_path, "start")) == 3
    assert sup.exits[-1].restart_in_s is None


def test_stops_cleanly_and_passes_the_signal(tmp_path: Path, run_in_thread: Any) -> None:
    port = free_port()
    sup = supervisor(tmp_path, "serve", port)
    out = run_in_thread(sup)
    wait_until(lambda: bool(sup.ready_times), timeout=20, what="the child to be ready")
    pid = sup.pid
    assert pid is not None and http_ok(f"http://127.0.0.1:{port}/health/liveliness")
    sup.request_stop(signal.SIGINT)
    wait_until(lambda: "code" in out, timeout=20, what="run() to return")
    assert out["code"] == 0 and sup.exits == []
    assert [e["signal"] for e in fake_events(tmp_path, "signal")] == ["SIGINT"]
    assert fake_events(tmp_path, "exit")[-1]["code"] == 0
    assert sup.proc is not None and sup.proc.returncode == 0
    assert not pid_alive(pid)
    assert not http_ok(f"http://127.0.0.1:{port}/health/liveliness")


def test_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    port = free_port()
    sup = supervisor(tmp_path, "ignore-term", port, stop_timeout_s=0.5)
    sup.start()
    try:
        assert sup.wait_ready()
        assert sup.stop() == -signal.SIGKILL
        assert [e["signal"] for e in fake_events(tmp_path, "signal")] == ["SIGTERM"]
    finally:
        sup.stop()
    assert not sup.running()


def test_stop_leaves_no_worker_of_the_group_behind(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, "orphan-worker", free_port())
    sup.start()
    try:
        assert sup.wait_ready()
        wait_until(lambda: bool(fake_events(tmp_path, "worker")), timeout=10, what="the worker")
        worker = fake_events(tmp_path, "worker")[0]["worker"]
        assert psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
        assert sup.stop() == 0
    finally:
        sup.stop()
    wait_until(lambda: gone(worker), timeout=10, what="the orphaned worker to be gone")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_signal_handlers_stop_reload_and_restore(tmp_path: Path) -> None:
    hups: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with_hook = Supervisor("x", ["true"], ready=lambda: True, on_hup=lambda: hups.append(1))
    plain = Supervisor("y", ["true"], ready=lambda: True)
    for sup in (with_hook, plain):
        restore = sup.install_signal_handlers()
        try:
            handler = signal.getsignal(signal.SIGHUP)
            assert callable(handler)
            handler(signal.SIGHUP, None)
            handler = signal.getsignal(signal.SIGINT)
            assert callable(handler)
            handler(signal.SIGINT, None)
        finally:
            restore()
        assert sup.stopping
    assert hups == [1] and plain._restart.is_set() and not with_hook._restart.is_set()
    assert {s: signal.getsignal(s) for s in previous} == previous


def test_planned_restart_is_not_a_failure(tmp_path: Path, run_in_thread: Any) -> None:
    sup = supervisor(tmp_path, "serve", free_port())
    run_in_thread(sup)
    wait_until(lambda: len(sup.ready_times) == 1, timeout=20, what="the first start")
    sup.request_restart()
    wait_until(lambda: len(sup.ready_times) == 2, timeout=20, what="the restart")
    assert sup.exits == [] and sup.starts == 2
    assert [e["signal"] for e in fake_events(tmp_path, "signal")] == ["SIGTERM"]


def test_start_errors_are_clear(tmp_path: Path) -> None:
    sup = Supervisor("nothing", [str(tmp_path / "missing")], ready=lambda: True)
    with pytest.raises(SupervisorError, match="cannot start nothing"):
        sup.start()
    sup = supervisor(tmp_path, "serve", free_port())
    sup.start()
    try:
        with pytest.raises(SupervisorError, match="already running"):
            sup.start()
    finally:
        sup.stop()


def test_not_ready_in_time_is_stopped(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, "serve", free_port(), ready_timeout_s=0.3)
    sup._ready = lambda: False  # never ready
    sup.start()
    assert sup.wait_ready() is False
    assert not sup.running()


# --------------------------------------------------------------------------- the engine and the CLI


def test_engine_runs_the_generated_config_with_the_offline_environment(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    env = {k: v for k, v in fake_env(tmp_path).items() if not k.startswith("LITELLM_")}
    port = free_port()
    engine = LiteLLMEngine(cfg, port=port, env=env, log_path=tmp_path / "engine.log")
    t = threading.Thread(target=engine.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: bool(engine.supervisor.ready_times), timeout=20, what="ready")
        start = fake_events(tmp_path, "start")[0]
        assert start["env"] == {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            "LITELLM_MASTER_KEY": None,
        }
        assert start["argv"][-2:] == ["--num_workers", "1"]
        assert "model: openai/smollm2" in start["config"]
        assert "api_base: http://127.0.0.1:9/v1" in start["config"]
        assert engine.reload() is False  # same files: nothing to do
        (cfg / "model-mappings.yaml").write_text(
            "models:\n  smollm2: {provider: local}\n  other: {provider: local, upstream: smollm2}\n"
        )
        assert engine.reload() is True
        wait_until(lambda: len(engine.supervisor.ready_times) == 2, timeout=20, what="the restart")
        assert "model_name: other" in fake_events(tmp_path, "start")[1]["config"]
        (cfg / "model-mappings.yaml").write_text("models:\n  broken: {provider: nowhere}\n")
        assert engine.reload() is False  # bad config: keeps running on the old one
        assert engine.supervisor.starts == 2 and engine.supervisor.running()
    finally:
        engine.stop()
        t.join(20)
    assert not engine.workdir.exists()  # the generated file is cleaned up


def test_engine_port_in_use(tmp_path: Path) -> None:
    import socket

    cfg = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        engine = LiteLLMEngine(cfg, port=s.getsockname()[1], env=fake_env(tmp_path))
        from aib.engines.litellm import EngineError

        with pytest.raises(EngineError, match="already in use"):
            engine.run()
    assert fake_events(tmp_path, "start") == []
    assert not engine.workdir.exists()


def aib_serve(tmp_path: Path, port: int, mode: str = "serve") -> subprocess.Popen[bytes]:
    cfg = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    aib = Path(sys.executable).parent / "aib"
    cmd = [str(aib), "serve", "--engine", "litellm", "--litellm-direct", "-c", str(cfg), "--port", str(port)]
    with (tmp_path / "serve.log").open("wb") as log:
        return subprocess.Popen(
            cmd,
            env=fake_env(tmp_path, mode),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_aib_serve_passes_the_signal_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc = aib_serve(tmp_path, port)
    try:
        wait_until(
            lambda: http_ok(f"http://127.0.0.1:{port}/health/readiness") or proc.poll() is not None,
            timeout=30,
            what="the engine to be ready",
        )
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        child = fake_events(tmp_path, "start")[0]["pid"]
        proc.send_signal(signal.SIGHUP)  # same config: no restart
        time.sleep(0.3)
        proc.send_signal(sig)
        assert proc.wait(20) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert [e["signal"] for e in fake_events(tmp_path, "signal")] == [sig.name]
    assert len(fake_events(tmp_path, "start")) == 1
    assert not pid_alive(child)
    log = (tmp_path / "serve.log").read_text()
    assert "ready in" in log and "did not change" in log and "Traceback" not in log
