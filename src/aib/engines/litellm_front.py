"""``aib serve --engine litellm`` with hot reload: the native gateway as a thin front, LiteLLM behind it.

The front listens on the public port; LiteLLM runs on a free loopback port and the front's plan is one
``openai_compatible`` provider ``litellm`` with a catch-all pattern (every name goes through unchanged).
``/v1/models`` lists the public models of the real configuration.

A reload (file watch, SIGHUP, ``POST /admin/reload``: the usual controller, which validates the files
as for the native engine) goes through :class:`LiteLLMTarget`: it writes the new generated config,
starts a second LiteLLM on a new port, waits until it is ready, points the front at it (requests in
flight finish on the old one), then stops the old one once its requests are done (at most
``drain_s``). When the new LiteLLM does not start, the reload fails and the old one keeps serving.
``GET /admin/litellm`` says which LiteLLM serves (pid, port, version) and which are draining.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import uvloop
import yaml

from aib.config.compile import build_plan, compile_plan
from aib.config.load import LoadedConfig, load_from_bytes
from aib.config.plan import RoutingPlan
from aib.config.schema import Auth
from aib.engines.litellm import (
    LIVE_PATH,
    MASTER_KEY_ENV,
    READY_PATH,
    EngineError,
    find_litellm,
    http_ok,
    litellm_command,
    litellm_env,
    workers_from_env,
)
from aib.engines.supervisor import Supervisor
from aib.gateway.app import Gateway, Receive, Scope, Send, create_app, send_json
from aib.gateway.httpclient import Pool
from aib.gateway.server import serve_app
from aib.gateway.settings import GatewaySettings
from aib.observe.settings import ObserveSettings
from aib.reload.controller import ReloadController, candidate_from
from aib.reload.service import ReloadService
from aib.reload.settings import ReloadSettings
from aib.reload.target import Candidate, TargetError, Verdict

log = logging.getLogger("aib.engines.litellm")
PROVIDER = "litellm"
LOOPBACK = "127.0.0.1"


class LiteLLMProcess:
    """One supervised LiteLLM on ``127.0.0.1:port`` for one generated config (restarted if it dies)."""

    def __init__(
        self,
        binary: Path,
        config: Path,
        port: int,
        env: dict[str, str],
        log_path: Path | None,
        workers: int = 1,
    ):
        self.port, self.config = port, config
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.supervisor = Supervisor(
            f"litellm:{port}",
            litellm_command(binary, config, LOOPBACK, port, workers),
            ready=lambda: http_ok(self.base_url + READY_PATH),
            env=env,
            cwd=config.parent,
            log_path=log_path,
        )
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"litellm:{port}", daemon=True)

    def _run(self) -> None:
        try:
            self.supervisor.run()
        except BaseException as exc:  # reported by start() / stop()
            self.error = exc

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid

    def start(self, timeout_s: float) -> None:
        """Start it and wait until it is ready; raise :class:`TargetError` (and stop it) when it is not."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        sup = self.supervisor
        while not sup.ready_times:
            why = None
            if sup.exits:
                e = sup.exits[0]
                why = f"it exited with code {e.code} before it was ready"
            elif self.error is not None or not self._thread.is_alive():
                why = str(self.error or "its supervisor stopped")
            elif time.monotonic() >= deadline:
                why = f"it was not ready within {timeout_s:g} s"
            if why is not None:
                tail = sup.log_tail(15)
                self.stop()
                raise TargetError(f"the new LiteLLM on port {self.port} did not start: {why}. {tail}".strip())
            time.sleep(0.1)
        log.info("LiteLLM ready on %s in %.1f s (pid %s)", self.base_url, sup.ready_times[0], self.pid)

    def stop(self) -> None:
        self.supervisor.request_stop()
        self._thread.join(self.supervisor.stop_timeout_s + 10)


def front_sources(port: int, key_env: str | None = None) -> tuple[bytes, bytes]:
    """providers.yaml and model-mappings.yaml of the front: everything to LiteLLM on ``port``, as is
    (with the key in ``$key_env`` when LiteLLM has a master key)."""
    providers = {
        "version": 1,
        "providers": {
            PROVIDER: {
                "type": "openai_compatible",
                "base_url": f"http://{LOOPBACK}:{port}",
                "description": "the LiteLLM proxy behind this front",
                "max_connections": 1000,
                "health": {"endpoint": LIVE_PATH, "interval_s": 5, "timeout_s": 5},
                **({"api_key_env": key_env} if key_env else {}),
            }
        },
    }
    mappings = {
        "version": 1,
        "defaults": {
            # LiteLLM does its own retries and fallbacks: the front retries only a failed connection,
            # and never opens its breaker on LiteLLM's answers
            "timeouts": {"connect_s": 5, "first_byte_s": 3600, "total_s": 86400},
            "retries": {"max_attempts": 2, "retry_on_status": []},
            "breaker": {"failure_threshold": 1000, "cooldown_s": 1},
        },
        "patterns": [{"match": "*", "provider": PROVIDER, "upstream": "{0}"}],
    }
    return yaml.safe_dump(providers).encode(), yaml.safe_dump(mappings).encode()


def front_plan(
    port: int, key_env: str | None = None, auth: Auth | None = None
) -> tuple[RoutingPlan, LoadedConfig]:
    """The front's plan: everything to LiteLLM on ``port``; ``auth``: the real configuration's (the
    front checks client keys and limits, LiteLLM never sees them)."""
    cfg = load_from_bytes(
        *front_sources(port, key_env), names=("(front) providers.yaml", "(front) model-mappings.yaml")
    )
    plan = compile_plan(cfg)
    return (replace(plan, auth=auth) if auth is not None else plan), cfg


class LiteLLMFront:
    """The LiteLLM processes behind a front gateway, and the switch from one to the next."""

    def __init__(
        self,
        *,
        binary: Path | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 180.0,
        drain_s: float = 30.0,
        workers: int | None = None,
    ) -> None:
        self.workers = workers_from_env(env) if workers is None else workers
        self.binary = binary or find_litellm(env)
        self.env = litellm_env(LOOPBACK, env)
        self.key_env = MASTER_KEY_ENV if self.env.get(MASTER_KEY_ENV) else None
        self.log_path = log_path
        self.ready_timeout_s, self.drain_s = ready_timeout_s, drain_s
        self.workdir = Path(tempfile.mkdtemp(prefix="aib-litellm-front-"))
        self.gateway: Gateway | None = None
        self.real_plan: RoutingPlan | None = None
        self.current: LiteLLMProcess | None = None
        self.version = ""
        self.generation = 0
        self.draining: dict[int, tuple[LiteLLMProcess, Pool | None]] = {}
        self.starting: set[LiteLLMProcess] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gens = itertools.count(1)

    # ------------------------------------------------------------------ processes

    def spawn(self, candidate: Candidate) -> LiteLLMProcess:
        """Write ``candidate``'s generated config and start a LiteLLM on it (blocking until ready)."""
        n = next(self._gens)
        path = self.workdir / f"litellm-{n}.yaml"
        path.write_text(candidate.litellm_yaml, encoding="utf-8")
        proc = LiteLLMProcess(self.binary, path, free_loopback_port(), self.env, self.log_path, self.workers)
        self.starting.add(proc)  # stopped by close() too, should the front stop meanwhile
        try:
            proc.start(self.ready_timeout_s)
        finally:
            self.starting.discard(proc)
        return proc

    def start(self, candidate: Candidate) -> LiteLLMProcess:
        """The first LiteLLM, before the front serves (raises TargetError when it does not start)."""
        self.current, self.version = self.spawn(candidate), candidate.version
        return self.current

    def switch(self, proc: LiteLLMProcess, version: str) -> None:
        """Point the front at ``proc``; the one it replaces drains, then stops (in the background)."""
        old, old_gen = self.current, self.generation
        self.current, self.version = proc, version
        self.generation += 1
        # requests already sent to the old LiteLLM hold connections of its pool: that is what drains
        old_pool = self.gateway.pool.pool_of(PROVIDER) if self.gateway is not None else None
        if self.gateway is not None:
            auth = self.real_plan.auth if self.real_plan is not None else None
            self.gateway.set_plan(front_plan(proc.port, self.key_env, auth)[0])
        if old is not None:
            self.draining[old_gen] = (old, old_pool)
            task = asyncio.get_running_loop().create_task(self._retire(old_gen, old, old_pool))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _retire(self, gen: int, proc: LiteLLMProcess, pool: Pool | None) -> None:
        deadline = time.monotonic() + self.drain_s
        while pool is not None and pool.busy and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.05)
        if pool is not None and pool.busy:
            log.warning(
                "%d requests still on LiteLLM pid %s after %g s; stopping it",
                pool.busy,
                proc.pid,
                self.drain_s,
            )
        self.draining.pop(gen, None)
        await asyncio.to_thread(proc.stop)
        log.info("old LiteLLM (pid %s, port %d) stopped", proc.pid, proc.port)

    async def close(self) -> None:
        """Stop every LiteLLM (the front is shutting down) and delete the generated files."""
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        procs = [
            *self.starting,
            *(p for p, _ in self.draining.values()),
            *([self.current] if self.current else []),
        ]
        self.draining.clear()
        self.current = None
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ the front gateway

    def install(self, gateway: Gateway, real_plan: RoutingPlan) -> None:
        """List the real configuration's models (``/v1/models``, ``/v1/models/ID``), add
        ``GET /admin/litellm``, stop every LiteLLM when the front stops."""
        self.gateway, self.real_plan = gateway, real_plan
        gateway.catalog = lambda: (
            real_plan.public_models() if self.real_plan is None else self.real_plan.public_models()
        )

        async def status(scope: Scope, receive: Receive, send: Send) -> None:
            if not await gateway.check_admin(scope, send):
                return
            await send_json(send, 200, orjson.dumps(self.status()))

        gateway.add_route("/admin/litellm", "GET", status)
        gateway.on_shutdown.append(self.close)

    def status(self) -> dict[str, Any]:
        def one(p: LiteLLMProcess) -> dict[str, Any]:
            return {"pid": p.pid, "port": p.port, "base_url": p.base_url, "config": str(p.config)}

        cur = self.current
        return {
            "version": self.version,
            "serving": one(cur) if cur else None,
            "draining": [
                {**one(p), "inflight": pool.busy if pool is not None else 0}
                for p, pool in self.draining.values()
            ],
        }


class LiteLLMTarget:
    """The reload target: a new LiteLLM on the candidate's config, traffic switched once it is ready."""

    name = "litellm engine"

    def __init__(self, front: LiteLLMFront) -> None:
        self.front = front

    async def activate(self, candidate: Candidate) -> None:
        proc = await asyncio.to_thread(self.front.spawn, candidate)  # TargetError: the old one serves on
        self.front.real_plan = candidate.plan
        self.front.switch(proc, candidate.version)

    async def verify(self, candidate: Candidate, previous: Candidate, timeout_s: float) -> Verdict:
        cur = self.front.current
        v = Verdict()
        if cur is not None and not await asyncio.to_thread(http_ok, cur.base_url + LIVE_PATH, timeout_s):
            v.problems.append(f"the new LiteLLM (port {cur.port}) stopped answering {LIVE_PATH}")
        return v

    async def revert(self, previous: Candidate) -> None:
        """A fresh LiteLLM on the previous config (the old one may be stopping already)."""
        if self.front.version != previous.version:
            await self.activate(previous)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class FrontController(ReloadController):
    """The reload controller with the real configuration as its current version and LiteLLM as target."""

    def __init__(
        self,
        gateway: Gateway,
        config_dir: Path | None,
        settings: ReloadSettings,
        first: Candidate,
        front: LiteLLMFront,
    ) -> None:
        super().__init__(gateway, config_dir, settings)
        self.targets = [LiteLLMTarget(front)]
        if self.config_dir is not None:
            self.current = first


def install_front_reload(
    gateway: Gateway, config_dir: Path | None, front: LiteLLMFront, first: Candidate
) -> ReloadService:
    """:func:`aib.reload.install_reload` for the front: reloads switch LiteLLM processes."""
    service = ReloadService(
        gateway, FrontController(gateway, config_dir, ReloadSettings.resolve(gateway.settings), first, front)
    )
    gateway.add_route("/admin/reload", "POST", service.handle_reload)
    gateway.add_route("/admin/rollback", "POST", service.handle_rollback)
    gateway.add_route("/admin/reloads", "GET", service.handle_history)
    gateway.on_startup.append(service.start)
    gateway.on_shutdown.append(service.stop)
    return service


def start_front(
    config_dir: Path, front: LiteLLMFront
) -> tuple[RoutingPlan, LoadedConfig, RoutingPlan, Candidate]:
    """Build the real plan, start the first LiteLLM on it: (front plan, front config, real plan, first).

    Blocks until LiteLLM is ready. Raises ConfigError on bad files, :class:`EngineError` when LiteLLM
    does not start."""
    plan, cfg, warnings = build_plan(config_dir)
    for w in warnings:
        log.warning("%s", w)
    first = candidate_from(plan, cfg)
    log.info("starting LiteLLM behind the front (LiteLLM takes 10-30 s to become ready)")
    try:
        front.start(first)
    except TargetError as exc:
        raise EngineError(str(exc)) from None
    assert front.current is not None
    fplan, fcfg = front_plan(front.current.port, front.key_env, plan.auth)
    return fplan, fcfg, plan, first


def attach_front(
    gateway: Gateway, config_dir: Path | None, front: LiteLLMFront, plan: RoutingPlan, first: Candidate
) -> ReloadService:
    """Make ``gateway`` (built on the front plan) the front of ``front``, with hot reload."""
    front.install(gateway, plan)
    return install_front_reload(gateway, config_dir, front, first)


def build_front(
    config_dir: Path, settings: GatewaySettings, front: LiteLLMFront, observe: ObserveSettings | None = None
) -> Gateway:
    """Start the first LiteLLM (blocking until ready) and build the front gateway for it."""
    from aib.config.load import DEFAULTS_DIR
    from aib.observe import install_observability

    fplan, fcfg, plan, first = start_front(config_dir, front)
    gw = create_app(fplan, settings, fcfg)
    install_observability(gw, observe or ObserveSettings.from_env())
    attach_front(gw, None if config_dir == DEFAULTS_DIR else config_dir, front, plan, first)
    return gw


def serve_front(config_dir: Path, settings: GatewaySettings, log_level: str = "info") -> int:
    """``aib serve --engine litellm``: the front on HOST:PORT, LiteLLM behind it. Blocks until stopped."""
    from aib.engines.litellm import check_port_free
    from aib.observe.logs import configure_logging

    observe = ObserveSettings.from_env()
    front = LiteLLMFront()  # EngineError when LiteLLM is not installed
    try:
        build_plan(config_dir)  # a bad config is reported before anything starts
        check_port_free(settings.host, settings.port)
        configure_logging(observe.log_format, log_level)
        app = build_front(config_dir, settings, front, observe)
    except BaseException:
        asyncio.run(front.close())
        raise
    log.info(
        "LiteLLM engine (hot reload): front on http://%s:%d, LiteLLM on %s",
        settings.host,
        settings.port,
        front.current.base_url if front.current else "?",
    )
    try:
        uvloop.run(serve_app(app, settings.host, settings.port, drain_s=settings.drain_timeout_s))
    finally:
        asyncio.run(front.close())  # no-op when the shutdown hook already stopped them
    return 0
