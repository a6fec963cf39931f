"""`aib monitor`'s arithmetic and drawing on hand-written scrapes (no gateway, no network)."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from aib.ops.monitor import Scrape, parse_metrics, quantile, summarize
from aib.ops.monitor_view import _age, _ms, render

pytestmark = pytest.mark.unit

GW = "http://127.0.0.1:4000"
HEALTH = {
    "status": "degraded",
    "plan_version": "abcdef0123456789",
    "providers": {
        "a": {"type": "llamacpp", "status": "healthy", "last_probe_latency_ms": 2.5, "breakers": {}},
        "b": {
            "type": "ollama",
            "status": "unhealthy",
            "last_probe_latency_ms": 1.0,
            "last_error": "nothing listens on 127.0.0.1:11434",
            "breakers": {"b/x": {"state": "open"}, "b/y": {"state": "closed"}},
        },
    },
}


def metrics(
    requests_ok: int, requests_err: int, fallbacks: int, fast: int, slow: int, attempts_failed: int
) -> str:
    """A /metrics text shaped like the gateway's: one route `chat`, latency in two buckets."""
    total = fast + slow
    return f"""\
# HELP aib_requests_total Requests answered.
# TYPE aib_requests_total counter
aib_requests_total{{route="chat",provider="a",endpoint="chat/completions",status="200"}} {requests_ok}
aib_requests_total{{route="chat",provider="b",endpoint="chat/completions",status="502"}} {requests_err}
aib_requests_total{{route="chat",provider="a",endpoint="chat/completions",status="499"}} 1
# HELP aib_fallbacks_total Fallbacks.
# TYPE aib_fallbacks_total counter
aib_fallbacks_total{{route="chat"}} {fallbacks}
# HELP aib_request_duration_seconds Duration.
# TYPE aib_request_duration_seconds histogram
aib_request_duration_seconds_bucket{{route="chat",provider="a",le="0.1"}} {fast}
aib_request_duration_seconds_bucket{{route="chat",provider="a",le="1.0"}} {total}
aib_request_duration_seconds_bucket{{route="chat",provider="a",le="+Inf"}} {total}
aib_request_duration_seconds_count{{route="chat",provider="a"}} {total}
aib_request_duration_seconds_sum{{route="chat",provider="a"}} 1.0
# HELP aib_upstream_attempts_total Attempts.
# TYPE aib_upstream_attempts_total counter
aib_upstream_attempts_total{{provider="a",outcome="ok"}} {requests_ok}
aib_upstream_attempts_total{{provider="b",outcome="connect_error"}} {attempts_failed}
# HELP aib_inflight_requests In flight.
# TYPE aib_inflight_requests gauge
aib_inflight_requests 3
"""


def s(at: float, text: str) -> Scrape:
    return Scrape(at, HEALTH, parse_metrics(text))


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (1.0, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1)
    assert quantile(0.75, buckets) == pytest.approx(0.55)
    assert quantile(0.25, buckets) == pytest.approx(0.05)
    assert quantile(0.99, [(0.1, 0.0), (math.inf, 10.0)]) == 0.1  # only +Inf knows: the top finite bound
    assert quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.5, []) is None


def test_rates_errors_fallbacks_and_latency_come_from_differences() -> None:
    old = s(0.0, metrics(10, 2, 1, fast=10, slow=0, attempts_failed=2))
    new = s(10.0, metrics(30, 4, 3, fast=10, slow=20, attempts_failed=6))
    view = summarize(GW, [old, new], window_s=60)
    assert view.up and view.window_s == 10.0
    (row,) = view.routes
    assert row.route == "chat"
    assert row.requests == 30 + 4 + 1
    assert row.rate == pytest.approx((20 + 2) / 10)
    assert row.errors == 4 and row.new_errors == 2  # 502s; the 499 hang-up is not an error
    assert row.fallbacks == 3 and row.new_fallbacks == 2
    assert row.latency_in_window
    assert 0.1 < row.p50_s < 1.0 and 0.9 < row.p95_s <= 1.0  # the 20 new requests were all slow
    assert view.inflight == 3
    a, b = view.providers
    assert (a.name, a.status, a.attempts_rate, a.failed_attempts) == ("a", "healthy", 2.0, 0)
    assert (b.status, b.failed_attempts, b.open_breakers) == ("unhealthy", 4, 1)
    assert b.last_error == "nothing listens on 127.0.0.1:11434"


def test_scrapes_outside_the_window_are_ignored_and_a_restart_counts_from_zero() -> None:
    ancient = s(0.0, metrics(1000, 0, 0, fast=1000, slow=0, attempts_failed=0))
    old = s(100.0, metrics(50, 0, 0, fast=50, slow=0, attempts_failed=0))  # restarted: counters went down
    new = s(110.0, metrics(60, 0, 0, fast=60, slow=0, attempts_failed=0))
    view = summarize(GW, [ancient, old, new], window_s=30)
    assert view.window_s == 10.0
    assert view.routes[0].rate == pytest.approx(1.0)
    reset = summarize(GW, [ancient, new], window_s=1000)  # 1000 -> 60: a restart, 60 new requests
    assert reset.routes[0].rate == pytest.approx(60 / 110)  # the 499 series stayed at 1: no reset there


def test_latency_falls_back_to_since_start_when_the_window_saw_nothing() -> None:
    text = metrics(10, 0, 0, fast=10, slow=0, attempts_failed=0)
    view = summarize(GW, [s(0.0, text), s(5.0, text)], window_s=60)
    row = view.routes[0]
    assert not row.latency_in_window and row.p50_s == pytest.approx(0.05)
    assert row.rate == 0.0


def test_a_failed_scrape_shows_gateway_down_with_the_last_numbers() -> None:
    good = s(0.0, metrics(10, 0, 0, fast=10, slow=0, attempts_failed=0))
    bad = Scrape(7.0, error="nothing answers at http://127.0.0.1:4000/health: timed out")
    view = summarize(GW, [good, bad], window_s=60)
    assert not view.up and view.last_ok_age_s == 7.0 and view.routes
    console = Console(record=True, width=160)
    console.print(render(view, interval=2))
    text = console.export_text()
    assert "gateway down: nothing answers" in text and "last answered 7s ago" in text
    assert "retrying every 2s" in text and "chat" in text


def test_never_reached_gateway_renders_only_the_banner() -> None:
    view = summarize(GW, [Scrape(0.0, error="nothing answers")], window_s=60)
    console = Console(record=True, width=120)
    console.print(render(view))
    text = console.export_text()
    assert "gateway down: nothing answers" in text
    assert "Providers" not in text
    assert summarize(GW, [], 60).error == "not scraped yet"


def test_render_a_healthy_frame() -> None:
    old = s(0.0, metrics(10, 2, 1, fast=10, slow=0, attempts_failed=2))
    new = s(2.0, metrics(14, 3, 2, fast=14, slow=0, attempts_failed=3))
    console = Console(record=True, width=200)
    console.print(render(summarize(GW, [old, new], 60), interval=2))
    text = console.export_text()
    for expected in ("aib monitor http://127.0.0.1:4000", "degraded", "config abcdef01", "in flight 3",
                     "Providers", "unhealthy", "1 open", "Models", "chat", "(+1)", "q or Ctrl-C quits"):  # fmt: skip
        assert expected in text, expected


def test_units_for_humans() -> None:
    assert [_ms(None), _ms(0.0004), _ms(0.25), _ms(1.5), _ms(42)] == [
        "-",
        "0.4 ms",
        "250 ms",
        "1.5 s",
        "42 s",
    ]
    assert [_age(None), _age(5), _age(125), _age(7300)] == ["-", "5s", "2m05s", "2h01m"]
