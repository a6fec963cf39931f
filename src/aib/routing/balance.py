"""Load balancing: order a group's deployments for one request.

The first deployment is the pick; the rest, in order, are where a failed attempt goes next within the
same group. Deployments whose provider is unhealthy or whose breaker is open are left out.
"""

from __future__ import annotations

import time

from aib.config.plan import Group, Target
from aib.routing import affinity, loadaware
from aib.routing.affinity import AffinityKey
from aib.routing.state import RuntimeState

EXPLORE_EVERY = 20  # the latency strategy sends every Nth request round-robin to keep averages fresh
SIGNAL_STRATEGIES = frozenset({"least_loaded", "loaded_first", "prefix_affinity"})


def eligible(group: Group, state: RuntimeState) -> list[Target]:
    out = []
    for t in group.targets:
        h = state.health.get(t.provider)
        if h is not None and not h.usable:
            continue
        st = state.targets.get(t.id)
        if st is not None and not st.breaker.allows():
            continue
        out.append(t)
    return out


def order(
    group: Group,
    state: RuntimeState,
    candidates: list[Target] | None = None,
    key: AffinityKey | None = None,
) -> list[Target]:
    """The deployments of ``group`` to try, best first. ``key``: the request's affinity key."""
    ts = eligible(group, state) if candidates is None else candidates
    if len(ts) <= 1:
        return ts
    return order_by(group.strategy, group, ts, state, key)


def order_by(
    strategy: str, group: Group, ts: list[Target], state: RuntimeState, key: AffinityKey | None = None
) -> list[Target]:
    """``ts`` (two or more deployments of ``group``) ordered by ``strategy``."""
    if strategy in SIGNAL_STRATEGIES:
        return _by_signals(strategy, group, ts, state, key)
    if strategy == "weighted":
        return _weighted(group.name, ts, state)
    rotated = _rotate(group.name, ts, state)
    if strategy == "least_outstanding":
        return sorted(rotated, key=lambda t: state.stats(t.id).inflight)  # stable: ties keep rotation
    if strategy == "latency":
        n = state.rr_counters[group.name]
        # explore: rotate by the number of explorations (n % len(ts) would always land on one slot)
        if n % EXPLORE_EVERY == 0:
            k = (n // EXPLORE_EVERY) % len(ts)
            return ts[k:] + ts[:k]
        return sorted(rotated, key=lambda t: _latency_key(state, t))
    return rotated


def _rotate(name: str, ts: list[Target], state: RuntimeState) -> list[Target]:
    n = state.rr_counters.get(name, 0)
    state.rr_counters[name] = n + 1
    k = n % len(ts)
    return ts[k:] + ts[:k]


def _latency_key(state: RuntimeState, t: Target) -> float:
    ewma = state.stats(t.id).ewma_ttfb_s
    return -1.0 if ewma is None else ewma  # untried deployments first


def _weighted(name: str, ts: list[Target], state: RuntimeState) -> list[Target]:
    """Smooth weighted round-robin (as nginx does): deterministic, spreads picks evenly."""
    current = state.swrr.setdefault(name, {})
    live = [t for t in ts if t.weight > 0] or ts
    total = sum(t.weight for t in live) or float(len(live))
    best: Target | None = None
    for t in live:
        w = t.weight if t.weight > 0 else 1.0
        current[t.id] = current.get(t.id, 0.0) + w
        if best is None or current[t.id] > current[best.id]:
            best = t
    assert best is not None
    current[best.id] -= total
    rest = sorted((t for t in ts if t is not best), key=lambda t: -t.weight)
    return [best, *rest]


# --------------------------------------------------------------------------- backend signals, affinity


def _by_signals(
    strategy: str, group: Group, ts: list[Target], state: RuntimeState, key: AffinityKey | None
) -> list[Target]:
    """least_loaded, loaded_first (aib.routing.loadaware) and prefix_affinity (aib.routing.affinity)."""
    now = time.monotonic()
    if strategy == "least_loaded":
        return loadaware.least_loaded(_rotate(group.name, ts, state), state, now)

    def then(rest: list[Target]) -> list[Target]:
        return order_by(group.balance.tie_break, group, rest, state) if len(rest) > 1 else rest

    if strategy == "loaded_first":
        return loadaware.loaded_first(ts, state, now, then)
    return affinity.prefix_affinity(group, ts, state, now, key, then)
