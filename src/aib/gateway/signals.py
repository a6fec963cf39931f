"""Polls what the servers say about their load (backend signals), off the request path.

One loop per provider whose kind reports signals (:attr:`aib.providers.base.ProviderKind.signals`:
Ollama, llama.cpp, vLLM) and whose ``signals.enabled`` is on, every ``signals.interval_s``; each poll is
one ``GET`` of a free endpoint on the provider's probe connections, never a completion. The reading goes
into ``RuntimeState.signals[provider]`` (:class:`aib.routing.signals.ProviderSignals`) with the time it
arrived and the gateway's own requests in flight to that provider at that moment; the strategies
(:mod:`aib.routing.loadaware`, :mod:`aib.routing.affinity`) read it there.

A kind lists its endpoints in order of preference (llama.cpp: ``/metrics``, then ``/slots``); an answer
of 404, 405 or 501 moves on to the next, and a server with none of them (llama-cpp-python) is marked
unsupported and asked again every :data:`UNSUPPORTED_RETRY_S` seconds (it may be replaced by one that
has them). Any other failure keeps the last reading, which fades with its age.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aib.config.plan import ProviderInfo, RoutingPlan
from aib.gateway.httpclient import ConnectError, UpstreamError
from aib.gateway.upstream import UpstreamPool
from aib.providers import kind_for
from aib.providers.signals import UNSUPPORTED_STATUSES, SignalSource
from aib.routing.signals import ProviderSignals
from aib.routing.state import RuntimeState

log = logging.getLogger("aib.signals")

UNSUPPORTED_RETRY_S = 60.0


def source_of(info: ProviderInfo) -> SignalSource | None:
    """The signal endpoints of a provider, when it has them and polling is on."""
    src = kind_for(info.type).signals
    if src is None or info.signals is None or not info.signals.enabled or not info.enabled:
        return None
    return src


class SignalMonitor:
    def __init__(self, get_plan: Callable[[], RoutingPlan], state: RuntimeState, pool: UpstreamPool) -> None:
        self._get_plan = get_plan
        self.state = state
        self.pool = pool
        self._tasks: dict[str, tuple[ProviderInfo, asyncio.Task[None]]] = {}
        self._path: dict[str, int] = {}  # provider -> index of the endpoint that answered last

    def sync(self) -> None:
        """A loop per polled provider of the current plan; loops of removed or changed providers stop,
        and the readings of providers no longer polled are dropped."""
        plan = self._get_plan()
        wanted = {n: p for n, p in plan.providers.items() if source_of(p) is not None}
        for name in list(self._tasks):
            info, task = self._tasks[name]
            if wanted.get(name) != info:
                task.cancel()
                del self._tasks[name]
        for name in [n for n in self.state.signals if n not in wanted]:
            del self.state.signals[name]
            self._path.pop(name, None)
        loop = asyncio.get_running_loop()
        for name, info in wanted.items():
            self._entry(info)
            if name not in self._tasks:
                self._tasks[name] = (info, loop.create_task(self._loop(info)))

    def _entry(self, info: ProviderInfo) -> ProviderSignals:
        """The provider's signals record, with the knobs of the current plan (a reload keeps the reading)."""
        conf, src = info.signals, source_of(info)
        assert conf is not None and src is not None
        fresh = conf.interval_s + conf.timeout_s
        sig = self.state.signals.get(info.name)
        if sig is None:
            sig = self.state.signals[info.name] = ProviderSignals(fresh, conf.stale_after_s, src.lists_loaded)
        else:
            sig.fresh_s, sig.stale_after_s, sig.lists_loaded = fresh, conf.stale_after_s, src.lists_loaded
        return sig

    async def _loop(self, info: ProviderInfo) -> None:
        assert info.signals is not None
        while True:
            try:
                await self.poll(info)
            except asyncio.CancelledError:
                raise
            except Exception:  # a parser bug must never kill the loop
                log.exception("signal poll of %s failed unexpectedly", info.name)
            sig = self.state.signals.get(info.name)
            unsupported = sig is not None and sig.unsupported is not None
            await asyncio.sleep(UNSUPPORTED_RETRY_S if unsupported else info.signals.interval_s)

    async def poll(self, info: ProviderInfo) -> ProviderSignals:
        """One poll of ``info``'s signal endpoints; the result is in ``state.signals[info.name]``."""
        src = source_of(info)
        assert src is not None and info.signals is not None
        sig = self._entry(info)
        timeout = info.signals.timeout_s
        tried: list[str] = []
        for i in range(self._path.get(info.name, 0), len(src.paths)):
            path = src.paths[i]
            try:
                status, raw = await self.pool.probe_get(info, info.base_url + path, timeout)
            except TimeoutError:
                return self._failed(info, sig, f"GET {path}: no answer within {timeout:g}s")
            except (ConnectError, UpstreamError, OSError) as exc:
                return self._failed(info, sig, f"GET {path}: {exc}")
            if status in UNSUPPORTED_STATUSES:
                tried.append(f"GET {path} answered {status}")
                continue
            if status != 200:
                return self._failed(info, sig, f"GET {path} answered {status}")
            try:
                reading = src.parse(path, raw)
            except ValueError as exc:
                return self._failed(info, sig, f"GET {path}: {exc}")
            self._path[info.name] = i
            was_missing = sig.reading is None
            sig.record(reading, time.monotonic(), self.state.provider_inflight(info.name))
            if was_missing:
                log.info("signals of %s: reading %s every %gs", info.name, path, info.signals.interval_s)
            return sig
        self._path.pop(info.name, None)  # start from the preferred endpoint next time
        first = sig.unsupported is None
        sig.unsupported = "the server has no signal endpoint (" + "; ".join(tried) + ")"
        sig.polls += 1
        if first:
            log.info(
                "signals of %s: %s; load-aware strategies use the gateway's own counts for it",
                info.name,
                sig.unsupported,
            )
        return sig

    def _failed(self, info: ProviderInfo, sig: ProviderSignals, error: str) -> ProviderSignals:
        if sig.last_error is None:
            log.warning("signals of %s: %s", info.name, error)
        sig.fail(error)
        return sig

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def report(self, plan: RoutingPlan) -> dict[str, Any]:
        """Per provider, what ``/health`` shows under ``signals``."""
        now = time.monotonic()
        return {
            name: self.state.signals[name].report(now)
            for name in plan.providers
            if name in self.state.signals
        }
