"""least_loaded and loaded_first, and the load estimate they share (backend signals and their age)."""

from __future__ import annotations

import time

import pytest

from aib.config.plan import Group, Target
from aib.config.schema import Balance, Timeouts
from aib.routing import balance
from aib.routing.load import explain_load, load
from aib.routing.signals import ProviderSignals, Reading
from aib.routing.state import RuntimeState

pytestmark = pytest.mark.unit

A = Target("pa/m", "pa", "m")
B = Target("pb/m", "pb", "m")
C = Target("pc/m", "pc", "m")


def group(strategy: str, *targets: Target, tie_break: str = "round_robin") -> Group:
    return Group(
        name="g",
        targets=targets or (A, B, C),
        strategy=strategy,
        timeouts=Timeouts(),
        max_attempts=3,
        retry_on_status=frozenset({502}),
        balance=Balance(tie_break=tie_break),  # type: ignore[arg-type]
    )


def signals(
    state: RuntimeState,
    provider: str,
    reading: Reading,
    age: float = 0.0,
    ours: int = 0,
    lists_loaded: bool = False,
) -> ProviderSignals:
    sig = state.signals[provider] = ProviderSignals(
        fresh_s=3.0, stale_after_s=13.0, lists_loaded=lists_loaded
    )
    sig.record(reading, time.monotonic() - age, ours)
    return sig


def ids(ts: list[Target]) -> list[str]:
    return [t.id for t in ts]


# --------------------------------------------------------------------------- the estimate


def test_without_signals_the_load_is_our_in_flight_count() -> None:
    state = RuntimeState()
    now = time.monotonic()
    assert load(state, A, now) == 0.0
    state.stats(A.id).inflight = 3
    assert load(state, A, now) == 3.0
    assert explain_load(state, A, now)["from"].startswith("gateway count")


def test_others_load_counts_and_ours_is_not_counted_twice() -> None:
    state = RuntimeState()
    now = time.monotonic()
    signals(state, "pa", Reading("/metrics", running=2, waiting=4), ours=1)  # 5 of the 6 are others'
    state.stats(A.id).inflight = 2  # one more of ours since the poll
    assert load(state, A, now) == pytest.approx(2 + 5)
    detail = explain_load(state, A, now)
    assert detail["others_at_poll"] == 5 and detail["from"] == "server signals"
    signals(state, "pb", Reading("/metrics", running=1), ours=3)  # the server lags behind us: never negative
    state.stats(B.id).inflight = 3
    assert load(state, B, now) == 3.0


def test_a_reading_fades_with_age_to_our_own_count() -> None:
    state = RuntimeState()
    now = time.monotonic()
    sig = signals(state, "pa", Reading("/metrics", running=10.0), age=2.0)
    assert load(state, A, now) == pytest.approx(10.0)  # fresh (under interval + timeout = 3 s)
    sig.at = now - 8.0  # halfway between 3 s and 13 s
    assert sig.weight(now) == pytest.approx(0.5)
    assert load(state, A, now) == pytest.approx(5.0)
    assert explain_load(state, A, now)["from"] == "fading server signals"
    sig.at = now - 13.0
    assert sig.weight(now) == 0.0 and load(state, A, now) == 0.0
    assert "stale" in str(explain_load(state, A, now)["from"])


def test_a_reading_without_a_queue_is_no_load_signal() -> None:
    state = RuntimeState()
    signals(state, "pa", Reading("/api/ps", loaded=frozenset({"m"})), lists_loaded=True)
    state.stats(A.id).inflight = 1
    assert load(state, A, time.monotonic()) == 1.0


def test_provider_inflight_sums_its_deployments() -> None:
    state = RuntimeState()
    state.stats("pa/m").inflight = 2
    state.stats("pa/other").inflight = 1
    state.stats("pb/m").inflight = 5
    assert state.provider_inflight("pa") == 3 and state.provider_inflight("nobody") == 0


# --------------------------------------------------------------------------- least_loaded


def test_least_loaded_is_least_outstanding_when_nobody_reports() -> None:
    state = RuntimeState()
    g = group("least_loaded")
    state.stats(A.id).inflight = 2
    state.stats(B.id).inflight = 1
    assert ids(balance.order(g, state)) == [C.id, B.id, A.id]


def test_least_loaded_sees_load_the_gateway_did_not_send() -> None:
    """B's server is busy with another client's requests: least_outstanding cannot see that."""
    state = RuntimeState()
    signals(state, "pa", Reading("/metrics", running=0, waiting=0))
    signals(state, "pb", Reading("/metrics", running=2, waiting=6))
    g = group("least_loaded", A, B)
    assert [balance.order(g, state)[0].id for _ in range(4)] == [A.id] * 4
    lo = group("least_outstanding", A, B)
    assert [balance.order(lo, state)[0].id for _ in range(4)] == [A.id, B.id, A.id, B.id]


def test_least_loaded_ties_go_in_turn() -> None:
    state = RuntimeState()
    g = group("least_loaded")
    assert [balance.order(g, state)[0].id for _ in range(6)] == [A.id, B.id, C.id] * 2


# --------------------------------------------------------------------------- loaded_first


def test_loaded_first_prefers_the_server_with_the_model_in_memory() -> None:
    state = RuntimeState()
    g = group("loaded_first", A, B, C)
    signals(state, "pa", Reading("/api/ps", loaded=frozenset()), lists_loaded=True)  # nothing loaded
    signals(state, "pb", Reading("/api/ps", loaded=frozenset({"m:latest"})), lists_loaded=True)
    # C reports nothing (like llama-cpp-python or a cloud API): its model is always ready
    firsts = [ids(balance.order(g, state))[:2] for _ in range(4)]
    assert all(set(f) == {B.id, C.id} for f in firsts)
    assert {f[0] for f in firsts} == {B.id, C.id}  # the tie-break (round robin) alternates them
    assert all(ids(balance.order(g, state))[-1] == A.id for _ in range(3))


def test_loaded_first_puts_unknown_between_loaded_and_not() -> None:
    state = RuntimeState()
    g = group("loaded_first", A, B, C, tie_break="least_outstanding")
    signals(state, "pa", Reading("/api/ps", loaded=frozenset()), lists_loaded=True)
    signals(state, "pb", Reading("/api/ps", loaded=frozenset({"m"})), lists_loaded=True, age=60)  # stale
    signals(state, "pc", Reading("/api/ps", loaded=frozenset({"m"})), lists_loaded=True)
    assert ids(balance.order(g, state)) == [C.id, B.id, A.id]
    state.signals["pa"].reading = None  # A and B both unknown now: the tie-break orders them
    state.stats(B.id).inflight = 1
    assert [ids(balance.order(g, state)) for _ in range(3)] == [[C.id, A.id, B.id]] * 3


def test_llamacpp_and_vllm_count_as_loaded_without_a_list() -> None:
    state = RuntimeState()
    sig = ProviderSignals(fresh_s=3, stale_after_s=13, lists_loaded=False)
    assert sig.loaded("anything", time.monotonic()) is True
    sig = ProviderSignals(fresh_s=3, stale_after_s=13, lists_loaded=True)
    assert sig.loaded("m", time.monotonic()) is None
    sig.record(Reading("/api/ps", loaded=frozenset({"llama3.2:latest"})), time.monotonic(), 0)
    assert sig.loaded("llama3.2", time.monotonic()) is True  # Ollama's default tag
    assert sig.loaded("llama3.2:1b", time.monotonic()) is False
    assert state.signals == {}


# --------------------------------------------------------------------------- reports


def test_report_says_how_fresh_a_reading_is() -> None:
    now = time.monotonic()
    sig = ProviderSignals(fresh_s=3, stale_after_s=13, lists_loaded=True)
    assert sig.report(now)["state"] == "none"
    sig.unsupported = "the server has no signal endpoint (GET /metrics answered 404)"
    assert sig.report(now)["state"] == "unsupported"
    sig.record(Reading("/api/ps", loaded=frozenset({"b", "a"}), per_model={"x": (1.0, 2.0)}), now - 1, 2)
    rep = sig.report(now)
    assert (
        rep["state"] == "fresh"
        and rep["loaded_models"] == ["a", "b"]
        and rep["gateway_inflight_at_poll"] == 2
    )
    assert rep["per_model"] == {"x": {"running": 1.0, "waiting": 2.0}} and "unsupported" not in rep
    assert sig.report(now + 7)["state"] == "fading"
    sig.fail("GET /api/ps answered 500")
    rep = sig.report(now + 20)
    assert rep["state"] == "stale" and rep["last_error"] == "GET /api/ps answered 500"
    assert rep["failures"] == 1 and rep["polls"] == 2
