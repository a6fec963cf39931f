"""The history tab: browse and search past requests; open one to see its trace.

Filters by model, status and time range run in SQLite; the free-text search then matches request id,
model, route, provider, upstream model, status and error text of the newest ``SCAN_ROWS`` matches.
Bodies appear in a trace only when the gateway stored them (``AIB_LOG_BODIES=1``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from aib.observe.requestquery import RequestLogReader
from aib.webui import shaping
from aib.webui.context import WARN, LogProblem, UIContext
from aib.webui.shaping import DASH

SCAN_ROWS = 5_000
SHOW_ROWS = 200
BODY_CHARS = 4_000
ERROR_CHARS = 50  # of an error in the table (what fits at 1400 px); the trace shows all of it
ID_CHARS = 12  # the table shows …<the last 12 characters> of an id, like `aib logs`
STATUSES = (("Any status", "any"), ("OK", "ok"), ("Errors", "error"), ("4xx", "4xx"), ("5xx", "5xx"))
ALL_KEYS = "All keys"
# short headers: with the widths below, every header and cell stays on one line at 1400 px
HEADERS = ["time", "request id", "model", "served by", "status", "stream", "TTFT ms", "total ms", "tokens",
           "fallbacks", "error"]  # fmt: skip
WIDTHS: list[str | int] = ["124px", "132px", "130px", "146px", "66px", "72px", "86px", "86px", "72px", "94px",
                          "320px"]  # fmt: skip
TABLE_ROWS = 14  # rows the table shows before it scrolls
TABLE_HEIGHT = 40 + 36 * TABLE_ROWS  # px: the header row and 36 px a row
SEARCHED = ("request_id", "model", "route", "provider", "upstream", "error", "error_code", "status")


def _clock(ts: float | None) -> str:
    return DASH if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _short_clock(ts: float | None) -> str:
    return DASH if ts is None else time.strftime("%m-%d %H:%M:%S", time.localtime(ts))


def short_id(request_id: str) -> str:
    """``…`` and the id's last ``ID_CHARS`` characters (a trace opens from a unique suffix too)."""
    return request_id if len(request_id) <= ID_CHARS + 1 else "…" + request_id[-ID_CHARS:]


def clip(text: str, n: int) -> str:
    """``text`` on one line, cut to ``n`` characters with an ellipsis."""
    one = " ".join(text.split())
    return one if len(one) <= n else one[: n - 1].rstrip() + "…"


def _ms(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def matches(row: Mapping[str, Any], text: str) -> bool:
    """Every word of ``text`` occurs (case-insensitive) in one of the searched fields."""
    hay = " ".join(str(row.get(k) or "") for k in SEARCHED).lower()
    return all(word in hay for word in text.lower().split())


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    out = []
    for r in rows:
        tokens = DASH if r.get("prompt_tokens") is None and r.get("completion_tokens") is None else (
            f"{r.get('prompt_tokens') or 0}/{r.get('completion_tokens') or 0}"
        )  # fmt: skip
        where = f"{r['provider']}/{r['upstream']}" if r.get("provider") else DASH
        out.append([
            _short_clock(r.get("ts")), short_id(r["request_id"]), r["model"], where, r["status"] or DASH,
            "yes" if r.get("stream") else "", _ms(r.get("ttfb_ms")), _ms(r.get("total_ms")), tokens,
            r.get("fallbacks") or 0, clip(r.get("error") or "", ERROR_CHARS),
        ])  # fmt: skip
    return out


def trace_markdown(t: Mapping[str, Any] | None, wanted: str = "") -> str:
    """The trace of one request: route decision, attempts, timings, bodies when stored."""
    if t is None:
        return f"No request with id {wanted!r} in the request log (a unique prefix of 6+ characters works)."
    verdict = "failed" if shaping.is_error(t) else "ok"
    who = f" · key **{t['key_name']}**" if t.get("key_name") else ""
    lines = [
        f"### Request `{t['request_id']}` · {verdict} ({t['status'] or 'no status'})",
        f"{_clock(t['ts'])} · `{t['endpoint']}` · model **{t['model']}** · "
        f"{'streamed' if t.get('stream') else 'not streamed'}"
        + who
        + (" · the client went away" if t.get("client_disconnected") else ""),
        "",
        "**Route decision**: "
        + (
            f"matched by *{t.get('matched_by')}* ({t.get('rule') or 'no rule'}) → route `{t.get('route')}`"
            if t.get("route")
            else "no route matched"
        )
        + (f" · plan {t['plan_version']}" if t.get("plan_version") else ""),
        "",
        f"**Answered by**: {t['provider']}/{t['upstream']}"
        if t.get("provider")
        else "**Answered by**: nobody",
        "",
        f"**Timings**: first byte {_ms(t.get('ttfb_ms'))} ms · total {_ms(t.get('total_ms'))} ms · "
        f"gateway overhead {_ms(t.get('overhead_ms'))} ms",
        "",
        f"**Tokens**: {t.get('prompt_tokens') if t.get('prompt_tokens') is not None else DASH} in · "
        f"{t.get('completion_tokens') if t.get('completion_tokens') is not None else DASH} out",
    ]
    if t.get("error"):
        lines += ["", f"**Error** ({t.get('error_code') or 'error'}): {t['error']}"]
    attempts = t.get("attempts") or []
    lines += ["", f"**Attempts** ({len(attempts)}, {t.get('fallbacks') or 0} failed before the answer)", ""]
    if attempts:
        lines += [
            "| # | target | route | status | first byte ms | duration ms | result |",
            "|---|---|---|---|---|---|---|",
        ]
        for a in attempts:
            result = (
                "ok" if a.get("ok") else (a.get("error") or "failed").replace("|", "\\|").replace("\n", " ")
            )
            lines.append(
                f"| {a['n']} | {a['target']} | {a.get('route') or DASH} | {a.get('status') or DASH} | "
                f"{_ms(a.get('ttfb_ms'))} | {_ms(a.get('duration_ms'))} | {result} |"
            )
    else:
        lines.append("No upstream was tried.")
    if "request_body" in t or "response_body" in t:
        for name in ("request_body", "response_body"):
            body = t.get(name) or ""
            cut = body[:BODY_CHARS] + (
                f"\n… ({len(body) - BODY_CHARS:,} more characters)" if len(body) > BODY_CHARS else ""
            )
            fence = "`" * max(3, _longest_backtick_run(cut) + 1)  # a fence the body cannot close
            title = name.replace("_", " ").capitalize()
            lines += ["", f"**{title}**", "", fence, cut, fence]
    else:
        lines += ["", "*Bodies are not stored (the gateway stores them only with AIB_LOG_BODIES=1).*"]
    return "\n".join(lines)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def search(
    ctx: UIContext,
    text: str | None,
    model: str | None,
    status: str | None,
    range_key: str | None,
    key: str | None = None,
) -> tuple[list[list[Any]], str, list[str], list[str]]:
    """(table rows, a line saying what is shown, the request ids of the rows in order, the key names
    seen in the range)."""
    since = shaping.since_for(range_key or "24h")
    only = model.strip() if model and model.strip() else None
    st = None if not status or status == "any" else status
    key_name = None if not key or key == ALL_KEYS else key

    def read(r: RequestLogReader) -> tuple[list[dict[str, Any]], list[str]]:
        return r.query(model=only, status=st, since=since, key=key_name, limit=SCAN_ROWS), r.key_names(since)

    rows, keys = ctx.read_log(read)
    words = (text or "").strip()
    hits = [r for r in rows if matches(r, words)] if words else rows
    shown = hits[:SHOW_ROWS]
    scope = f" among the newest {SCAN_ROWS:,}" if len(rows) >= SCAN_ROWS else ""
    note = (
        f"{len(hits):,} request{'s' if len(hits) != 1 else ''} match{'' if len(hits) != 1 else 'es'}{scope}"
    )
    note += f"; showing the newest {len(shown)}." if len(hits) > len(shown) else "."
    if hits:
        note += " Click a row to see its trace (with the whole error)."
    return table_rows(shown), note, [r["request_id"] for r in shown], keys


def open_trace(ctx: UIContext, request_id: str | None) -> str:
    wanted = (request_id or "").strip()
    if not wanted:
        return "Type a request id (or click a row above)."
    try:
        return trace_markdown(ctx.read_log(lambda r: r.trace(wanted)), wanted)
    except LogProblem as exc:
        return f"{WARN} {exc}"


@dataclass
class HistoryTab:
    """What the page needs of the tab: its search (for the tab's selection) and the trace view (for
    "Open trace" in Chat)."""

    search: Callable[..., Any]
    inputs: list[Any]
    outputs: list[Any]
    wanted: gr.Textbox
    trace: gr.Markdown


def build(ctx: UIContext) -> HistoryTab:
    ids = gr.State([])
    with gr.Row():
        text = gr.Textbox(label="Search", placeholder="request id, model, provider, error text…", scale=3,
                          elem_id="history-search")  # fmt: skip
        model = gr.Textbox(label="Model (exact)", scale=1)
        status = gr.Dropdown(choices=list(STATUSES), value="any", label="Status", scale=1)
        key = gr.Dropdown(
            choices=[ALL_KEYS], value=ALL_KEYS, label="Client key", scale=1, elem_id="history-key"
        )
        span = gr.Dropdown(choices=list(shaping.TIME_RANGES), value="24h", label="Time range", scale=1)
        go = gr.Button("Search", variant="primary", scale=1, elem_id="history-go")
    note = gr.Markdown(elem_id="history-note")
    table = gr.Dataframe(
        headers=HEADERS, interactive=False, max_height=TABLE_HEIGHT, elem_id="history-table", wrap=False,
        column_widths=WIDTHS,
    )  # fmt: skip
    with gr.Row():
        wanted = gr.Textbox(label="Request id", scale=4, elem_id="history-id")
        show = gr.Button("Open trace", scale=1, elem_id="history-open")
    trace = gr.Markdown(elem_id="history-trace")

    def _search(*args: Any) -> tuple[Any, ...]:
        chosen = args[4]
        try:
            rows, line, row_ids, keys = search(ctx, *args)
        except (LogProblem, ValueError) as exc:
            return [], f"{WARN} {exc}", [], gr.skip()
        choices = [ALL_KEYS, *keys]
        return (
            rows,
            line,
            row_ids,
            gr.update(choices=choices, value=chosen if chosen in choices else ALL_KEYS),
        )

    def _select(row_ids: list[str], evt: gr.SelectData) -> tuple[str, str]:
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        rid = row_ids[row] if isinstance(row, int) and 0 <= row < len(row_ids) else ""
        return rid, open_trace(ctx, rid)

    inputs = [text, model, status, span, key]
    outputs = [table, note, ids, key]
    for trigger in (go.click, text.submit, model.submit, status.change, span.change, key.input):
        trigger(_search, inputs, outputs)
    table.select(_select, ids, [wanted, trace])
    for trigger in (show.click, wanted.submit):
        trigger(lambda rid: open_trace(ctx, rid), wanted, trace)
    return HistoryTab(_search, inputs, outputs, wanted, trace)
