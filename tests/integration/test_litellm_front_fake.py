"""The LiteLLM front's process handling with a stand-in ``litellm`` (tests/fake_litellm.py), fast:
a first LiteLLM that never gets ready, revert and verify of the reload target, draining bounded in
time, ``GET /admin/litellm``, and ``aib serve --engine litellm`` end to end (front + child stopped
on SIGTERM). Every process started here is stopped here, by PID.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from aib.config.compile import build_plan
from aib.devtools.llamacpp import free_port, pid_alive
from aib.engines.litellm import EngineError
from aib.engines.litellm_front import LiteLLMFront, LiteLLMTarget, build_front, front_plan, start_front
from aib.observe.settings import ObserveSettings
from aib.reload.controller import candidate_from
from aib.reload.target import TargetError
from gateway_harness import gateway_settings, wait_until, write_config
from litellm_support import STANDIN_MAPPINGS, STANDIN_PROVIDERS, fake_env

pytestmark = pytest.mark.integration


def test_first_litellm_that_never_gets_ready(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    front = LiteLLMFront(env=fake_env(tmp_path, "crash"), log_path=tmp_path / "l.log")
    with pytest.raises(EngineError, match="exited with code 3 before it was ready"):
        start_front(cfg, front)
    assert front.current is None
    asyncio.run(front.close())
    assert not front.workdir.exists()


def test_ready_timeout_stops_it(tmp_path: Path) -> None:
    front = LiteLLMFront(env=fake_env(tmp_path), ready_timeout_s=0.01)  # Python alone takes longer
    plan, cfg, _ = build_plan(write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS))
    with pytest.raises(TargetError, match="not ready within"):
        front.spawn(candidate_from(plan, cfg))
    asyncio.run(front.close())


def test_target_switch_revert_verify_and_bounded_drain(tmp_path: Path) -> None:
    cfg_dir = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    front = LiteLLMFront(env=fake_env(tmp_path), drain_s=0.3)
    gw = build_front(cfg_dir, gateway_settings(), front, ObserveSettings(metrics=False, request_log=None))
    target = LiteLLMTarget(front)
    first = candidate_from(*build_plan(cfg_dir)[:2])
    write_config(
        cfg_dir, STANDIN_PROVIDERS, STANDIN_MAPPINGS + "      tiny: {provider: local, upstream: smollm2}\n"
    )
    second = candidate_from(*build_plan(cfg_dir)[:2])
    pids: list[int] = []

    async def scenario() -> None:
        assert front.current is not None and front.current.pid is not None
        pids.append(front.current.pid)
        # a request that never ends holds a connection of the old LiteLLM's pool: the drain is bounded
        gw.pool.http(gw.plan.providers["litellm"])._open += 1
        await target.activate(second)
        assert front.version == second.version and len(front.draining) == 1
        assert gw.plan.providers["litellm"].base_url == front.current.base_url
        assert front.status()["draining"][0]["inflight"] == 1
        pids.append(front.current.pid)
        v = await target.verify(second, first, 2.0)
        assert v.problems == []
        await target.revert(second)  # already serving it: nothing to do
        assert front.current.pid == pids[1]
        await target.revert(first)
        assert front.version == first.version
        pids.append(front.current.pid)
        await asyncio.sleep(1.5)  # both old ones drained (bounded) and stopped
        assert front.draining == {}
        front.current.supervisor.request_stop()
        await asyncio.to_thread(front.current._thread.join, 15)
        v = await target.verify(first, second, 0.5)
        assert v.problems and "stopped answering" in v.problems[0]
        await front.close()

    asyncio.run(scenario())
    assert len(set(pids)) == 3 and not any(pid_alive(p) for p in pids)
    assert not front.workdir.exists()


def test_front_plan_sends_the_master_key_when_set() -> None:
    plan, _ = front_plan(4321, "LITELLM_MASTER_KEY")
    info = plan.providers["litellm"]
    assert info.api_key_env == "LITELLM_MASTER_KEY" and info.base_url == "http://127.0.0.1:4321"
    assert plan.resolve("any/name:7b") is not None


def test_aib_serve_front_end_to_end(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS)
    port = free_port()
    aib = Path(sys.executable).parent / "aib"
    cmd = [str(aib), "serve", "--engine", "litellm", "-c", str(cfg), "--port", str(port)]
    env = {**fake_env(tmp_path), "AIB_RELOAD_WATCH": "0", "AIB_REQUEST_LOG": "off"}
    with (tmp_path / "serve.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    child = None
    try:
        wait_until(
            lambda: proc.poll() is not None or _ok(base + "/health/live"), timeout=30, what="the front"
        )
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        status = httpx.get(base + "/admin/litellm", timeout=5).json()
        child = status["serving"]["pid"]
        assert pid_alive(child) and status["serving"]["port"] != port
        models = httpx.get(base + "/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["smollm2"]
        assert httpx.get(base + "/v1/models/smollm2", timeout=5).json()["id"] == "smollm2"
        missing = httpx.get(base + "/v1/models/smollm3", timeout=5)
        assert missing.status_code == 404 and "smollm2" in missing.text
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down cleanly, as the native engine does
        assert proc.wait(30) in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert child is not None and not pid_alive(child)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_close_stops_a_litellm_still_starting(tmp_path: Path) -> None:
    slow = tmp_path / "slow" / "litellm"
    slow.parent.mkdir()
    slow.write_text("#!/bin/sh\nexec sleep 60\n")  # never ready
    slow.chmod(0o755)
    front = LiteLLMFront(binary=slow, env=fake_env(tmp_path), ready_timeout_s=60)
    plan, cfg, _ = build_plan(write_config(tmp_path / "cfg", STANDIN_PROVIDERS, STANDIN_MAPPINGS))
    failed: list[BaseException] = []

    def spawn() -> None:
        try:
            front.spawn(candidate_from(plan, cfg))
        except TargetError as exc:
            failed.append(exc)

    t = threading.Thread(target=spawn)
    t.start()
    wait_until(lambda: any(p.pid for p in front.starting), timeout=10, what="the child")
    pid = next(iter(front.starting)).pid
    assert pid is not None and pid_alive(pid)
    asyncio.run(front.close())
    t.join(30)
    assert not t.is_alive() and failed and not pid_alive(pid)
