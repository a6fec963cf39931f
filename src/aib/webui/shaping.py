"""Data shaping behind the analytics plots: request-log rows -> time buckets, rates, percentiles.

Pure functions over the dicts :class:`aib.observe.requestquery.RequestLogReader` returns; no I/O, no
UI. The plots (:mod:`aib.webui.plots`) and the tables draw what these return.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aib.observe.requestquery import percentile

# (label, key): the key is what parse_since understands, "all" means no lower bound
TIME_RANGES: tuple[tuple[str, str], ...] = (
    ("Last 15 minutes", "15m"),
    ("Last hour", "1h"),
    ("Last 6 hours", "6h"),
    ("Last 24 hours", "24h"),
    ("Last 7 days", "7d"),
    ("Everything", "all"),
)
_RANGE_S = {"15m": 900.0, "1h": 3600.0, "6h": 21600.0, "24h": 86400.0, "7d": 604800.0, "all": None}
# bucket widths a person reads easily, from 10 seconds to a day
NICE_BUCKETS_S = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
TARGET_BUCKETS = 40
OTHER = "other models"
UNKNOWN = "(unknown)"  # requests for names the gateway does not route (404), grouped
DASH = "\u2013"  # an en dash: "no value" in tables


def range_seconds(key: str) -> float | None:
    """Seconds a time-range key covers (None: everything). Unknown keys are an error."""
    if key not in _RANGE_S:
        raise ValueError(f"unknown time range {key!r}: use one of {', '.join(_RANGE_S)}")
    return _RANGE_S[key]


def since_for(key: str, now: float | None = None) -> float | None:
    span = range_seconds(key)
    return None if span is None else (time.time() if now is None else now) - span


def pick_bucket(span_s: float, target: int = TARGET_BUCKETS) -> int:
    """The smallest nice bucket width that cuts ``span_s`` into at most ``target`` buckets."""
    for width in NICE_BUCKETS_S:
        if span_s / width <= target:
            return width
    return NICE_BUCKETS_S[-1] * max(math.ceil(span_s / (NICE_BUCKETS_S[-1] * target)), 1)


def is_error(row: Mapping[str, Any]) -> bool:
    """The request log's notion of a failed request (as ``RequestLogReader.stats`` counts it)."""
    status = row.get("status") or 0
    return bool(status >= 400 or status == 0 or row.get("error"))


@dataclass
class Series:
    """Requests of a time range cut into equal buckets (``starts`` are unix seconds)."""

    bucket_s: int
    starts: list[float] = field(default_factory=list)
    requests: dict[str, list[int]] = field(default_factory=dict)  # per model, models by volume
    errors: list[int] = field(default_factory=list)
    prompt_tokens: list[int | None] = field(default_factory=list)  # None: no request reported any
    completion_tokens: list[int | None] = field(default_factory=list)
    p50_ms: list[float | None] = field(default_factory=list)
    p95_ms: list[float | None] = field(default_factory=list)

    @property
    def totals(self) -> list[int]:
        return [sum(col) for col in zip(*self.requests.values(), strict=True)] if self.requests else []

    @property
    def error_rate(self) -> list[float | None]:
        """Failed / all per bucket, None where a bucket has no requests (nothing to rate)."""
        return [e / n if n else None for e, n in zip(self.errors, self.totals, strict=True)]

    @property
    def empty(self) -> bool:
        return not any(self.totals)


def bucket_rows(
    rows: Iterable[Mapping[str, Any]],
    since: float | None,
    until: float,
    *,
    bucket_s: int | None = None,
    max_models: int = 6,
    unknown: Collection[str] = (),
) -> Series:
    """Count requests, errors, tokens and latency percentiles per time bucket.

    The buckets cover the rows' own time span (from the oldest row at or after ``since`` to the
    newest), so a plot's time axis fits its data; they are aligned to multiples of the bucket width
    so that refreshing does not shift them. With no rows: one empty bucket at ``until``. Names in
    ``unknown`` (models the gateway does not route) count as ``"(unknown)"``; models beyond the
    ``max_models`` busiest are summed as ``"other models"`` to keep the legend readable.
    """
    rows = [r for r in rows if r.get("ts") is not None and (since is None or r["ts"] >= since)]
    start = min((r["ts"] for r in rows), default=until)
    end = max((r["ts"] for r in rows), default=until)
    width = bucket_s or pick_bucket(max(end - start, 1.0))
    first = math.floor(start / width) * width
    n = max(math.floor((end - first) / width) + 1, 1)
    series = Series(width, [first + i * width for i in range(n)])

    def name(r: Mapping[str, Any]) -> str:
        model = str(r.get("model"))
        return UNKNOWN if model in unknown else model

    volume = Counter(name(r) for r in rows)
    keep = {m for m, _ in volume.most_common(max_models)}
    if len(volume) > max_models:  # "other" only when it merges at least two
        keep = {m for m, _ in volume.most_common(max_models - 1)}
    order = [m for m, _ in volume.most_common() if m in keep] + ([OTHER] if len(volume) > len(keep) else [])
    series.requests = {m: [0] * n for m in order}
    series.errors = [0] * n
    prompt: list[int | None] = [None] * n
    completion: list[int | None] = [None] * n
    latencies: list[list[float]] = [[] for _ in range(n)]
    for r in rows:
        i = min(max(int((r["ts"] - first) // width), 0), n - 1)
        model = name(r)
        series.requests[model if model in keep else OTHER][i] += 1
        if is_error(r):
            series.errors[i] += 1
        if r.get("prompt_tokens") is not None:
            prompt[i] = (prompt[i] or 0) + r["prompt_tokens"]
        if r.get("completion_tokens") is not None:
            completion[i] = (completion[i] or 0) + r["completion_tokens"]
        if r.get("total_ms") is not None:
            latencies[i].append(float(r["total_ms"]))
    series.prompt_tokens, series.completion_tokens = prompt, completion
    for values in latencies:
        values.sort()
        series.p50_ms.append(percentile(values, 0.50))
        series.p95_ms.append(percentile(values, 0.95))
    return series


def unknown_models(stats: Sequence[Mapping[str, Any]]) -> set[str]:
    """Names every request of which was refused as an unknown model (``RequestLogReader.stats``)."""
    return {str(s["model"]) for s in stats if s.get("not_found") and s["not_found"] >= s["requests"]}


def group_unknown(stats: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-model stats with every unknown name (:func:`unknown_models`) merged into one
    ``"(unknown)"`` entry, last: counts and errors add up; latencies and tokens mean nothing there."""
    unknown = unknown_models(stats)
    out = [dict(s) for s in stats if str(s["model"]) not in unknown]
    merged = [s for s in stats if str(s["model"]) in unknown]
    if merged:
        requests = sum(s["requests"] for s in merged)
        errors = sum(s["errors"] for s in merged)
        out.append({
            "model": UNKNOWN, "requests": requests, "errors": errors, "error_rate": errors / requests,
            "prompt_tokens": 0, "completion_tokens": 0, "tokens_reported": False, "tokens_per_s": None,
            "p50_ms": None, "p95_ms": None, "p99_ms": None, "ttft_p50_ms": None, "names": len(merged),
        })  # fmt: skip
    return out


def _reported(s: Mapping[str, Any]) -> bool:
    """Whether a stats entry's token sums are counts (older readers lack the flag: trust them)."""
    return bool(s.get("tokens_reported", True))


def summary(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Totals over every model of ``RequestLogReader.stats()``; tokens None when none was reported,
    ``models`` without the unknown names (counted in ``unknown``, their requests in ``unknown_requests``)."""
    requests = sum(s["requests"] for s in stats)
    errors = sum(s["errors"] for s in stats)
    told = [s for s in stats if _reported(s)]
    unknown = unknown_models(stats)
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "prompt_tokens": sum(s["prompt_tokens"] or 0 for s in told) if told else None,
        "completion_tokens": sum(s["completion_tokens"] or 0 for s in told) if told else None,
        "models": len(stats) - len(unknown),
        "unknown": len(unknown),
        "unknown_requests": sum(s["requests"] for s in stats if str(s["model"]) in unknown),
    }


STATS_HEADERS = [
    "model", "requests", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms", "tokens in",
    "tokens out", "tokens/s",
]  # fmt: skip


def _fmt(v: float | None, digits: int = 0) -> str:
    return DASH if v is None else f"{v:,.{digits}f}"


def stats_table(stats: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Rows for the per-model table, in ``STATS_HEADERS`` order (numbers formatted for reading)."""
    return [
        [
            f"{UNKNOWN[:-1]}, {s['names']} names)" if s.get("names", 0) > 1 else s["model"],
            s["requests"],
            s["errors"],
            _fmt(100.0 * s["error_rate"], 1),
            _fmt(s.get("p50_ms")),
            _fmt(s.get("p95_ms")),
            _fmt(s.get("p99_ms")),
            _fmt(s.get("ttft_p50_ms")),
            _fmt(s["prompt_tokens"]) if _reported(s) else DASH,
            _fmt(s["completion_tokens"]) if _reported(s) else DASH,
            _fmt(s.get("tokens_per_s"), 1),
        ]
        for s in stats
    ]


def _cell(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip() or " "


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (cells escaped: pipes, newlines); empty string when there are no rows."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
