"""The web UI in a real browser: Debian's Chromium (driven by Playwright) on the real Gradio app, in
front of the real gateway and two real llama.cpp servers (SmolLM2-135M).

The gateway runs in-process (``gateway_harness.running_gateway``) with health checks and the SQLite
request log on; the UI runs in-process on a free 127.0.0.1 port (``launch_ui(block=False)``).
Screenshots of every tab are written to ``test-artifacts/webui/`` for people to look at. The page
may only talk to 127.0.0.1: every other request fails the test. Generation is kept short.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from aib.devtools.llamacpp import LlamaCppServer, free_port
from aib.observe import install_observability
from aib.observe.install import Observability
from aib.observe.settings import ObserveSettings
from aib.webui import close_ui, create_ui, health, launch_ui
from gateway_harness import RunningGateway, dead_url, gateway_settings, plan_from_yaml, running_gateway

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "webui"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LOCAL = ("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")
WAIT_MS = 60_000  # a generous bound for a 2-core machine shared with other test runs
VIEWPORT = {"width": 1400, "height": 900}
MAPPINGS = """
    defaults:
      timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
    models:
      smollm-a: {provider: llama_a, upstream: smollm2}
      smollm-b: {provider: llama_b, upstream: smollm2}
      broken: {provider: dead, upstream: m0}
"""


class Stack:
    def __init__(self, rg: RunningGateway, handle: Observability, ui_url: str) -> None:
        self.rg, self.handle, self.ui_url = rg, handle, ui_url

    def flush(self) -> None:
        assert self.handle.request_log is not None and self.handle.request_log.flush(10)


@pytest.fixture(scope="module")
def stack(llama_servers: list[LlamaCppServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("webui-e2e")
    a, b = llama_servers
    providers = f"""
        providers:
          llama_a: {{type: llamacpp, base_url: "{a.root_url}", models: [smollm2], health: {{interval_s: 60}}}}
          llama_b: {{type: llamacpp, base_url: "{b.root_url}", models: [smollm2], health: {{interval_s: 60}}}}
          dead: {{type: openai_compatible, base_url: "{dead_url()}", models: [m0], health: {{interval_s: 60}}}}
    """
    plan = plan_from_yaml(tmp / "config", providers, MAPPINGS)
    with running_gateway(plan, gateway_settings(health_checks=True)) as rg:
        rg.wait_first_probe()
        settings = ObserveSettings(
            request_log=tmp / "requests.db", flush_interval_s=0.05, access_log=False, metrics=False
        )
        handle = install_observability(rg.gateway, settings)
        demo = create_ui(rg.base_url, tmp / "requests.db")
        try:
            url = launch_ui(demo, free_port(), block=False, quiet=True)
            yield Stack(rg, handle, url)
        finally:
            close_ui(demo)
            handle.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@contextlib.contextmanager
def open_page(browser: Browser, url: str) -> Iterator[Page]:
    """A fresh page at ``url`` (1400 x 900); fails the test if the page reached beyond 127.0.0.1."""
    context = browser.new_context(viewport=VIEWPORT)
    outside: list[str] = []
    context.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    try:
        p.goto(url)
        yield p
    finally:
        context.close()
    assert not outside, f"the page requested non-local URLs: {outside}"


@pytest.fixture
def page(stack: Stack, browser: Browser) -> Iterator[Page]:
    """A fresh page on the UI, models loaded."""
    with open_page(browser, stack.ui_url) as p:
        expect(p.locator("#gateway-line")).to_contain_text(" · up · 3 models")
        yield p


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_number(page: Page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(str(value))
    box.press("Tab")  # Gradio takes a number on blur


def choose(page: Page, elem_id: str, value: str) -> None:
    """Type a value into a (custom-value) dropdown and confirm it with Enter."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    box.press("Enter")


def bot_messages(page: Page) -> Any:
    return page.locator("#chat-box [data-testid='bot']")


def record_texts(page: Page, selector: str) -> None:
    """Keep every text ``selector`` shows, to see a reply grow (window.__texts)."""
    page.evaluate(
        """sel => { window.__texts = [];
            new MutationObserver(() => { const els = document.querySelectorAll(sel);
                if (els.length) window.__texts.push(els[els.length - 1].innerText); })
            .observe(document.body, {subtree: true, childList: true, characterData: true}); }""",
        selector,
    )


# --------------------------------------------------------------------------- chat


def test_chat_streams_a_reply_with_its_route_timings_and_tokens(stack: Stack, page: Page) -> None:
    expect(page.locator("#chat-model input")).to_have_value("smollm-a")
    set_number(page, "chat-max-tokens", 24)
    record_texts(page, "#chat-box [data-testid='bot']")
    page.locator("#chat-input textarea").fill("Say hello in three words.")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_have_text("Done.")
    reply = bot_messages(page).last
    expect(reply).to_contain_text("smollm-a → llama_a/smollm2 · first token ")
    expect(reply).to_contain_text(" tok/s · ")
    expect(reply).to_contain_text(" · id ")
    text = reply.inner_text()
    assert " tokens · " in text and "⚠" not in text
    seen: list[str] = page.evaluate("window.__texts")
    assert any("streaming…" in t for t in seen), seen[-5:]  # the reply was drawn while it grew
    answer = text.split("smollm-a →")[0].strip()
    assert answer, text
    # a second turn: the conversation goes on
    page.locator("#chat-input textarea").fill("Now say goodbye.")
    page.locator("#chat-input textarea").press("Enter")
    expect(bot_messages(page)).to_have_count(2)
    expect(page.locator("#chat-status")).to_have_text("Done.")
    shot(page, "chat")
    # the reply's request id opens its trace in History
    rid = bot_messages(page).last.inner_text().rsplit(" id ", 1)[1].strip()
    assert len(rid) == 32, rid
    stack.flush()
    page.locator("#chat-trace").click()
    expect(page.get_by_role("tab", name="History")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#history-id textarea")).to_have_value(rid)
    expect(page.locator("#history-trace")).to_contain_text(f"Request {rid} · ok (200)")
    expect(page.locator("#history-trace")).to_contain_text("Answered by: llama_a/smollm2")
    shot(page, "chat-trace-in-history")


def test_chat_errors_read_as_sentences(page: Page) -> None:
    choose(page, "chat-model", "no-such-model")
    page.locator("#chat-input textarea").fill("hello?")
    page.locator("#chat-send").click()
    status = page.locator("#chat-status")
    expect(status).to_contain_text(
        "Model not found: The model 'no-such-model' is not configured on this gateway."
    )
    expect(bot_messages(page).last).to_contain_text("⚠ Model not found")
    expect(bot_messages(page).last).to_contain_text("no-such-model · failed after ")
    assert "Traceback" not in page.locator("body").inner_text()
    shot(page, "chat-error")


# --------------------------------------------------------------------------- compare


def test_compare_streams_two_models_side_by_side_and_a_failure_stays_in_its_column(page: Page) -> None:
    page.get_by_role("tab", name="Compare").click()
    models = page.locator("#compare-models")
    expect(models).to_contain_text("smollm-a")  # the first two models are chosen already
    expect(models).to_contain_text("smollm-b")
    choose(page, "compare-models", "broken")
    set_number(page, "compare-max-tokens", 16)
    page.locator("#compare-prompt textarea").fill("Name a colour.")
    page.locator("#compare-run").click()
    expect(page.locator("#compare-status")).to_have_text("Done; failed: broken.")
    tops = []
    for i, (model, provider) in enumerate((("smollm-a", "llama_a"), ("smollm-b", "llama_b"))):
        expect(page.locator(f"#compare-head-{i}")).to_have_text(model)
        meta = page.locator(f"#compare-meta-{i}")
        expect(meta).to_contain_text(f"{model} → {provider}/smollm2 · first token ")
        expect(meta).to_contain_text(" · total ")
        expect(meta).to_contain_text(" tok/s")
        assert page.locator(f"#compare-body-{i}").inner_text().strip()
        heads = page.locator(f"#compare-stats-{i} th").all_inner_texts()
        assert [h.strip() for h in heads] == ["first token", "total", "tokens/s"], heads
        cells = page.locator(f"#compare-stats-{i} td")
        first_token, total, rate = (c.strip() for c in cells.all_inner_texts())
        assert first_token.endswith(" s") and total.endswith(" s") and float(rate) > 0, (
            first_token,
            total,
            rate,
        )
        boxes = [cells.nth(j).bounding_box() for j in range(3)]
        assert all(b is not None for b in boxes)
        assert len({round(b["y"]) for b in boxes if b}) == 1  # the three figures on one row
        tops.append(boxes[0]["y"] if boxes[0] else -1)
    assert abs(tops[0] - tops[1]) <= 2, tops  # and that row at the same height in every column
    expect(page.locator("#compare-head-2")).to_have_text("broken")
    expect(page.locator("#compare-body-2")).to_contain_text("⚠ ")
    expect(page.locator("#compare-meta-2")).to_contain_text("failed after ")
    expect(page.locator("#compare-head-3")).to_be_hidden()
    shot(page, "compare")


# --------------------------------------------------------------------------- analytics, history, health


def some_traffic(stack: Stack, unknown: int = 0) -> None:
    """Three short chats, and ``unknown`` requests for names the gateway does not route (404s)."""
    client = OpenAI(base_url=stack.rg.base_url + "/v1", api_key="none", max_retries=0, timeout=60)
    try:
        for i in range(unknown):
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(
                    model=f"no-such-model-{i % 3}", messages=[{"role": "user", "content": "Hi"}]
                )
        for model in ("smollm-a", "smollm-b", "smollm-a"):  # last: the newest rows are chats
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
    finally:
        client.close()
    stack.flush()


TEXT_LINES_JS = """el => {
    const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    const tops = new Set();
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
        if (!n.textContent.trim()) continue;
        const r = document.createRange(); r.selectNodeContents(n);
        for (const q of r.getClientRects()) if (q.width > 0) tops.add(Math.round(q.top));
    }
    return tops.size; }"""
VISIBLE_ROWS_JS = """sel => [...document.querySelectorAll(sel)].filter(tr => {
    const r = tr.getBoundingClientRect();
    if (r.height === 0 || r.top < 0 || r.bottom > window.innerHeight) return false;
    const hit = document.elementFromPoint(r.left + 10, r.top + r.height / 2);
    return hit !== null && tr.contains(hit); }).length"""


def image_width(page: Page, elem_id: str) -> int:
    img = page.locator(f"#{elem_id} img")
    expect(img).to_be_visible()
    return int(img.evaluate("i => i.complete ? i.naturalWidth : 0"))


def test_analytics_shows_plots_after_traffic(stack: Stack, page: Page) -> None:
    some_traffic(stack, unknown=3)
    page.get_by_role("tab", name="Analytics").click()
    summary = page.locator("#analytics-summary")
    expect(summary).to_contain_text(" requests (last hour) · errors ")
    for name in ("requests", "tokens", "latency", "errors", "models", "speed"):
        deadline = time.monotonic() + WAIT_MS / 1000
        while image_width(page, f"plot-{name}") == 0:  # the image is decoded after it is attached
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert image_width(page, f"plot-{name}") >= 600
    table = page.locator("#analytics-table table")
    expect(table).to_contain_text("smollm-a")
    expect(table).to_contain_text("smollm-b")
    expect(table).to_contain_text(re.compile(r"\(unknown, \d+ names\)"))  # 404s: not models
    expect(table).not_to_contain_text("no-such-model")
    expect(summary).to_contain_text("unknown model names (404), shown as (unknown)")
    expect(page.locator("#analytics-key")).to_be_visible()
    shot(page, "analytics")
    page.locator("#analytics-model input").click()
    page.get_by_role("option", name="smollm-b").click()
    expect(summary).to_contain_text("(last hour, smollm-b)")
    expect(table).not_to_contain_text("smollm-a")


def test_history_lists_requests_on_one_line_each_and_opens_a_trace(stack: Stack, page: Page) -> None:
    some_traffic(stack, unknown=12)  # more rows than fit
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history-note")).to_contain_text("Click a row to see its trace")
    expect(page.locator("#history-table [data-testid='cell-13-1']")).to_be_attached()
    headers = page.locator("#history-table thead th")
    assert headers.count() >= 11
    for i in range(headers.count()):  # every header on one line (they used to wrap letter by letter)
        th = headers.nth(i)
        if th.inner_text().strip():
            assert th.evaluate(TEXT_LINES_JS) == 1, th.inner_text()
    errors = page.locator("#history-table [role='gridcell'][data-col='10']")
    error = next(e for e in errors.all() if e.inner_text().strip())  # a 404's error: one line, cut
    assert error.evaluate(TEXT_LINES_JS) == 1 and error.is_visible()
    visible = page.evaluate(VISIBLE_ROWS_JS, "#history-table [role='row']:has([role='gridcell'])")
    assert visible >= 12, f"{visible} rows visible at 1400x900"
    shot(page, "history")
    first_id = page.locator("#history-table [data-testid='cell-0-1']")
    shown = first_id.inner_text().strip()
    assert shown.startswith("…") and len(shown) == 13, shown
    first_id.click()
    wanted = page.locator("#history-id textarea")
    expect(wanted).to_have_value(re.compile(r"^[0-9a-f]{32}$"))  # the whole id, for the trace
    rid = wanted.input_value()
    assert rid.endswith(shown[1:]), (rid, shown)
    trace = page.locator("#history-trace")
    expect(trace).to_contain_text(f"Request {rid}")
    expect(trace).to_contain_text("Route decision: matched by exact")
    expect(trace).to_contain_text("Attempts (1, 0 failed before the answer)")
    page.locator("#history-search textarea").fill("smollm-b")
    page.locator("#history-search textarea").press("Enter")
    expect(page.locator("#history-table [data-testid='cell-0-2']")).to_have_text("smollm-b")
    models = page.locator("#history-table [role='gridcell'][data-col='2']").all_inner_texts()
    assert models and {m.strip() for m in models} == {"smollm-b"}, models
    shot(page, "history-trace")


def test_health_shows_each_provider_and_the_last_error(page: Page) -> None:
    page.get_by_role("tab", name="Health").click()
    summary = page.locator("#health-summary")
    expect(summary).to_contain_text("Gateway degraded: 2 of 3 providers healthy")
    table = page.locator("#health-table table")
    expect(table.locator("tr", has_text="llama_a")).to_contain_text("healthy")
    dead = table.locator("tr", has_text="dead")
    expect(dead).to_contain_text("unhealthy")
    expect(dead).to_contain_text("cannot connect")
    shot(page, "health")


def test_analytics_without_a_request_log_is_one_sentence(stack: Stack, browser: Browser) -> None:
    demo = create_ui(stack.rg.base_url, None)
    try:
        url = launch_ui(demo, free_port(), block=False, quiet=True)
        with open_page(browser, url) as p:
            p.get_by_role("tab", name="Analytics").click()
            summary = p.locator("#analytics-summary")
            expect(summary).to_contain_text(
                "The request log is off, so there is nothing to show: run the gateway without "
                "AIB_REQUEST_LOG=off (it writes var/requests.db by default) and start the UI with "
                "aib ui --db var/requests.db."
            )
            expect(p.locator("#analytics-plots")).to_be_hidden()  # no empty boxes
            assert p.locator("[id^='plot-']:visible").count() == 0
            assert p.locator("#analytics-table:visible").count() == 0
            shot(p, "analytics-no-log")
    finally:
        close_ui(demo)


def test_the_header_follows_the_gateway_down_and_back_up(
    llama_servers: list[LlamaCppServer], browser: Browser, tmp_path: Path
) -> None:
    """The header line is refreshed by the page's timer (every 10 s): it says "down" once the gateway
    stops and "up" again once it is back on the same address, with no click."""
    a, _ = llama_servers
    providers = f"""
        providers:
          llama_a: {{type: llamacpp, base_url: "{a.root_url}", models: [smollm2]}}
    """
    plan = plan_from_yaml(
        tmp_path / "config", providers, "models: {smollm-a: {provider: llama_a, upstream: smollm2}}"
    )
    port = free_port()
    demo = create_ui(f"http://127.0.0.1:{port}", None)
    try:
        url = launch_ui(demo, free_port(), block=False, quiet=True)
        first = running_gateway(plan, gateway_settings(), port=port)
        first.__enter__()
        try:
            with open_page(browser, url) as p:
                line = p.locator("#gateway-line")
                expect(line).to_contain_text(" · up · 1 model")
                first.__exit__(None, None, None)
                first = None
                t0 = time.monotonic()
                expect(line).to_contain_text("down: The gateway at http://127.0.0.1:")
                down_after = time.monotonic() - t0
                shot(p, "header-down")
                with running_gateway(plan, gateway_settings(), port=port):
                    t0 = time.monotonic()
                    expect(line).to_contain_text(" · up · 1 model")
                    up_after = time.monotonic() - t0
                    shot(p, "header-up")
        finally:
            if first is not None:
                first.__exit__(None, None, None)
    finally:
        close_ui(demo)
    print(f"header: down after {down_after:.1f} s, up after {up_after:.1f} s")
    assert down_after <= 2 * health.AUTO_REFRESH_S + 5 and up_after <= 2 * health.AUTO_REFRESH_S + 5


# --------------------------------------------------------------------------- last: they leave llama.cpp busy


def test_chat_keeps_what_is_typed_while_a_reply_streams_and_send_waits_for_it(page: Page) -> None:
    box, send = page.locator("#chat-input textarea"), page.locator("#chat-send")
    status = page.locator("#chat-status")
    expect(send).to_be_enabled()
    set_number(page, "chat-max-tokens", 400)
    box.fill("Write a long story about a lighthouse keeper.")
    send.click()
    expect(status).to_have_text("Streaming from smollm-a…")
    expect(send).to_be_disabled()
    record_texts(page, "#chat-box [data-testid='bot']")
    box.fill("my next question")  # typed while the reply streams
    # the reply goes on growing (it used to clear the box at every update) and the draft stays
    page.wait_for_function("window.__texts.length >= 10", timeout=WAIT_MS)
    expect(box).to_have_value("my next question")
    expect(send).to_be_disabled()
    # Enter while the reply streams neither sends nor stops it: the draft stays, the reply goes on
    seen = page.evaluate("window.__texts.length")
    box.press("Enter")
    page.wait_for_function(f"window.__texts.length >= {seen + 10}", timeout=WAIT_MS)
    expect(box).to_have_value("my next question")
    expect(page.locator("#chat-box [data-testid='user']")).to_have_count(1)
    shot(page, "chat-typing-while-streaming")
    page.locator("#chat-stop").click()
    expect(status).to_have_text("Stopped.")
    expect(send).to_be_enabled()  # back when the reply ends
    expect(box).to_have_value("my next question")
    # the draft is sent like any message (to the other server: llama_a may still be winding down)
    choose(page, "chat-model", "smollm-b")
    set_number(page, "chat-max-tokens", 8)
    send.click()
    expect(page.locator("#chat-box [data-testid='user']")).to_have_count(2)
    expect(page.locator("#chat-box [data-testid='user']").last).to_have_text("my next question")
    expect(box).to_have_value("")
    expect(status).to_have_text("Done.")
    expect(send).to_be_enabled()


def test_chat_stop_button_ends_a_long_reply(page: Page) -> None:
    set_number(page, "chat-max-tokens", 150)
    page.locator("#chat-input textarea").fill("Write a long story about a lighthouse keeper.")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_have_text("Streaming from smollm-a…")
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-status")).to_have_text("Stopped.")
    expect(bot_messages(page).last).to_contain_text(" · stopped · id ")
