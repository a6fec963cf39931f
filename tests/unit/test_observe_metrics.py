"""The Prometheus observer: values per request, bounded labels, live state read at scrape time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aib.observe.metrics import MetricsObserver, attempt_outcome, route_label, status_label
from aib.observe.records import Attempt
from observe_support import FakeGateway, make_record, small_plan

pytestmark = pytest.mark.unit


@pytest.fixture
def gw(tmp_path: Path) -> FakeGateway:
    return FakeGateway(small_plan(tmp_path))


@pytest.fixture
def obs(gw: FakeGateway) -> MetricsObserver:
    return MetricsObserver(gw, process_metrics=False)


def value(obs: MetricsObserver, name: str, **labels: str) -> float | None:
    return obs.registry.get_sample_value(name, labels)


def families(obs: MetricsObserver) -> dict[str, Any]:
    text = obs.render()[0].decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_one_request_updates_every_family(obs: MetricsObserver) -> None:
    obs.request_done(make_record(total_s=0.25, upstream_s=0.2, prompt_tokens=12, completion_tokens=30))
    labels = {"route": "llama3", "provider": "ollama"}
    assert value(obs, "aib_requests_total", endpoint="chat/completions", status="200", **labels) == 1
    assert value(obs, "aib_request_duration_seconds_count", **labels) == 1
    assert value(obs, "aib_request_duration_seconds_sum", **labels) == pytest.approx(0.25)
    assert value(obs, "aib_request_duration_seconds_bucket", le="0.25", **labels) == 1
    assert value(obs, "aib_request_duration_seconds_bucket", le="0.1", **labels) == 0
    assert value(obs, "aib_gateway_overhead_seconds_sum") == pytest.approx(0.05)
    assert value(obs, "aib_prompt_tokens_total", **labels) == 12
    assert value(obs, "aib_completion_tokens_total", **labels) == 30
    assert value(obs, "aib_upstream_attempts_total", provider="ollama", outcome="ok") == 1
    # not a stream: no time-to-first-token, no fallback
    assert value(obs, "aib_time_to_first_token_seconds_count", **labels) is None
    assert value(obs, "aib_fallbacks_total", route="llama3") is None


def test_streams_record_ttft_and_counts_accumulate(obs: MetricsObserver) -> None:
    for ttfb in (0.02, 0.04, 3.0):
        obs.request_done(make_record(stream=True, ttfb_s=ttfb, prompt_tokens=None, completion_tokens=None))
    labels = {"route": "llama3", "provider": "ollama"}
    assert value(obs, "aib_time_to_first_token_seconds_count", **labels) == 3
    assert value(obs, "aib_time_to_first_token_seconds_sum", **labels) == pytest.approx(3.06)
    assert value(obs, "aib_time_to_first_token_seconds_bucket", le="0.05", **labels) == 2
    assert value(obs, "aib_requests_total", endpoint="chat/completions", status="200", **labels) == 3
    assert value(obs, "aib_prompt_tokens_total", **labels) is None  # no usage reported: no series


def test_fallback_counted_once_per_request_and_attempt_outcomes(obs: MetricsObserver) -> None:
    attempts = [
        Attempt(
            "vllm/big",
            "vllm",
            "big",
            "big",
            None,
            "cannot connect to vllm at http://x: refused",
            None,
            0.001,
            False,
        ),
        Attempt("ollama/llama3", "ollama", "llama3", "llama3", 200, None, 0.1, 0.2, True),
    ]
    obs.request_done(make_record("big", route="big", attempts=attempts))
    assert value(obs, "aib_fallbacks_total", route="big") == 1
    assert value(obs, "aib_upstream_attempts_total", provider="vllm", outcome="connect_error") == 1
    assert value(obs, "aib_upstream_attempts_total", provider="ollama", outcome="ok") == 1


def test_a_route_served_by_its_fallback_route_counts_as_a_fallback(obs: MetricsObserver) -> None:
    """The primary was skipped (provider down, breaker open): one attempt, on the fallback route."""
    answered = Attempt("ollama/llama3", "ollama", "llama3", "llama3", 200, None, 0.1, 0.2, True)
    obs.request_done(make_record("big", route="big", attempts=[answered]))
    assert value(obs, "aib_fallbacks_total", route="big") == 1
    obs.request_done(make_record("llama3", route="llama3"))
    assert value(obs, "aib_fallbacks_total", route="llama3") is None


@pytest.mark.parametrize(
    ("attempt", "outcome"),
    [
        (Attempt("a/b", "a", "b", "r", 200, None, 0.1, 0.2, True), "ok"),
        (Attempt("a/b", "a", "b", "r", 400, "a answered 400: bad", 0.1, 0.2, True), "rejected"),
        (Attempt("a/b", "a", "b", "r", 200, "client disconnected", 0.1, 0.2, False), "cancelled"),
        (
            Attempt(
                "a/b",
                "a",
                "b",
                "r",
                None,
                "a did not answer within the time limit (first byte)",
                None,
                5,
                False,
            ),
            "timeout",
        ),
        (
            Attempt(
                "a/b",
                "a",
                "b",
                "r",
                200,
                "a stopped sending mid-stream (no data within the read timeout)",
                0.1,
                5,
                False,
            ),
            "timeout",
        ),
        (Attempt("a/b", "a", "b", "r", None, "cannot connect to a", None, 0.001, False), "connect_error"),
        (Attempt("a/b", "a", "b", "r", 429, "a answered 429", 0.1, 0.1, False), "rate_limited"),
        (Attempt("a/b", "a", "b", "r", 503, "a answered 503", 0.1, 0.1, False), "http_error"),
        (
            Attempt("a/b", "a", "b", "r", 200, "a sent an unusable answer (non-JSON)", 0.1, 0.1, False),
            "bad_response",
        ),
    ],
)
def test_attempt_outcomes_are_a_small_fixed_set(attempt: Attempt, outcome: str) -> None:
    assert attempt_outcome(attempt) == outcome


def test_route_labels_use_configured_names_or_the_kind_of_rule(gw: FakeGateway) -> None:
    plan = gw.plan
    groups, patterns = plan.groups, plan.patterns

    def label(model: str) -> str:
        res = plan.resolve(model)
        rec = make_record(
            model,
            route=res.group.name if res else None,
            matched_by=res.matched_by if res else None,
            rule=res.rule if res else None,
        )
        return route_label(rec, groups, patterns)

    assert label("llama3") == "llama3"
    assert label("default") == "llama3"  # alias -> its route
    assert label("ollama/anything-at-all") == "pattern:ollama/*"
    assert label("capability/code") == "capability:code"
    assert label("no-such-model") == "unknown"
    # a route that a reload removed since the request started
    gone = make_record("old", route="old", matched_by="exact")
    assert route_label(gone, groups, patterns) == "other"
    # a rule text that is not what the plan writes
    odd = make_record("x", route="x", matched_by="pattern", rule="pattern #99 'zzz' -> x")
    assert route_label(odd, groups, patterns) == "pattern:?"


def test_labels_stay_bounded_whatever_names_clients_send(obs: MetricsObserver, gw: FakeGateway) -> None:
    for i in range(500):
        name = f"ollama/random-{i}"
        res = gw.plan.resolve(name)
        obs.request_done(
            make_record(
                name, route=res.group.name, matched_by="pattern", rule=res.rule, upstream=f"random-{i}"
            )
        )
        obs.request_done(make_record(f"junk-{i}", route=None, matched_by=None, provider=None, status=404))
    fams = families(obs)
    routes = {s.labels["route"] for s in fams["aib_requests"].samples}
    assert routes == {"pattern:ollama/*", "unknown"}
    total_series = sum(len(f.samples) for f in fams.values())
    assert total_series < 120, total_series
    assert len(obs._requests) == 2


def test_status_labels(obs: MetricsObserver) -> None:
    assert status_label(make_record(status=503)) == "503"
    assert status_label(make_record(status=0, client_disconnected=True)) == "499"
    assert status_label(make_record(status=0)) == "0"
    obs.request_done(
        make_record(route=None, matched_by=None, provider=None, status=0, client_disconnected=True)
    )
    assert (
        value(
            obs,
            "aib_requests_total",
            route="unknown",
            provider="none",
            endpoint="chat/completions",
            status="499",
        )
        == 1
    )


def test_tokens_ignore_missing_or_odd_usage(obs: MetricsObserver) -> None:
    obs.request_done(make_record(prompt_tokens=5, completion_tokens=None))
    obs.request_done(make_record(prompt_tokens="7", completion_tokens=3.5))  # type: ignore[arg-type]
    labels = {"route": "llama3", "provider": "ollama"}
    assert value(obs, "aib_prompt_tokens_total", **labels) == 5
    assert value(obs, "aib_completion_tokens_total", **labels) == 0


def test_plan_swap_resets_route_cache(obs: MetricsObserver, gw: FakeGateway, tmp_path: Path) -> None:
    obs.request_done(make_record())
    assert obs._routes_plan is gw.plan
    gw.plan = small_plan(tmp_path / "second")
    obs.request_done(make_record())
    assert obs._routes_plan is gw.plan and len(obs._routes) == 1


def test_live_state_is_read_at_scrape_time(obs: MetricsObserver, gw: FakeGateway) -> None:
    fams = families(obs)
    assert "aib_provider_up" in fams and not fams["aib_provider_up"].samples  # not probed yet
    gw.inflight = 3
    up = gw.state.provider("ollama")
    up.healthy, up.last_latency_ms = True, 12.5
    down = gw.state.provider("vllm")
    down.healthy, down.last_latency_ms = False, None
    gw.state.provider("retired")  # not in the plan: never a label
    now = time.monotonic()
    gw.state.stats("vllm/big").breaker.failure("boom", retry_after_s=60, now=now)  # open
    half = gw.state.stats("ollama/coder").breaker
    half.failure("boom", retry_after_s=0.001, now=now - 1)  # cool-down over: half-open
    gw.state.stats("ollama/pattern-made")  # a deployment made by a pattern: not a label
    text = obs.render()[0].decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["aib_inflight_requests"].samples[0].value == 3
    assert {s.labels["provider"]: s.value for s in fams["aib_provider_up"].samples} == {
        "ollama": 1.0,
        "vllm": 0.0,
    }
    assert {s.labels["provider"]: s.value for s in fams["aib_provider_probe_latency_seconds"].samples} == {
        "ollama": 0.0125
    }
    breakers = {s.labels["deployment"]: s.value for s in fams["aib_breaker_state"].samples}
    assert breakers == {"ollama/llama3": 0.0, "ollama/coder": 1.0, "vllm/big": 2.0}
    info = fams["aib_config_info"].samples[0]
    assert info.name == "aib_config_info" and info.labels == {"version": gw.plan.version} and info.value == 1
    assert "_created" not in text


def test_reloads_and_drop_sources(obs: MetricsObserver) -> None:
    assert value(obs, "aib_config_reloads_total", result="success") == 0
    assert value(obs, "aib_config_reloads_total", result="failure") == 0
    obs.reload_done("success")
    obs.reload_done("failure")
    obs.reload_done("rolled back")  # anything but success counts as a failure
    assert value(obs, "aib_config_reloads_total", result="success") == 1
    assert value(obs, "aib_config_reloads_total", result="failure") == 2
    obs.add_drop_source(lambda: ({"queue_full": 2, "locked": 1}, 7))
    obs.add_drop_source(lambda: ({"locked": 4}, 1))
    assert value(obs, "aib_request_log_dropped_total", reason="locked") == 5
    assert value(obs, "aib_request_log_dropped_total", reason="queue_full") == 2
    assert value(obs, "aib_request_log_queue_depth") == 8


def test_process_metrics_are_included_by_default(gw: FakeGateway) -> None:
    text = MetricsObserver(gw).render()[0].decode()
    assert "process_cpu_seconds_total" in text or "python_info" in text


def test_asgi_handler_negotiates_the_format(obs: MetricsObserver) -> None:
    obs.request_done(make_record())
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    asyncio.run(obs.asgi({"type": "http", "headers": []}, receive, send))
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 200
    assert headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert b"aib_requests_total{" in sent[1]["body"]
    sent.clear()
    accept = b"application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    asyncio.run(obs.asgi({"type": "http", "headers": [(b"accept", accept)]}, receive, send))
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"application/openmetrics-text")
    assert sent[1]["body"].rstrip().endswith(b"# EOF")


def test_route_cache_is_bounded(
    obs: MetricsObserver, gw: FakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aib.observe import metrics

    monkeypatch.setattr(metrics, "_ROUTE_CACHE_MAX", 10)
    for i in range(25):
        res = gw.plan.resolve(f"ollama/m{i}")
        obs.request_done(
            make_record(f"ollama/m{i}", route=res.group.name, matched_by="pattern", rule=res.rule)
        )
    assert len(obs._routes) <= 10
    assert (
        value(
            obs,
            "aib_requests_total",
            route="pattern:ollama/*",
            provider="ollama",
            endpoint="chat/completions",
            status="200",
        )
        == 25
    )


def test_same_exposition_as_prometheus_client_metric_objects(obs: MetricsObserver, gw: FakeGateway) -> None:
    """The plain counters give exactly what ``Counter``/``Histogram`` objects with the same names, help,
    labels and buckets give (the implementation this replaced), ``*_created`` aside."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from aib.observe import metrics as m

    fallback = [
        Attempt("vllm/big", "vllm", "big", "big", None, "cannot connect", None, 0.001, False),
        Attempt("ollama/llama3", "ollama", "llama3", "llama3", 200, None, 0.1, 0.2, True),
    ]
    records = [
        make_record(total_s=0.004, upstream_s=0.0039),
        make_record(stream=True, ttfb_s=0.02, total_s=7.0, upstream_s=6.9, completion_tokens=None),
        make_record("big", route="big", attempts=fallback, total_s=300.5),
        make_record("nope", route=None, matched_by=None, provider=None, status=404, prompt_tokens=None,
                    completion_tokens=None),
        make_record(status=0, client_disconnected=True, total_s=0.5, upstream_s=0.7),
        make_record("ollama/x", route="ollama/x", matched_by="pattern", rule="pattern #1 'ollama/*' -> ollama as 'x'"),
        make_record(key_name="alice", prompt_tokens=4, completion_tokens=6),
        make_record(key_name="alice", status=429, error_code="requests_per_minute", provider=None,
                    prompt_tokens=None, completion_tokens=None),
        make_record(key_name="bob", status=502, error_code="upstream_error", completion_tokens=None),
    ]  # fmt: skip
    ref = CollectorRegistry()
    rp = ("route", "provider")
    req = Counter(
        "aib_requests",
        "Requests answered, by route, provider, endpoint and HTTP status sent.",
        ("route", "provider", "endpoint", "status"),
        registry=ref,
    )
    dur = Histogram(
        "aib_request_duration_seconds",
        "Time from request received to response finished.",
        rp,
        buckets=m.DURATION_BUCKETS,
        registry=ref,
    )
    ttft = Histogram(
        "aib_time_to_first_token_seconds",
        "Streams: time from request received to the first byte sent.",
        rp,
        buckets=m.TTFT_BUCKETS,
        registry=ref,
    )
    over = Histogram(
        "aib_gateway_overhead_seconds",
        "Time the gateway added: total minus time spent waiting on upstreams.",
        buckets=m.OVERHEAD_BUCKETS,
        registry=ref,
    )
    pt = Counter("aib_prompt_tokens", "Prompt tokens reported by upstreams.", rp, registry=ref)
    ct = Counter("aib_completion_tokens", "Completion tokens reported by upstreams.", rp, registry=ref)
    fb = Counter(
        "aib_fallbacks",
        "Requests served by a fallback (or failed after trying more than one).",
        ("route",),
        registry=ref,
    )
    att = Counter(
        "aib_upstream_attempts",
        "Upstream attempts by provider and outcome.",
        ("provider", "outcome"),
        registry=ref,
    )
    kreq = Counter(
        "aib_key_requests", "Requests per client key, by HTTP status sent.", ("key", "status"), registry=ref
    )
    ktok = Counter(
        "aib_key_tokens", "Tokens per client key, as upstreams reported them.", ("key", "type"), registry=ref
    )
    klim = Counter(
        "aib_key_limited",
        "Requests a client key's limit refused (429), by limit.",
        ("key", "limit"),
        registry=ref,
    )
    doors = Counter(
        "aib_door_requests",
        "Requests by the API the client spoke (openai, anthropic, ollama, responses), endpoint and status.",
        ("door", "endpoint", "status"),
        registry=ref,
    )
    cut = Counter(
        "aib_prompt_truncated",
        "Prompts an Ollama upstream cut to fit its context (num_ctx): raise the model's context_length.",
        rp,
        registry=ref,
    )
    records[1].door, records[2].door, records[5].prompt_truncated = "anthropic", "ollama", True
    rel = Counter("aib_config_reloads", "Configuration reloads by result.", ("result",), registry=ref)
    for res in m.RELOAD_RESULTS:
        rel.labels(res)
    rel.labels("success").inc()
    for r in records:
        obs.request_done(r)
        route = route_label(r, gw.plan.groups, gw.plan.patterns)
        provider = r.provider or "none"
        req.labels(route, provider, r.endpoint, status_label(r)).inc()
        dur.labels(route, provider).observe(r.total_s)
        over.observe(r.overhead_s)
        if r.stream and r.ttfb_s is not None:
            ttft.labels(route, provider).observe(r.ttfb_s)
        if r.prompt_tokens or r.completion_tokens:
            pt.labels(route, provider).inc(r.prompt_tokens or 0)
            ct.labels(route, provider).inc(r.completion_tokens or 0)
        for a in r.attempts:
            att.labels(a.provider, attempt_outcome(a)).inc()
        if len(r.attempts) > 1 or (r.attempts and r.attempts[-1].route != r.route):
            fb.labels(route).inc()
        if r.key_name is not None:
            kreq.labels(r.key_name, status_label(r)).inc()
            if r.prompt_tokens is not None or r.completion_tokens is not None:
                ktok.labels(r.key_name, "prompt").inc(r.prompt_tokens or 0)
                ktok.labels(r.key_name, "completion").inc(r.completion_tokens or 0)
            if r.status == 429 and r.error_code:
                klim.labels(r.key_name, r.error_code).inc()
        doors.labels(r.door, r.endpoint, status_label(r)).inc()
        if r.prompt_truncated:
            cut.labels(route, provider).inc()
    obs.reload_done("success")

    def exposed(text: str) -> dict[str, Any]:
        out = {}
        for f in text_string_to_metric_families(text):
            if f.name.startswith("aib_") and not f.name.startswith("aib_cache_") and not f.name.endswith("_created") and not f.name.startswith(("aib_backend_", "aib_deployment_")) and f.name not in {"aib_inflight_requests", "aib_provider_up",
                                                           "aib_provider_probe_latency_seconds",
                                                           "aib_breaker_state", "aib_config_info"}:  # fmt: skip
                samples = sorted(
                    (s.name, tuple(sorted(s.labels.items())), round(s.value, 9))
                    for s in f.samples
                    if not s.name.endswith("_created")
                )
                out[f.name] = (f.type, f.documentation, samples)
        return out

    from prometheus_client import generate_latest

    mine, theirs = exposed(obs.render()[0].decode()), exposed(generate_latest(ref).decode())
    assert set(mine) == set(theirs) and len(mine) == 14
    for name in theirs:
        assert mine[name] == theirs[name], name
    text = obs.render()[0].decode()
    assert 'aib_request_duration_seconds_bucket{le="300.0",provider="ollama",route="big"} 0.0' in text
    assert 'aib_request_duration_seconds_bucket{le="+Inf",provider="ollama",route="big"} 1.0' in text


def test_batched_counting_survives_a_bug(
    obs: MetricsObserver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer client counts batches; a batch metrics cannot count is logged once, never retried."""
    from aib.observe.client import WriterClient

    client = WriterClient({"access": False, "request_log": None}, metrics=obs)  # metrics only: no process
    assert not client.ship and obs.before_collect == [client.fold_metrics]
    client.request_done(make_record())  # no event loop: counted at once
    assert value(obs, "aib_requests_total", route="llama3", provider="ollama", endpoint="chat/completions",
                 status="200") == 1  # fmt: skip

    def broken(batch: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(obs, "fold", broken)
    client.request_done(make_record())
    client.request_done(make_record())
    assert client._batch == [] and client.drops() == ({"queue_full": 0, "writer_down": 0}, 0)
    errors = [r for r in caplog.records if r.name == "aib.observe"]
    assert len(errors) == 1 and "could not count" in errors[0].getMessage()
    client.close()
    assert client.pid is None
