"""A real Prometheus scrapes a real gateway serving real llama.cpp traffic; every dashboard panel and
every alert expression is then run through Prometheus' query API.

Prometheus (Debian package, ``prometheus``) runs as a child process on a free 127.0.0.1 port with
``scrape_interval: 1s`` and ``monitoring/alerts.yml`` loaded; it is stopped by PID. The gateway runs
in-process (``gateway_harness.running_gateway``) with health checks and observability on, in front of
the two SmolLM2 servers of the ``llama_servers`` fixture and one address where nothing listens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from ruamel.yaml import YAML

from aib.devtools.llamacpp import LlamaCppServer, free_port
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from gateway_harness import (
    RunningGateway,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    stop_process,
)
from observe_support import require_tool

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
# what Grafana would put in place of its variables
SUBSTITUTE = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$route": ".*",
    "$provider": ".*",
}
CHAT = [{"role": "user", "content": "Name one colour."}]


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.proc = proc

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            return orjson.loads(r.read())

    def query(self, expr: str) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400: the expression does not parse
            result = orjson.loads(exc.read())
        return result


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    """``start(gateway_port)`` -> a running Prometheus scraping that gateway every second."""
    binary = require_tool("prometheus")
    procs: list[subprocess.Popen[bytes]] = []

    def start(gateway_port: int) -> Prometheus:
        conf = tmp_path / "prometheus"
        conf.mkdir()
        shutil.copy(MONITORING / "alerts.yml", conf / "alerts.yml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [
                {"job_name": "aib-gateway", "static_configs": [{"targets": [f"127.0.0.1:{gateway_port}"]}]}
            ],
        }
        (conf / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={conf / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return Prometheus(url, proc)
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text())
            time.sleep(0.1)

    try:
        yield start
    finally:
        for proc in procs:
            stop_process(proc, timeout=20)


def config_for(servers: list[LlamaCppServer]) -> tuple[str, str]:
    a, b = servers
    providers = f"""
    version: 1
    providers:
      llama_a:
        type: llamacpp
        base_url: {a.root_url}
        models: [smollm2]
        health: {{interval_s: 2, timeout_s: 2}}
      llama_b:
        type: llamacpp
        base_url: {b.root_url}
        models: [smollm2]
        health: {{interval_s: 2, timeout_s: 2}}
      gone:
        type: openai_compatible
        base_url: {dead_url()}
        models: [ghost]
        health: {{interval_s: 2, timeout_s: 1}}
    """
    mappings = """
    version: 1
    defaults:
      breaker: {failure_threshold: 2, cooldown_s: 300}
    models:
      smollm2:
        strategy: round_robin
        deployments:
          - {provider: llama_a, upstream: smollm2}
          - {provider: llama_b, upstream: smollm2}
      flaky: {provider: gone, upstream: ghost, fallbacks: [smollm2]}
      broken: {provider: gone, upstream: ghost}
    """
    return providers, mappings


def real_traffic(gw: RunningGateway) -> dict[str, int]:
    """A bounded mix: plain and streamed chats, a fallback, failures, unknown model, bad body."""
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=gw.base_url, timeout=120) as client:
        for i in range(4):
            r = client.post(
                "/v1/chat/completions",
                json={"model": "smollm2", "messages": CHAT, "max_tokens": 8, "temperature": 0},
            )
            statuses[f"chat-{i}"] = r.status_code
        for i in range(2):
            with client.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "smollm2", "messages": CHAT, "max_tokens": 8, "stream": True},
            ) as s:
                s.read()
                statuses[f"stream-{i}"] = s.status_code
        for name in ("flaky", "broken", "broken", "no-such-model"):
            statuses[name] = client.post(
                "/v1/chat/completions", json={"model": name, "messages": CHAT, "max_tokens": 8}
            ).status_code
        statuses["bad"] = client.post("/v1/chat/completions", content=b"not json").status_code
    return statuses


def panel_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p["targets"]:
                expr = t["expr"]
                for k in sorted(SUBSTITUTE, key=len, reverse=True):
                    expr = expr.replace(k, SUBSTITUTE[k])
                out.append((path.stem, p["title"], expr))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    doc = YAML(typ="safe").load((MONITORING / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def test_every_panel_and_alert_works_against_real_prometheus(
    llama_servers: list[LlamaCppServer], prometheus_for: Any, tmp_path: Path
) -> None:
    providers, mappings = config_for(llama_servers)
    plan = plan_from_yaml(tmp_path / "config", providers, mappings)
    observe = ObserveSettings(request_log=tmp_path / "requests.db", flush_interval_s=0.05)
    with running_gateway(plan, gateway_settings(health_checks=True)) as gw:
        install_observability(gw.gateway, observe)
        gw.wait_first_probe(timeout=15)
        prom = prometheus_for(gw.port)
        statuses = real_traffic(gw)
        assert all(statuses[k] == 200 for k in statuses if k.startswith(("chat", "stream"))), statuses
        assert statuses["flaky"] == 200 and statuses["no-such-model"] == 404 and statuses["bad"] == 400
        assert statuses["broken"] in (502, 503)

        # wait until Prometheus has scraped the traffic (all of it) a few times
        expected = float(len(statuses))
        deadline = time.monotonic() + 30
        while True:
            res = prom.query("sum(aib_requests_total)")["data"]["result"]
            if res and float(res[0]["value"][1]) >= expected:
                break
            assert time.monotonic() < deadline, f"Prometheus did not see the traffic: {res}"
            time.sleep(0.5)
        time.sleep(3)  # a few more scrapes: rate() needs two samples after the traffic

        up = prom.query('up{job="aib-gateway"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"

        empty, failed = [], []
        queries = panel_queries()
        assert len(queries) >= 40
        for dash, title, expr in queries:
            answer = prom.query(expr)
            if answer.get("status") != "success":
                failed.append(f"{dash} / {title}: {answer.get('error')} :: {expr}")
            elif not answer["data"]["result"]:
                empty.append(f"{dash} / {title}: {expr}")
        assert not failed, "queries Prometheus rejected:\n" + "\n".join(failed)
        assert not empty, "panels without data after real traffic:\n" + "\n".join(empty)

        # Grafana's variable queries: label_values(aib_requests_total, route|provider)
        for label in ("route", "provider"):
            values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": "aib_requests_total"})["data"]
            assert values, label
        routes = set(prom.get("/api/v1/label/route/values", **{"match[]": "aib_requests_total"})["data"])
        assert routes == {"smollm2", "flaky", "broken", "unknown"}

        # every alert expression parses, and the rules evaluate without error
        for name, expr in alert_exprs():
            assert prom.query(expr).get("status") == "success", name
        deadline = time.monotonic() + 15
        while True:
            groups = prom.get("/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if len(rules) == len(alert_exprs()) and all(
                r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok" for r in rules
            ):
                break
            bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] == "err"]
            assert not bad, bad
            assert time.monotonic() < deadline, [(r["name"], r["health"]) for r in rules]
            time.sleep(0.5)
        # the broken route's deployment has an open breaker: the alert is pending (it needs 5 minutes)
        alerts = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["data"]["alerts"]}
        assert "AibBreakerOpen" in alerts and "AibProviderDown" in alerts
