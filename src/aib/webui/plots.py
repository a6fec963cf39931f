"""Matplotlib figures for the analytics tab, drawn from :mod:`aib.webui.shaping` data.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state shared between sessions).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from aib.webui.shaping import Series

SIZE = (7.0, 3.0)
COLORS = ("#2563eb", "#f97316", "#16a34a", "#9333ea", "#0891b2", "#db2777", "#64748b")
ERROR_COLOR = "#dc2626"


def _figure(title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=SIZE, dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _empty(fig: Figure, ax: Any, text: str = "no requests in this range") -> Figure:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#64748b")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def _time_axis(ax: Any, series: Series) -> list[dt.datetime]:
    """Bucket starts as local datetimes; labels fit the bucket width (dates only for day buckets)."""
    import matplotlib.dates as mdates

    xs = [dt.datetime.fromtimestamp(t) for t in series.starts]
    # the whole range, even where a line has a single point (a zero-width range has no ticks)
    ax.set_xlim(xs[0], dt.datetime.fromtimestamp(series.starts[-1] + series.bucket_s))
    fmt = "%m-%d" if series.bucket_s >= 86400 else "%m-%d %H:%M" if series.bucket_s >= 3600 else "%H:%M"
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt))  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=8))  # type: ignore[no-untyped-call]
    return xs


def _bar_width_days(series: Series) -> float:
    return series.bucket_s / 86400.0 * 0.9


def requests_over_time(series: Series) -> Figure:
    fig, ax = _figure(f"Requests per {_width_text(series.bucket_s)}")
    if series.empty:
        return _empty(fig, ax)
    xs = _time_axis(ax, series)
    bottom = [0] * len(xs)
    for i, (model, counts) in enumerate(series.requests.items()):
        ax.bar(xs, counts, _bar_width_days(series), bottom=bottom, label=model, color=COLORS[i % len(COLORS)],
               align="edge")  # fmt: skip
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    if any(series.errors):
        ax.bar(xs, series.errors, _bar_width_days(series), label="errors", color="none",
               edgecolor=ERROR_COLOR, hatch="///", align="edge")  # fmt: skip
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def error_rate_over_time(series: Series) -> Figure:
    fig, ax = _figure("Error rate (%)")
    if series.empty:
        return _empty(fig, ax)
    xs = _time_axis(ax, series)
    rates = [None if r is None else 100.0 * r for r in series.error_rate]
    points = [(x, r) for x, r in zip(xs, rates, strict=True) if r is not None]
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=ERROR_COLOR)
    ax.set_ylim(0, max(5.0, max(p[1] for p in points) * 1.15))
    return fig


def latency_over_time(series: Series) -> Figure:
    fig, ax = _figure("Latency over time (ms)")
    if series.empty:
        return _empty(fig, ax)
    xs = _time_axis(ax, series)
    for label, values, color in (("p50", series.p50_ms, COLORS[0]), ("p95", series.p95_ms, COLORS[1])):
        points = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label,
                color=color)  # fmt: skip
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def tokens_over_time(series: Series) -> Figure:
    fig, ax = _figure(f"Tokens per {_width_text(series.bucket_s)}")
    if series.empty:
        return _empty(fig, ax)
    if all(v is None for v in (*series.prompt_tokens, *series.completion_tokens)):
        return _empty(fig, ax, "no token counts (the providers reported no usage)")
    xs = _time_axis(ax, series)
    w = _bar_width_days(series)
    prompt = [v or 0 for v in series.prompt_tokens]  # a bucket without counts draws no bar
    ax.bar(xs, prompt, w, label="prompt", color=COLORS[4], align="edge")
    ax.bar(xs, [v or 0 for v in series.completion_tokens], w, bottom=prompt, label="completion",
           color=COLORS[2], align="edge")  # fmt: skip
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def latency_by_model(stats: Sequence[Mapping[str, Any]]) -> Figure:
    """Grouped bars: p50, p95, p99 total latency per model."""
    fig, ax = _figure("Latency percentiles per model (ms)")
    stats = [s for s in stats if s.get("p50_ms") is not None]
    if not stats:
        return _empty(fig, ax)
    names = [str(s["model"]) for s in stats]
    width = 0.8 / 3
    for j, key in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        xs = [i + (j - 1) * width for i in range(len(names))]
        ax.bar(xs, [s[key] or 0 for s in stats], width, label=key.split("_")[0], color=COLORS[j])
    _model_ticks(ax, names)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return fig


def speed_by_model(stats: Sequence[Mapping[str, Any]]) -> Figure:
    """Completion tokens per second of generation, per model."""
    fig, ax = _figure("Generation speed per model (tokens/s)")
    stats = [s for s in stats if s.get("tokens_per_s")]
    if not stats:
        return _empty(fig, ax, "no token counts in this range")
    names = [str(s["model"]) for s in stats]
    ax.bar(range(len(names)), [s["tokens_per_s"] for s in stats], 0.6, color=COLORS[2])
    _model_ticks(ax, names)
    return fig


def _model_ticks(ax: Any, names: list[str]) -> None:
    crowded = len(names) > 4
    ax.set_xticks(range(len(names)), names, rotation=20 if crowded else 0, ha="right" if crowded else "center",
                  fontsize=8)  # fmt: skip


def _width_text(seconds: int) -> str:
    if seconds % 86400 == 0:
        n, unit = seconds // 86400, "day"
    elif seconds % 3600 == 0:
        n, unit = seconds // 3600, "hour"
    elif seconds % 60 == 0:
        n, unit = seconds // 60, "minute"
    else:
        n, unit = seconds, "second"
    return unit if n == 1 else f"{n} {unit}s"
