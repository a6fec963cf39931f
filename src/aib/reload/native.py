"""The native gateway as a reload target: swap the plan reference, probe what changed, judge criticals.

Activation is one assignment (``Gateway.set_plan``): a request reads ``gateway.plan`` once when it
starts, so requests in flight finish on their plan; pools of removed providers stop taking new
requests and close their connections as the requests on them end.

Verification probes every new or changed provider (its free health endpoint, never a completion)
within the verify timeout, then checks each route marked ``critical: true``: when none of its
deployments is healthy, and the previous version served it (or did not have it), the reload is rolled
back. A critical route that was already down before the reload is reported, not rolled back: undoing
an unrelated edit would not bring it back.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from aib.config.plan import RoutingPlan, Target
from aib.gateway.app import Gateway
from aib.reload.target import Candidate, TargetError, Verdict
from aib.routing.state import ProviderHealth


class NativeTarget:
    name = "native gateway"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._health_before: dict[str, ProviderHealth] = {}

    def _swap(self, c: Candidate) -> None:
        gw = self.gateway
        gw.config = c.config
        b = c.config.mappings.defaults.breaker
        gw.state.configure_breakers(b.failure_threshold, b.cooldown_s)
        gw.set_plan(c.plan)

    async def activate(self, candidate: Candidate) -> None:
        try:
            self.gateway.accept_plan(candidate.plan)  # auth: an exposed listener needs keys
        except ValueError as exc:
            raise TargetError(str(exc)) from None
        self._health_before = {n: replace(h) for n, h in self.gateway.state.health.items()}
        self._swap(candidate)

    async def revert(self, previous: Candidate) -> None:
        # probes of a changed provider's new address overwrote its health: put back what it was
        current = self.gateway.base_plan.providers
        for name, info in previous.plan.providers.items():
            if current.get(name) != info and name in self._health_before:
                self.gateway.state.health[name] = self._health_before[name]
        self._swap(previous)

    async def verify(self, candidate: Candidate, previous: Candidate, timeout_s: float) -> Verdict:
        v = Verdict()
        plan, old = candidate.plan, previous.plan
        criticals = [g for g in plan.groups.values() if g.critical]
        health = self.gateway.health
        if health is None:
            if criticals:
                v.notes.append(
                    "health checks are off: new providers not probed, critical models not verified"
                )
            return v
        down: dict[str, str] = {}
        probe = [
            p
            for n, p in plan.providers.items()
            if p.enabled and p.health.enabled and old.providers.get(n) != p
        ]
        if probe:
            tasks = {p.name: asyncio.ensure_future(health.probe(p)) for p in probe}
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for name, t in tasks.items():
                if t in pending:
                    down[name] = f"no probe answer within {timeout_s:g}s"
                elif t.exception() is not None:
                    down[name] = f"probe failed: {t.exception()}"
                elif not t.result():
                    down[name] = self.gateway.state.provider(name).last_error or "down"
                v.probes[name] = "up" if name not in down else f"down: {down[name]}"
        for g in criticals:
            if any(self._usable(t, plan, down) for t in g.targets):
                continue
            why = "; ".join(f"{t.id}: {self._why(t, plan, down)}" for t in g.targets)
            before = old.groups.get(g.name)
            if before is None or any(self._usable_before(t, old) for t in before.targets):
                v.problems.append(f"critical model {g.name!r} has no healthy deployment ({why})")
            else:
                v.notes.append(
                    f"critical model {g.name!r} has no healthy deployment ({why}); it had none before this "
                    "reload either, so the reload stays"
                )
        v.notes += [f"provider {name} is down: {why}" for name, why in down.items()]
        return v

    def _usable(self, t: Target, plan: RoutingPlan, down: dict[str, str]) -> bool:
        info = plan.providers.get(t.provider)
        if info is None or not info.enabled or t.provider in down:
            return False
        h = self.gateway.state.health.get(t.provider)
        return h is None or h.usable

    def _why(self, t: Target, plan: RoutingPlan, down: dict[str, str]) -> str:
        info = plan.providers.get(t.provider)
        if info is None or not info.enabled:
            return "provider disabled"
        if t.provider in down:
            return down[t.provider]
        h = self.gateway.state.health.get(t.provider)
        return f"down ({h.last_error})" if h is not None else "down"

    def _usable_before(self, t: Target, old: RoutingPlan) -> bool:
        info = old.providers.get(t.provider)
        h = self._health_before.get(t.provider)
        return info is not None and info.enabled and (h is None or h.usable)
