"""The header's gateway line and the model lists, kept current by the page's health timer.

``/v1/models`` says whether the gateway answers and which names it serves (with the provider of a
single-provider name as ``owned_by``); ``/health`` says which providers are down. A model whose
provider is down keeps its name as the value and says so in its label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gradio as gr

from aib.webui.context import WARN, UIContext
from aib.webui.gateway import GatewayProblem

DOWN_STATES = ("unhealthy", "disabled")  # "degraded" still answers; "unknown" is not known to be down


def down_providers(report: Mapping[str, Any] | None) -> dict[str, str]:
    """Provider -> its state, for the providers of a ``/health`` report that cannot serve."""
    providers: Mapping[str, Mapping[str, Any]] = (report or {}).get("providers") or {}
    return {name: str(p.get("status")) for name, p in providers.items() if p.get("status") in DOWN_STATES}


def model_choices(
    catalog: Sequence[tuple[str, str]], down: Mapping[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(dropdown choices as (label, model), the models whose provider is down). A group of several
    providers (``owned_by`` "aib:group") is never marked: the gateway falls back among them."""
    choices, marked = [], []
    for model, owner in catalog:
        if owner in down:
            choices.append((f"{model} ({WARN} {owner} is {down[owner]})", model))
            marked.append(model)
        else:
            choices.append((model, model))
    return choices, marked


def header_line(url: str, catalog: Sequence[tuple[str, str]], marked: Sequence[str]) -> str:
    if not catalog:
        return f"Gateway {url} · **up**, but it lists no models: check its configuration (`aib models`)."
    n = len(catalog)
    line = f"Gateway {url} · **up** · {n} model{'s' if n != 1 else ''}"
    if marked:
        line += f" · {WARN} provider down for {', '.join(marked)}"
    return line


def refresh(
    ctx: UIContext,
    chat_model: str | None,
    compare_models: list[str] | None,
    shown: list[Any] | None = None,
    report: Mapping[str, Any] | GatewayProblem | None = None,
) -> list[Any]:
    """Outputs: header line, the chat model dropdown, the compare models dropdown, the choices shown
    (a ``gr.State``). With ``shown`` given (a timer tick), dropdowns whose choices did not change are
    left alone, so an open list is not redrawn under the user every few seconds. ``report``: the
    ``/health`` report (or the problem reading it) when the caller has it already."""
    try:
        catalog = ctx.gateway.catalog()
    except GatewayProblem as exc:
        return [f"{WARN} **down**: {exc}", gr.skip(), gr.skip(), gr.skip()]
    if report is None:
        try:
            report = ctx.gateway.health()
        except GatewayProblem as exc:
            report = exc
    # a problem with /health (e.g. it wants the admin key): the models are shown unmarked
    down = {} if isinstance(report, GatewayProblem) else down_providers(report)
    choices, marked = model_choices(catalog, down)
    line = header_line(ctx.gateway.url, catalog, marked)
    pairs = [list(c) for c in choices]
    if shown is not None and pairs == shown:
        return [line, gr.skip(), gr.skip(), gr.skip()]
    models = [m for m, _ in catalog]
    keep = chat_model if chat_model else (models[0] if models else None)
    chosen = [m for m in compare_models or [] if m]
    if not chosen and len(models) >= 2:
        chosen = models[:2]
    return [
        line,
        gr.update(choices=choices, value=keep),
        gr.update(choices=choices, value=chosen),
        pairs,
    ]
