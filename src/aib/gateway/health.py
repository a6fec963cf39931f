"""Active health checks and model discovery, off the request path.

One loop per provider probes its free endpoint (never a completion) every ``interval_s``; providers
with ``discovery: true`` also list their models, and a change swaps in a plan where they are routable.
``/health`` only reads the state these loops keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from aib.config.plan import ProviderInfo, RoutingPlan
from aib.gateway.httpclient import ConnectError, UpstreamError
from aib.gateway.upstream import UpstreamPool
from aib.providers import kind_for
from aib.routing.state import RuntimeState

log = logging.getLogger("aib.health")


class HealthMonitor:
    def __init__(
        self,
        get_plan: Callable[[], RoutingPlan],
        on_discovered: Callable[[dict[str, tuple[str, ...]]], None],
        state: RuntimeState,
        pool: UpstreamPool,
        scrub: Callable[[bytes], bytes] = bytes,
    ) -> None:
        self._get_plan = get_plan
        self._scrub = scrub  # probe answers may echo the provider's key: masked before anything reads them
        self._on_discovered = on_discovered
        self.state = state
        self.pool = pool
        self._tasks: dict[str, tuple[ProviderInfo, asyncio.Task[None]]] = {}
        self.first_round: asyncio.Event = asyncio.Event()

    def sync(self) -> None:
        """Start a loop for each provider of the current plan; stop loops of removed or changed ones."""
        plan = self._get_plan()
        wanted = {n: p for n, p in plan.providers.items() if p.enabled and p.health.enabled}
        for name in list(self._tasks):
            info, task = self._tasks[name]
            if wanted.get(name) != info:
                task.cancel()
                del self._tasks[name]
        for name, info in wanted.items():
            if name not in self._tasks:
                self._tasks[name] = (info, asyncio.get_running_loop().create_task(self._loop(info)))
        for name in [n for n in self.state.health if n not in plan.providers]:
            del self.state.health[name]

    async def probe_all(self) -> None:
        """One probe of every enabled provider, concurrently (start-up and `aib doctor`)."""
        plan = self._get_plan()
        infos = [p for p in plan.providers.values() if p.enabled and p.health.enabled]
        await asyncio.gather(*(self.probe(p) for p in infos))
        self.first_round.set()

    async def _loop(self, info: ProviderInfo) -> None:
        while True:
            await asyncio.sleep(info.health.interval_s)
            try:
                await self.probe(info)
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe bug must never kill the loop
                log.exception("health probe of %s failed unexpectedly", info.name)

    async def probe(self, info: ProviderInfo) -> bool:
        kind = kind_for(info.type)
        h = self.state.provider(info.name)
        started = time.perf_counter()
        payload: Any = None
        try:
            status, raw = await self.pool.probe_get(info, info.health_url, info.health.timeout_s)
            raw = self._scrub(raw)
            with contextlib.suppress(orjson.JSONDecodeError):
                payload = orjson.loads(raw) if raw else None
            ok, reason = kind.healthy(status, payload)
        except TimeoutError:
            busy = self.state.inflight_on(info.name)
            if busy and h.healthy is not False:
                # A single-request server (llama-cpp-python) answers probes only between generations:
                # slow to answer while it works for us is busy, not down. Its breaker still guards
                # the traffic; a stopped server refuses the connection at once and is marked down.
                h.last_checked = time.time()
                h.last_error = f"probe timed out while {busy} request(s) were in flight: busy, kept as is"
                return bool(h.usable)
            ok, reason = False, f"no answer within {info.health.timeout_s:g}s"
        except ConnectError as exc:
            ok, reason = False, str(exc)  # "cannot connect to host:port: Connection refused", ...
        except (UpstreamError, OSError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        was = h.healthy
        h.healthy = ok
        h.last_checked = time.time()
        h.last_latency_ms = round((time.perf_counter() - started) * 1000, 2)
        h.last_error = reason if not ok else h.last_error
        h.consecutive_failures = 0 if ok else h.consecutive_failures + 1
        if was is not ok:
            (log.info if ok else log.warning)(
                "provider %s is %s%s", info.name, "up" if ok else "down", f": {reason}" if reason else ""
            )
        if ok:
            trial = self.state.probe_ok(info.name)
            if trial:
                log.info(
                    "%s answers its probe: %s half-open (the next request is a trial)",
                    info.name,
                    ", ".join(trial),
                )
        if ok and info.discovery:
            await self._discover(info, payload if info.health_url.endswith(kind.discovery_path) else None)
        return ok

    async def _discover(self, info: ProviderInfo, payload: Any) -> None:
        kind = kind_for(info.type)
        h = self.state.provider(info.name)
        try:
            if payload is None:
                url = info.base_url + kind.discovery_path
                status, raw = await self.pool.probe_get(info, url, info.health.timeout_s)
                raw = self._scrub(raw)
                if status != 200:
                    raise ValueError(f"GET {kind.discovery_path} answered {status}")
                payload = orjson.loads(raw)
            models = kind.parse_models(payload)
        except (UpstreamError, OSError, TimeoutError, ValueError) as exc:
            log.warning("model discovery on %s failed: %s", info.name, exc)
            return
        if models != h.models:
            added = sorted(set(models) - set(h.models))
            h.models = models
            log.info(
                "discovered on %s: %d models%s",
                info.name,
                len(models),
                f" (new: {', '.join(added)})" if added else "",
            )
            self._on_discovered({n: ph.models for n, ph in self.state.health.items() if ph.models})

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def report(self, plan: RoutingPlan) -> dict[str, Any]:
        """The body of ``GET /health``: cached states only, no upstream is called."""
        now = time.monotonic()
        providers: dict[str, Any] = {}
        for name, info in plan.providers.items():
            h = self.state.health.get(name)
            breakers = {
                t.id: self.state.targets[t.id].breaker.snapshot(now)
                for g in plan.groups.values()
                for t in g.targets
                if t.provider == name and t.id in self.state.targets
            }
            status = (
                "disabled"
                if not info.enabled
                else "unknown"
                if h is None or h.healthy is None
                else "unhealthy"
                if not h.healthy
                # it answers its probes, but requests to it failed: a breaker shuts it out (or lets
                # one trial through)
                else "degraded"
                if any(b["state"] != "closed" for b in breakers.values())
                else "healthy"
            )
            providers[name] = {
                "type": info.type,
                "base_url": info.base_url,
                "status": status,
                "healthy": bool(h and h.healthy),
                "last_checked": h.last_checked if h else None,
                "last_probe_latency_ms": h.last_latency_ms if h else None,
                "last_error": h.last_error if h else None,
                "discovered_models": list(h.models) if h else [],
                "breakers": breakers,
            }
        healthy = sum(1 for p in providers.values() if p["status"] == "healthy")
        degraded = sum(1 for p in providers.values() if p["status"] == "degraded")
        return {
            "status": "healthy"
            if healthy == len([p for p in providers.values() if p["status"] != "disabled"]) and healthy
            else "degraded"
            if healthy or degraded
            else "unhealthy",
            "healthy_providers": healthy,
            "degraded_providers": degraded,
            "providers": providers,
            "plan_version": plan.version,
        }
