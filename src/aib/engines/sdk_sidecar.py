"""The gateway's side of the LiteLLM SDK adapter: one adapter process per address that the plan's
``litellm_sdk`` providers use, kept in step with the plan.

:func:`install_sdk_adapter` hooks an :class:`SdkAdapters` into a gateway: at startup it starts an
adapter (``python -m aib.engines.sdk_adapter`` with ``.venv-litellm``'s Python, see
:func:`aib.config.litellm_sdk.find_adapter_python`) for every address in the plan, supervised (ready
once LiteLLM is loaded; restarted with back-off when it dies; a fresh try every 30 s after it failed
to start five times in a row); after a reload it starts the adapters a new address needs and retires
those no provider uses any more (they finish their requests first, at most ``drain_s``); at shutdown
it stops them all, by PID. When an adapter becomes ready, the providers it serves are probed at once,
so they join without waiting for the next health round.

A provider's own options travel with each request (:mod:`aib.config.litellm_sdk`): changing one in a
reload restarts nothing. Without LiteLLM anywhere, the adapter still runs (on this Python) and
answers "LiteLLM SDK adapter not installed: run `make litellm`" to every probe and request, which is
what ``/health`` shows for those providers; everything else is served as usual.

The gateway process never imports LiteLLM (it would add ~300 MB to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

import aib
from aib.config.litellm_sdk import TOKEN_ENV, AdapterPython, find_adapter_python, litellm_version
from aib.config.plan import RoutingPlan
from aib.engines.litellm import OFFLINE_ENV, http_ok
from aib.engines.supervisor import Backoff, Supervisor, SupervisorError
from aib.gateway.app import Gateway, Receive, Scope, Send, send_json
from aib.reload.target import Candidate, Verdict

log = logging.getLogger("aib.engines.sdk_adapter")
MODULE = "aib.engines.sdk_adapter"
LOG_ENV = "AIB_SDK_ADAPTER_LOG"
RETRY_S = 30.0  # after the adapter failed to start five times in a row
INSTALL_CHECK_S = 30.0  # how often an adapter running without LiteLLM looks for it
Address = tuple[str, int]


class AdapterProcess:
    """One supervised adapter on ``host:port`` (a thread runs its :class:`Supervisor`)."""

    def __init__(
        self,
        address: Address,
        python: AdapterPython,
        env: dict[str, str],
        log_path: Path | None,
        on_ready: Any,
        after: AdapterProcess | None = None,
    ) -> None:
        self.address, self.python, self.after = address, python, after
        host, port = address
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.ready = threading.Event()
        self._on_ready = on_ready
        self._stopped = threading.Event()
        self.supervisor = Supervisor(
            f"sdk-adapter:{port}",
            [python.path, "-m", MODULE, "--host", host, "--port", str(port)],
            ready=self._check_ready,
            env=env,
            log_path=log_path,
            ready_timeout_s=120.0,
            backoff=Backoff(initial_s=0.5, max_s=15.0),
            stop_timeout_s=10.0,
        )
        self.thread = threading.Thread(target=self._run, name=f"sdk-adapter:{port}", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid

    def _check_ready(self) -> bool:
        if not http_ok(self.url + "/health/ready", 1.0):
            return False
        self.ready.set()
        self._on_ready(self)
        return True

    def _run(self) -> None:
        if self.after is not None:  # the adapter it replaces on this address must be gone first
            self.after.thread.join()
        while not self._stopped.is_set():
            try:
                self.supervisor.run()
                return
            except SupervisorError as exc:
                log.error("%s; trying again in %g s", exc, RETRY_S)
                self._stopped.wait(RETRY_S)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop it (SIGTERM to its process group by PID, SIGKILL after 10 s) and wait for that."""
        if not self._stopped.is_set():  # a second request_stop would SIGKILL it
            self._stopped.set()
            self.supervisor.request_stop()
        if self.thread.is_alive():
            self.thread.join(self.supervisor.stop_timeout_s + 10)

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until it is ready (True), or it failed to start, or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.1):
            failed = any(not e.was_ready for e in self.supervisor.exits)
            if failed or not self.thread.is_alive() or time.monotonic() >= deadline:
                return False
        return True

    def inflight(self) -> int:
        """Requests the adapter is serving (0 when it does not answer)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(self.url + "/health/live", timeout=1.0) as resp:
                return int(orjson.loads(resp.read()).get("inflight", 0))
        except (OSError, ValueError, AttributeError):
            return 0

    def status(self, providers: list[str]) -> dict[str, Any]:
        sup = self.supervisor
        return {
            "url": self.url,
            "pid": self.pid,
            "python": self.python.path,
            "ready": self.ready.is_set() and sup.running(),
            "providers": providers,
            "starts": sup.starts,
            "exits": [
                {"pid": e.pid, "code": e.code, "uptime_s": round(e.uptime_s, 1)} for e in sup.exits[-5:]
            ],
        }


class SdkAdapters:
    """The adapters of one gateway. ``python``: the interpreter to use (default: found as described in
    :func:`~aib.config.litellm_sdk.find_adapter_python`); ``log_path``: their output (default
    ``$AIB_SDK_ADAPTER_LOG``, else the gateway's own stderr)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        python: str | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 60.0,
        drain_s: float | None = None,
    ) -> None:
        self.gateway = gateway
        self._python = python
        env_log = os.environ.get(LOG_ENV)
        self.log_path = log_path or (Path(env_log) if env_log else None)
        self.ready_timeout_s = ready_timeout_s
        self.drain_s = gateway.settings.drain_timeout_s if drain_s is None else drain_s
        self.procs: dict[Address, AdapterProcess] = {}
        self.retiring: list[AdapterProcess] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._workdir: Path | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what runs where

    @staticmethod
    def addresses(plan: RoutingPlan) -> dict[Address, list[str]]:
        """Address -> enabled ``litellm_sdk`` providers there."""
        out: dict[Address, list[str]] = {}
        for info in plan.providers.values():
            if info.sdk is not None and info.enabled:
                out.setdefault(_address(info.base_url), []).append(info.name)
        return out

    def python(self) -> AdapterPython:
        if self._python is None:
            return find_adapter_python()
        version = litellm_version(Path(self._python))
        return AdapterPython(self._python, version is not None, f"{self._python} (given)", version)

    def _env(self) -> dict[str, str]:
        if self._workdir is None:  # `aib` alone on the adapter's path: nothing else of this venv
            self._workdir = Path(tempfile.mkdtemp(prefix="aib-sdk-adapter-"))
            (self._workdir / "aib").symlink_to(Path(aib.__file__).resolve().parent, target_is_directory=True)
        env = dict(os.environ)
        for key, value in OFFLINE_ENV.items():
            env.setdefault(key, value)
        env.pop("PYTHONHOME", None)
        env["PYTHONPATH"] = str(self._workdir)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def sync(self, plan: RoutingPlan) -> list[AdapterProcess]:
        """Start the adapters ``plan`` needs, retire the others; the ones started now."""
        wanted = self.addresses(plan)
        python = self.python() if wanted else None
        started: list[AdapterProcess] = []
        with self._lock:
            replaced: dict[Address, AdapterProcess] = {}
            for addr, proc in list(self.procs.items()):
                moved = python is not None and (proc.python.path, proc.python.installed) != (
                    python.path,
                    python.installed,
                )
                if addr not in wanted or moved:  # gone, or LiteLLM is somewhere else now
                    replaced[addr] = self.procs.pop(addr)
                    self._retire(replaced[addr])
            for addr, names in wanted.items():
                if addr in self.procs:
                    continue
                assert python is not None
                if python.problem:
                    log.warning("%s: %s; they are down until it is", ", ".join(names), python.problem)
                proc = AdapterProcess(
                    addr, python, self._env(), self.log_path, self._ready, replaced.get(addr)
                )
                self.procs[addr] = proc
                proc.start()
                started.append(proc)
                log.info(
                    "LiteLLM SDK adapter for %s starting on %s (%s)", ", ".join(names), proc.url, python.how
                )
        return started

    def _retire(self, proc: AdapterProcess) -> None:
        """Stop ``proc`` once its requests are done (at most ``drain_s``), in the background."""
        self.retiring.append(proc)

        def drain() -> None:
            deadline = time.monotonic() + self.drain_s
            while proc.ready.is_set() and time.monotonic() < deadline and proc.inflight():
                time.sleep(0.2)
            proc.stop()
            with self._lock:
                if proc in self.retiring:
                    self.retiring.remove(proc)
            log.info("LiteLLM SDK adapter on %s stopped (pid %s)", proc.url, proc.pid)

        threading.Thread(target=drain, name=f"retire-{proc.url}", daemon=True).start()

    def _ready(self, proc: AdapterProcess) -> None:
        """From the supervisor's thread: probe the providers ``proc`` serves now, on the gateway's loop."""
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self._probe, proc.address)

    def _probe(self, address: Address) -> None:
        health = self.gateway.health
        if health is None:
            return
        for info in self.gateway.base_plan.providers.values():
            if info.sdk is not None and info.enabled and _address(info.base_url) == address:
                task = asyncio.ensure_future(health.probe(info))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def wait_ready(self, procs: list[AdapterProcess], timeout_s: float | None = None) -> list[str]:
        """Wait until ``procs`` are ready; the URLs of those that were not within the time limit."""
        limit = self.ready_timeout_s if timeout_s is None else timeout_s
        results = await asyncio.gather(*(asyncio.to_thread(p.wait_ready, limit) for p in procs))
        late = [p.url for p, ok in zip(procs, results, strict=True) if not ok]
        for url in late:
            log.warning(
                "the LiteLLM SDK adapter on %s is not ready; its providers stay down until it is", url
            )
        return late

    # ------------------------------------------------------------------ gateway hooks

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sync(self.gateway.base_plan)
        self._watch = self.loop.create_task(self._watch_install())

    async def _watch_install(self) -> None:
        """While an adapter runs without LiteLLM, look for it every ``INSTALL_CHECK_S``: after
        `make litellm` the adapters restart on the new Python by themselves."""
        while True:
            await asyncio.sleep(INSTALL_CHECK_S)
            if any(not p.python.installed for p in self.procs.values()) and self.python().installed:
                log.info(
                    "LiteLLM is installed now (%s); restarting the SDK adapters on it", self.python().path
                )
                self.sync(self.gateway.base_plan)

    def after_reload(self, result: str) -> None:
        self.sync(self.gateway.base_plan)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        with self._lock:
            procs = [*self.procs.values(), *self.retiring]
            self.procs.clear()
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
        for task in list(self._tasks):
            task.cancel()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def status(self) -> dict[str, Any]:
        wanted = self.addresses(self.gateway.base_plan)
        python = self.python() if wanted else None
        return {
            "python": python.path if python else None,
            "installed": python.installed if python else None,
            "litellm_version": python.version if python else None,
            "problem": python.problem if python else None,
            "adapters": [p.status(wanted.get(a, [])) for a, p in self.procs.items()],
            "retiring": [p.status([]) for p in self.retiring],
        }

    async def handle_status(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self.gateway.check_admin(scope, send):
            await send_json(send, 200, orjson.dumps(self.status()))

    @property
    def reload_target(self) -> SdkAdapterTarget:
        return SdkAdapterTarget(self)


class SdkAdapterTarget:
    """The reload target: a new address gets its adapter (ready) before the reload is verified."""

    name = "LiteLLM SDK adapter"

    def __init__(self, adapters: SdkAdapters) -> None:
        self.adapters = adapters

    async def activate(self, candidate: Candidate) -> None:
        self.adapters.loop = asyncio.get_running_loop()
        await self.adapters.wait_ready(self.adapters.sync(candidate.plan))

    async def verify(self, candidate: Candidate, previous: Candidate, timeout_s: float) -> Verdict:
        v = Verdict()
        for proc in self.adapters.procs.values():
            if not proc.ready.is_set():
                v.notes.append(f"the LiteLLM SDK adapter on {proc.url} is not ready yet")
        return v

    async def revert(self, previous: Candidate) -> None:
        self.adapters.sync(previous.plan)


def _address(base_url: str) -> Address:
    rest = base_url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


def install_sdk_adapter(
    gateway: Gateway, *, python: str | None = None, log_path: Path | None = None
) -> SdkAdapters:
    """Run the LiteLLM SDK adapters ``gateway``'s plan needs, in step with it (see the module docstring).

    Adds ``GET /admin/sdk-adapter`` (adapters, PIDs, restarts). Pass ``result.reload_target`` to
    :func:`aib.reload.install_reload` (``targets=[...]``) so a reload starts a new address's adapter
    before it is verified; without it the adapters follow each reload right after it."""
    os.environ.setdefault(TOKEN_ENV, secrets.token_urlsafe(24))  # the adapters answer only this process
    adapters = SdkAdapters(gateway, python=python, log_path=log_path)
    gateway.on_startup.append(adapters.start)
    gateway.on_shutdown.append(adapters.close)
    gateway.on_reload.append(adapters.after_reload)
    gateway.add_route("/admin/sdk-adapter", "GET", adapters.handle_status)
    return adapters
