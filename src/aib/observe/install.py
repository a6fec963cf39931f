"""Build the observers of one gateway and attach them (see :mod:`aib.observe`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aib.observe.client import WriterClient
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
    """What :func:`install_observability` built; ``close()`` once at shutdown.

    With the writer process (the default), ``writer`` is the one observer of the gateway: it batches
    requests, folds them into ``metrics`` and feeds the writer; ``access`` / ``request_log`` are that
    same client when those logs are on (``flush()``, ``close()``, ``drops()``, ``written``).
    """

    settings: ObserveSettings
    redactor: Redactor
    metrics: MetricsObserver | None = None
    access: AccessLogObserver | WriterClient | None = None
    request_log: RequestLog | WriterClient | None = None
    writer: WriterClient | None = None

    def reload_done(self, result: str) -> None:
        """Count a configuration reload (``success`` or ``failure``) in ``aib_config_reloads_total``."""
        if self.metrics is not None:
            self.metrics.reload_done(result)

    def close(self) -> None:
        """Write what is queued (access lines, request-log rows) and stop the writer (process or threads)."""
        for part in (self.writer, self.access, self.request_log):
            if part is not None:
                part.close()
        self.request_log = None


def install_observability(gateway: Any, settings: ObserveSettings | None = None) -> Observability:
    """Attach metrics, the access log and the request log to ``gateway``; serve ``/metrics``."""
    settings = settings or ObserveSettings.from_env()
    secrets = GatewaySecrets(gateway)
    redactor = Redactor(secrets)
    handle = Observability(settings, redactor)
    if settings.metrics:
        handle.metrics = MetricsObserver(gateway)
        gateway.add_route("/metrics", "GET", handle.metrics.asgi)
    access_logger = logging.getLogger(ACCESS_LOGGER)
    if settings.access_log and access_logger.level == logging.NOTSET:
        access_logger.setLevel(logging.INFO)  # AIB_ACCESS_LOG decides, not the general log level
    if settings.writer == "process" and sys.executable:
        if settings.metrics or settings.access_log or settings.request_log is not None:
            _install_writer(gateway, settings, handle, secrets, access_logger.getEffectiveLevel())
    else:
        if handle.metrics is not None:
            gateway.observers.append(handle.metrics)
        _install_threads(gateway, settings, handle, access_logger)
    if handle.metrics is not None and handle.request_log is not None:
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


def _install_writer(
    gateway: Any, settings: ObserveSettings, handle: Observability, secrets: GatewaySecrets, access_level: int
) -> None:
    """The default: one observer batches every request; metrics count the batch, the writer process
    writes the access lines and the request-log rows."""
    writer = handle.writer = _writer_client(settings, secrets, access_level, handle.metrics)
    gateway.observers.append(writer)
    if settings.access_log:
        handle.access = writer
    if settings.request_log is not None:
        handle.request_log = writer
    startup = getattr(gateway, "on_startup", None)
    if startup is not None and writer.ship:
        startup.append(writer.start)


def _writer_client(
    settings: ObserveSettings, secrets: GatewaySecrets, access_level: int, metrics: MetricsObserver | None
) -> WriterClient:
    config = {
        "access": settings.access_log,
        "log_format": settings.log_format,
        "access_level": access_level,
        "request_log": str(settings.request_log) if settings.request_log is not None else None,
        "retention_days": settings.retention_days,
        "retention_rows": settings.retention_rows,
        "retention_interval_s": settings.retention_interval_s,
        "batch_size": settings.batch_size,
        "log_bodies": settings.log_bodies,
        "max_db_mb": settings.max_db_mb,
    }
    return WriterClient(
        config,
        metrics=metrics,
        secrets=secrets,
        queue_size=settings.queue_size,
        flush_interval_s=settings.flush_interval_s,
    )


def _install_threads(
    gateway: Any, settings: ObserveSettings, handle: Observability, access_logger: logging.Logger
) -> None:
    """``AIB_OBSERVE_WRITER=thread``: both logs written by threads of the gateway process."""
    if settings.access_log:
        handle.access = AccessLogObserver(
            handle.redactor, access_logger, background=True, interval_s=settings.flush_interval_s
        )
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
            redact=handle.redactor,
            redact_bytes=handle.redactor.bytes,
        ).start()
        gateway.observers.append(handle.request_log)
