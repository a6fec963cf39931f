"""Build the web UI (:func:`create_ui`) and serve it on 127.0.0.1 (:func:`launch_ui`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from aib.webui import analytics, chat, compare, health, history, status
from aib.webui.context import UIContext

T = TypeVar("T")
HOST = "127.0.0.1"
CONCURRENCY = 16  # streams served at once across all browser sessions
CSS = """
.aib-meta, .aib-meta p { font-size: 0.85em; color: var(--body-text-color-subdued); }
#chat-box sub { color: var(--body-text-color-subdued); }
footer { display: none !important; }
#health-table th, #health-table td:not(:last-child), #analytics-table th { white-space: nowrap; }
/* History: one line per header and cell (long errors end in an ellipsis; the trace has them whole) */
#history-table th, #history-table td { white-space: nowrap; }
#history-table th, #history-table th *, #history-table [role='gridcell'], #history-table [role='gridcell'] * {
  font-family: var(--font) !important; font-size: 13px !important; }
.compare-figures table { width: 100%; table-layout: fixed; margin: 0; }
.compare-figures th, .compare-figures td { text-align: right; white-space: nowrap; }
"""


def _with_running_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` while an event loop is running in this thread.

    Gradio builds its locks with ``utils.safe_get_lock``, which creates (and never closes) a new event
    loop whenever none is running: a dozen leaked loops and sockets per UI. Building and launching
    inside a short-lived running loop (closed by ``asyncio.run``) avoids that.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def call() -> T:
            return fn()

        return asyncio.run(call())
    return fn()


def _theme() -> gr.themes.Base:
    # system fonts: the page must not fetch fonts from the internet
    return gr.themes.Default(
        primary_hue="blue",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )


def refresh_models(ctx: UIContext, chat_model: str | None, compare_models: list[str] | None) -> list[Any]:
    """Outputs: header line, the chat model dropdown, the compare models dropdown (and the choices
    shown, for the timer: :func:`aib.webui.status.refresh`)."""
    return status.refresh(ctx, chat_model, compare_models)


def create_ui(gateway_url: str, request_log_path: Path | str | None) -> gr.Blocks:
    """The whole UI as ``gr.Blocks``, talking to the gateway at ``gateway_url`` (``http://host:port``)
    and reading the request log at ``request_log_path`` (None: no analytics or history).

    Nothing is contacted until a page is opened. The blocks carry their :class:`UIContext` as
    ``.aib_context``; close it when the UI is done (``launch_ui`` callers: ``close_ui``).
    """
    ctx = UIContext(gateway_url, request_log_path)
    demo = _with_running_loop(lambda: _build(ctx))
    demo.aib_context = ctx  # type: ignore[attr-defined]
    return demo


def _build(ctx: UIContext) -> gr.Blocks:
    dropdowns: list[gr.Dropdown] = []
    # fill_width: the History table and the Compare columns need the whole window
    with gr.Blocks(title="aib · ai-backend-unified", analytics_enabled=False, fill_width=True) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("## ai-backend-unified", elem_id="title")
            line = gr.Markdown(f"Gateway {ctx.gateway.url}", elem_id="gateway-line")
            reload_models = gr.Button(
                "Reload models", size="sm", scale=0, min_width=140, elem_id="models-reload"
            )
        shown = gr.State(None)  # the model choices on screen (label, name) pairs
        # outside the tabs so that it ticks whichever tab is open (an unopened tab is not rendered)
        timer = gr.Timer(health.AUTO_REFRESH_S)
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat_tab = chat.build(ctx, dropdowns)
            with gr.Tab("Compare", id="compare"):
                compare.build(ctx, dropdowns)
            with gr.Tab("Analytics", id="analytics", render_children=True) as analytics_tab:
                a_fn, a_in, a_out = analytics.build(ctx)
            with gr.Tab("History", id="history") as history_tab:
                hist = history.build(ctx)
            with gr.Tab("Health", id="health") as health_tab:
                hl_fn, hl_in, hl_out = health.build(ctx)

        def _models(chat_model: str | None, compare_models: list[str] | None) -> list[Any]:
            return status.refresh(ctx, chat_model, compare_models)

        def _tick(chat_model: str | None, compare_models: list[str] | None, on_screen: Any) -> list[Any]:
            report = health.fetch(ctx)  # one /health for the header and the Health tab
            return [
                *status.refresh(ctx, chat_model, compare_models, on_screen or [], report),
                *health.render(report),
            ]

        def _trace(rid: str | None) -> list[Any]:
            return [gr.Tabs(selected="history"), rid or "", history.open_trace(ctx, rid)]

        for trigger in (demo.load, reload_models.click):
            trigger(_models, dropdowns, [line, *dropdowns, shown], show_progress="hidden")
        timer.tick(_tick, [*dropdowns, shown], [line, *dropdowns, shown, *hl_out], show_progress="hidden")
        chat_tab.trace_button.click(_trace, chat_tab.last_id, [tabs, hist.wanted, hist.trace])
        analytics_tab.select(a_fn, a_in, a_out, show_progress="minimal")
        history_tab.select(hist.search, hist.inputs, hist.outputs)
        health_tab.select(hl_fn, hl_in, hl_out, show_progress="hidden")
    return demo  # type: ignore[no-any-return]


def launch_ui(demo: gr.Blocks, port: int = 5001, *, block: bool = True, quiet: bool = False) -> str:
    """Serve ``demo`` on http://127.0.0.1:PORT and return its URL: right away with ``block=False``,
    else when the server stops or on Ctrl-C. Stop it with :func:`close_ui`."""

    def start() -> str:
        # Gradio's queue rebuilds a pandas summary of every past event after each event, for a
        # monitoring page we do not serve: O(events) work per click, and a pandas deprecation warning.
        os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(2**31))
        demo.queue(default_concurrency_limit=CONCURRENCY)
        _app, url, _share = demo.launch(
            server_name=HOST,
            server_port=port,
            prevent_thread_lock=True,
            share=False,
            inbrowser=False,
            show_error=True,
            quiet=quiet,
            ssr_mode=False,
            mcp_server=False,
            run_history=False,
            enable_monitoring=False,
            theme=_theme(),
            css=CSS,
        )
        return str(url).rstrip("/")

    if not block:
        return _with_running_loop(start)
    with _stop_signals() as stop:  # set before starting: a Ctrl-C while Gradio starts waits its turn
        url = _with_running_loop(start)
        while demo.is_running and not stop.wait(0.2):
            pass
    return url


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event that Ctrl-C and SIGTERM set (in the main thread; elsewhere nothing sets it).

    A KeyboardInterrupt raised at a random point can land inside a library closing an event loop
    (``asyncio.run`` finishing: its self-pipe closed, the loop not yet marked closed); that loop then
    prints a ``ValueError: Invalid file descriptor: -1`` traceback when it is collected."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def close_ui(demo: gr.Blocks) -> None:
    """Stop the server (when launched) and close the UI's gateway client."""
    demo.close()
    ctx = getattr(demo, "aib_context", None)
    if isinstance(ctx, UIContext):
        ctx.close()
