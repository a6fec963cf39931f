"""Observability: Prometheus metrics, access logs and the SQLite request log.

``install_observability(gateway, ObserveSettings.from_env())`` adds the observers to
``gateway.observers``, serves ``GET /metrics`` and returns a handle; ``handle.close()`` writes what is
queued (the gateway calls it on shutdown through ``gateway.on_shutdown``). By default one observer
(:class:`aib.observe.client.WriterClient`) batches the requests, counts them in the metrics and hands
them to a writer process (:mod:`aib.observe.writer`) that writes the access lines and the request-log
rows, so that the gateway's CPU goes to requests. The gateway is taken duck-typed: this package never
imports ``aib.gateway``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aib.observe.client import WriterClient
    from aib.observe.install import Observability, install_observability
    from aib.observe.logs import AccessLogObserver, Redactor, configure_logging
    from aib.observe.metrics import MetricsObserver
    from aib.observe.records import Attempt, Observer, RequestRecord
    from aib.observe.requestlog import RequestLog
    from aib.observe.settings import ObserveSettings

# imported on first use: the request path imports `aib.observe.records` alone, the CLI what it needs
_LAZY = {
    "Observability": "install",
    "install_observability": "install",
    "AccessLogObserver": "logs",
    "Redactor": "logs",
    "configure_logging": "logs",
    "MetricsObserver": "metrics",
    "Attempt": "records",
    "Observer": "records",
    "RequestRecord": "records",
    "RequestLog": "requestlog",
    "ObserveSettings": "settings",
    "WriterClient": "client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aib.observe' has no attribute {name!r}")
    return getattr(importlib.import_module(f"aib.observe.{module}"), name)


__all__ = [
    "AccessLogObserver",
    "Attempt",
    "MetricsObserver",
    "Observability",
    "ObserveSettings",
    "Observer",
    "Redactor",
    "RequestLog",
    "RequestRecord",
    "WriterClient",
    "configure_logging",
    "install_observability",
]
