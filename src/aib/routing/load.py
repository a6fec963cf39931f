"""How loaded a deployment is: the server's own count where it reports one, else the gateway's.

A server's reading includes the gateway's own requests of that moment and everybody else's. The
estimate is the gateway's requests in flight to that server *now* plus the others' share of the reading
(the reading minus the gateway's own at poll time), weighted by how fresh the reading still is:

    load = ours_now + weight(age) * max(reading.running + reading.waiting - ours_at_poll, 0)

So a request the gateway sent after the last poll counts at once, load that other clients put on the
server counts as soon as a poll sees it, and a stale reading fades to the gateway's own count. A server
that reports nothing (llama-cpp-python, OpenAI) is ranked by the gateway's in-flight count alone, which
is least_outstanding.
"""

from __future__ import annotations

from aib.config.plan import Target
from aib.routing.state import RuntimeState


def load(state: RuntimeState, t: Target, now: float) -> float:
    """The estimated load of deployment ``t`` (see the module doc)."""
    sig = state.signals.get(t.provider)
    if sig is not None and sig.reading is not None:
        queue = sig.reading.queue
        if queue is not None:
            w = sig.weight(now)
            if w > 0.0:
                others = queue - sig.ours_at_poll
                return state.provider_inflight(t.provider) + (w * others if others > 0.0 else 0.0)
    st = state.targets.get(t.id)
    return float(st.inflight) if st is not None else 0.0


def explain_load(state: RuntimeState, t: Target, now: float) -> dict[str, object]:
    """The parts of :func:`load`, for ``GET /admin/route`` and ``aib explain --gateway``."""
    st = state.targets.get(t.id)
    out: dict[str, object] = {
        "load": round(load(state, t, now), 3),
        "inflight": st.inflight if st is not None else 0,
    }
    sig = state.signals.get(t.provider)
    if sig is None or sig.reading is None or sig.reading.queue is None:
        out["from"] = "gateway count (server reports no load)"
        return out
    w = sig.weight(now)
    out.update(
        {
            "server_queue": sig.reading.queue,
            "server_running": sig.reading.running,
            "server_waiting": sig.reading.waiting,
            "others_at_poll": max(sig.reading.queue - sig.ours_at_poll, 0.0),
            "provider_inflight": state.provider_inflight(t.provider),
            "signal_age_s": round(now - sig.at, 3),
            "signal_weight": round(w, 3),
            "from": "server signals"
            if w >= 1.0
            else "fading server signals"
            if w > 0
            else "gateway count (stale reading)",
        }
    )
    return out
