"""The Grafana dashboards and provisioning: valid, consistent, and only using metrics the gateway exports."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from aib.observe.metrics import MetricsObserver
from aib.observe.requestlog import RequestLog
from observe_support import FakeGateway, make_record, small_plan

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
EXPECTED_TITLES = {
    "AIB / Overview",
    "AIB / Latency and TTFT",
    "AIB / Providers and Health",
    "AIB / Tokens and Usage",
    "AIB / Errors, Fallbacks and Reloads",
}
# PromQL words that are not metric names
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "topk", "count", "or", "and", "on", "group_left",
    "vector", "without", "avg", "max", "min", "le", "unless", "ignoring", "bool", "clamp_min", "label_values",
}  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name a gateway's /metrics can show (with a request of each kind and a request log)."""
    gw = FakeGateway(small_plan(tmp_path))
    obs = MetricsObserver(gw)
    rl = RequestLog(tmp_path / "r.db")
    obs.add_drop_source(rl.drops)
    gw.state.provider("ollama").healthy = True
    gw.state.provider("ollama").last_latency_ms = 1.0
    obs.request_done(make_record(stream=True))
    obs.request_done(make_record(attempts=[*make_record().attempts, *make_record().attempts]))
    text = obs.render()[0].decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are metric names (labels and functions removed)."""
    stripped = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    stripped = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # ranges
    stripped = re.sub(r'"[^"]*"', "", stripped)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def test_five_dashboards_with_the_expected_titles() -> None:
    assert len(DASHBOARDS) == 5
    assert {load(p)["title"] for p in DASHBOARDS} == EXPECTED_TITLES
    assert len({load(p)["uid"] for p in DASHBOARDS}) == 5


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    d = load(path)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert len(d["panels"]) >= 6
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for p in d["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p["targets"]:
            assert t["refId"] and t["expr"]
            assert t["datasource"]["uid"] == "${datasource}"
    # panels do not overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_queries_use_only_metrics_the_gateway_exports(tmp_path: Path) -> None:
    exported = exported_names(tmp_path)
    used: set[str] = set()
    for path in DASHBOARDS:
        for e in exprs(load(path)):
            names = metric_names(e)
            assert names, e
            missing = names - exported
            assert not missing, f"{path.name}: {sorted(missing)} not exported (in {e})"
            used |= names
    # the families an operator needs are on some dashboard
    for family in (
        "aib_requests_total", "aib_request_duration_seconds_bucket", "aib_time_to_first_token_seconds_bucket",
        "aib_gateway_overhead_seconds_bucket", "aib_prompt_tokens_total", "aib_completion_tokens_total",
        "aib_fallbacks_total", "aib_upstream_attempts_total", "aib_provider_up", "aib_provider_probe_latency_seconds",
        "aib_breaker_state", "aib_config_info", "aib_config_reloads_total", "aib_request_log_dropped_total",
        "aib_inflight_requests",
    ):  # fmt: skip
        assert family in used, family


def test_metric_name_extraction() -> None:
    e = 'histogram_quantile(0.95, sum by (le, route) (rate(aib_request_duration_seconds_bucket{route=~"$route"}[$__rate_interval])))'
    assert metric_names(e) == {"aib_request_duration_seconds_bucket"}
    e2 = "rate(process_cpu_seconds_total[1m]) * on (job, instance) group_left () count by (job, instance) (aib_config_info)"
    assert metric_names(e2) == {"process_cpu_seconds_total", "aib_config_info"}


def test_generated_dashboards_are_up_to_date(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", MONITORING / "grafana" / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_dashboards", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, capsys.readouterr().err


def test_provisioning_and_compose_point_at_the_files() -> None:
    yaml = YAML(typ="safe")
    ds = yaml.load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus" and "127.0.0.1:9090" in ds["datasources"][0]["url"]
    prov = yaml.load((MONITORING / "grafana/provisioning/dashboards/aib.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    compose = yaml.load((MONITORING / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    prom = compose["services"]["prometheus"]
    assert any(v.startswith("./prometheus.yml:") for v in prom["volumes"])
    assert any(v.startswith("./alerts.yml:") for v in prom["volumes"])
    assert "--web.listen-address=127.0.0.1:9090" in prom["command"]
    for name in ("prometheus.yml", "alerts.yml", "alerts_test.yml"):
        assert (MONITORING / name).exists()
