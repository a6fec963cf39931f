"""What ``aib bench`` shows and writes: a rich table of figures with ratios, a table of targets, the JSON
of the whole run, a Markdown copy of both tables and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.table import Table

from aib.benchmark.stats import finite, ratio

ENGINES = (
    ("direct", "direct"),
    ("native", "native"),
    ("native_w", "native --workers"),
    ("litellm", "LiteLLM"),
)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    fmt: str  # format of one value
    better: Literal["lower", "higher"] | None = "lower"
    direct: bool = True  # has a direct figure


ROWS = (
    Row("ready_s", "ready after start, s", "{:.2f}"),
    Row("p50_us", "sequential latency p50, µs", "{:,.0f}"),
    Row("added_p50_us", "added latency p50, µs", "{:+,.0f}", direct=False),
    Row("added_p99_us", "added latency p99, µs", "{:+,.0f}", direct=False),
    Row("rps_c32", "req/s at concurrency 32", "{:,.0f}", "higher"),
    Row("errors_c32", "errors at concurrency 32", "{:,.0f}", None),
    Row("rps_c64", "req/s at concurrency 64", "{:,.0f}", "higher"),
    Row("rps_c128", "req/s at concurrency 128", "{:,.0f}", "higher"),
    Row("errors_c128", "errors at concurrency 128", "{:,.0f}", None),
    Row("lat_p99_ms_c32", "latency p99 at c32, ms", "{:,.2f}"),
    Row("cpu_us_per_req_c32", "CPU per request at c32, µs", "{:,.0f}"),
    Row("machine_us_per_req_c64", "machine CPU per request at c64, µs", "{:,.0f}"),
    Row("ttft_p50_us", "time to first token p50, µs", "{:,.0f}"),
    Row("ttft_added_us", "added time to first token, µs", "{:+,.0f}", direct=False),
    Row("stream_added_us", "added full-stream time, µs", "{:+,.0f}", direct=False),
    Row("cpu_us_per_chunk", "CPU per stream chunk, µs", "{:,.1f}", direct=False),
    Row("streams_per_core", "streams per core at 30 tokens/s", "{:,.0f}", "higher", direct=False),
    Row("rss_mb", "RSS after load, MB", "{:,.1f}"),
    Row("foreign_cpu_pct_c32", "other processes' CPU during c32 load, %", "{:,.0f}", None),
)


def fmt(value: float | None, spec: str) -> str:
    return spec.format(value) if finite(value) else "-"


def advantage(row: Row, best: Mapping[str, Mapping[str, float]]) -> str:
    """How many times better native is than LiteLLM on this row ("" when not comparable)."""
    nat, lit = best.get("native", {}).get(row.key), best.get("litellm", {}).get(row.key)
    r = ratio(lit, nat) if row.better == "lower" else ratio(nat, lit) if row.better == "higher" else None
    if r is None or r <= 0:
        return ""
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x"


def figure_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    best = result["best"]
    engines = [(k, label) for k, label in ENGINES if k in result["engines"]]
    headers = ["", *(label for _, label in engines)]
    if "litellm" in best and "native" in best:
        headers.append("native vs LiteLLM")
    rows = []
    for row in ROWS:
        cells = [row.label]
        for key, _ in engines:
            value = best.get(key, {}).get(row.key)
            cells.append("" if key == "direct" and not row.direct else fmt(value, row.fmt))
        if len(headers) > len(engines) + 1:
            cells.append(advantage(row, best))
        rows.append(cells)
    return headers, rows


def verdict_rows(result: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for v in result["verdicts"]:
        spec = "{:,.2f}" if v["unit"] == "s" else "{:,.1f}" if v["unit"] == "MB" else "{:,.0f}"
        unit = f" {v['unit']}" if v["unit"] else ""
        measured = fmt(v["measured"], spec) + (unit if finite(v["measured"]) else "")
        op = "≥" if "≥" in v["label"] else "≤"
        limit = f"{op} {fmt(v['limit'], spec)}{unit}" if finite(v["limit"]) else "-"
        out.append([v["group"], v["label"], measured, limit, v["status"].upper()])
    return out


def title(result: Mapping[str, Any]) -> str:
    m = result["machine"]
    return (
        f"aib bench: {m['nproc']} CPU ({m['cpu_model']}), Python {m['python']}, load: {m['loader']}, "
        f"{result['elapsed_s']:.0f} s"
    )


def figures_table(result: Mapping[str, Any]) -> Table:
    headers, rows = figure_rows(result)
    table = Table(title=title(result), title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for cells in rows:
        table.add_row(*cells)
    return table


def targets_table(result: Mapping[str, Any]) -> Table:
    table = Table(title="Targets (native engine)", title_justify="left")
    for h in ("against", "target", "measured", "limit", "result"):
        table.add_column(h, justify="right" if h in ("measured", "limit") else "left", no_wrap=True)
    style = {"PASS": "bold green", "FAIL": "bold red", "N/A": "dim"}
    for cells in verdict_rows(result):
        table.add_row(*cells[:4], f"[{style[cells[4]]}]{cells[4]}[/]")
    return table


def markdown(result: Mapping[str, Any]) -> str:
    headers, rows = figure_rows(result)

    def md(head: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
        lines = ["| " + " | ".join(head) + " |", "|---|" + "".join("---:|" for _ in head[1:])]
        return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]

    out = [f"{title(result)}", "", *md(headers, rows), ""]
    out += md(["against", "target", "measured", "limit", "result"], verdict_rows(result))
    out += ["", *(f"- {n}" for n in result.get("notes", []))]
    return "\n".join(out).rstrip() + "\n"


def write_json(result: Mapping[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def write_chart(result: Mapping[str, Any], path: Path) -> Path:
    """Six panels (log scales where engines differ by orders of magnitude), one colour per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = result["best"]
    colours = {"direct": "#7f7f7f", "native": "#2ca02c", "native_w": "#1f77b4", "litellm": "#d62728"}
    names = [k for k, _ in ENGINES if k in best]
    labels = dict(ENGINES)
    panels = [
        ("added latency p50 / p99, µs", ["added_p50_us", "added_p99_us"], ["p50", "p99"], True, False),
        ("req/s by concurrency", ["rps_c32", "rps_c64", "rps_c128"], ["c32", "c64", "c128"], True, True),
        (
            "added TTFT / full stream, µs",
            ["ttft_added_us", "stream_added_us"],
            ["TTFT", "stream"],
            True,
            False,
        ),
        ("RSS after load, MB", ["rss_mb"], [""], False, True),
        ("ready after start, s", ["ready_s"], [""], True, False),
        ("CPU per request at c32, µs", ["cpu_us_per_req_c32"], [""], True, True),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (name, keys, ticks, log, with_direct) in zip(axes.flat, panels, strict=True):
        shown = [n for n in names if with_direct or n != "direct"]
        width = 0.8 / max(1, len(shown))
        positive = False
        for i, eng in enumerate(shown):
            vals = [best[eng].get(k, float("nan")) for k in keys]
            vals = [v if finite(v) and v > 0 else 0.0 for v in vals]
            positive = positive or any(vals)
            xs = [x + i * width for x in range(len(keys))]
            bars = ax.bar(xs, vals, width, label=labels[eng], color=colours[eng])
            ax.bar_label(bars, labels=[_short(v) for v in vals], fontsize=7)
        ax.set_xticks([x + width * (len(shown) - 1) / 2 for x in range(len(keys))], ticks)
        if log and positive:
            ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
    axes.flat[1].legend(fontsize=8)
    fig.suptitle(title(result), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(v: float) -> str:
    return "" if not v else f"{v:,.0f}" if v >= 10 else f"{v:.2g}"
