"""The chat tab: any model of the gateway, streamed replies, multi-turn, a stop button.

The conversation is a list of turns kept in the browser session (``gr.State``); the chatbot shows
each reply with where it went (provider, upstream model), its timings and tokens. Failed turns stay
on screen with their error sentence but are not sent to the model again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from aib.webui.context import WARN, UIContext
from aib.webui.gateway import ReplyMeta, build_messages
from aib.webui.shaping import DASH

YIELD_EVERY_S = 0.04  # at most ~25 screen updates a second while streaming
DEFAULT_MAX_TOKENS = 256
Turn = dict[str, Any]  # {"user": str, "reply": str, "meta": str, "ok": bool}


def session_key(request: gr.Request | None, tab: str) -> str:
    return f"{getattr(request, 'session_hash', None) or 'local'}:{tab}"


def secs(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f} s" if v < 10 else f"{v:.1f} s"


def meta_text(meta: ReplyMeta) -> str:
    """One line: where the reply went, first token, total, tokens, rate, request id."""
    if meta.error:
        rid = f" · id {meta.request_id}" if meta.request_id else ""
        return f"{meta.model} · failed after {secs(meta.total_s)}{rid}"
    parts = []
    if meta.provider:
        parts.append(f"{meta.model} → {meta.provider}/{meta.upstream or meta.model}")
    else:
        parts.append(meta.model)
    if meta.fallbacks:
        parts.append(f"{meta.fallbacks} fallback{'s' if meta.fallbacks > 1 else ''}")
    parts.append(f"first token {secs(meta.ttft_s)}")
    parts.append(f"total {secs(meta.total_s)}")
    if meta.completion_tokens is not None:
        approx = "~" if meta.tokens_estimated else ""
        prompt = f"{meta.prompt_tokens} → " if meta.prompt_tokens is not None else ""
        parts.append(f"{prompt}{approx}{meta.completion_tokens} tokens")
    if meta.tokens_per_s is not None:
        parts.append(f"{meta.tokens_per_s:.1f} tok/s")
    if meta.finish_reason == "length":
        parts.append("cut at max tokens")
    if meta.stopped:
        parts.append("stopped")
    if meta.request_id:
        parts.append(f"id {meta.request_id}")
    return " · ".join(parts)


def display(turns: list[Turn]) -> list[dict[str, str]]:
    """The chatbot's messages: each user turn, then its reply with a small line of metadata."""
    out: list[dict[str, str]] = []
    for t in turns:
        out.append({"role": "user", "content": t["user"]})
        reply = t["reply"]
        if t.get("error"):
            reply = f"{reply}\n\n" if reply else ""
            reply += f"{WARN} {t['error']}"
        footer = f"\n\n<sub>{t['meta']}</sub>" if t.get("meta") else ""
        out.append({"role": "assistant", "content": (reply or "…") + footer})
    return out


def conversation(turns: list[Turn]) -> list[dict[str, str]]:
    """The turns to send to the model: those that got a reply (failed ones are left out)."""
    out: list[dict[str, str]] = []
    for t in turns:
        if t.get("reply") and not t.get("error"):
            out += [{"role": "user", "content": t["user"]}, {"role": "assistant", "content": t["reply"]}]
    return out


def _enabled(on: bool = True) -> Any:
    """A button enabled (``on``) or disabled: Send is disabled while a reply streams."""
    return gr.update(interactive=on)


def send(
    ctx: UIContext,
    message: str | None,
    turns: list[Turn] | None,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: float | None,
    request: gr.Request | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Stream one reply; yields (chatbot, turns, message box, status, Send button, last request id,
    the button opening its trace).

    The message box is cleared once, when the message is taken; while the reply streams it is left
    alone (``gr.skip()``), so what the user types meanwhile stays. Send is disabled until the reply
    ends, fails or is stopped."""
    turns = list(turns or [])
    text = (message or "").strip()
    if not text:
        yield display(turns), turns, gr.skip(), "Type a message first.", _enabled(), gr.skip(), gr.skip()
        return
    if not model:
        problem = "Choose a model first (the list comes from the gateway)."
        yield display(turns), turns, gr.skip(), problem, _enabled(), gr.skip(), gr.skip()
        return
    key = session_key(request, "chat")
    cancel = ctx.begin(key)
    stream = ctx.gateway.chat(
        model,
        build_messages(system, conversation(turns), text),
        temperature=temperature,
        max_tokens=int(max_tokens) if max_tokens else None,
        cancel=cancel,
    )
    turn: Turn = {"user": text, "reply": "", "meta": f"{model} · waiting for the first token…", "ok": False}
    turns.append(turn)
    yield display(turns), turns, "", f"Sent to {model}…", _enabled(False), gr.skip(), gr.skip()
    last = 0.0
    iterator = iter(stream)
    try:
        for _ in iterator:
            turn["reply"] = stream.text
            now = time.monotonic()
            if now - last >= YIELD_EVERY_S:
                last = now
                turn["meta"] = f"{model} · streaming…"
                streaming = f"Streaming from {model}…"
                yield display(turns), turns, gr.skip(), streaming, gr.skip(), gr.skip(), gr.skip()
    finally:
        iterator.close()  # type: ignore[attr-defined]
        ctx.end(key, cancel)
    meta = stream.meta
    turn["reply"], turn["meta"], turn["ok"] = stream.text, meta_text(meta), meta.error is None
    if meta.error:
        turn["error"] = meta.error
    status = meta.error or ("Stopped." if meta.stopped else "Done.")
    rid = meta.request_id or ""
    yield display(turns), turns, gr.skip(), status, _enabled(), rid, gr.update(interactive=bool(rid))


def stop(ctx: UIContext, request: gr.Request | None = None) -> Any:
    """Stop this session's run; its own last update says "Stopped." (so this one must not race it)."""
    return gr.skip() if ctx.stop(session_key(request, "chat")) else "Nothing is running."


@dataclass
class ChatTab:
    """What the page wires to other tabs: the button that opens the last reply's trace in History,
    and the request id it opens."""

    trace_button: gr.Button
    last_id: gr.State


def build(ctx: UIContext, models_dropdowns: list[gr.Dropdown]) -> ChatTab:
    """The chat tab's components and events (call inside ``gr.Blocks``)."""
    turns = gr.State([])
    last_id = gr.State("")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chat-box", feedback_options=None)
            with gr.Row():
                box = gr.Textbox(
                    placeholder="Ask something… (Enter sends)",
                    show_label=False,
                    scale=6,
                    elem_id="chat-input",
                )
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
                stop_btn = gr.Button("Stop", variant="stop", scale=1, elem_id="chat-stop")
            with gr.Row():
                status = gr.Markdown("", elem_id="chat-status")
                trace_btn = gr.Button("Open the last reply's trace in History", size="sm", scale=0,
                                      min_width=280, interactive=False, elem_id="chat-trace")  # fmt: skip
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(
                label="Model", allow_custom_value=True, elem_id="chat-model",
                info="From the gateway's /v1/models; any name it routes works.",
            )  # fmt: skip
            models_dropdowns.append(model)
            system = gr.Textbox(label="System prompt", lines=3, placeholder="You are a helpful assistant.")
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature")
            max_tokens = gr.Number(value=DEFAULT_MAX_TOKENS, precision=0, minimum=1, maximum=32768,
                                   label="Max tokens", elem_id="chat-max-tokens")  # fmt: skip
            clear = gr.Button("New conversation", elem_id="chat-clear")

    def _send(
        message: str,
        turns: list[Turn],
        model: str | None,
        system: str,
        temperature: float,
        max_tokens: float | None,
        request: gr.Request,
    ) -> Iterator[tuple[Any, ...]]:
        yield from send(ctx, message, turns, model, system, temperature, max_tokens, request)

    def _stop(request: gr.Request) -> Any:
        return stop(ctx, request)

    inputs = [box, turns, model, system, temperature, max_tokens]
    outputs = [chatbot, turns, box, status, send_btn, last_id, trace_btn]
    # one event for Enter and Send: while it runs (a reply streams), both are ignored (trigger_mode
    # "once"); the Send button shows it by being disabled. The `then` re-enables Send even when the
    # run died of an unexpected error.
    gr.on(
        [box.submit, send_btn.click], _send, inputs, outputs, show_progress="hidden", trigger_mode="once"
    ).then(lambda: _enabled(), None, send_btn, show_progress="hidden")
    stop_btn.click(_stop, None, status, queue=False)
    clear.click(lambda: ([], [], "", "", _enabled(False)), None, [chatbot, turns, status, last_id, trace_btn],
                queue=False)  # fmt: skip
    return ChatTab(trace_btn, last_id)
