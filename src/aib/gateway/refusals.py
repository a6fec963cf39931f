"""What a client is told when no deployment served its request, and panic routing.

* :func:`all_failed`: every attempt failed: each deployment tried and why it failed, then those not
  tried and why not (down, circuit open, disabled, the attempt limit or deadline);
* :func:`nothing_available`: nothing could be tried: a 503 with each deployment's reason and a
  ``Retry-After`` from the breaker that reopens first;
* :func:`panic_targets`: the deployments the probes vouch for when breakers shut out all of them.
"""

from __future__ import annotations

import time

from aib.config.plan import Group, RoutingPlan, Target
from aib.gateway.errors import GatewayError
from aib.observe.records import RequestRecord
from aib.routing.state import RuntimeState


def why_not(state: RuntimeState, plan: RoutingPlan, t: Target, now: float) -> tuple[str | None, float | None]:
    """Why a deployment takes no request now (None: nothing stops it), and in how many seconds its
    breaker lets one through again."""
    info = plan.providers.get(t.provider)
    if info is None or not info.enabled:
        return f"{t.id}: disabled", None
    st = state.targets.get(t.id)
    if st is not None and not st.breaker.allows(now):
        left = max(st.breaker.opened_until - now, 0.0)
        return f"{t.id}: circuit open ({st.breaker.last_error})", left
    h = state.health.get(t.provider)
    if h is not None and not h.usable:
        return f"{t.provider}: down ({h.last_error})", None
    return None, None


def all_failed(
    state: RuntimeState,
    plan: RoutingPlan,
    chain: tuple[Group, ...],
    record: RequestRecord,
    tried: set[str],
    last: GatewayError,
) -> GatewayError:
    """The answer when every attempt failed, with the status and code of the ``last`` failure (one
    failure alone, with nothing else in the chain, is ``last`` itself)."""
    failed = [a for a in record.attempts if not a.ok and a.error]
    now = time.monotonic()
    skipped: dict[str, str] = {}
    for g in chain:
        for t in g.targets:
            if t.id not in tried and t.id not in skipped:
                reason = why_not(state, plan, t, now)[0]
                skipped[t.id] = reason or f"{t.id}: not tried (attempt limit or deadline reached)"
    if len(failed) <= 1 and not skipped:
        return last
    message = f"Tried {len(failed)} deployments, all failed: " if len(failed) > 1 else "Tried 1 deployment: "
    message += "; ".join(f"{a.target}: {a.error}" for a in failed) + "."
    if skipped:
        message += f" Not tried: {'; '.join(skipped.values())}."
    combined = GatewayError(
        last.status, message + " GET /health shows provider states.", last.type, last.code
    )
    combined.headers.update(last.headers)
    return combined


def nothing_available(state: RuntimeState, plan: RoutingPlan, chain: tuple[Group, ...]) -> GatewayError:
    """503: no deployment of ``chain`` could be tried, each with its reason."""
    now = time.monotonic()
    reasons: dict[str, str] = {}
    wait: float | None = None
    for g in chain:
        for t in g.targets:
            reason, left = why_not(state, plan, t, now)
            reasons.setdefault(t.id, reason or f"{t.id}: disabled")
            if left is not None:
                wait = left if wait is None else min(wait, left)
    err = GatewayError(
        503,
        f"No deployment can take this request now: {'; '.join(reasons.values())}. "
        "GET /health shows provider states.",
        "service_unavailable",
        "no_healthy_deployment",
    )
    if wait is not None:
        err.headers["retry-after"] = str(max(int(wait + 0.999), 1))
    return err


def panic_targets(group: Group, state: RuntimeState) -> list[Target]:
    """The deployments of ``group`` that answered their last probe, breakers or not.

    Envoy calls this panic routing: when the breakers would refuse every request, the ones the probes
    vouch for serve anyway (a success closes a breaker, a failure keeps it open); the alternative is a
    503 to every client while a working server waits out a cool-down."""
    out = []
    for t in group.targets:
        h = state.health.get(t.provider)
        if h is not None and h.healthy is True:
            out.append(t)
    return out
