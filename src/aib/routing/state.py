"""Runtime state that outlives a plan: health per provider, counters and breakers per deployment.

Keyed by provider name and deployment id, so a reload that keeps a deployment keeps its breaker,
its latency average and its in-flight count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aib.config.plan import Target
from aib.routing.breaker import CircuitBreaker
from aib.routing.ring import Ring
from aib.routing.signals import ProviderSignals

EWMA_ALPHA = 0.3


@dataclass(slots=True)
class TargetStats:
    breaker: CircuitBreaker
    inflight: int = 0
    ewma_ttfb_s: float | None = None
    requests: int = 0
    failures: int = 0

    def observe_ttfb(self, seconds: float) -> None:
        prev = self.ewma_ttfb_s
        self.ewma_ttfb_s = seconds if prev is None else prev + EWMA_ALPHA * (seconds - prev)


@dataclass(slots=True)
class ProviderHealth:
    healthy: bool | None = None  # None: not probed yet (treated as healthy)
    last_checked: float | None = None  # wall clock
    last_latency_ms: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    models: tuple[str, ...] = ()  # discovered

    @property
    def usable(self) -> bool:
        return self.healthy is not False


@dataclass
class RuntimeState:
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 30.0
    targets: dict[str, TargetStats] = field(default_factory=dict)
    health: dict[str, ProviderHealth] = field(default_factory=dict)
    rr_counters: dict[str, int] = field(default_factory=dict)
    swrr: dict[str, dict[str, float]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    # backend signals (aib.routing.signals): provider -> its latest load reading
    signals: dict[str, ProviderSignals] = field(default_factory=dict)
    rings: dict[tuple[Target, ...], Ring] = field(default_factory=dict)  # prefix_affinity, per deployment set
    by_provider: dict[str, list[TargetStats]] = field(default_factory=dict)  # provider -> its deployments

    def stats(self, target_id: str) -> TargetStats:
        st = self.targets.get(target_id)
        if st is None:
            st = self.targets[target_id] = TargetStats(
                CircuitBreaker(self.breaker_threshold, self.breaker_cooldown_s)
            )
            self.by_provider.setdefault(target_id.split("/", 1)[0], []).append(st)
        return st

    def provider_inflight(self, name: str) -> int:
        """Requests in flight to any deployment of provider ``name`` (O(its deployments))."""
        return sum(st.inflight for st in self.by_provider.get(name, ()))

    def provider(self, name: str) -> ProviderHealth:
        h = self.health.get(name)
        if h is None:
            h = self.health[name] = ProviderHealth()
        return h

    def inflight_on(self, provider: str) -> int:
        """Requests in flight to any deployment of ``provider``."""
        prefix = f"{provider}/"
        return sum(st.inflight for tid, st in self.targets.items() if tid.startswith(prefix))

    def probe_ok(self, provider: str) -> list[str]:
        """A probe found ``provider`` up: open breakers of its deployments go half-open now
        (:meth:`CircuitBreaker.probe_ok`). The ids of those that did."""
        prefix = f"{provider}/"
        now = time.monotonic()
        return [
            tid for tid, st in self.targets.items() if tid.startswith(prefix) and st.breaker.probe_ok(now)
        ]

    def configure_breakers(self, threshold: int, cooldown_s: float) -> None:
        self.breaker_threshold, self.breaker_cooldown_s = threshold, cooldown_s
        for st in self.targets.values():
            st.breaker.configure(threshold, cooldown_s)
