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
ALL_KEYS = "All keys"
AUTO_REFRESH_S = 30.0
PLOTS = ("requests", "tokens", "latency", "errors", "models", "speed")  # the figures, in layout order


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100.0 * v:.1f} %"


def _count(v: int | None) -> str:
    return DASH if v is None else f"{v:,}"


def pick(value: str | None, everything: str) -> str | None:
    """A dropdown's value as a filter: None for its "all" choice (or nothing chosen)."""
    return None if not value or value == everything else value


def load(ctx: UIContext, range_key: str | None, model: str | None, key: str | None = None) -> dict[str, Any]:
    """Everything the tab draws for a time range, a model and a client key (``ALL_MODELS``,
    ``ALL_KEYS``, None: every one)."""
    range_key = range_key or "1h"
    since = shaping.since_for(range_key)
    only, key_name = pick(model, ALL_MODELS), pick(key, ALL_KEYS)
    now = time.time()

    def read(r: RequestLogReader) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str], list[str]]:
        rows = r.query(since=since, model=only, key=key_name, limit=MAX_ROWS)
        stats = r.stats(since=since, model=only, key=key_name)
        every = r.stats(since=since, key=key_name) if only else stats
        known = sorted(set(s["model"] for s in every) - shaping.unknown_models(every))
        return rows, stats, [m for m in (s["model"] for s in every) if m in known], r.key_names(since)

    rows, stats, models, keys = ctx.read_log(read)
    series = shaping.bucket_rows(rows, since, now, unknown=shaping.unknown_models(stats))
    total = shaping.summary(stats)
    grouped = shaping.group_unknown(stats)
    label = dict((k, v) for v, k in shaping.TIME_RANGES).get(range_key, range_key).lower()
    scope = ", ".join(x for x in (label, only, f"key {key_name}" if key_name else None) if x)
    if total["requests"]:
        text = (
            f"**{total['requests']:,} requests** ({scope}) · "
            f"errors {total['errors']:,} ({_pct(total['error_rate'])}) · "
            f"tokens {_count(total['prompt_tokens'])} in / {_count(total['completion_tokens'])} out · "
            f"{total['models']} model{'s' if total['models'] != 1 else ''}"
        )
        if total["unknown"]:
            n = total["unknown"]
            text += (
                f" · {total['unknown_requests']:,} request{'s' if total['unknown_requests'] != 1 else ''} "
                f"for {n} unknown model name{'s' if n != 1 else ''} (404), shown as {shaping.UNKNOWN}"
            )
        if len(rows) >= MAX_ROWS:
            text += f" · the charts over time show the newest {MAX_ROWS:,} requests"
    else:
        text = f"No requests in this range ({scope})."
    return {
        "summary": text,
        "series": series,
        "stats": grouped,
        "models": models,
        "keys": keys,
        "figures": [
            plots.requests_over_time(series),
            plots.tokens_over_time(series),
            plots.latency_over_time(series),
            plots.error_rate_over_time(series),
            plots.latency_by_model(grouped),
            plots.speed_by_model(grouped),
        ],
        "table": shaping.markdown_table(shaping.STATS_HEADERS, shaping.stats_table(grouped)),
    }


def refresh(ctx: UIContext, range_key: str | None, model: str | None, key: str | None = None) -> list[Any]:
    """Outputs: summary, the plots' box (shown or not), the plots (``PLOTS`` order), table, model
    dropdown, key dropdown. Without a request log: one sentence, and no empty boxes."""
    try:
        data = load(ctx, range_key, model, key)
    except LogProblem as exc:
        return [f"{WARN} {exc}", gr.update(visible=False), *([None] * len(PLOTS)), "", gr.skip(), gr.skip()]
    except ValueError as exc:
        return [f"{WARN} {exc}", gr.skip(), *([gr.skip()] * len(PLOTS)), gr.skip(), gr.skip(), gr.skip()]
    choices = [ALL_MODELS, *data["models"]]
    keys = [ALL_KEYS, *data["keys"]]
    return [
        data["summary"],
        gr.update(visible=True),
        *data["figures"],
        data["table"],
        gr.update(choices=choices, value=model if model in choices else ALL_MODELS),
        gr.update(choices=keys, value=key if key in keys else ALL_KEYS),
    ]


def build(ctx: UIContext) -> tuple[Any, list[Any], list[Any]]:
    """Components and events; returns (refresh fn, inputs, outputs) so the page load can run it."""
    with gr.Row():
        span = gr.Dropdown(choices=list(shaping.TIME_RANGES), value="1h", label="Time range",
                           elem_id="analytics-range")  # fmt: skip
        model = gr.Dropdown(choices=[ALL_MODELS], value=ALL_MODELS, label="Model", elem_id="analytics-model")
        key = gr.Dropdown(choices=[ALL_KEYS], value=ALL_KEYS, label="Client key", elem_id="analytics-key")
        auto = gr.Checkbox(value=False, label=f"Refresh every {AUTO_REFRESH_S:g} s")
        go = gr.Button("Refresh", elem_id="analytics-refresh")
    summary = gr.Markdown(elem_id="analytics-summary")
    with gr.Column(elem_id="analytics-plots") as box:
        table = gr.Markdown(elem_id="analytics-table")
        plots_out = []
        for i in range(0, len(PLOTS), 2):
            with gr.Row():
                for name in PLOTS[i : i + 2]:  # the figures carry their titles
                    plots_out.append(gr.Plot(format="png", show_label=False, elem_id=f"plot-{name}"))
    timer = gr.Timer(AUTO_REFRESH_S, active=False)

    def _refresh(range_key: str | None, model_name: str | None, key_name: str | None) -> list[Any]:
        return refresh(ctx, range_key, model_name, key_name)

    inputs = [span, model, key]
    outputs = [summary, box, *plots_out, table, model, key]
    for trigger in (go.click, span.change, model.input, key.input, timer.tick):
        trigger(_refresh, inputs, outputs, show_progress="minimal")
    auto.change(lambda on: gr.update(active=on), auto, timer, queue=False)
    return _refresh, inputs, outputs
