"""The health tab: each provider's state from the gateway's ``/health``, with its last error.

``/health`` is the gateway's cached view (it never calls upstreams per request), so refreshing
often costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import gradio as gr

from aib.webui.context import WARN, UIContext
from aib.webui.gateway import GatewayProblem
from aib.webui.shaping import DASH, markdown_table

AUTO_REFRESH_S = 10.0
HEADERS = ["provider", "type", "state", "probe ms", "checked", "breakers", "discovered models", "last error"]


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    age = max(now - ts, 0.0)
    return f"{age:.0f} s ago" if age < 120 else f"{age / 60:.0f} min ago"


def _breakers(breakers: Mapping[str, Mapping[str, Any]]) -> str:
    if not breakers:
        return DASH
    opened = [b for b in breakers.values() if b.get("state") == "open"]
    half = [b for b in breakers.values() if b.get("state") == "half_open"]
    if not opened and not half:
        return f"{len(breakers)} closed"
    parts = []
    if opened:
        retry = min(float(b.get("retry_in_s") or 0) for b in opened)
        parts.append(f"{len(opened)} open (retry in {retry:.0f} s)")
    if half:
        parts.append(f"{len(half)} half-open")
    return ", ".join(parts)


def _last_error(p: Mapping[str, Any]) -> str:
    if p.get("last_error"):
        return str(p["last_error"])
    errors = [str(b["last_error"]) for b in (p.get("breakers") or {}).values() if b.get("last_error")]
    return errors[0] if errors else ""


def health_view(report: Mapping[str, Any], now: float | None = None) -> tuple[str, list[list[Any]]]:
    """(summary line, one table row per provider) from a ``/health`` report."""
    now = time.time() if now is None else now
    providers: Mapping[str, Mapping[str, Any]] = report.get("providers") or {}
    rows = []
    for name, p in providers.items():
        status = str(p.get("status", "unknown"))
        latency = p.get("last_probe_latency_ms")
        rows.append([
            f"**{name}**", p.get("type", ""), status if status == "healthy" else f"**{status}**",
            DASH if latency is None else f"{latency:.0f}", _ago(p.get("last_checked"), now),
            _breakers(p.get("breakers") or {}), ", ".join(p.get("discovered_models") or []) or DASH,
            _last_error(p),
        ])  # fmt: skip
    overall = str(report.get("status", "unknown"))
    if report.get("health_checks") is False:
        line = "Health checks are off on this gateway: provider states are unknown."
    else:
        enabled = sum(1 for p in providers.values() if p.get("status") != "disabled")
        healthy = report.get("healthy_providers", 0)
        line = f"Gateway **{overall}**: {healthy} of {enabled} providers healthy"
    extras = []
    if report.get("inflight") is not None:
        extras.append(f"{report['inflight']} in flight")
    if report.get("plan_version"):
        extras.append(f"plan {report['plan_version']}")
    if report.get("uptime_s") is not None:
        extras.append(f"up {report['uptime_s']:.0f} s")
    return line + (" · " + " · ".join(extras) if extras else ""), rows


def render(report: Mapping[str, Any] | GatewayProblem) -> tuple[str, str]:
    """(summary line, providers table) as Markdown, from a report or the problem reading it."""
    if isinstance(report, GatewayProblem):
        return f"{WARN} {report}", ""
    line, rows = health_view(report)
    return line, markdown_table(HEADERS, rows) or "No providers are configured."


def fetch(ctx: UIContext) -> dict[str, Any] | GatewayProblem:
    try:
        return ctx.gateway.health()
    except GatewayProblem as exc:
        return exc


def refresh(ctx: UIContext) -> tuple[str, str]:
    """(summary line, providers table) as Markdown."""
    return render(fetch(ctx))


def build(ctx: UIContext) -> tuple[Any, list[Any], list[Any]]:
    """The tab; its refresh also runs on the page's timer (every ``AUTO_REFRESH_S``, with the
    header's gateway line: :mod:`aib.webui.app`)."""
    with gr.Row():
        line = gr.Markdown(elem_id="health-summary")
        go = gr.Button("Refresh", scale=0, min_width=120, elem_id="health-refresh")
    table = gr.Markdown(elem_id="health-table")
    gr.Markdown(f"*Refreshes every {AUTO_REFRESH_S:g} s while the page is open.*")

    def _refresh() -> tuple[str, str]:
        return refresh(ctx)

    go.click(_refresh, None, [line, table], show_progress="hidden")
    return _refresh, [], [line, table]
