"""The web UI in a real browser: Debian's Chromium (driven by Playwright) on the real Gradio app, in
front of the real gateway and two real llama.cpp servers (SmolLM2-135M).

The gateway runs in-process (``gateway_harness.running_gateway``) with health checks and the SQLite
request log on; the UI runs in-process on a free 127.0.0.1 port (``launch_ui(block=False)``).
Screenshots of every tab are written to ``test-artifacts/webui/`` for people to look at. The page
may only talk to 127.0.0.1: every other request fails the test. Generation is kept short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from aib.devtools.llamacpp import LlamaCppServer, free_port
from aib.observe import install_observability
from aib.observe.install import Observability
from aib.observe.settings import ObserveSettings
from aib.webui import close_ui, create_ui, launch_ui
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


@pytest.fixture
def page(stack: Stack, browser: Browser) -> Iterator[Page]:
    """A fresh page on the UI, models loaded; fails the test if the page reached beyond 127.0.0.1."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside: list[str] = []
    context.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    try:
        p.goto(stack.ui_url)
        expect(p.locator("#gateway-line")).to_contain_text(" · up · 3 models")
        yield p
    finally:
        context.close()
    assert not outside, f"the page requested non-local URLs: {outside}"


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


def test_chat_streams_a_reply_with_its_route_timings_and_tokens(page: Page) -> None:
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
    for i, (model, provider) in enumerate((("smollm-a", "llama_a"), ("smollm-b", "llama_b"))):
        expect(page.locator(f"#compare-head-{i}")).to_have_text(model)
        stats = page.locator(f"#compare-stats-{i}")
        expect(stats).to_contain_text(f"{model} → {provider}/smollm2 · first token ")
        expect(stats).to_contain_text(" · total ")
        expect(stats).to_contain_text(" tok/s")
        assert page.locator(f"#compare-body-{i}").inner_text().strip()
    expect(page.locator("#compare-head-2")).to_have_text("broken")
    expect(page.locator("#compare-body-2")).to_contain_text("⚠ ")
    expect(page.locator("#compare-stats-2")).to_contain_text("failed after ")
    expect(page.locator("#compare-head-3")).to_be_hidden()
    shot(page, "compare")


# --------------------------------------------------------------------------- analytics, history, health


def some_traffic(stack: Stack) -> None:
    client = OpenAI(base_url=stack.rg.base_url + "/v1", api_key="none", max_retries=0, timeout=60)
    try:
        for model in ("smollm-a", "smollm-b", "smollm-a"):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
    finally:
        client.close()
    stack.flush()


def image_width(page: Page, elem_id: str) -> int:
    img = page.locator(f"#{elem_id} img")
    expect(img).to_be_visible()
    return int(img.evaluate("i => i.complete ? i.naturalWidth : 0"))


def test_analytics_shows_plots_after_traffic(stack: Stack, page: Page) -> None:
    some_traffic(stack)
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
    shot(page, "analytics")
    page.locator("#analytics-model input").click()
    page.get_by_role("option", name="smollm-b").click()
    expect(summary).to_contain_text("(last hour, smollm-b)")
    expect(table).not_to_contain_text("smollm-a")


def test_history_lists_requests_and_opens_a_trace(stack: Stack, page: Page) -> None:
    some_traffic(stack)
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history-note")).to_contain_text("Click a row to see its trace.")
    first_id = page.locator("#history-table [data-testid='cell-0-1']")
    rid = first_id.inner_text().strip()
    assert len(rid) >= 16, rid
    first_id.click()
    trace = page.locator("#history-trace")
    expect(trace).to_contain_text(f"Request {rid}")
    expect(trace).to_contain_text("Route decision: matched by exact")
    expect(trace).to_contain_text("Attempts (1, 0 failed before the answer)")
    expect(page.locator("#history-id textarea")).to_have_value(rid)
    page.locator("#history-search textarea").fill("smollm-b")
    page.locator("#history-search textarea").press("Enter")
    expect(page.locator("#history-table [data-testid='cell-0-2']")).to_have_text("smollm-b")
    models = page.locator("#history-table [role='gridcell'][data-col='2']").all_inner_texts()
    assert models and {m.strip() for m in models} == {"smollm-b"}, models
    shot(page, "history")


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


# --------------------------------------------------------------------------- last: it leaves llama.cpp busy


def test_chat_stop_button_ends_a_long_reply(page: Page) -> None:
    set_number(page, "chat-max-tokens", 150)
    page.locator("#chat-input textarea").fill("Write a long story about a lighthouse keeper.")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-status")).to_have_text("Streaming from smollm-a…")
    page.locator("#chat-stop").click()
    expect(page.locator("#chat-status")).to_have_text("Stopped.")
    expect(bot_messages(page).last).to_contain_text(" · stopped · id ")
