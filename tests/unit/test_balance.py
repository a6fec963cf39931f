"""Load-balancing strategies: the distribution each produces, and which deployments are left out."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from aib.config.plan import Group, Target
from aib.config.schema import Timeouts
from aib.routing import balance
from aib.routing.state import RuntimeState

pytestmark = pytest.mark.unit

A = Target("pa/m", "pa", "m")
B = Target("pb/m", "pb", "m")
C = Target("pc/m", "pc", "m")


def group(strategy: str, *targets: Target, name: str = "g") -> Group:
    return Group(
        name=name,
        targets=targets or (A, B),
        strategy=strategy,
        timeouts=Timeouts(),
        max_attempts=3,
        retry_on_status=frozenset({429, 500, 502, 503, 504}),
    )


def picks(g: Group, state: RuntimeState, n: int) -> list[str]:
    return [balance.order(g, state)[0].id for _ in range(n)]


def open_breaker(state: RuntimeState, t: Target) -> None:
    br = state.stats(t.id).breaker
    br.configure(1, 3600)
    br.failure("down")


# --------------------------------------------------------------------------- round robin


def test_round_robin_alternates() -> None:
    state = RuntimeState()
    g = group("round_robin")
    assert picks(g, state, 6) == ["pa/m", "pb/m"] * 3


def test_round_robin_order_puts_the_others_behind() -> None:
    state = RuntimeState()
    g = group("round_robin", A, B, C)
    orders = [[t.id for t in balance.order(g, state)] for _ in range(3)]
    assert orders == [["pa/m", "pb/m", "pc/m"], ["pb/m", "pc/m", "pa/m"], ["pc/m", "pa/m", "pb/m"]]


def test_round_robin_even_over_many() -> None:
    state = RuntimeState()
    counts = Counter(picks(group("round_robin", A, B, C), state, 300))
    assert counts == {"pa/m": 100, "pb/m": 100, "pc/m": 100}


def test_counters_are_per_group() -> None:
    state = RuntimeState()
    g1, g2 = group("round_robin", name="one"), group("round_robin", name="two")
    assert balance.order(g1, state)[0] is A
    assert balance.order(g2, state)[0] is A  # g2 has its own rotation
    assert balance.order(g1, state)[0] is B


def test_single_and_empty() -> None:
    state = RuntimeState()
    assert balance.order(group("weighted", A), state) == [A]
    assert balance.order(group("round_robin", A), state, candidates=[]) == []


# --------------------------------------------------------------------------- weighted


def test_weighted_three_to_one() -> None:
    state = RuntimeState()
    heavy, light = Target("pa/m", "pa", "m", 3.0), Target("pb/m", "pb", "m", 1.0)
    seq = picks(group("weighted", heavy, light), state, 400)
    counts = Counter(seq)
    assert abs(counts["pa/m"] / 400 - 0.75) <= 0.02
    assert abs(counts["pb/m"] / 400 - 0.25) <= 0.02
    # smooth: the light one comes up every 4 picks, never a long run of the heavy one
    longest = max(len(run) for run in "".join("a" if s == "pa/m" else "b" for s in seq).split("b"))
    assert longest <= 3


def test_weighted_fallback_order_is_by_weight() -> None:
    state = RuntimeState()
    ts = (Target("pa/m", "pa", "m", 1.0), Target("pb/m", "pb", "m", 5.0), Target("pc/m", "pc", "m", 2.0))
    order = balance.order(group("weighted", *ts), state)
    assert order[0].id == "pb/m"
    assert [t.id for t in order[1:]] == ["pc/m", "pa/m"]


def test_weighted_zero_weight_gets_no_traffic_but_stays_a_fallback() -> None:
    state = RuntimeState()
    live, spare = Target("pa/m", "pa", "m", 1.0), Target("pb/m", "pb", "m", 0.0)
    g = group("weighted", live, spare)
    for _ in range(20):
        assert [t.id for t in balance.order(g, state)] == ["pa/m", "pb/m"]


def test_weighted_all_zero_means_equal() -> None:
    state = RuntimeState()
    g = group("weighted", Target("pa/m", "pa", "m", 0.0), Target("pb/m", "pb", "m", 0.0))
    assert Counter(picks(g, state, 100)) == {"pa/m": 50, "pb/m": 50}


# --------------------------------------------------------------------------- least outstanding


def test_least_outstanding_picks_the_least_busy() -> None:
    state = RuntimeState()
    state.stats(A.id).inflight = 3
    state.stats(B.id).inflight = 1
    state.stats(C.id).inflight = 2
    g = group("least_outstanding", A, B, C)
    for _ in range(5):
        assert [t.id for t in balance.order(g, state)] == ["pb/m", "pc/m", "pa/m"]


def test_least_outstanding_ties_rotate() -> None:
    state = RuntimeState()
    assert picks(group("least_outstanding"), state, 4) == ["pa/m", "pb/m", "pa/m", "pb/m"]


def test_least_outstanding_follows_inflight_changes() -> None:
    state = RuntimeState()
    g = group("least_outstanding")
    first = balance.order(g, state)[0]
    state.stats(first.id).inflight += 1  # the request is running
    for _ in range(5):
        assert balance.order(g, state)[0] is not first
    state.stats(first.id).inflight -= 1


# --------------------------------------------------------------------------- latency


def test_latency_prefers_the_lower_average_and_still_explores() -> None:
    state = RuntimeState()
    state.stats(A.id).ewma_ttfb_s = 0.50
    state.stats(B.id).ewma_ttfb_s = 0.05
    counts = Counter(picks(group("latency"), state, 200))
    assert counts["pb/m"] >= 180  # the fast one
    assert counts["pa/m"] >= 200 // balance.EXPLORE_EVERY // 2  # the slow one still sees traffic
    assert counts["pa/m"] <= 200 // balance.EXPLORE_EVERY + 1


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_latency_explores_every_deployment(n: int) -> None:
    state = RuntimeState()
    ts = [Target(f"p{i}/m", f"p{i}", "m") for i in range(n)]
    for i, t in enumerate(ts):
        state.stats(t.id).ewma_ttfb_s = 0.01 * (i + 1)  # p0 is the fastest
    counts = Counter(picks(group("latency", *ts), state, balance.EXPLORE_EVERY * n * 2))
    assert set(counts) == {t.id for t in ts}  # exploring reaches every one, not one fixed slot
    assert counts["p0/m"] >= balance.EXPLORE_EVERY * n * 2 * 0.9


def test_latency_tries_unmeasured_deployments_first() -> None:
    state = RuntimeState()
    state.stats(A.id).ewma_ttfb_s = 0.01
    g = group("latency", A, B)
    orders = [balance.order(g, state)[0].id for _ in range(5)]
    assert orders[1:] == ["pb/m"] * 4  # B has no average yet (the first pick is an exploring one)


def test_latency_reacts_to_new_measurements() -> None:
    state = RuntimeState()
    state.stats(A.id).ewma_ttfb_s = 0.05
    state.stats(B.id).ewma_ttfb_s = 0.10
    g = group("latency")
    assert balance.order(g, state)[0] is A
    for _ in range(10):
        state.stats(A.id).observe_ttfb(1.0)  # A got slow
    assert balance.order(g, state)[0] is B


# --------------------------------------------------------------------------- who is eligible


@pytest.mark.parametrize("strategy", ["round_robin", "weighted", "least_outstanding", "latency"])
def test_unhealthy_provider_is_skipped(strategy: str) -> None:
    state = RuntimeState()
    state.provider("pa").healthy = False
    state.provider("pb").healthy = True
    state.provider("pc").healthy = None  # not probed yet: usable
    g = group(strategy, A, B, C)
    seen = {t.id for _ in range(30) for t in balance.order(g, state)}
    assert seen == {"pb/m", "pc/m"}


@pytest.mark.parametrize("strategy", ["round_robin", "weighted", "least_outstanding", "latency"])
def test_open_breaker_is_skipped(strategy: str) -> None:
    state = RuntimeState()
    open_breaker(state, B)
    g = group(strategy, A, B, C)
    for _ in range(30):
        assert [t.id for t in balance.order(g, state)] in (["pa/m", "pc/m"], ["pc/m", "pa/m"])


def test_half_open_breaker_offers_one_trial() -> None:
    state = RuntimeState()
    br = state.stats(B.id).breaker
    br.configure(1, 0.01)
    br.failure("down")
    time.sleep(0.02)
    g = group("round_robin")
    assert B in balance.eligible(g, state)  # cool-down over: a trial may go
    assert br.acquire()
    assert balance.eligible(g, state) == [A]  # while the trial runs, nobody else goes there
    br.success()
    assert balance.eligible(g, state) == [A, B]


def test_nothing_eligible() -> None:
    state = RuntimeState()
    open_breaker(state, A)
    state.provider("pb").healthy = False
    assert balance.order(group("round_robin"), state) == []


def test_explicit_candidates_bypass_eligibility() -> None:
    state = RuntimeState()
    open_breaker(state, A)
    assert balance.order(group("round_robin"), state, candidates=[A, B])[0] in (A, B)
