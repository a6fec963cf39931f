"""Build the observers of one gateway and attach them (see :mod:`aib.observe`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aib.observe.logs import ACCESS_LOGGER, AccessLogObserver, Redactor
from aib.observe.metrics import MetricsObserver
from aib.observe.requestlog import RequestLog
from aib.observe.settings import ObserveSettings


class GatewaySecrets:
    """The values of every key the gateway knows (``api_key_env`` of each provider, the admin key)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self._cache: tuple[object, tuple[str, ...]] = (None, ())

    def __call__(self) -> Iterable[str]:
        plan = self.gateway.plan
        if self._cache[0] is not plan:
            names = {getattr(p, "api_key_env", None) for p in plan.providers.values()}
            settings = getattr(self.gateway, "settings", None)
            names.add(getattr(settings, "admin_key_env", None))
            values = tuple(
                sorted({os.environ[n] for n in names if n and os.environ.get(n)}, key=len, reverse=True)
            )
            self._cache = (plan, values)
        return self._cache[1]


@dataclass
class Observability:
    """What :func:`install_observability` built; ``close()`` once at shutdown."""

    settings: ObserveSettings
    redactor: Redactor
    metrics: MetricsObserver | None = None
    access: AccessLogObserver | None = None
    request_log: RequestLog | None = None

    def reload_done(self, result: str) -> None:
        """Count a configuration reload (``success`` or ``failure``) in ``aib_config_reloads_total``."""
        if self.metrics is not None:
            self.metrics.reload_done(result)

    def close(self) -> None:
        """Write what is queued (access lines, request-log rows) and stop the background threads."""
        if self.access is not None:
            self.access.close()
        if self.request_log is not None:
            self.request_log.close()
            self.request_log = None


def install_observability(gateway: Any, settings: ObserveSettings | None = None) -> Observability:
    """Attach metrics, the access log and the request log to ``gateway``; serve ``/metrics``."""
    settings = settings or ObserveSettings.from_env()
    redactor = Redactor(GatewaySecrets(gateway))
    handle = Observability(settings, redactor)
    if settings.metrics:
        handle.metrics = MetricsObserver(gateway)
        gateway.observers.append(handle.metrics)
        gateway.add_route("/metrics", "GET", handle.metrics.asgi)
    if settings.access_log:
        access_logger = logging.getLogger(ACCESS_LOGGER)
        if access_logger.level == logging.NOTSET:  # AIB_ACCESS_LOG decides, not the general log level
            access_logger.setLevel(logging.INFO)
        handle.access = AccessLogObserver(redactor, access_logger, background=True)
        gateway.observers.append(handle.access)
    if settings.request_log is not None:
        handle.request_log = RequestLog(
            settings.request_log,
            retention_days=settings.retention_days,
            retention_rows=settings.retention_rows,
            retention_interval_s=settings.retention_interval_s,
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
            log_bodies=settings.log_bodies,
            max_db_mb=settings.max_db_mb,
            redact=redactor,
            redact_bytes=redactor.bytes,
        ).start()
        gateway.observers.append(handle.request_log)
        if handle.metrics is not None:
            handle.metrics.add_drop_source(handle.request_log.drops)
    if hasattr(gateway, "keep_bodies"):
        gateway.keep_bodies = settings.log_bodies and settings.request_log is not None
    hooks = getattr(gateway, "on_shutdown", None)
    if hooks is not None:
        hooks.append(handle.close)
    reload_hooks = getattr(gateway, "on_reload", None)
    if reload_hooks is not None:
        reload_hooks.append(handle.reload_done)
    return handle
