"""Observability on the real gateway: /metrics (checked by promtool), access log, request log, secrets.

The gateway runs in-process under uvicorn (``gateway_harness.running_gateway``) with
``install_observability``; upstreams are ``ScriptedUpstream`` servers. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from aib.gateway.server import build_gateway
from aib.observe import install_observability
from aib.observe.client import WriterClient
from aib.observe.install import Observability
from aib.observe.logs import ACCESS_LOGGER, AccessLogObserver, JsonFormatter, LineHandler, configure_logging
from aib.observe.metrics import MetricsObserver
from aib.observe.requestquery import RequestLogReader
from aib.observe.settings import ObserveSettings
from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    write_config,
)
from observe_support import require_tool

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "hi"}]
KEY_ENV = "AIB_TEST_UPSTREAM_KEY"
ADMIN_ENV = "AIB_TEST_ADMIN_KEY"


def providers(up: ScriptedUpstream, dead: str, key_env: str | None = None) -> str:
    key = f"\n        api_key_env: {key_env}" if key_env else ""
    return f"""
    version: 1
    providers:
      up:
        type: openai_compatible
        base_url: {up.base_url}{key}
        models: [m1, m2]
      dead:
        type: openai_compatible
        base_url: {dead}
        models: [m0]
    """


MAPPINGS = """
    version: 1
    defaults:
      breaker: {failure_threshold: 1, cooldown_s: 60}
      retries: {max_attempts: 3}
    models:
      m1: {provider: up, aliases: [one]}
      m2: {provider: up}
      flaky: {provider: dead, upstream: m0, fallbacks: [m1]}
      broken: {provider: dead, upstream: m0}
    patterns:
      - match: "up/*"
        provider: up
        upstream: "{1}"
"""


@pytest.fixture
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m1", "m2"]) as fake:
        yield fake


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    logger = logging.getLogger(ACCESS_LOGGER)
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class AccessLines:
    """The JSON access lines of a test, wherever the writer put them: the ``aib.access`` logger's
    handler (thread writer) or the gateway's stderr (writer process, captured by ``capfd``)."""

    def __init__(self, writer: str, stream: io.StringIO, capfd: pytest.CaptureFixture[str]) -> None:
        self.writer, self.stream, self.capfd = writer, stream, capfd
        self.seen = ""

    def text(self) -> str:
        if self.writer == "process":
            self.seen += self.capfd.readouterr().err
            return "".join(line + "\n" for line in self.seen.splitlines() if '"logger":"aib.access"' in line)
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.text().splitlines()]


@pytest.fixture(params=["process", "thread"])
def writer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def access(writer: str, access_log: io.StringIO, capfd: pytest.CaptureFixture[str]) -> AccessLines:
    return AccessLines(writer, access_log, capfd)


@pytest.fixture
def observed(
    tmp_path: Path, up: ScriptedUpstream, writer: str
) -> Iterator[tuple[RunningGateway, Observability]]:
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    settings = ObserveSettings(
        request_log=tmp_path / "requests.db", flush_interval_s=0.02, writer=writer, log_format="json"
    )  # type: ignore[arg-type]
    with running_gateway(plan) as rg:
        handle = install_observability(rg.gateway, settings)
        yield rg, handle


def traffic(client: httpx.Client) -> dict[str, httpx.Response]:
    """One request of each kind: ok, alias, stream, pattern, fallback, all failed, unknown, bad JSON."""
    out = {
        "ok": client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT}),
        "alias": client.post("/v1/chat/completions", json={"model": "one", "messages": CHAT}),
        "stream": client.post("/v1/chat/completions", json={"model": "m2", "messages": CHAT, "stream": True}),
        "pattern": client.post("/v1/chat/completions", json={"model": "up/whatever", "messages": CHAT}),
        "fallback": client.post("/v1/chat/completions", json={"model": "flaky", "messages": CHAT}),
        "broken": client.post("/v1/chat/completions", json={"model": "broken", "messages": CHAT}),
        "unknown": client.post("/v1/chat/completions", json={"model": "nope", "messages": CHAT}),
        "bad": client.post("/v1/chat/completions", content=b"{not json"),
    }
    return out


def metrics_text(client: httpx.Client, admin_key: str | None = None) -> str:
    resp = client.get("/metrics", headers={"authorization": f"Bearer {admin_key}"} if admin_key else None)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return resp.text


def sample(text: str, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_metrics_of_real_traffic(observed: tuple[RunningGateway, Observability]) -> None:
    rg, _ = observed
    with httpx.Client(base_url=rg.base_url, timeout=10) as client:
        r = traffic(client)
        assert [r[k].status_code for k in ("ok", "alias", "stream", "pattern", "fallback")] == [200] * 5
        assert (
            r["broken"].status_code in (502, 503)
            and r["unknown"].status_code == 404
            and r["bad"].status_code == 400
        )
        text = metrics_text(client)
    ok = {"endpoint": "chat/completions", "status": "200", "provider": "up"}
    assert sample(text, "aib_requests_total", route="m1", **ok) == 2  # name and alias
    assert sample(text, "aib_requests_total", route="m2", **ok) == 1
    assert sample(text, "aib_requests_total", route="pattern:up/*", **ok) == 1
    assert sample(text, "aib_requests_total", route="flaky", **ok) == 1
    assert (
        sample(
            text, "aib_requests_total", route="broken", provider="none", status=str(r["broken"].status_code)
        )
        == 1
    )
    assert sample(text, "aib_requests_total", route="unknown", provider="none", status="404") == 1
    assert sample(text, "aib_requests_total", route="unknown", provider="none", status="400") == 1
    assert sample(text, "aib_time_to_first_token_seconds_count", route="m2", provider="up") == 1
    assert sample(text, "aib_fallbacks_total", route="flaky") == 1
    # flaky opened the breaker (threshold 1), so broken made no attempt
    assert sample(text, "aib_upstream_attempts_total", provider="dead", outcome="connect_error") == 1
    assert sample(text, "aib_prompt_tokens_total", route="m1", provider="up") == 6
    assert sample(text, "aib_gateway_overhead_seconds_count") == 8
    assert sample(text, "aib_breaker_state", deployment="dead/m0") == 2  # threshold 1: open
    assert sample(text, "aib_inflight_requests") == 0
    assert sample(text, "aib_request_log_dropped_total", reason="queue_full") == 0
    routes = {
        s.labels["route"]
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "route" in s.labels
    }
    assert routes <= {"m1", "m2", "flaky", "broken", "pattern:up/*", "unknown"}


def test_promtool_accepts_the_exposition(observed: tuple[RunningGateway, Observability]) -> None:
    promtool = require_tool("promtool")
    rg, _ = observed
    with httpx.Client(base_url=rg.base_url, timeout=10) as client:
        traffic(client)
        text = metrics_text(client)
        om = client.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # promtool check metrics reads the text format only (on OpenMetrics it stops at the first `info`
    # type): the OpenMetrics answer goes through prometheus_client's strict OpenMetrics parser
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(om.text)}
    assert families["aib_config"].type == "info" and families["aib_requests"].type == "counter"
    assert sum(len(f.samples) for f in families.values()) > 20
    assert om.text.endswith("# EOF\n")


def test_request_log_and_access_log_describe_each_request(
    observed: tuple[RunningGateway, Observability], access: AccessLines, tmp_path: Path
) -> None:
    rg, handle = observed
    with httpx.Client(base_url=rg.base_url, timeout=10) as client:
        r = traffic(client)
    assert handle.request_log is not None and handle.request_log.flush()
    assert handle.access is not None
    handle.access.close()  # writes the queued lines
    rid = r["fallback"].headers["x-request-id"]
    with RequestLogReader(tmp_path / "requests.db") as reader:
        t = reader.trace(rid)
        assert t is not None
        assert (t["model"], t["route"], t["provider"], t["upstream"], t["status"], t["fallbacks"]) == (
            "flaky",
            "flaky",
            "up",
            "m1",
            200,
            1,
        )
        assert [(a["target"], a["ok"]) for a in t["attempts"]] == [("dead/m0", 0), ("up/m1", 1)]
        assert "cannot connect" in t["attempts"][0]["error"]
        assert len(reader.query(limit=100)) == 8
        unknown = reader.trace(r["unknown"].headers["x-request-id"])
        assert unknown is not None and unknown["error_code"] == "model_not_found"
    by_id = {line["request_id"]: line for line in access.lines()}
    assert set(by_id) >= {
        resp.headers["x-request-id"] for resp in r.values() if "x-request-id" in resp.headers
    }
    assert by_id[rid]["fallbacks"] == 1 and by_id[rid]["provider"] == "up" and by_id[rid]["upstream"] == "m1"
    assert by_id[r["stream"].headers["x-request-id"]]["stream"] is True


def test_shutdown_flushes_the_request_log(tmp_path: Path, up: ScriptedUpstream, writer: str) -> None:
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    db = tmp_path / "requests.db"
    with running_gateway(plan) as rg:
        handle = install_observability(
            rg.gateway,
            ObserveSettings(request_log=db, flush_interval_s=30, access_log=False, writer=writer),  # type: ignore[arg-type]
        )
        with httpx.Client(base_url=rg.base_url, timeout=10) as client:
            for _ in range(15):
                assert (
                    client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT}).status_code
                    == 200
                )
        assert handle.request_log is not None and handle.request_log.written == 0  # still queued
    assert handle.request_log is None  # closed by the gateway's shutdown hook
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (15,)


def test_a_locked_request_log_never_fails_a_request(
    tmp_path: Path, up: ScriptedUpstream, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    db = tmp_path / "requests.db"
    with running_gateway(plan) as rg, httpx.Client(base_url=rg.base_url, timeout=10) as client:
        handle = install_observability(
            rg.gateway,
            ObserveSettings(request_log=db, flush_interval_s=0.02, access_log=False, writer=writer),  # type: ignore[arg-type]
        )
        assert client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT}).status_code == 200
        assert handle.request_log is not None and handle.request_log.flush()
        # the writer may still be finishing its own transaction (a busy machine): wait for it, up to 10 s
        holder = sqlite3.connect(db, isolation_level=None, timeout=10)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            for _ in range(20):
                t0 = time.perf_counter()
                resp = client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT})
                assert resp.status_code == 200
                assert time.perf_counter() - t0 < 1.0
            assert handle.request_log.flush(10)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        text = metrics_text(client)
    assert (sample(text, "aib_request_log_dropped_total", reason="locked") or 0) == 20
    warnings = [r for r in caplog.records if r.name == "aib.requestlog" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lock" in warnings[0].getMessage()


def test_keys_never_reach_logs_metrics_or_the_request_log(
    tmp_path: Path, up: ScriptedUpstream, access: AccessLines, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    key = "sk-live-" + secrets.token_hex(16)
    admin = "adm-" + secrets.token_hex(12)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(ADMIN_ENV, admin)
    root_out = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    configure_logging("json", "debug", stream=root_out)
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url(), KEY_ENV), MAPPINGS)
    db = tmp_path / "requests.db"
    try:
        with running_gateway(plan, gateway_settings(admin_key_env=ADMIN_ENV)) as rg:
            handle = install_observability(
                rg.gateway,
                ObserveSettings(
                    request_log=db,
                    flush_interval_s=0.02,
                    log_bodies=True,
                    writer=writer,
                    log_format="json",  # type: ignore[arg-type]
                ),
            )
            # upstreams that echo the key back in their errors (as real APIs do)
            up.enqueue(
                Reply.error(401, f"Incorrect API key provided: {key}"),
                Reply.error(500, f"auth backend said Bearer {key} is revoked"),
            )
            with httpx.Client(base_url=rg.base_url, timeout=10) as client:
                first = client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT})
                second = client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT})
                third = client.post(
                    "/v1/chat/completions",
                    json={"model": "m2", "messages": CHAT},
                    headers={"authorization": f"Bearer {key}"},
                )
                admin_ok = client.get(
                    "/admin/route", params={"model": "m1"}, headers={"authorization": f"Bearer {admin}"}
                )
                assert client.get("/metrics").status_code == 401  # an admin key is set: it guards /metrics
                metrics = metrics_text(client, admin)
            assert first.status_code == 401 and second.status_code == 502 and third.status_code == 200
            assert admin_ok.status_code == 200
            assert up.requests[0].headers["authorization"] == f"Bearer {key}"  # the key was really in use
            assert handle.request_log is not None and handle.request_log.flush()
            handle.close()
        dump = "\n".join(sqlite3.connect(db).iterdump())
    finally:
        for h in list(root.handlers):
            if h not in saved[0]:
                root.removeHandler(h)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    logs = access.text() + access.capfd.readouterr().err + root_out.getvalue()
    assert "Incorrect API key provided" in dump and "***" in dump  # the errors are there, redacted
    assert '"status":401' in logs
    for where, text in (("request log", dump), ("logs", logs), ("metrics", metrics)):
        assert key not in text, f"the upstream key leaked into the {where}"
        assert admin not in text, f"the admin key leaked into the {where}"


def test_bodies_are_stored_only_when_enabled(tmp_path: Path, up: ScriptedUpstream, writer: str) -> None:
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    for enabled in (False, True):
        db = tmp_path / f"bodies-{enabled}.db"
        with running_gateway(plan) as rg:
            install_observability(
                rg.gateway,
                ObserveSettings(
                    request_log=db, log_bodies=enabled, access_log=False, metrics=False, writer=writer
                ),  # type: ignore[arg-type]
            )
            assert rg.gateway.keep_bodies is enabled
            with httpx.Client(base_url=rg.base_url, timeout=10) as client:
                assert (
                    client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT}).status_code
                    == 200
                )
        with sqlite3.connect(db) as con:
            stored = con.execute("SELECT request, response FROM bodies").fetchall()
        if not enabled:
            assert stored == []
            continue
        [(request, response)] = stored
        assert request == orjson.dumps({"model": "m1", "messages": CHAT})
        assert orjson.loads(response)["object"] == "chat.completion"  # the upstream's answer, as sent


def test_provider_health_in_metrics(tmp_path: Path, up: ScriptedUpstream) -> None:
    plan = plan_from_yaml(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    with running_gateway(plan, gateway_settings(health_checks=True)) as rg:
        install_observability(rg.gateway, ObserveSettings(request_log=None, access_log=False))
        rg.wait_first_probe()
        with httpx.Client(base_url=rg.base_url, timeout=10) as client:
            text = metrics_text(client)
    assert sample(text, "aib_provider_up", provider="up") == 1
    assert sample(text, "aib_provider_up", provider="dead") == 0
    latency = sample(text, "aib_provider_probe_latency_seconds", provider="up")
    assert latency is not None and 0 < latency < 5
    assert sample(text, "aib_config_info", version=rg.gateway.plan.version) == 1


def test_build_gateway_installs_and_shutdown_closes(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = write_config(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    db = tmp_path / "requests.db"
    gw = build_gateway(gateway_settings(config_dir=cdir), ObserveSettings(request_log=db))
    kinds = {type(o) for o in gw.observers}
    assert kinds == {WriterClient}  # the default: one observer batches; metrics count its batches
    assert gw.on_startup  # which starts with the gateway
    assert "/metrics" in gw._routes and gw.on_shutdown and gw.on_reload
    gw.on_reload[0]("failure")  # what a reload reports
    metrics = next(o for o in gw.observers if isinstance(o, WriterClient)).metrics
    assert isinstance(metrics, MetricsObserver)
    assert metrics.registry.get_sample_value("aib_config_reloads_total", {"result": "failure"}) == 1
    calls: list[str] = []

    async def async_hook() -> None:
        calls.append("async")

    def broken_hook() -> None:
        raise RuntimeError("hook failed")

    gw.on_shutdown.extend([async_hook, broken_hook, lambda: calls.append("sync")])
    asyncio.run(gw.shutdown())
    assert calls == ["async", "sync"]  # a failing hook does not stop the others
    writer = next(o for o in gw.observers if isinstance(o, WriterClient))
    assert writer.closed and writer.pid is None


def test_build_gateway_reads_the_environment(
    tmp_path: Path, up: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdir = write_config(tmp_path / "config", providers(up, dead_url()), MAPPINGS)
    monkeypatch.setenv("AIB_REQUEST_LOG", "off")
    monkeypatch.setenv("AIB_METRICS", "off")
    monkeypatch.setenv("AIB_OBSERVE_WRITER", "thread")
    gw = build_gateway(gateway_settings(config_dir=cdir))
    assert "/metrics" not in gw._routes
    assert [type(o) for o in gw.observers] == [AccessLogObserver]  # access lines only, from a thread
    asyncio.run(gw.shutdown())
