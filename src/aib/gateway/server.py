"""Run the native engine: load the config, build the app, serve it with our HTTP server on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import uvloop

from aib.auth.store import default_path
from aib.config.compile import build_plan
from aib.config.load import DEFAULTS_DIR, PROVIDERS_FILE
from aib.gateway.app import Gateway, create_app
from aib.gateway.httpserver import ASGIApp, HttpServer, ServerLimits
from aib.gateway.settings import GatewaySettings
from aib.gateway.workers import WorkerSpec
from aib.limits.slots import SharedSlots
from aib.observe import install_observability
from aib.observe.logs import configure_logging
from aib.observe.settings import ObserveSettings
from aib.secrets import install_log_filter

log = logging.getLogger("aib.gateway")
GC_GEN0_THRESHOLD = 20_000  # Python's default is 700 allocations


def choose_config_dir(config_dir: Path | None) -> Path:
    """The given folder; else ./config when it has the files; else the defaults shipped in the package."""
    if config_dir is not None:
        return config_dir
    local = Path("config")
    return local if (local / PROVIDERS_FILE).exists() else DEFAULTS_DIR


def build_gateway(
    settings: GatewaySettings, observe: ObserveSettings | None = None, worker: WorkerSpec | None = None
) -> Gateway:
    """The gateway for ``settings``, with metrics, access log and request log (``observe``, default from
    env); ``worker``: one worker of ``aib serve --workers N`` (shared metrics, leader or follower)."""
    cdir = choose_config_dir(settings.config_dir)
    content = None
    if worker is not None and not worker.leader:  # a follower serves what the leader applied
        from aib.reload.cluster import Cluster

        published = Cluster(Path(worker.run_dir), False, worker.supervisor_pid).read_published()
        if published is not None and published.providers is not None and published.mappings is not None:
            content = (published.providers, published.mappings, published.names)
    plan, cfg, warnings = build_plan(cdir, content)
    for w in warnings:
        log.warning("%s", w)
    log.info(
        "config %s (version %s): %d providers, %d routes, %d patterns",
        cdir,
        plan.version,
        len(plan.providers),
        len(plan.groups),
        len(plan.patterns),
    )
    observe = observe or ObserveSettings.from_env()
    if settings.keys_db is None:  # beside the request log, where one is kept
        settings = replace(settings, keys_db=default_path(observe.request_log))
    slots = None
    if worker is not None:  # a key's limits hold across workers: counters in shared memory
        slots = SharedSlots(Path(worker.run_dir) / "limits", worker.index, worker.count)
    gateway = create_app(plan, settings, cfg, slots=slots)
    install_log_filter(gateway.scrubber)  # secrets never reach a log line
    handle = install_observability(gateway, observe)
    # the layers above the gateway, imported when a server is built
    from aib.engines.sdk_sidecar import install_sdk_adapter
    from aib.reload import install_reload
    from aib.reload.cluster import Cluster

    cluster = None
    if worker is not None:
        gateway.worker = {"index": worker.index, "count": worker.count, "pid": os.getpid()}
        run_dir = Path(worker.run_dir)
        cluster = Cluster(run_dir, worker.leader, worker.supervisor_pid)
        if gateway.cache.memory is not None:  # each worker's own memory cache: flush them all
            from aib.cache.broadcast import FlushBroadcast

            broadcast = FlushBroadcast(gateway.cache, run_dir / "cache-flush")
            gateway.on_cache_flush.append(broadcast.announce)
            gateway.on_startup.append(broadcast.start)
            gateway.on_shutdown.append(broadcast.stop)
        if handle.metrics is not None:
            from aib.observe.shared import WorkerMetrics

            shared = WorkerMetrics(handle.metrics, run_dir / "metrics")
            gateway.on_startup.append(shared.start)
            gateway.on_shutdown.append(shared.stop)
    sdk = install_sdk_adapter(gateway)  # starts nothing until the plan has litellm_sdk providers
    install_reload(
        gateway, None if cdir == DEFAULTS_DIR else cdir, targets=[sdk.reload_target], cluster=cluster
    )
    return gateway


async def serve_app(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    drain_s: float = 30.0,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    also: tuple[socket.socket, ...] = (),
    limits: ServerLimits | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set, or SIGINT/SIGTERM (in the main thread; a second one stops
    at once). Requests in flight get up to ``drain_s`` to finish; ``limits``: what one client may
    hold (default: the app's settings when it is a :class:`Gateway`, else ServerLimits())."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if limits is None and isinstance(app, Gateway):
        limits = app.settings.server_limits()
    server = HttpServer(app, limits)
    signals = threading.current_thread() is threading.main_thread()

    def on_signal() -> None:
        if stop.is_set():
            server.force = True
            log.warning("second signal: stopping now")
        stop.set()

    if signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
    try:
        bound = await server.start(sock, host, port)
        for extra in also:
            await server.listen_also(extra)
        if on_ready is not None:
            on_ready(bound)
        await stop.wait()
        log.info("stopping: waiting up to %gs for %d requests in flight", drain_s, server.inflight)
        await server.stop(drain_s)
    finally:
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def serve(
    settings: GatewaySettings,
    log_level: str = "info",
    observe: ObserveSettings | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. ``worker``: as one worker of ``aib serve --workers N`` (the
    socket and the run folder come from the supervisor, :mod:`aib.gateway.workers`)."""
    observe = observe or ObserveSettings.from_env()
    handler = configure_logging(observe.log_format, log_level)
    if worker is not None:
        handler.addFilter(_WorkerTag(worker.index))
    app = build_gateway(settings, observe, worker)
    if worker is not None:
        uvloop.run(_serve_worker(app, settings, worker))
        return

    def ready(port: int) -> None:
        _freeze()
        log.info("gateway listening on http://%s:%d", settings.host, port)

    try:
        uvloop.run(
            serve_app(app, settings.host, settings.port, drain_s=settings.drain_timeout_s, on_ready=ready)
        )
    except OSError as exc:  # the port is taken, the address is not local, ...
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror or exc)
        raise SystemExit(1) from None


def _freeze() -> None:
    """Everything built at startup (config, plan, modules) lives as long as the process: move it out
    of the collector's sight, and collect the young generation less often (each request leaves a few
    dozen short-lived containers; refcounting frees them, the collector only adds cost)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


async def _serve_worker(
    app: Gateway, settings: GatewaySettings, spec: WorkerSpec, stop: asyncio.Event | None = None
) -> None:
    """Serve as one worker until SIGINT/SIGTERM, ``stop``, or the supervisor's exit."""
    sock = socket.socket(fileno=spec.listen_fd)
    also: tuple[socket.socket, ...] = ()
    if spec.leader:  # followers forward admin reloads here (aib.reload.cluster)
        from aib.reload.cluster import LEADER_SOCKET

        path = Path(spec.run_dir) / LEADER_SOCKET
        path.unlink(missing_ok=True)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(str(path))
        unix.listen(64)
        also = (unix,)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()

    def orphaned() -> None:  # the supervisor is gone (killed): stop like on SIGTERM
        if os.getppid() != spec.supervisor_pid:
            log.warning(
                "worker %d: the supervisor (pid %d) is gone; stopping", spec.index, spec.supervisor_pid
            )
            stop.set()
        else:
            loop.call_later(1.0, orphaned)

    def ready(port: int) -> None:
        _freeze()
        with contextlib.suppress(OSError):
            os.write(spec.ready_fd, b"r")
            os.close(spec.ready_fd)
        log.info("worker %d (pid %d) ready", spec.index, os.getpid())
        loop.call_later(1.0, orphaned)

    await serve_app(app, drain_s=settings.drain_timeout_s, stop=stop, on_ready=ready, sock=sock, also=also)


class _WorkerTag(logging.Filter):
    """Tag a worker's log lines: ``aib.gateway[w1]: ...`` (the logger field, in JSON too)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.tag = f"[w{index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.tag):
            record.name += self.tag
        return True
