"""Percentiles, best-of-rounds, and the targets the native engine is held to.

Noise on a shared machine only ever makes a figure worse, so a figure measured in several rounds
keeps its best value (the lowest latency, CPU or memory; the highest req/s).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Metrics = Mapping[str, float]


def pct(sorted_vals: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values (nearest rank, no interpolation); NaN when empty."""
    if not sorted_vals:
        return float("nan")
    return float(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))])


def finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is 0."""
    if not finite(a) or not finite(b) or b == 0:
        return None
    return float(a) / float(b)  # type: ignore[arg-type]


# how a metric's rounds combine: "min" for costs, "max" for throughput, "sum" for error counts
HIGHER_IS_BETTER = ("rps_",)
SUMMED = ("errors_",)


def combine(key: str) -> Callable[[Sequence[float]], float]:
    if key.startswith(SUMMED):
        return lambda vs: float(sum(vs))
    if key.startswith(HIGHER_IS_BETTER):
        return lambda vs: float(max(vs))
    return lambda vs: float(min(vs))


def best_of(rounds: Sequence[Metrics]) -> dict[str, float]:
    """One figure per metric over the rounds (best; error counts add up). NaNs are ignored."""
    keys: dict[str, None] = {}
    for r in rounds:
        keys.update(dict.fromkeys(r))
    out: dict[str, float] = {}
    for key in keys:
        vals = [float(r[key]) for r in rounds if key in r and finite(r[key])]
        out[key] = combine(key)(vals) if vals else float("nan")
    return out


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """``measured op limit``, both read from the best figures of every engine (None: not measured)."""

    group: str  # "vs LiteLLM" or "vs direct"
    label: str
    op: Literal["<=", ">="]
    measured: Callable[[Mapping[str, Metrics]], float | None]
    limit: Callable[[Mapping[str, Metrics]], float | None]
    unit: str = ""


def _get(engine: str, key: str) -> Callable[[Mapping[str, Metrics]], float | None]:
    def read(best: Mapping[str, Metrics]) -> float | None:
        v = best.get(engine, {}).get(key)
        return float(v) if v is not None and finite(v) else None

    return read


def _scaled(engine: str, key: str, factor: float) -> Callable[[Mapping[str, Metrics]], float | None]:
    read = _get(engine, key)

    def limit(best: Mapping[str, Metrics]) -> float | None:
        v = read(best)
        return None if v is None else v * factor

    return limit


def _const(value: float) -> Callable[[Mapping[str, Metrics]], float | None]:
    return lambda _best: value


TARGETS: tuple[Target, ...] = (
    Target("vs LiteLLM", "added latency p50 ≤ 1/100 of LiteLLM's", "<=", _get("native", "added_p50_us"),
           _scaled("litellm", "added_p50_us", 1 / 100), "µs"),
    Target("vs LiteLLM", "req/s at c32 ≥ 30x LiteLLM's", ">=", _get("native", "rps_c32"),
           _scaled("litellm", "rps_c32", 30), "req/s"),
    Target("vs LiteLLM", "errors at c128 = 0", "<=", _get("native", "errors_c128"), _const(0), ""),
    Target("vs LiteLLM", "added TTFT ≤ 1/20 of LiteLLM's", "<=", _get("native", "ttft_added_us"),
           _scaled("litellm", "ttft_added_us", 1 / 20), "µs"),
    Target("vs LiteLLM", "RSS ≤ 1/4 of LiteLLM's", "<=", _get("native", "rss_mb"), _scaled("litellm", "rss_mb", 1 / 4), "MB"),
    Target("vs direct", "added latency p50 ≤ 0.3 ms", "<=", _get("native", "added_p50_us"), _const(300), "µs"),
    Target("vs direct", "req/s at c64 ≥ 40 % of direct", ">=", _get("native", "rps_c64"), _scaled("direct", "rps_c64", 0.4), "req/s"),
    Target("vs direct", "added TTFT ≤ 1 ms", "<=", _get("native", "ttft_added_us"), _const(1000), "µs"),
    Target("vs direct", "RSS ≤ 100 MB", "<=", _get("native", "rss_mb"), _const(100), "MB"),
    Target("vs direct", "ready ≤ 1.5 s", "<=", _get("native", "ready_s"), _const(1.5), "s"),
    Target("vs direct", "--workers: req/s at c64 ≥ 40 % of direct", ">=", _get("native_w", "rps_c64"), _scaled("direct", "rps_c64", 0.4), "req/s"),
    Target("vs direct", "--workers: added latency p50 ≤ 0.3 ms", "<=", _get("native_w", "added_p50_us"), _const(300), "µs"),
    Target("vs direct", "--workers: RSS ≤ 100 MB", "<=", _get("native_w", "rss_mb"), _const(100), "MB"),
    Target("vs direct", "--workers: ready ≤ 1.5 s", "<=", _get("native_w", "ready_s"), _const(1.5), "s"),
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    group: str
    label: str
    measured: float | None
    limit: float | None
    unit: str
    status: Literal["pass", "fail", "n/a"]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("group", "label", "measured", "limit", "unit", "status")}


def evaluate(best: Mapping[str, Metrics], targets: Sequence[Target] = TARGETS) -> list[Verdict]:
    """Each target's verdict; "n/a" when a side was not measured (e.g. ``--no-litellm``)."""
    out = []
    for t in targets:
        m, lim = t.measured(best), t.limit(best)
        if m is None or lim is None:
            status: Literal["pass", "fail", "n/a"] = "n/a"
        else:
            status = "pass" if (m <= lim if t.op == "<=" else m >= lim) else "fail"
        out.append(Verdict(t.group, t.label, m, lim, t.unit, status))
    return out
