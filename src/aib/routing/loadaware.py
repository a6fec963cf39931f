"""least_loaded and loaded_first: strategies that read what the servers say about themselves.

* ``least_loaded``: fewest requests running plus waiting on the server (:func:`aib.routing.load.load`:
  the server's own count where it reports one, the gateway's in-flight count where it does not, a stale
  reading fading to the latter). Ties keep the round-robin rotation.
* ``loaded_first``: deployments whose server has the model in memory first (Ollama's ``/api/ps``;
  llama.cpp and vLLM keep their models loaded while they are up, and so do servers that report nothing),
  then those where nobody knows (an Ollama whose reading is missing or stale), then those known not to
  have it (a request there waits for the model to load, 5-60 s, and may evict another). Within each tier
  the route's ``balance.tie_break`` strategy orders them.
"""

from __future__ import annotations

from collections.abc import Callable

from aib.config.plan import Target
from aib.routing.load import load
from aib.routing.state import RuntimeState

Then = Callable[[list[Target]], list[Target]]


def least_loaded(rotated: list[Target], state: RuntimeState, now: float) -> list[Target]:
    """``rotated`` (the round-robin order) sorted by estimated load; the sort is stable."""
    loads = {t.id: load(state, t, now) for t in rotated}
    return sorted(rotated, key=lambda t: loads[t.id])


def tier(state: RuntimeState, t: Target, now: float) -> int:
    """0: the model is in memory; 1: unknown; 2: the server says it is not."""
    sig = state.signals.get(t.provider)
    if sig is None:
        return 0  # a server that reports nothing keeps what it serves ready (llama.cpp, vLLM, clouds)
    loaded = sig.loaded(t.upstream, now)
    return 1 if loaded is None else 0 if loaded else 2


def loaded_first(ts: list[Target], state: RuntimeState, now: float, then: Then) -> list[Target]:
    """``ts`` ordered by ``then`` (the tie-break strategy, once), then stably by :func:`tier`."""
    ordered = then(ts)
    tiers = {t.id: tier(state, t, now) for t in ordered}
    return sorted(ordered, key=lambda t: tiers[t.id])
