"""The gateway runs the LiteLLM SDK adapter processes its plan needs, in step with reloads, restarts one
that dies, stops them by PID, and keeps serving everything else when LiteLLM is not installed.

These adapters run on this venv's Python, where LiteLLM is not installed: each is the real adapter
process answering "LiteLLM SDK adapter not installed: run `make litellm`" (it starts in well under a
second). The real SDK is in tests/contract/test_sdk_adapter_anthropic.py.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aib.config.compile import build_plan
from aib.config.litellm_sdk import NOT_INSTALLED, PYTHON_ENV, TOKEN_ENV, find_adapter_python
from aib.devtools.llamacpp import free_port, pid_alive
from aib.engines import sdk_sidecar
from aib.engines.litellm import http_ok
from aib.engines.sdk_sidecar import SdkAdapters, install_sdk_adapter
from aib.gateway.app import Gateway
from aib.ops.doctor import run_doctor
from aib.ops.doctor_sdk import sdk_checks
from aib.reload import ReloadService, install_reload
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    running_gateway,
    wait_until,
    write_config,
)
from sdk_support import require_adapter_python

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _own_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """install_sdk_adapter puts a token in the environment: undone after each test."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=("m",)).serve_in_thread() as up:
        yield up


def providers(up: ScriptedUpstream, sdk_port: int | None, model: str = "anthropic/{model}") -> str:
    lines = [
        "providers:",
        f"  local: {{type: openai_compatible, base_url: '{up.base_url}', models: [m], health: {{interval_s: 30}}}}",
    ]
    if sdk_port is not None:
        lines.append(
            f"  claude: {{type: litellm_sdk, base_url: 'http://127.0.0.1:{sdk_port}', litellm_model: '{model}', "
            "models: [haiku], health: {interval_s: 30}}"
        )
    return "\n".join(lines)


def mappings(with_sdk: bool) -> str:
    lines = ["models:", "  m: {provider: local}"]
    if with_sdk:
        lines += [
            "  claude: {provider: claude, upstream: haiku}",
            "  claude-fb: {provider: claude, upstream: haiku, fallbacks: [m]}",
        ]
    return "\n".join(lines)


def health(gw: RunningGateway) -> dict[str, dict[str, object]]:
    return httpx.get(gw.base_url + "/health", timeout=10).json()["providers"]  # type: ignore[no-any-return]


def chat(gw: RunningGateway, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=30)


def test_without_litellm_the_provider_is_down_and_the_rest_is_served(
    tmp_path: Path,
    upstream: ScriptedUpstream,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))  # no LiteLLM anywhere
    cdir = write_config(tmp_path / "cfg", providers(upstream, free_port()), mappings(True))
    holder: dict[str, SdkAdapters] = {}

    def setup(gw: Gateway) -> None:
        holder["sdk"] = install_sdk_adapter(gw)

    with running_gateway(cdir, gateway_settings(health_checks=True), setup=setup) as gw:
        (proc,) = holder["sdk"].procs.values()
        assert proc.python.path == sys.executable and not proc.python.installed
        wait_until(
            lambda: str(health(gw)["claude"]["last_error"]).startswith(NOT_INSTALLED), 20, 0.1, "the probe"
        )
        state = health(gw)
        assert state["claude"]["status"] == "unhealthy" and state["local"]["status"] == "healthy"
        assert chat(gw, "m").status_code == 200
        fb = chat(gw, "claude-fb")
        assert fb.status_code == 200 and fb.headers["x-aib-provider"] == "local"
        down = chat(gw, "claude")
        assert down.status_code in (502, 503) and NOT_INSTALLED in down.json()["error"]["message"]
        status = httpx.get(gw.base_url + "/admin/sdk-adapter", timeout=10).json()
        assert status["installed"] is False and status["problem"].startswith(NOT_INSTALLED)
        report = run_doctor(cdir, gw.base_url)  # `aib doctor`: probes the provider through the adapter
        checks = {c.name: c for c in report.checks}
        assert checks["sdk adapter"].status == "fail" and NOT_INSTALLED in checks["sdk adapter"].message
        assert (
            checks["provider claude"].status == "fail" and NOT_INSTALLED in checks["provider claude"].message
        )
        assert checks["provider local"].status == "ok"
        pid = proc.pid
    assert pid is not None and not pid_alive(pid)
    assert any(NOT_INSTALLED in r.getMessage() and "claude" in r.getMessage() for r in caplog.records)


def test_adapters_follow_reloads_restart_after_a_crash_and_stop_by_pid(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    cdir = write_config(tmp_path / "cfg", providers(upstream, None), mappings(False))
    holder: dict[str, object] = {}

    def setup(gw: Gateway) -> None:
        sdk = install_sdk_adapter(gw, python=sys.executable)
        holder["sdk"] = sdk
        holder["reload"] = install_reload(gw, cdir, targets=[sdk.reload_target])

    settings = gateway_settings(health_checks=True, watch_config=False, reload_verify_timeout_s=5.0)
    with running_gateway(cdir, settings, setup=setup) as gw:
        sdk, service = holder["sdk"], holder["reload"]
        assert isinstance(sdk, SdkAdapters) and isinstance(service, ReloadService)

        def reload(sdk_port: int | None, model: str = "anthropic/{model}") -> None:
            write_config(cdir, providers(upstream, sdk_port, model), mappings(sdk_port is not None))
            result = gw.call(service.controller.reload("test"), timeout=60)
            assert result.result == "applied", result.as_dict()

        assert sdk.procs == {}  # no litellm_sdk provider: no process
        port = free_port()
        reload(port)
        (first,) = sdk.procs.values()
        assert first.ready.is_set() and first.pid is not None and pid_alive(first.pid)
        assert str(health(gw)["claude"]["last_error"]).startswith(NOT_INSTALLED)  # probed through it

        reload(port, model="anthropic/claude-{model}")  # options travel with requests: no restart
        assert list(sdk.procs.values()) == [first] and pid_alive(first.pid)

        crashed = first.pid
        os.kill(crashed, signal.SIGKILL)  # our own child, by PID
        wait_until(
            lambda: first.pid not in (None, crashed), 20, 0.05, "the supervisor to restart the adapter"
        )
        wait_until(lambda: http_ok(first.url + "/health/live"), 20, 0.1, "the restarted adapter to answer")
        assert first.supervisor.exits[-1].code == -signal.SIGKILL

        moved = free_port()
        reload(moved)
        (second,) = sdk.procs.values()
        assert second is not first and second.url.endswith(f":{moved}") and second.ready.is_set()
        old_pid = first.pid
        assert old_pid is not None
        wait_until(lambda: not pid_alive(old_pid), 20, 0.05, "the retired adapter to stop")

        reload(None)
        assert sdk.procs == {}
        last_pid = second.pid
        assert last_pid is not None
        wait_until(lambda: not pid_alive(last_pid), 20, 0.05, "the last adapter to stop")
        assert chat(gw, "m").status_code == 200


def test_doctor_without_a_running_gateway_checks_the_install_only(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    cdir = write_config(tmp_path / "cfg", providers(upstream, free_port()), mappings(True))
    plan, _, _ = build_plan(cdir)
    found = find_adapter_python()
    checks = {c.name: c for c in sdk_checks(plan, None)}
    assert checks["sdk adapter"].status == ("ok" if found.installed else "fail")
    assert checks["provider claude"].status == "skip"
    assert "the gateway is not running" in checks["provider claude"].message
    other = {c.name: c for c in sdk_checks(plan, {"providers": {}})}
    assert "does not know it" in other["provider claude"].message
    up = {c.name: c for c in sdk_checks(plan, {"providers": {"claude": {"status": "healthy"}}})}
    assert up["provider claude"].status == "ok"
    plain = write_config(tmp_path / "plain", providers(upstream, None), mappings(False))
    assert sdk_checks(build_plan(plain)[0], None) == []


def test_after_make_litellm_the_adapter_restarts_on_the_new_python(
    tmp_path: Path, upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = require_adapter_python()  # what `make litellm` provides: a Python with LiteLLM
    monkeypatch.setattr(sdk_sidecar, "INSTALL_CHECK_S", 0.2)
    monkeypatch.setenv(PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))
    cdir = write_config(tmp_path / "cfg", providers(upstream, free_port()), mappings(True))
    holder: dict[str, SdkAdapters] = {}

    def setup(gw: Gateway) -> None:
        holder["sdk"] = install_sdk_adapter(gw)

    with running_gateway(cdir, gateway_settings(), setup=setup):
        sdk = holder["sdk"]
        (before,) = sdk.procs.values()
        assert not before.python.installed
        monkeypatch.setenv(PYTHON_ENV, real)
        wait_until(lambda: any(p.python.installed for p in sdk.procs.values()), 10, 0.05, "the restart")
        (after,) = sdk.procs.values()
        assert after is not before and after.python.path == real
        wait_until(after.ready.is_set, 20, 0.05, "the new adapter")
        old_pid = before.pid
        assert old_pid is not None
        wait_until(lambda: not pid_alive(old_pid), 20, 0.05, "the old adapter to stop")


def test_a_taken_port_is_reported_and_does_not_hold_up_a_reload(
    tmp_path: Path, upstream: ScriptedUpstream
) -> None:
    cdir = write_config(tmp_path / "cfg", providers(upstream, None), mappings(False))
    log_path = tmp_path / "adapter.log"
    holder: dict[str, object] = {}

    def setup(gw: Gateway) -> None:
        sdk = install_sdk_adapter(gw, python=sys.executable, log_path=log_path)
        holder["sdk"], holder["reload"] = sdk, install_reload(gw, cdir, targets=[sdk.reload_target])

    with (
        socket.socket() as squatter,
        running_gateway(cdir, gateway_settings(watch_config=False), setup=setup) as gw,
    ):
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: the adapter cannot bind it
        port = squatter.getsockname()[1]
        write_config(cdir, providers(upstream, port), mappings(True))
        service = holder["reload"]
        assert isinstance(service, ReloadService)
        t0 = time.monotonic()
        result = gw.call(service.controller.reload("test"), timeout=60)
        assert result.result == "applied" and time.monotonic() - t0 < 30  # not the whole ready timeout
        assert any("not ready yet" in n for n in result.as_dict()["verify"]["notes"])
        assert f"127.0.0.1:{port} is in use; give the litellm_sdk provider another loopback port" in (
            log_path.read_text()
        )
        assert chat(gw, "m").status_code == 200
