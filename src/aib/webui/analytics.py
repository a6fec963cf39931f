"""The analytics tab: requests over time, latency percentiles per model, error rate, tokens.

Reads the SQLite request log read-only (:class:`aib.observe.requestquery.RequestLogReader`): the
per-model figures come from ``stats()`` over the whole range; the time series from the newest
``MAX_ROWS`` requests of the range, cut into buckets by :mod:`aib.webui.shaping`.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from aib.observe.requestquery import RequestLogReader
from aib.webui import plots, shaping
from aib.webui.context import WARN, LogProblem, UIContext
from aib.webui.shaping import DASH

MAX_ROWS = 20_000
ALL_MODELS = "All models"
AUTO_REFRESH_S = 30.0
PLOTS = ("requests", "tokens", "latency", "errors", "models", "speed")  # the figures, in layout order


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100.0 * v:.1f} %"


def load(ctx: UIContext, range_key: str | None, model: str | None) -> dict[str, Any]:
    """Everything the tab draws for a time range and a model (``ALL_MODELS``/None: every model)."""
    key = range_key or "1h"
    since = shaping.since_for(key)
    only = None if not model or model == ALL_MODELS else model
    now = time.time()

    def read(r: RequestLogReader) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        rows = r.query(since=since, model=only, limit=MAX_ROWS)
        stats = r.stats(since=since, model=only)
        models = [s["model"] for s in r.stats(since=since)] if only else [s["model"] for s in stats]
        return rows, stats, models

    rows, stats, models = ctx.read_log(read)
    series = shaping.bucket_rows(rows, since, now)
    total = shaping.summary(stats)
    label = dict((k, v) for v, k in shaping.TIME_RANGES).get(key, key).lower()
    if total["requests"]:
        text = (
            f"**{total['requests']:,} requests** ({label}{', ' + only if only else ''}) · "
            f"errors {total['errors']:,} ({_pct(total['error_rate'])}) · "
            f"tokens {total['prompt_tokens']:,} in / {total['completion_tokens']:,} out · "
            f"{total['models']} model{'s' if total['models'] != 1 else ''}"
        )
        if len(rows) >= MAX_ROWS:
            text += f" · the charts over time show the newest {MAX_ROWS:,} requests"
    else:
        text = f"No requests in this range ({label}{', ' + only if only else ''})."
    return {
        "summary": text,
        "series": series,
        "stats": stats,
        "models": models,
        "figures": [
            plots.requests_over_time(series),
            plots.tokens_over_time(series),
            plots.latency_over_time(series),
            plots.error_rate_over_time(series),
            plots.latency_by_model(stats),
            plots.speed_by_model(stats),
        ],
        "table": shaping.markdown_table(shaping.STATS_HEADERS, shaping.stats_table(stats)),
    }


def refresh(ctx: UIContext, range_key: str | None, model: str | None) -> list[Any]:
    """Outputs: summary, the plots (``PLOTS`` order), table, model dropdown."""
    try:
        data = load(ctx, range_key, model)
    except (LogProblem, ValueError) as exc:
        return [f"{WARN} {exc}", *([None] * len(PLOTS)), "", gr.skip()]
    choices = [ALL_MODELS, *data["models"]]
    keep = model if model in choices else ALL_MODELS
    return [data["summary"], *data["figures"], data["table"], gr.update(choices=choices, value=keep)]


def build(ctx: UIContext) -> tuple[Any, list[Any], list[Any]]:
    """Components and events; returns (refresh fn, inputs, outputs) so the page load can run it."""
    with gr.Row():
        span = gr.Dropdown(choices=list(shaping.TIME_RANGES), value="1h", label="Time range",
                           elem_id="analytics-range")  # fmt: skip
        model = gr.Dropdown(choices=[ALL_MODELS], value=ALL_MODELS, label="Model", elem_id="analytics-model")
        auto = gr.Checkbox(value=False, label=f"Refresh every {AUTO_REFRESH_S:g} s")
        go = gr.Button("Refresh", elem_id="analytics-refresh")
    summary = gr.Markdown(elem_id="analytics-summary")
    table = gr.Markdown(elem_id="analytics-table")
    plots_out = []
    for i in range(0, len(PLOTS), 2):
        with gr.Row():
            for name in PLOTS[i : i + 2]:  # the figures carry their titles
                plots_out.append(gr.Plot(format="png", show_label=False, elem_id=f"plot-{name}"))
    timer = gr.Timer(AUTO_REFRESH_S, active=False)

    def _refresh(range_key: str | None, model_name: str | None) -> list[Any]:
        return refresh(ctx, range_key, model_name)

    inputs = [span, model]
    outputs = [summary, *plots_out, table, model]
    for trigger in (go.click, span.change, model.input, timer.tick):
        trigger(_refresh, inputs, outputs, show_progress="minimal")
    auto.change(lambda on: gr.update(active=on), auto, timer, queue=False)
    return _refresh, inputs, outputs
