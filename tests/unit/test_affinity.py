"""prefix_affinity: the request's key, bounded load, and what happens when a deployment comes or goes."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aib.config.plan import Group, Target
from aib.config.schema import Balance, Timeouts
from aib.routing import affinity, balance
from aib.routing.affinity import AffinityKey, capacity, chat_prefix, request_key
from aib.routing.signals import ProviderSignals, Reading
from aib.routing.state import RuntimeState

pytestmark = pytest.mark.unit

A, B, C, D = (Target(f"p{x}/m", f"p{x}", "m") for x in "abcd")
SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


def group(*targets: Target, epsilon: float = 0.25, tie_break: str = "round_robin") -> Group:
    return Group(
        name="g",
        targets=targets or (A, B, C),
        strategy="prefix_affinity",
        timeouts=Timeouts(),
        max_attempts=3,
        retry_on_status=frozenset({502}),
        balance=Balance(affinity_epsilon=epsilon, tie_break=tie_break),  # type: ignore[arg-type]
    )


def chat(first: str, *later: str) -> dict[str, object]:
    msgs: list[dict[str, str]] = [SYSTEM, {"role": "user", "content": first}]
    for i, text in enumerate(later):
        msgs += [{"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": text}]
    return {"model": "g", "messages": msgs}


def pick(g: Group, state: RuntimeState, key: AffinityKey | None) -> Target:
    return balance.order(g, state, key=key)[0]


# --------------------------------------------------------------------------- the key


def test_every_turn_of_a_conversation_has_the_same_key() -> None:
    k1 = request_key("chat/completions", chat("Tell me about whales."))
    k3 = request_key("chat/completions", chat("Tell me about whales.", "And seals?", "Thanks."))
    other = request_key("chat/completions", chat("Tell me about owls."))
    assert k1 is not None and k1 == k3 and k1 != other
    assert k1.startswith(b"p:")


def test_session_header_then_user_field_then_prefix() -> None:
    body = chat("hi") | {"user": "alice"}
    assert request_key("chat/completions", body, "s-1") == b"s:s-1"
    assert request_key("chat/completions", body) == b"u:alice"
    assert request_key("chat/completions", chat("hi")) is not None
    assert request_key("embeddings", {"input": "x"}) is None  # nothing to hold on to
    assert request_key("embeddings", {"input": "x", "user": "bob"}) == b"u:bob"
    long = "x" * 1000
    assert request_key("chat/completions", {}, long) == b"s:" + b"x" * affinity.MAX_SESSION_CHARS


def test_prefix_is_the_system_messages_and_the_first_turn() -> None:
    msgs = [
        {"role": "system", "content": "a"},
        {"role": "developer", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "c"}]},
        {"role": "assistant", "content": "d"},
    ]
    assert chat_prefix(msgs) == [
        ["system", "a"],
        ["developer", "b"],
        ["user", [{"type": "text", "text": "c"}]],
    ]
    assert chat_prefix("not a list") == []
    assert chat_prefix(["not a message"]) == []
    assert request_key("chat/completions", {"messages": []}) is None


def test_completions_hash_the_start_of_the_prompt() -> None:
    base = "Q: " + "y" * 2000
    a = request_key("completions", {"prompt": base + " first"})
    b = request_key("completions", {"prompt": [base + " second"]})
    assert a is not None and a == b  # the first 1,024 characters decide
    assert request_key("completions", {"prompt": "short one"}) != a
    assert request_key("completions", {"prompt": [1, 2, 3]}) is None


def test_key_is_computed_once_and_only_when_asked() -> None:
    payload: dict[str, object] = {"messages": "broken"}
    k = AffinityKey("chat/completions", payload)
    payload["messages"] = chat("late")["messages"]  # not read until .value
    assert k.value is not None and k.source == "prefix"
    payload["messages"] = []
    assert k.value is not None  # cached
    assert AffinityKey("chat/completions", {}, "s").source == "session"
    assert AffinityKey("chat/completions", {"user": "u"}).source == "user"
    assert AffinityKey("embeddings", {}).source == "none"


# --------------------------------------------------------------------------- routing by key


def test_a_conversation_sticks_to_one_deployment() -> None:
    state = RuntimeState()
    g = group()
    for first in ("whales", "owls", "bees", "ants"):
        seen = {
            pick(g, state, AffinityKey("chat/completions", chat(first, *["more"] * n))).id for n in range(6)
        }
        assert len(seen) == 1, first


def test_conversations_spread_over_the_deployments() -> None:
    state = RuntimeState()
    g = group()
    counts = Counter(
        pick(g, state, AffinityKey("chat/completions", {}, f"session-{i}")).id for i in range(600)
    )
    assert set(counts) == {A.id, B.id, C.id}
    assert min(counts.values()) > 120, counts  # 200 each, give or take the ring's spread


def test_without_a_key_the_tie_break_orders() -> None:
    state = RuntimeState()
    g = group(tie_break="round_robin")
    picks = [pick(g, state, AffinityKey("embeddings", {"input": "x"})).id for _ in range(6)]
    assert picks == [A.id, B.id, C.id] * 2
    assert balance.order(g, state, key=None)[0] is A  # no key object at all: the same


def test_a_busy_home_passes_the_request_on() -> None:
    state = RuntimeState()
    g = group(A, B, epsilon=0.25)
    key = AffinityKey("chat/completions", {}, "sticky")
    home = pick(g, state, key)
    other = B if home is A else A
    state.stats(home.id).inflight = 2  # mean with this request 1.5; cap ceil(1.25 * 3 / 2) = 2: full
    order = balance.order(g, state, key=key)
    assert order == [other, home]  # the home is still next in line
    state.stats(home.id).inflight = 1  # cap ceil(1.25 * 2 / 2) = 2: room again
    assert pick(g, state, key) is home


def test_bounded_load_holds_for_any_mix_of_sessions() -> None:
    """Send 200 requests that all stay in flight: no deployment gets more than the cap allowed."""
    state = RuntimeState()
    g = group(A, B, C, D, epsilon=0.25)
    for i in range(200):
        key = AffinityKey("chat/completions", {}, f"s-{i % 7}")  # 7 hot sessions, uneven on purpose
        t = pick(g, state, key)
        loads = [state.stats(x.id).inflight for x in g.targets]
        assert state.stats(t.id).inflight < capacity([float(x) for x in loads], 0.25)
        state.stats(t.id).inflight += 1
    final = [state.stats(x.id).inflight for x in g.targets]
    assert max(final) <= 1.25 * 200 / 4 + 1, final


def test_capacity_counts_the_request_itself() -> None:
    assert capacity([0.0, 0.0], 0.25) == 1
    assert capacity([1.0, 0.0], 0.25) == 2
    assert capacity([2.0, 0.0], 0.25) == 2
    assert capacity([0.5] * 10, 0.25) == 1  # the least loaded (0.5) is still below it


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=30, max_size=120, unique=True), st.integers(0, 3))
def test_losing_a_deployment_moves_only_its_sessions(sessions: list[str], down: int) -> None:
    """Its breaker opens: its sessions go elsewhere, every other session stays where it was."""
    g = group(A, B, C, D, epsilon=10.0)  # a loose bound: this is about the ring, not the load
    state = RuntimeState()
    before = {s: pick(g, state, AffinityKey("chat/completions", {}, s)).id for s in sessions}
    lost = g.targets[down]
    br = state.stats(lost.id).breaker
    br.configure(1, 3600)
    br.failure("down")
    for s in sessions:
        now = pick(g, state, AffinityKey("chat/completions", {}, s)).id
        assert now != lost.id
        if before[s] != lost.id:
            assert now == before[s]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=30, max_size=120, unique=True))
def test_adding_a_deployment_moves_only_sessions_to_it(sessions: list[str]) -> None:
    small, big = group(A, B, C, epsilon=10.0), group(A, B, C, D, epsilon=10.0)
    state = RuntimeState()
    for s in sessions:
        k = AffinityKey("chat/completions", {}, s)
        was, now = pick(small, state, k).id, pick(big, state, k).id
        assert now in (was, D.id)


def test_backend_load_counts_in_the_bound() -> None:
    """Another client keeps the home server busy (its /metrics says so): the request goes elsewhere."""
    state = RuntimeState()
    g = group(A, B)
    key = AffinityKey("chat/completions", {}, "s")
    home = pick(g, state, key)
    sig = state.signals[home.provider] = ProviderSignals(fresh_s=3.0, stale_after_s=10.0)
    sig.record(Reading("/metrics", running=2.0, waiting=3.0), time.monotonic(), ours=0)
    assert pick(g, state, key) is not home
    sig.at -= 60  # the reading is a minute old: it counts for nothing
    assert pick(g, state, key) is home


def test_explain_shows_the_walk_and_the_spill() -> None:
    state = RuntimeState()
    g = group(A, B)
    k = b"s:x"
    out = affinity.explain(g, list(g.targets), state, time.monotonic(), k)
    assert out["chosen"] == out["home"] and out["spilled"] is False and out["capacity"] == 1
    state.stats(str(out["home"])).inflight = 5
    out = affinity.explain(g, list(g.targets), state, time.monotonic(), k)
    assert out["chosen"] != out["home"] and out["spilled"] is True
    assert out["ring_order"][1] == out["chosen"]


def test_rings_are_cached_per_deployment_set_and_bounded() -> None:
    state = RuntimeState()
    g = group()
    assert affinity.ring_for(g, state) is affinity.ring_for(g, state)
    for i in range(affinity._RINGS_MAX + 5):
        affinity.ring_for(group(Target(f"x{i}/m", f"x{i}", "m"), A), state)
    assert len(state.rings) <= affinity._RINGS_MAX
