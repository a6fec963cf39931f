"""`aib explain --gateway`, `GET /admin/route`, `/health` and `aib monitor` show why deployments rank
where they do: backend signals (read from scripted vLLM-shaped /metrics), breakers, health, discovery."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from aib.ops.monitor import signal_text
from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration

runner = CliRunner()


def vllm_metrics(running: int, waiting: int) -> Reply:
    text = (
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}.0\n'
        f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    )
    return Reply.text(text, content_type="text/plain; version=0.0.4")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with ScriptedUpstream(["m"]) as busy, ScriptedUpstream(["m"]) as idle:
        busy.enqueue(vllm_metrics(3, 2))  # one poll each: the interval is a minute
        idle.enqueue(vllm_metrics(0, 0))
        providers = f"""
            providers:
              busy: {{type: vllm, base_url: "{busy.base_url}", discovery: true, signals: {{interval_s: 60, stale_after_s: 600}}}}
              idle: {{type: vllm, base_url: "{idle.base_url}", discovery: true, signals: {{interval_s: 60, stale_after_s: 600}}}}
        """
        mappings = """
            models:
              g:
                strategy: least_loaded
                deployments: [{provider: busy, upstream: m}, {provider: idle, upstream: m}]
              sticky:
                strategy: prefix_affinity
                deployments: [{provider: busy, upstream: m}, {provider: idle, upstream: m}]
        """
        plan = plan_from_yaml(tmp_path_factory.mktemp("explain"), providers, mappings)
        observe = ObserveSettings(access_log=False, request_log=None, writer="thread")
        with running_gateway(
            plan, gateway_settings(health_checks=True), setup=lambda g: install_observability(g, observe)
        ) as running:
            running.wait_first_probe()
            state = running.gateway.state
            wait_until(lambda: all(state.signals[p].reading is not None for p in ("busy", "idle")), 10)
            yield running


def explain(gw: RunningGateway, *args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(
        app, ["explain", *args, "--gateway", gw.base_url], env={"COLUMNS": "220", **(env or {})}
    )


def test_admin_route_ranks_by_the_servers_own_queue(gw: RunningGateway) -> None:
    body = httpx.get(gw.base_url + "/admin/route", params={"model": "g"}).json()
    assert body["route"] == "g" and body["strategy"] == "least_loaded"  # the static part, as before
    route = body["live"]["routes"][0]
    assert route["order"] == ["idle/m", "busy/m"]
    busy = route["deployments"][1]
    assert busy["id"] == "busy/m" and busy["rank"] == 2 and busy["load"] == 5
    assert busy["server_running"] == 3 and busy["server_waiting"] == 2 and busy["from"] == "server signals"
    assert busy["health"] == "healthy" and busy["breaker"]["state"] == "closed" and busy["discovered"] is True
    assert busy["signals"]["kv_cache"] == 0.5 and busy["tier"] == "model loaded"
    again = httpx.get(gw.base_url + "/admin/route", params={"model": "g"}).json()["live"]["routes"][0]
    assert again["order"] == route["order"]  # asking moved no rotation counter


def test_explain_gateway_prints_the_live_table(gw: RunningGateway) -> None:
    r = explain(gw, "g")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "g -> route g" in out and "least_loaded" in out
    assert out.index("idle/m") < out.index("busy/m")
    assert "server signals" in out and "run 3 wait 2" in out and "kv 50%" in out
    data = orjson.loads(explain(gw, "g", "--json").output)
    assert data["live"]["routes"][0]["order"] == ["idle/m", "busy/m"]


def test_explain_gateway_affinity_for_a_session(gw: RunningGateway) -> None:
    r = explain(gw, "sticky", "--session", "alice")
    assert r.exit_code == 0, r.output
    assert "affinity key from session" in r.output
    data = orjson.loads(explain(gw, "sticky", "--session", "alice", "--json").output)
    aff = data["live"]["routes"][0]["affinity"]
    assert aff["key_from"] == "session" and aff["chosen"] in ("busy/m", "idle/m")
    assert "no key" in explain(gw, "sticky").output  # without a session: the tie-break orders


def test_explain_gateway_errors_are_one_line(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    r = explain(gw, "nope")
    assert r.exit_code == 1 and "'nope' is not configured on this gateway" in r.output
    # a gateway whose admin key is in another variable than the one the CLI sends (same process here)
    monkeypatch.setenv("AIB_TEST_GATEWAY_ADMIN_KEY", "sekrit")
    with running_gateway(
        gw.gateway.plan, gateway_settings(admin_key_env="AIB_TEST_GATEWAY_ADMIN_KEY")
    ) as locked:
        r = explain(locked, "g", env={"AIB_ADMIN_KEY": "wrong"})
        assert r.exit_code == 1 and "admin key" in r.output
        assert explain(locked, "g", env={"AIB_ADMIN_KEY": "sekrit"}).exit_code == 0
    down = runner.invoke(app, ["explain", "g", "--gateway", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "gateway down" in down.output


def test_health_and_monitor_show_the_signals(gw: RunningGateway) -> None:
    p = httpx.get(gw.base_url + "/health").json()["providers"]["busy"]
    s = p["signals"]
    assert s["state"] == "fresh" and s["running"] == 3 and s["waiting"] == 2 and s["source"] == "/metrics"
    assert s["per_model"] == {"m": {"running": 3.0, "waiting": 2.0}}
    assert signal_text(s).startswith("3 run / 2 wait, kv 50%, ") and "s old" in signal_text(s)
    r = runner.invoke(app, ["monitor", "--gateway", gw.base_url, "--once", "--interval", "0.1", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in orjson.loads(r.output)["providers"]}
    assert rows["busy"]["signals"].startswith("3 run / 2 wait") and rows["idle"]["signals"].startswith(
        "0 run"
    )


def test_signal_text_for_every_state() -> None:
    assert signal_text(None) == "" and signal_text({"state": "unsupported"}) == "n/a"
    assert signal_text({"state": "none"}) == "no reading"
    assert (
        signal_text({"state": "stale", "age_s": 30.0, "loaded_models": ["a", "b"]})
        == "2 loaded, 30.0s old, stale"
    )
