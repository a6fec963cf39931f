"""The per-deployment circuit breaker, driven by an injected clock (``now``)."""

from __future__ import annotations

import pytest

from aib.routing.breaker import CircuitBreaker
from aib.routing.state import RuntimeState, TargetStats

pytestmark = pytest.mark.unit

T0 = 1000.0


def opened(threshold: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    b = CircuitBreaker(threshold, cooldown_s)
    for _ in range(threshold):
        b.failure("boom", now=T0)
    return b


def test_starts_closed_and_allows() -> None:
    b = CircuitBreaker()
    assert b.current(T0) == "closed"
    assert b.allows(T0) and b.acquire(T0) and b.acquire(T0)  # closed never runs out of permits
    assert b.snapshot(T0) == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_in_s": 0.0,
        "last_error": None,
    }


def test_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    b.failure("e1", now=T0)
    b.failure("e2", now=T0)
    assert b.current(T0) == "closed" and b.allows(T0)
    b.failure("e3", now=T0)
    assert b.current(T0) == "open"
    assert not b.allows(T0) and not b.acquire(T0)
    snap = b.snapshot(T0 + 4)
    assert snap["state"] == "open" and snap["consecutive_failures"] == 3
    assert snap["retry_in_s"] == pytest.approx(6.0)
    assert snap["last_error"] == "e3"


def test_success_resets_the_count() -> None:
    b = CircuitBreaker(threshold=3)
    for _ in range(5):  # never three in a row
        b.failure("x", now=T0)
        b.failure("x", now=T0)
        b.success()
    assert b.current(T0) == "closed" and b.consecutive_failures == 0


def test_cool_down_then_half_open() -> None:
    b = opened(threshold=2, cooldown_s=10)
    assert b.current(T0 + 9.99) == "open"
    assert b.current(T0 + 10) == "half_open"
    assert b.allows(T0 + 10)
    assert b.snapshot(T0 + 11)["retry_in_s"] == 0.0


def test_half_open_lets_exactly_one_trial_through() -> None:
    b = opened()
    now = T0 + 60
    assert b.acquire(now)  # the trial
    assert b.current(now) == "half_open"
    assert not b.allows(now) and not b.acquire(now)  # everyone else waits for its verdict
    assert not b.acquire(now + 1000)


def test_trial_success_closes() -> None:
    b = opened()
    assert b.acquire(T0 + 60)
    b.success()
    assert b.current(T0 + 60) == "closed" and b.consecutive_failures == 0
    assert b.acquire(T0 + 60) and b.acquire(T0 + 60)


def test_trial_failure_reopens_for_a_full_cool_down() -> None:
    b = opened(threshold=5, cooldown_s=10)
    now = T0 + 20
    assert b.acquire(now)
    b.failure("still down", now=now)
    assert b.current(now) == "open" and b.current(now + 9) == "open"
    assert b.current(now + 10) == "half_open"
    assert b.last_error == "still down"


def test_trial_failure_reopens_even_below_threshold() -> None:
    b = CircuitBreaker(threshold=5, cooldown_s=10)
    b.failure("429", retry_after_s=1, now=T0)  # opened by Retry-After after one failure
    assert b.acquire(T0 + 2)
    b.failure("again", now=T0 + 2)  # count 2 < threshold 5, but it was the trial
    assert b.current(T0 + 2) == "open"


def test_release_frees_the_trial_without_a_verdict() -> None:
    b = opened()
    now = T0 + 60
    assert b.acquire(now)
    b.release()  # the client went away
    assert b.current(now) == "half_open" and b.allows(now) and b.acquire(now)


def test_retry_after_opens_immediately_for_that_long() -> None:
    b = CircuitBreaker(threshold=5, cooldown_s=30)
    b.failure("429 slow down", retry_after_s=2.5, now=T0)
    assert b.consecutive_failures == 1
    assert b.current(T0) == "open"
    assert b.current(T0 + 2.4) == "open"
    assert b.current(T0 + 2.5) == "half_open"  # Retry-After, not the 30 s cool-down
    assert b.snapshot(T0 + 1)["retry_in_s"] == pytest.approx(1.5)


def test_retry_after_longer_than_cool_down_is_honoured() -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=1)
    b.failure("503", retry_after_s=120, now=T0)
    assert b.current(T0 + 60) == "open"
    assert b.current(T0 + 120) == "half_open"


@pytest.mark.parametrize("retry_after", [None, 0.0])
def test_no_or_zero_retry_after_uses_the_threshold(retry_after: float | None) -> None:
    b = CircuitBreaker(threshold=2, cooldown_s=5)
    b.failure("x", retry_after_s=retry_after, now=T0)
    assert b.current(T0) == "closed"


def test_injected_zero_clock_is_not_replaced_by_the_real_clock() -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=5)
    b.failure("x", now=0.0)
    assert b.opened_until == 5.0
    assert b.current(0.0) == "open" and b.current(5.0) == "half_open"
    assert b.snapshot(0.0)["retry_in_s"] == 5.0


def test_real_clock_by_default() -> None:
    b = CircuitBreaker(threshold=1, cooldown_s=3600)
    b.failure("x")
    assert b.current() == "open" and not b.allows()
    assert 3590 < float(b.snapshot()["retry_in_s"]) <= 3600


def test_configure_changes_threshold_and_cool_down() -> None:
    b = CircuitBreaker(threshold=5, cooldown_s=30)
    b.configure(1, 2)
    b.failure("x", now=T0)
    assert b.current(T0) == "open" and b.current(T0 + 2) == "half_open"


def test_runtime_state_builds_and_reconfigures_breakers() -> None:
    state = RuntimeState(breaker_threshold=2, breaker_cooldown_s=7)
    st = state.stats("p/m")
    assert state.stats("p/m") is st  # one per deployment id
    assert (st.breaker.threshold, st.breaker.cooldown_s) == (2, 7)
    state.configure_breakers(4, 9)
    assert (st.breaker.threshold, st.breaker.cooldown_s) == (4, 9)
    assert (state.stats("p/other").breaker.threshold, state.stats("p/other").breaker.cooldown_s) == (4, 9)
    h = state.provider("p")
    assert state.provider("p") is h and h.usable  # never probed counts as usable
    h.healthy = False
    assert not h.usable


def test_latency_ewma() -> None:
    st = TargetStats(CircuitBreaker())
    st.observe_ttfb(1.0)
    assert st.ewma_ttfb_s == 1.0
    st.observe_ttfb(2.0)
    assert st.ewma_ttfb_s == pytest.approx(1.3)


def test_a_good_probe_makes_an_open_breaker_half_open_at_once() -> None:
    b = opened(cooldown_s=30)
    assert b.current(T0 + 2) == "open"
    assert b.probe_ok(T0 + 2) is True
    assert b.current(T0 + 2) == "half_open" and b.acquire(T0 + 2)  # one trial, now
    assert not b.acquire(T0 + 2) and b.probe_ok(T0 + 2) is False  # a trial runs: nothing to do
    b.success()
    assert b.current(T0 + 2) == "closed"


def test_a_good_probe_changes_nothing_unless_open() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    assert b.probe_ok(T0) is False and b.current(T0) == "closed"
    b = opened(cooldown_s=10)
    assert b.probe_ok(T0 + 11) is False and b.current(T0 + 11) == "half_open"  # cool-down over anyway


def test_a_good_probe_does_not_cut_short_a_pause_the_upstream_asked_for() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    b.failure("429", retry_after_s=20, now=T0)
    assert b.probe_ok(T0 + 1) is False and b.current(T0 + 1) == "open"
    assert b.acquire(T0 + 21)
    b.failure("boom", now=T0 + 21)  # the trial failed: opened by us this time, a probe may end it
    assert b.current(T0 + 22) == "open" and b.probe_ok(T0 + 22) is True


def test_runtime_state_half_opens_the_breakers_of_one_provider() -> None:
    state = RuntimeState(breaker_threshold=1, breaker_cooldown_s=60)
    for tid in ("p/a", "p/b", "pq/a", "q/a"):
        state.stats(tid).breaker.failure("down")
    state.stats("p/b").breaker.success()
    assert state.probe_ok("p") == ["p/a"]  # not pq/a: another provider whose name starts alike
    assert state.stats("p/a").breaker.current() == "half_open"
    assert state.stats("pq/a").breaker.current() == "open" and state.stats("q/a").breaker.current() == "open"
