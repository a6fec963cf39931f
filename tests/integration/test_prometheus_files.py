"""monitoring/: promtool checks the Prometheus config and the alert rules, and runs the rules' unit tests.

Also runs scripts/run-prometheus.sh for real (a Prometheus process on a free port, stopped by PID).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from aib.devtools.llamacpp import free_port
from observe_support import require_tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=MONITORING
    )


def test_prometheus_config_is_valid() -> None:
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alert_rules_are_valid() -> None:
    res = promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 11 rules found" in res.stdout


def test_alert_rule_unit_tests_pass() -> None:
    res = promtool("test", "rules", "alerts_test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alerts_cover_what_operators_asked_for() -> None:
    text = (MONITORING / "alerts.yml").read_text()
    for name in (
        "AibGatewayDown",
        "AibProviderDown",
        "AibHighErrorRate",
        "AibHighLatencyP99",
        "AibHighFallbackRate",
        "AibConfigReloadFailed",
    ):
        assert f"alert: {name}" in text
        assert name in (MONITORING / "alerts_test.yml").read_text(), f"{name} has no promtool test"


def test_run_prometheus_script_check_mode() -> None:
    require_tool("prometheus")
    res = subprocess.run(
        [str(ROOT / "scripts" / "run-prometheus.sh"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_run_prometheus_script_runs_a_real_prometheus(tmp_path: Path) -> None:
    require_tool("prometheus")
    port = free_port()
    gateway = f"127.0.0.1:{free_port()}"  # nothing listens: the target is simply down
    log = (tmp_path / "prom.log").open("wb")
    proc = subprocess.Popen(
        [
            str(ROOT / "scripts" / "run-prometheus.sh"),
            "--port",
            str(port),
            "--data",
            str(tmp_path / "data"),
            "--gateway",
            gateway,
            "--interval",
            "1s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        targets: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2) as r:
                    targets = orjson.loads(r.read())["data"]["activeTargets"]
                if targets:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "prom.log").read_text()
            time.sleep(0.2)
        jobs = {t["labels"]["job"]: t for t in targets}  # type: ignore[index]
        assert set(jobs) == {"aib-gateway", "vllm", "llamacpp"}
        assert jobs["aib-gateway"]["scrapeUrl"] == f"http://{gateway}/metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=2) as r:
            groups = orjson.loads(r.read())["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == 11
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        log.close()
    assert proc.returncode is not None
