"""The compare tab: one prompt to 2..N models at once, one column each.

Each model streams in its own thread; the page is redrawn from their progress a few times a second.
A model that fails shows its error sentence in its own column and the others carry on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from aib.webui.chat import DEFAULT_MAX_TOKENS, meta_text, secs, session_key
from aib.webui.context import WARN, UIContext
from aib.webui.gateway import Cancel, ChatStream, build_messages
from aib.webui.shaping import DASH, markdown_table

MAX_MODELS = 6
REDRAW_EVERY_S = 0.1
FIGURES = ["first token", "total", "tokens/s"]
SLOT = 5  # outputs per column: visible, heading, figures, body, meta


@dataclass
class Column:
    model: str
    stream: ChatStream
    done: bool = False
    thread: threading.Thread | None = field(default=None, repr=False)

    def figures(self) -> list[str]:
        """First token, total time and tokens/s (dashes until known): one row, the same in every column."""
        m = self.stream.meta
        rate = m.tokens_per_s if self.done else None
        return [
            secs(m.ttft_s),
            secs(m.total_s) if self.done else DASH,
            DASH if rate is None else f"{rate:.1f}",
        ]

    def stats(self) -> str:
        """The figures as a one-row table (aligned across columns: it sits right under the heading)."""
        return markdown_table(FIGURES, [self.figures()])

    def meta(self) -> str:
        m = self.stream.meta
        if not self.done:
            return "streaming…" if m.ttft_s is not None else "waiting for the first token…"
        if m.error:
            return f"failed after {m.total_s or 0:.2f} s"
        return meta_text(m)

    def body(self) -> str:
        text = self.stream.text
        if self.done and self.stream.meta.error:
            return (f"{text}\n\n" if text else "") + f"{WARN} {self.stream.meta.error}"
        return text or ("*(no text)*" if self.done else "…")


def _run(col: Column, wake: threading.Condition) -> None:
    try:
        for _ in col.stream:
            with wake:
                wake.notify_all()
    finally:
        col.done = True
        with wake:
            wake.notify_all()


def _view(columns: list[Column], status: str) -> list[Any]:
    """Updates for every output: per slot (column visible, heading, figures, body, meta), then the status."""
    out: list[Any] = []
    for i in range(MAX_MODELS):
        if i < len(columns):
            c = columns[i]
            out += [gr.update(visible=True), f"### {c.model}", c.stats(), c.body(), c.meta()]
        else:
            out += [gr.update(visible=False), "", "", "", ""]
    return [*out, status]


def check_models(models: list[str] | None) -> tuple[list[str], str | None]:
    """Distinct names in order, or a sentence saying what is wrong with the choice."""
    names = list(dict.fromkeys(m.strip() for m in models or [] if m and m.strip()))
    if len(names) < 2:
        return names, "Choose at least two models to compare."
    if len(names) > MAX_MODELS:
        return names, f"Choose at most {MAX_MODELS} models (you chose {len(names)})."
    return names, None


def run(
    ctx: UIContext,
    prompt: str | None,
    models: list[str] | None,
    system: str | None,
    temperature: float | None,
    max_tokens: float | None,
    request: gr.Request | None = None,
) -> Iterator[list[Any]]:
    names, problem = check_models(models)
    text = (prompt or "").strip()
    if problem is None and not text:
        problem = "Type a prompt first."
    if problem is not None:
        yield _view([], problem)
        return
    key = session_key(request, "compare")
    cancel = ctx.begin(key)
    messages = build_messages(system, [], text)
    columns = [
        Column(
            m,
            ctx.gateway.chat(
                m,
                messages,
                temperature=temperature,
                max_tokens=int(max_tokens) if max_tokens else None,
                cancel=_child(cancel),
            ),
        )
        for m in names
    ]
    wake = threading.Condition()
    for c in columns:
        c.thread = threading.Thread(
            target=_run, args=(c, wake), name=f"aib-ui-compare-{c.model}", daemon=True
        )
        c.thread.start()
    try:
        yield _view(columns, f"Sent to {len(columns)} models…")
        while not all(c.done for c in columns):
            with wake:
                wake.wait(REDRAW_EVERY_S)
            time.sleep(REDRAW_EVERY_S / 2)  # let a few tokens gather before drawing again
            yield _view(columns, "Streaming…")
    finally:
        if not all(c.done for c in columns):  # the page went away: stop the rest
            cancel.set()
        ctx.end(key, cancel)
        for c in columns:
            if c.thread is not None:
                c.thread.join(timeout=5)
    failed = [c.model for c in columns if c.stream.meta.error]
    stopped = cancel.is_set()
    status = "Stopped." if stopped else "Done." if not failed else f"Done; failed: {', '.join(failed)}."
    yield _view(columns, status)


def _child(parent: Cancel) -> Cancel:
    """A cancel of its own per column (each closes its own stream) that the run's stop also sets."""
    child = Cancel()
    parent.on_cancel(child.set)
    return child


def stop(ctx: UIContext, request: gr.Request | None = None) -> Any:
    """Stop this session's run; its own last update says "Stopped." (so this one must not race it)."""
    return gr.skip() if ctx.stop(session_key(request, "compare")) else "Nothing is running."


def build(ctx: UIContext, models_dropdowns: list[gr.Dropdown]) -> None:
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=4, scale=3, elem_id="compare-prompt",
                            placeholder="One prompt, sent to every chosen model at once.")  # fmt: skip
        with gr.Column(scale=2, min_width=280):
            models = gr.Dropdown(
                label=f"Models (2 to {MAX_MODELS})", multiselect=True, allow_custom_value=True,
                max_choices=MAX_MODELS, elem_id="compare-models",
            )  # fmt: skip
            models_dropdowns.append(models)
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
                max_tokens = gr.Number(value=DEFAULT_MAX_TOKENS, precision=0, minimum=1, maximum=32768,
                                       label="Max tokens", elem_id="compare-max-tokens")  # fmt: skip
            system = gr.Textbox(label="System prompt", lines=1)
            with gr.Row():
                go = gr.Button("Compare", variant="primary", elem_id="compare-run")
                halt = gr.Button("Stop", variant="stop", elem_id="compare-stop")
    status = gr.Markdown("", elem_id="compare-status")
    slots: list[Any] = []
    with gr.Row(equal_height=False):
        for i in range(MAX_MODELS):
            with gr.Column(
                visible=False, min_width=300, variant="panel", elem_classes=["compare-col"]
            ) as col:
                header = gr.Markdown(elem_id=f"compare-head-{i}")
                stats = gr.Markdown(elem_id=f"compare-stats-{i}", elem_classes=["compare-figures"])
                body = gr.Markdown(elem_id=f"compare-body-{i}", max_height=420)
                meta = gr.Markdown(elem_id=f"compare-meta-{i}", elem_classes=["aib-meta"])
            slots += [col, header, stats, body, meta]

    def _run(
        prompt: str,
        models: list[str] | None,
        system: str,
        temperature: float,
        max_tokens: float | None,
        request: gr.Request,
    ) -> Iterator[list[Any]]:
        yield from run(ctx, prompt, models, system, temperature, max_tokens, request)

    def _stop(request: gr.Request) -> Any:
        return stop(ctx, request)

    go.click(
        _run, [prompt, models, system, temperature, max_tokens], [*slots, status], show_progress="hidden"
    )
    halt.click(_stop, None, status, queue=False)
