"""Backend signals as Prometheus gauges, read at scrape time from the gateway's runtime state.

Labels take only configured names: ``provider`` (providers of the plan that are polled),
``deployment`` (the plan's deployment ids) and ``model`` (models the plan routes to on that provider), so
a server that loads a hundred models adds no series. Under ``--workers N`` each worker polls on its own;
a scrape shows the worker that answered (like ``aib_provider_up``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from aib.routing.load import load


def signal_families(plan: Any, state: Any, now: float | None = None) -> Iterator[Metric]:
    """The backend-signal gauges (see the module doc)."""
    now = time.monotonic() if now is None else now
    p = ["provider"]
    running = GaugeMetricFamily(
        "aib_backend_requests_running", "Requests the server reports working on (backend signal).", labels=p
    )
    waiting = GaugeMetricFamily(
        "aib_backend_requests_waiting", "Requests the server reports queued (backend signal).", labels=p
    )
    kv = GaugeMetricFamily(
        "aib_backend_kv_cache_usage_ratio", "Share of the server's KV cache in use (vLLM).", labels=p
    )
    age = GaugeMetricFamily(
        "aib_backend_signal_age_seconds", "Age of the provider's last signal reading.", labels=p
    )
    weight = GaugeMetricFamily(
        "aib_backend_signal_weight",
        "How much the last reading still counts in load estimates: 1 fresh, 0 stale.",
        labels=p,
    )
    loaded = GaugeMetricFamily(
        "aib_backend_model_loaded",
        "1 if the server reports the model in memory, 0 if not (Ollama /api/ps; routed models only).",
        labels=["provider", "model"],
    )
    signals = state.signals
    targets = plan.targets()
    for name in plan.providers:
        sig = signals.get(name)
        if sig is None or sig.reading is None:
            continue
        r = sig.reading
        if r.running is not None:
            running.add_metric([name], r.running)
        if r.waiting is not None:
            waiting.add_metric([name], r.waiting)
        if r.kv_cache is not None:
            kv.add_metric([name], r.kv_cache)
        age.add_metric([name], max(now - sig.at, 0.0))
        weight.add_metric([name], sig.weight(now))
        if r.loaded is not None:
            for model in sorted({t.upstream for t in targets.values() if t.provider == name}):
                is_loaded = sig.loaded(model, now)
                if is_loaded is not None:
                    loaded.add_metric([name, model], 1.0 if is_loaded else 0.0)
    yield from (running, waiting, kv, age, weight, loaded)
    est = GaugeMetricFamily(
        "aib_deployment_load",
        "Load estimate the load-aware strategies rank by: the gateway's in-flight requests plus, where the "
        "server reports them, other clients' requests weighted by the reading's freshness.",
        labels=["deployment"],
    )
    for tid, t in sorted(targets.items()):
        est.add_metric([tid], load(state, t, now))
    yield est
