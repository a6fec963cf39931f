"""The web UI's handlers against the real gateway (in-process uvicorn) and its real request log.

Each tab's handler is called the way Gradio calls it (generators consumed to the end), without a
browser: streaming, multi-turn, stop, compare with a failing model, analytics, history and traces,
health, and every error as a sentence. Upstreams are ``ScriptedUpstream`` servers on 127.0.0.1; the
browser tests (tests/e2e/test_webui_browser.py) drive the same UI against real llama.cpp servers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from matplotlib.figure import Figure

from aib.observe import install_observability
from aib.observe.install import Observability
from aib.observe.settings import ObserveSettings
from aib.webui import analytics, chat, compare, health, history, status
from aib.webui.app import refresh_models
from aib.webui.context import LOG_OFF, UIContext
from gateway_harness import (
    SSE_DONE,
    Reply,
    RunningGateway,
    ScriptedUpstream,
    chat_chunk,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_event,
)

pytestmark = pytest.mark.integration

MAPPINGS = """
    defaults:
      breaker: {failure_threshold: 50, cooldown_s: 1}
      retries: {max_attempts: 2}
    models:
      m1: {provider: up}
      m2: {provider: up}
      shaky: {provider: up, upstream: m1, fallbacks: [m2]}
      broken: {provider: dead, upstream: m0}
"""
DOWN_SENTENCE = "does not answer: is it running? (start it with `aib serve`)"


class Stack:
    def __init__(self, rg: RunningGateway, up: ScriptedUpstream, handle: Observability, db: Path) -> None:
        self.rg, self.up, self.handle, self.db = rg, up, handle, db
        self.ctx = UIContext(rg.base_url, db)

    def flush(self) -> None:
        assert self.handle.request_log is not None
        assert self.handle.request_log.flush(5.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("webui")
    with ScriptedUpstream(models=["m1", "m2"]) as up:
        providers = f"""
            providers:
              up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m1, m2]}}
              dead: {{type: openai_compatible, base_url: "{dead_url()}", models: [m0]}}
        """
        plan = plan_from_yaml(tmp / "config", providers, MAPPINGS)
        with running_gateway(plan, gateway_settings(health_checks=True)) as rg:
            rg.wait_first_probe()
            settings = ObserveSettings(
                request_log=tmp / "requests.db",
                flush_interval_s=0.02,
                log_bodies=True,
                access_log=False,
                metrics=False,
            )
            handle = install_observability(rg.gateway, settings)
            s = Stack(rg, up, handle, tmp / "requests.db")
            try:
                yield s
            finally:
                s.ctx.close()
                handle.close()


@pytest.fixture(autouse=True)
def fresh(stack: Stack) -> None:
    stack.up.clear()


def last(gen: Iterator[Any]) -> tuple[list[Any], Any]:
    """Consume a handler's generator: (every yield, the last one)."""
    out = list(gen)
    assert out, "the handler yielded nothing"
    return out, out[-1]


def usage_stream(texts: list[str], prompt: int = 7, completion: int = 3, delay: float = 0.0) -> Reply:
    usage = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m1", "choices": [],
             "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}  # fmt: skip
    chunks = [chat_chunk(t) for t in texts] + [chat_chunk("", finish="stop"), sse_event(usage), SSE_DONE]
    return Reply(content_type="text/event-stream", chunks=tuple(chunks), chunk_delay_s=delay)


# --------------------------------------------------------------------------- models and chat


def test_models_come_from_the_gateway_marked_when_their_provider_is_down(stack: Stack) -> None:
    line, chat_dd, compare_dd, shown = refresh_models(stack.ctx, None, None)
    assert line == f"Gateway {stack.rg.base_url} · **up** · 4 models · ⚠ provider down for broken"
    assert chat_dd["choices"] == compare_dd["choices"] == [
        ("m1", "m1"), ("m2", "m2"), ("shaky", "shaky"), ("broken (⚠ dead is unhealthy)", "broken"),
    ]  # fmt: skip
    assert shown == [list(c) for c in chat_dd["choices"]]
    assert chat_dd["value"] == "m1"  # the first model when none was chosen
    assert compare_dd["value"] == ["m1", "m2"]
    _, kept, kept_many, _ = refresh_models(stack.ctx, "m2", ["broken"])
    assert kept["value"] == "m2" and kept_many["value"] == ["broken"]
    # a timer tick with the same choices on screen updates the line only
    assert status.refresh(stack.ctx, "m2", ["broken"], shown)[1:] == [gr.skip()] * 3


def test_chat_streams_a_reply_with_where_it_went_timings_and_tokens(stack: Stack) -> None:
    stack.up.enqueue(usage_stream(["Hel", "lo", " there"], delay=0.06))
    outs, (bot, turns, box, status, send_btn, last_id, trace_btn) = last(
        chat.send(stack.ctx, "Say hi", [], "m1", "Be brief.", 0.2, 16)
    )
    assert status == "Done." and box == gr.skip()
    partial = [o[0][-1]["content"] for o in outs[1:-1]]
    assert any(p.startswith(("Hel", "Hello")) and "streaming" in p for p in partial), partial  # streamed
    # the box is cleared once, when the message is taken, and left alone while the reply streams (what
    # the user types meanwhile stays); Send is disabled from then until the reply ends
    assert [o[2] for o in outs] == ["", *[gr.skip()] * (len(outs) - 1)]
    assert outs[0][4] == {"__type__": "update", "interactive": False}
    assert all(o[4] == gr.skip() for o in outs[1:-1])
    assert send_btn == {"__type__": "update", "interactive": True}
    assert trace_btn == {"__type__": "update", "interactive": True} and last_id
    reply = bot[-1]["content"]
    assert reply.startswith("Hello there\n\n<sub>m1 → up/m1 · first token ")
    assert " · 7 → 3 tokens · " in reply and " tok/s · id " in reply
    (turn,) = turns
    shown_id = reply.rsplit(" id ", 1)[1].removesuffix("</sub>")
    # the gateway records a request after its last byte is sent: wait for it, do not race it
    rec = stack.rg.observer.wait_for(shown_id)
    assert reply.endswith(f"id {rec.request_id}</sub>") and rec.model == "m1" and rec.status == 200
    assert last_id == rec.request_id  # what "Open the last reply's trace" opens
    sent = stack.up.requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 16
    assert turn == {
        "user": "Say hi",
        "reply": "Hello there",
        "meta": reply.split("<sub>")[1][:-6],
        "ok": True,
    }


def test_chat_is_multi_turn_and_leaves_failed_turns_out(stack: Stack) -> None:
    stack.up.enqueue(Reply.sse(["Paris."]))
    _, (_, turns, *_) = last(chat.send(stack.ctx, "Capital of France?", [], "m1", "", 0.7, 32))
    _, (bot, turns, _, status, *_) = last(chat.send(stack.ctx, "And of Spain?", turns, "nope", "", 0.7, 32))
    assert status.startswith("Model not found: The model 'nope' is not configured on this gateway.")
    assert bot[-1]["content"].startswith("⚠ Model not found")
    stack.up.enqueue(Reply.sse(["Madrid."]))
    _, (bot, turns, *_) = last(chat.send(stack.ctx, "And of Spain?", turns, "m1", "", 0.7, 32))
    assert stack.up.requests[-1].json["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    assert [m["role"] for m in bot] == ["user", "assistant"] * 3  # the failed turn stays on screen
    assert sum(1 for t in turns if t["ok"]) == 2


def test_chat_says_what_is_missing(stack: Stack) -> None:
    (out,) = chat.send(stack.ctx, "   ", [], "m1", "", 0.7, 8)
    assert out[3] == "Type a message first."
    (out,) = chat.send(stack.ctx, "hi", [], None, "", 0.7, 8)
    assert out[3] == "Choose a model first (the list comes from the gateway)." and out[2] == gr.skip()
    assert not stack.up.requests


def test_provider_failures_read_as_sentences(stack: Stack) -> None:
    _, (_, _, _, status, *_) = last(chat.send(stack.ctx, "hi", [], "broken", "", 0.7, 8))
    assert status.startswith(
        ("The provider failed for 'broken' (502)", "No provider is available for 'broken'")
    )
    assert "Traceback" not in status
    stack.up.enqueue(Reply.sse(["one ", "two ", "three"], reset_after=2))
    _, (bot, turns, _, status, send_btn, *_) = last(chat.send(stack.ctx, "hi", [], "m1", "", 0.7, 8))
    assert send_btn == {"__type__": "update", "interactive": True}  # Send comes back after a failure
    assert status.startswith("The provider failed mid-reply for 'm1': ")
    assert "stream" in status
    assert bot[-1]["content"].startswith("one two \n\n⚠ The provider failed mid-reply")
    assert turns[0]["ok"] is False


def test_fallbacks_show_in_the_reply(stack: Stack) -> None:
    stack.up.enqueue(Reply.error(500), Reply.sse(["saved"]))
    _, (bot, _, _, status, *_) = last(chat.send(stack.ctx, "hi", [], "shaky", "", 0.7, 8))
    assert status == "Done."
    assert bot[-1]["content"].startswith("saved\n\n<sub>shaky → up/m2 · 1 fallback · first token ")


def consume_in_thread(gen: Iterator[Any]) -> tuple[threading.Thread, list[Any]]:
    outs: list[Any] = []
    thread = threading.Thread(target=lambda: outs.extend(gen), daemon=True)
    thread.start()
    return thread, outs


def test_stop_ends_a_stream_and_closes_its_connection(stack: Stack) -> None:
    stack.up.enqueue(Reply.sse([f"w{i} " for i in range(40)], chunk_delay_s=0.25))
    thread, outs = consume_in_thread(chat.send(stack.ctx, "count", [], "m1", "", 0.7, 64))
    deadline = time.monotonic() + 10
    while not any("w0" in (o[0][-1]["content"] if o[0] else "") for o in outs):
        assert time.monotonic() < deadline, "no token arrived"
        time.sleep(0.02)
    assert chat.stop(stack.ctx, None) == gr.skip()  # the run's own last update says "Stopped."
    thread.join(10)
    assert not thread.is_alive()
    bot, turns, _, status, send_btn, *_ = outs[-1]
    assert status == "Stopped." and send_btn == {"__type__": "update", "interactive": True}
    assert " · stopped · " in bot[-1]["content"]
    assert turns[0]["ok"] is True and turns[0]["reply"].startswith("w0 ")  # what was seen stays
    assert stack.up.wait_disconnect(5)
    assert chat.stop(stack.ctx, None) == "Nothing is running."


def test_stop_before_the_first_token(stack: Stack) -> None:
    stack.up.enqueue(Reply.sse(["late"], delay_s=20))
    thread, outs = consume_in_thread(chat.send(stack.ctx, "hi", [], "m1", "", 0.7, 8))
    stack.up.wait_requests(1)
    t0 = time.monotonic()
    while chat.stop(stack.ctx, None) != gr.skip():  # the run registers right before sending
        assert time.monotonic() - t0 < 5
        time.sleep(0.01)
    thread.join(10)
    assert not thread.is_alive() and time.monotonic() - t0 < 5
    assert outs[-1][3] == "Stopped."


# --------------------------------------------------------------------------- compare


def test_compare_streams_each_model_and_a_failure_stays_in_its_column(stack: Stack) -> None:
    stack.up.enqueue(usage_stream(["A", "B"], delay=0.05), usage_stream(["C", "D"], delay=0.05))
    outs, final = last(compare.run(stack.ctx, "Compare!", ["m1", "m2", "broken"], "sys", 0.1, 8))
    slots, status = final[:-1], final[-1]
    assert status == "Done; failed: broken."
    n = compare.SLOT
    cols = [slots[i : i + n] for i in range(0, len(slots), n)]
    assert [c[0]["visible"] for c in cols] == [True, True, True, False, False, False]
    assert [c[1] for c in cols[:3]] == ["### m1", "### m2", "### broken"]
    assert sorted([cols[0][3], cols[1][3]]) == ["AB", "CD"]  # who answered first is up to the threads
    for c in cols[:2]:
        # first token, total, tokens/s: one table row, right under the heading of every column
        head, rule, figures = c[2].splitlines()
        assert head == "| first token | total | tokens/s |" and rule == "|---|---|---|"
        first_token, total, rate = (cell.strip() for cell in figures.strip("|").split("|"))
        assert first_token.endswith(" s") and total.endswith(" s") and float(rate) > 0
        assert c[4].startswith(f"{c[1][4:]} → up/{c[1][4:]} · first token ")
        assert " · 7 → 3 tokens · " in c[4]
    assert cols[2][3].startswith("⚠ ") and "'broken'" in cols[2][3]
    assert cols[2][4].startswith("failed after ")
    assert cols[2][2].splitlines()[2].endswith("| \u2013 |")  # no rate for a failure
    first = outs[0]
    assert first[-1] == "Sent to 3 models…"  # the columns show up at once, before any token
    assert [first[i * n]["visible"] for i in range(4)] == [True, True, True, False]
    assert len(stack.up.requests) == 2
    assert {r.json["model"] for r in stack.up.requests} == {"m1", "m2"}
    assert all(r.json["messages"][0] == {"role": "system", "content": "sys"} for r in stack.up.requests)


@pytest.mark.parametrize(
    ("models", "prompt", "problem"),
    [
        (["m1"], "hi", "Choose at least two models to compare."),
        (["m1", "m1", " "], "hi", "Choose at least two models to compare."),
        ([f"m{i}" for i in range(7)], "hi", "Choose at most 6 models (you chose 7)."),
        (["m1", "m2"], "  ", "Type a prompt first."),
    ],
)
def test_compare_says_what_is_wrong_with_the_choice(
    stack: Stack, models: list[str], prompt: str, problem: str
) -> None:
    (out,) = compare.run(stack.ctx, prompt, models, "", 0.7, 8)
    assert out[-1] == problem
    assert not any(c["visible"] for c in out[: -1 : compare.SLOT])


def test_compare_stop_stops_every_column(stack: Stack) -> None:
    slow = [f"t{i} " for i in range(40)]
    stack.up.enqueue(Reply.sse(slow, chunk_delay_s=0.25), Reply.sse(slow, chunk_delay_s=0.25))
    thread, outs = consume_in_thread(compare.run(stack.ctx, "go", ["m1", "m2"], "", 0.7, 64))
    stack.up.wait_requests(2)
    deadline = time.monotonic() + 10
    while compare.stop(stack.ctx, None) != gr.skip():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    thread.join(10)
    assert not thread.is_alive()
    assert outs[-1][-1] == "Stopped."
    assert compare.stop(stack.ctx, None) == "Nothing is running."


# --------------------------------------------------------------------------- analytics, history, health


def traffic(stack: Stack) -> None:
    stack.up.enqueue(usage_stream(["ok"]), usage_stream(["ok"]), usage_stream(["ok"]))
    for model in ("m1", "m1", "m2", "broken", "nope", "nada"):
        last(chat.send(stack.ctx, "hi", [], model, "", 0.7, 8))
    stack.flush()


def test_analytics_draws_from_the_request_log(stack: Stack) -> None:
    traffic(stack)
    summary, box, *figs, table, dropdown, keys = analytics.refresh(stack.ctx, "1h", analytics.ALL_MODELS)
    assert summary.startswith("**") and " requests** (last hour) · errors " in summary
    assert box == {"__type__": "update", "visible": True}
    assert len(figs) == len(analytics.PLOTS) and all(isinstance(f, Figure) for f in figs)
    assert table.startswith("| model | requests | errors |")
    assert "| m1 |" in table and "| broken |" in table
    # names the gateway does not route (404s) are not models: one "(unknown)" row, counted in the summary
    assert "| nope |" not in table and "| nada |" not in table
    assert "| (unknown, 2 names) |" in table
    assert " for 2 unknown model names (404), shown as (unknown)" in summary
    assert dropdown["choices"][0] == analytics.ALL_MODELS and dropdown["value"] == analytics.ALL_MODELS
    assert {"m1", "m2", "broken"} <= set(dropdown["choices"])
    assert not {"nope", "nada"} & set(dropdown["choices"])
    assert keys["choices"] == [analytics.ALL_KEYS]  # no client keys on this gateway
    only, _, *_, only_table, only_dd, _ = analytics.refresh(stack.ctx, "15m", "m2")
    assert "(last 15 minutes, m2)" in only
    assert "| m2 |" in only_table and "| m1 |" not in only_table
    assert only_dd["value"] == "m2" and {"m1", "m2"} <= set(only_dd["choices"])
    none, *_ = analytics.refresh(stack.ctx, "1h", "never-used")
    assert none == "No requests in this range (last hour, never-used)."


def test_history_searches_and_opens_a_trace(stack: Stack) -> None:
    traffic(stack)
    rows, note, ids, keys = history.search(stack.ctx, "", None, "any", "24h")
    assert len(rows) == len(ids) and len(rows) >= 4 and keys == []
    assert note.endswith("Click a row to see its trace (with the whole error).")
    assert rows[0][1] == "…" + ids[0][-12:]
    rows, note, ids, _ = history.search(stack.ctx, "broken", None, "error", "1h")
    assert rows and all(r[2] == "broken" for r in rows)
    assert note.startswith(f"{len(rows)} request")
    assert history.search(stack.ctx, ids[0], None, "any", "1h")[2] == [ids[0]]
    assert history.search(stack.ctx, "", "m2", "ok", "1h")[0][0][2] == "m2"
    trace = history.open_trace(stack.ctx, ids[0])
    assert trace.startswith(f"### Request `{ids[0]}` · failed (")
    assert "**Route decision**: matched by *exact*" in trace
    assert "| # | target | route | status | first byte ms | duration ms | result |" in trace
    assert "dead/m0" in trace
    assert "**Request body**" in trace and '"model":"broken"' in trace.replace(" ", "")
    ok_id = history.search(stack.ctx, "", "m1", "ok", "1h")[2][0]
    ok_trace = history.open_trace(stack.ctx, ok_id)
    assert "· ok (200)" in ok_trace and "**Answered by**: up/m1" in ok_trace
    assert history.open_trace(stack.ctx, "zzzzzzzz") == (
        "No request with id 'zzzzzzzz' in the request log (a unique prefix of 6+ characters works)."
    )
    assert history.open_trace(stack.ctx, " ") == "Type a request id (or click a row above)."


def test_health_shows_provider_states_and_the_last_error(stack: Stack) -> None:
    line, table = health.refresh(stack.ctx)
    assert line.startswith("Gateway **degraded**: 1 of 2 providers healthy · ")
    assert "| **up** | openai_compatible | healthy |" in table
    dead = next(r for r in table.splitlines() if r.startswith("| **dead** |"))
    assert "**unhealthy**" in dead and "cannot connect" in dead


# --------------------------------------------------------------------------- nothing there


def test_everything_says_so_when_the_gateway_is_down(tmp_path: Path) -> None:
    ctx = UIContext(dead_url(), tmp_path / "none.db")
    try:
        line, *rest = refresh_models(ctx, None, None)
        assert rest == [gr.skip()] * 3
        assert line.startswith("⚠ **down**: The gateway at http://127.0.0.1:") and line.endswith(
            DOWN_SENTENCE
        )
        _, (bot, _, _, status, *_) = last(chat.send(ctx, "hi", [], "m1", "", 0.7, 8))
        assert status.endswith(DOWN_SENTENCE) and "⚠ The gateway at" in bot[-1]["content"]
        _, final = last(compare.run(ctx, "hi", ["a", "b"], "", 0.7, 8))
        assert final[-1] == "Done; failed: a, b."
        assert health.refresh(ctx) == (f"⚠ The gateway at {ctx.gateway.url} {DOWN_SENTENCE}", "")
        summary, box, *_ = analytics.refresh(ctx, "1h", None)
        assert summary.startswith(f"⚠ No request log yet: no request log at {tmp_path / 'none.db'}")
        assert box == {"__type__": "update", "visible": False}  # one sentence, no empty boxes
        assert history.open_trace(ctx, "abcdef").startswith("⚠ No request log yet")
    finally:
        ctx.close()


def test_a_health_report_that_is_not_one(stack: Stack) -> None:
    """Pointed at something that is not a gateway (here: an upstream), the UI says so."""
    ctx = UIContext(stack.up.base_url, None)
    try:
        line, table = health.refresh(ctx)
        assert line.startswith(f"⚠ {stack.up.base_url}/health answered 200 without a health report")
        assert table == ""
        summary, box, *_ = analytics.refresh(ctx, "1h", None)
        assert summary == f"⚠ {LOG_OFF}" and box == {"__type__": "update", "visible": False}
        assert LOG_OFF.startswith("The request log is off, so there is nothing to show: run the gateway")
    finally:
        ctx.close()


def test_with_keys_on_the_ui_uses_the_key_from_the_environment(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth.mode keys: the UI sends $AIB_API_KEY (else $AIB_ADMIN_KEY) for models and chat and
    $AIB_ADMIN_KEY for /health; without them the header says the gateway refused."""
    monkeypatch.setenv("AIB_ADMIN_KEY", "admin-secret-for-the-ui-test")
    monkeypatch.delenv("AIB_API_KEY", raising=False)
    providers = f"""
        providers:
          up: {{type: openai_compatible, base_url: "{stack.up.base_url}", models: [m1]}}
          dead: {{type: openai_compatible, base_url: "{dead_url()}", models: [m0]}}
    """
    mappings = "auth: {mode: keys}\nmodels:\n  m1: {provider: up}\n  broken: {provider: dead, upstream: m0}\n"
    plan = plan_from_yaml(tmp_path / "config", providers, mappings)
    with running_gateway(plan, gateway_settings(health_checks=True)) as rg:
        rg.wait_first_probe()
        ctx = UIContext(rg.base_url, None)
        try:
            line, chat_dd, *_ = refresh_models(ctx, None, None)
            assert ("broken (⚠ dead is unhealthy)", "broken") in chat_dd[
                "choices"
            ]  # /health read with the admin key
            assert line == f"Gateway {rg.base_url} · **up** · 2 models · ⚠ provider down for broken"
            stack.up.enqueue(Reply.sse(["keyed"]))
            _, (bot, _, _, state, *_) = last(chat.send(ctx, "hi", [], "m1", "", 0.7, 8))
            assert state == "Done." and bot[-1]["content"].startswith("keyed")
            assert health.refresh(ctx)[0].startswith("Gateway **degraded**: 1 of 2 providers healthy")
        finally:
            ctx.close()
        monkeypatch.delenv("AIB_ADMIN_KEY")
        monkeypatch.setenv("AIB_API_KEY", "not-a-key")
        ctx = UIContext(rg.base_url, None)
        try:
            line, *_ = refresh_models(ctx, None, None)
            assert line.startswith("⚠ **down**: ") and "(401)" in line, line
        finally:
            ctx.close()
