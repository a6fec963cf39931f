"""Why each deployment ranks where it does right now: the live part of ``GET /admin/route``.

For each route of the resolved chain, the order the balancer would give the next request (computed on
the live state, with the rotation counters put back afterwards so that asking changes nothing) and, per
deployment: provider health, breaker, whether the provider reports the model (discovery), its backend
signals, the load estimate, the loaded_first tier and, for prefix_affinity with a key, the ring walk and
the bounded-load decision. ``aib explain MODEL --gateway URL`` prints it.
"""

from __future__ import annotations

import time
from typing import Any

from aib.config.plan import Group, Resolution, RoutingPlan, Target
from aib.routing import affinity, balance
from aib.routing.affinity import AffinityKey
from aib.routing.load import explain_load
from aib.routing.loadaware import tier
from aib.routing.signals import with_tag
from aib.routing.state import RuntimeState

TIERS = {0: "model loaded", 1: "unknown whether loaded", 2: "model not loaded"}
STRATEGY_RULES = {
    "round_robin": "in turn (the next request starts one further along)",
    "weighted": "smooth weighted round robin by `weight`",
    "least_outstanding": "fewest requests in flight from this gateway; ties in turn",
    "latency": "lowest time-to-first-byte average; every 20th request in turn",
    "least_loaded": "lowest load: the server's running + waiting requests where it reports them "
    "(fading with age), else this gateway's in-flight count; ties in turn",
    "loaded_first": "servers with the model in memory first, then unknown, then not loaded; "
    "within each, balance.tie_break",
    "prefix_affinity": "the first deployment on the hash ring (from the request's key) whose load is "
    "below the bounded-load capacity; without a key, balance.tie_break",
}


def excluded_reason(plan: RoutingPlan, state: RuntimeState, t: Target, now: float) -> str | None:
    """Why the balancer leaves ``t`` out now (None: it is eligible)."""
    info = plan.providers.get(t.provider)
    if info is None or not info.enabled:
        return "provider disabled"
    h = state.health.get(t.provider)
    if h is not None and not h.usable:
        return f"provider down: {h.last_error or 'health probe failed'}"
    st = state.targets.get(t.id)
    if st is not None and not st.breaker.allows(now):
        left = max(st.breaker.opened_until - now, 0.0)
        return f"circuit open ({st.breaker.last_error}); trial in {left:.1f}s"
    return None


def _next_order(group: Group, state: RuntimeState, key: AffinityKey | None) -> list[Target]:
    """The order the next request would get, without moving the rotation counters."""
    rr = state.rr_counters.get(group.name)
    swrr = dict(state.swrr[group.name]) if group.name in state.swrr else None
    try:
        return balance.order(group, state, key=key)
    finally:  # no await in between: nothing else ran
        if rr is None:
            state.rr_counters.pop(group.name, None)
        else:
            state.rr_counters[group.name] = rr
        if swrr is None:
            state.swrr.pop(group.name, None)
        else:
            state.swrr[group.name] = swrr


def _deployment(plan: RoutingPlan, state: RuntimeState, t: Target, now: float) -> dict[str, Any]:
    h = state.health.get(t.provider)
    st = state.targets.get(t.id)
    sig = state.signals.get(t.provider)
    d: dict[str, Any] = {
        "id": t.id,
        "provider": t.provider,
        "upstream": t.upstream,
        "weight": t.weight,
        "health": "unknown"
        if h is None or h.healthy is None
        else "healthy"
        if h.healthy
        else f"down: {h.last_error}",
        "breaker": st.breaker.snapshot() if st is not None else {"state": "closed"},
        "discovered": None
        if h is None or not h.models
        else t.upstream in h.models or with_tag(t.upstream) in h.models,
        "signals": sig.report(now) if sig is not None else None,
        **explain_load(state, t, now),
        "tier": TIERS[tier(state, t, now)],
    }
    if st is not None and st.ewma_ttfb_s is not None:
        d["ttfb_ewma_ms"] = round(st.ewma_ttfb_s * 1000, 2)
    return d


def explain_live(
    plan: RoutingPlan, res: Resolution, state: RuntimeState, key: AffinityKey | None = None
) -> dict[str, Any]:
    """The ``live`` part of ``GET /admin/route`` (see the module doc)."""
    now = time.monotonic()
    routes = []
    for group in res.chain:
        order = _next_order(group, state, key)
        rank = {t.id: i + 1 for i, t in enumerate(order)}
        deployments = []
        for t in group.targets:
            d = _deployment(plan, state, t, now)
            d["rank"] = rank.get(t.id)
            d["excluded"] = excluded_reason(plan, state, t, now)
            deployments.append(d)
        deployments.sort(key=lambda d: (d["rank"] is None, d["rank"] or 0))
        entry: dict[str, Any] = {
            "route": group.name,
            "strategy": group.strategy,
            "rule": STRATEGY_RULES.get(group.strategy, group.strategy),
            "order": [t.id for t in order],
            "deployments": deployments,
        }
        if group.strategy == "prefix_affinity":
            k = key.value if key is not None else None
            entry["affinity"] = (
                {
                    "key_from": key.source if key is not None else "none",
                    **affinity.explain(group, order, state, now, k),
                }
                if k is not None
                else {"key_from": "none", "note": "no key: ordered by balance.tie_break"}
            )
        routes.append(entry)
    return {"routes": routes, "taken_at": time.time()}
