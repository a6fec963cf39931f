"""Backend signals: what a server says about its own load, and how long that stays true.

The poller (:mod:`aib.gateway.signals`) reads each provider's free endpoint (Ollama ``/api/ps``,
llama.cpp ``/metrics`` or ``/slots``, vLLM ``/metrics``; parsers in :mod:`aib.providers`) and stores one
:class:`Reading` per provider in :class:`ProviderSignals`, kept in ``RuntimeState.signals`` under the
provider's name (so a reload that keeps a provider keeps its reading). The strategies read it through
:mod:`aib.routing.load`; nothing here does I/O.

A reading counts fully while it is younger than the poll interval plus the poll's time limit, then less
and less (linearly), and not at all from ``stale_after_s`` on: a server that stopped answering its
signal endpoint falls back to what the gateway counts itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reading:
    """One answer of a server's signal endpoint, parsed. ``None``: the server does not say."""

    source: str  # the endpoint it came from, e.g. "/metrics"
    running: float | None = None  # requests the server is working on
    waiting: float | None = None  # requests queued on the server (llama.cpp: deferred)
    slots: int | None = None  # parallel slots (llama.cpp)
    kv_cache: float | None = None  # share of the KV cache in use, 0..1 (vLLM)
    # models in memory (Ollama /api/ps); None: the server keeps its models loaded while it is up
    loaded: frozenset[str] | None = None
    # model -> (running, waiting), when the server reports per model (vLLM)
    per_model: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def queue(self) -> float | None:
        """Running plus waiting requests; None when the server reports neither."""
        if self.running is None and self.waiting is None:
            return None
        return (self.running or 0.0) + (self.waiting or 0.0)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"source": self.source}
        for name in ("running", "waiting", "slots", "kv_cache"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.loaded is not None:
            out["loaded_models"] = sorted(self.loaded)
        if self.per_model:
            out["per_model"] = {
                m: {"running": r, "waiting": w} for m, (r, w) in sorted(self.per_model.items())
            }
        return out


@dataclass(slots=True)
class ProviderSignals:
    """The latest reading of one provider, when it arrived and how much it still counts."""

    fresh_s: float  # counts fully until this age (poll interval + poll time limit)
    stale_after_s: float  # counts for nothing from this age on
    lists_loaded: bool = False  # the server reports which models it has in memory (Ollama)
    reading: Reading | None = None
    at: float = 0.0  # time.monotonic() when the reading arrived
    ours_at_poll: int = 0  # the gateway's own requests in flight to this provider at that moment
    last_error: str | None = None  # why the last poll failed (kept until one succeeds)
    unsupported: str | None = None  # the server has no signal endpoint: why we think so
    polls: int = 0
    failures: int = 0

    def age(self, now: float) -> float | None:
        return None if self.reading is None else max(now - self.at, 0.0)

    def weight(self, now: float) -> float:
        """How much the reading counts now: 1 while fresh, fading linearly to 0 at ``stale_after_s``."""
        if self.reading is None:
            return 0.0
        age = now - self.at
        if age <= self.fresh_s:
            return 1.0
        if age >= self.stale_after_s:
            return 0.0
        return (self.stale_after_s - age) / (self.stale_after_s - self.fresh_s)

    def record(self, reading: Reading, now: float, ours: int) -> None:
        self.reading, self.at, self.ours_at_poll = reading, now, ours
        self.last_error = self.unsupported = None
        self.polls += 1

    def fail(self, error: str) -> None:
        self.last_error = error
        self.polls += 1
        self.failures += 1

    def loaded(self, model: str, now: float) -> bool | None:
        """Is ``model`` in the server's memory? None: unknown (no list, or the reading is stale)."""
        if not self.lists_loaded:
            return True  # llama.cpp, vLLM: the model is in memory while the server is up
        r = self.reading
        if r is None or r.loaded is None or self.weight(now) <= 0.0:
            return None
        return model in r.loaded or with_tag(model) in r.loaded

    def report(self, now: float) -> dict[str, object]:
        """What ``/health`` shows for this provider's signals."""
        age = self.age(now)
        out: dict[str, object] = {
            "state": "unsupported"
            if self.unsupported and self.reading is None
            else "none"
            if self.reading is None
            else "fresh"
            if age is not None and age <= self.fresh_s
            else "stale"
            if self.weight(now) <= 0.0
            else "fading",
            "age_s": None if age is None else round(age, 3),
            "weight": round(self.weight(now), 3),
            "polls": self.polls,
            "failures": self.failures,
        }
        if self.reading is not None:
            out.update(self.reading.as_dict())
            out["gateway_inflight_at_poll"] = self.ours_at_poll
        if self.last_error:
            out["last_error"] = self.last_error
        if self.unsupported:
            out["unsupported"] = self.unsupported
        return out


def with_tag(model: str) -> str:
    """Ollama's default tag: ``llama3.2`` is ``llama3.2:latest``."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"
