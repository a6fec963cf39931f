"""The LiteLLM SDK adapter end to end: the official ``openai`` client -> the gateway -> the adapter process
(the real LiteLLM SDK, ``.venv-litellm``) -> a fake of Anthropic's Messages API that follows Anthropic's
documentation (``aib.devtools.fake_anthropic``).

One gateway and one adapter serve the whole module (LiteLLM takes ~5 s to load): six ``litellm_sdk``
providers share the adapter, each with its own fake upstream or key. Checked: chat and streaming with
usage tokens, what reaches Anthropic (``/v1/messages``, ``x-api-key``, ``anthropic-version``, the
Messages body), an upstream 429 falling back to another deployment, 529 overloaded, a 401 passed to the
client as an authentication error, an unset key reported by ``/health``, and that the keys appear in
no log, no request record, ``/health`` or ``/metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from aib.config.litellm_sdk import TOKEN_ENV
from aib.devtools.fake_anthropic import FakeAnthropic
from aib.devtools.llamacpp import free_port, pid_alive
from aib.engines.sdk_sidecar import SdkAdapters, install_sdk_adapter
from aib.gateway.app import Gateway
from aib.observe import Observability, install_observability
from aib.observe.settings import ObserveSettings
from gateway_harness import RunningGateway, gateway_settings, running_gateway, wait_until, write_config
from sdk_support import require_adapter_python, sdk_provider

pytestmark = pytest.mark.contract

KEY_A = "sk-ant-api03-AAAAsecretAAAA-0123456789"
KEY_B = "sk-ant-api03-BBBBsecretBBBB-0123456789"
KEY_WRONG = "sk-ant-api03-WRONGsecretWRONG-0123456789"
MODEL = "claude-3-5-haiku-latest"
SECRETS = (KEY_A, KEY_B, KEY_WRONG, "AAAAsecret", "BBBBsecret", "WRONGsecret")


@dataclass
class Stack:
    gw: RunningGateway
    adapters: SdkAdapters
    a: FakeAnthropic
    b: FakeAnthropic
    log_path: Path
    client: openai.OpenAI
    observe: Observability
    request_db: Path


def providers_yaml(adapter: str, a: FakeAnthropic, b: FakeAnthropic) -> str:
    return f"""
        providers:
          claude-a: {sdk_provider(adapter, a.base_url, "AIB_TEST_ANTHROPIC_A")}
          claude-b: {sdk_provider(adapter, b.base_url, "AIB_TEST_ANTHROPIC_B")}
          claude-limited: {sdk_provider(adapter, a.base_url, "AIB_TEST_ANTHROPIC_A")}
          claude-wrong: {sdk_provider(adapter, a.base_url, "AIB_TEST_ANTHROPIC_WRONG")}
          claude-nokey: {sdk_provider(adapter, a.base_url, "AIB_TEST_ANTHROPIC_UNSET")}
          claude-typo: {sdk_provider(adapter, a.base_url, "AIB_TEST_ANTHROPIC_A", litellm_model="'antropic/{model}'")}
    """


MAPPINGS = f"""
    defaults:
      timeouts: {{first_byte_s: 60, total_s: 120}}
    models:
      claude: {{provider: claude-a, upstream: {MODEL}}}
      claude-backup: {{provider: claude-b, upstream: {MODEL}}}
      claude-limited: {{provider: claude-limited, upstream: {MODEL}, fallbacks: [claude-backup]}}
      claude-wrong: {{provider: claude-wrong, upstream: {MODEL}}}
      claude-nokey: {{provider: claude-nokey, upstream: {MODEL}}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    python = require_adapter_python()
    tmp = tmp_path_factory.mktemp("sdk-adapter")
    log_path = tmp / "adapter.log"
    adapter = f"http://127.0.0.1:{free_port()}"
    with (
        pytest.MonkeyPatch.context() as mp,
        FakeAnthropic(keys={KEY_A}).serve_in_thread() as a,
        FakeAnthropic(keys={KEY_B}).serve_in_thread() as b,
    ):
        mp.setenv("AIB_TEST_ANTHROPIC_A", KEY_A)
        mp.setenv("AIB_TEST_ANTHROPIC_B", KEY_B)
        mp.setenv("AIB_TEST_ANTHROPIC_WRONG", KEY_WRONG)
        mp.delenv("AIB_TEST_ANTHROPIC_UNSET", raising=False)
        mp.delenv(TOKEN_ENV, raising=False)  # install_sdk_adapter sets it; undone with the module
        cdir = write_config(tmp / "config", providers_yaml(adapter, a, b), MAPPINGS)
        holder: dict[str, object] = {}
        request_db = tmp / "requests.db"
        observe = ObserveSettings(request_log=request_db, writer="thread", log_bodies=True)

        def setup(gw: Gateway) -> None:
            holder["observe"] = install_observability(gw, observe)
            holder["adapters"] = install_sdk_adapter(gw, python=python, log_path=log_path)

        settings = gateway_settings(health_checks=True)
        with running_gateway(cdir, settings, setup=setup) as gw:
            adapters = holder["adapters"]
            assert isinstance(adapters, SdkAdapters)
            assert adapters.procs, "no adapter was started for the litellm_sdk providers"
            (proc,) = adapters.procs.values()
            wait_until(proc.ready.is_set, 90, 0.1, "the adapter to load LiteLLM")
            wait_until(lambda: _status(gw, "claude-a") == "healthy", 15, 0.1, "claude-a to be probed healthy")
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
            handle = holder["observe"]
            assert isinstance(handle, Observability)
            yield Stack(gw, adapters, a, b, log_path, client, handle, request_db)
            pid = proc.pid
        assert pid is not None
        wait_until(lambda: not pid_alive(pid), 15, 0.1, "the adapter to stop with the gateway")


def _health(gw: RunningGateway) -> dict[str, object]:
    return httpx.get(gw.base_url + "/health", timeout=10).json()  # type: ignore[no-any-return]


def _status(gw: RunningGateway, provider: str) -> str:
    return str(_health(gw)["providers"][provider]["status"])  # type: ignore[index]


def test_chat_through_the_sdk_reaches_anthropic_messages_api(stack: Stack) -> None:
    before = len(stack.a.messages_to())
    resp = stack.client.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        max_tokens=50,
        temperature=0.5,
    )
    chat = resp.parse()
    assert chat.choices[0].message.content == f"Hello from fake Anthropic ({MODEL})."
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (4, 5)  # words in, words out
    assert chat.model == MODEL
    assert resp.headers["x-aib-provider"] == "claude-a"
    seen = stack.a.messages_to()[before:]
    assert len(seen) == 1
    req = seen[0]
    assert req.headers["x-api-key"] == KEY_A
    assert req.headers["anthropic-version"]
    assert req.body["model"] == MODEL
    assert req.body["max_tokens"] == 50
    assert req.body["temperature"] == 0.5
    assert req.body["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    assert [m["role"] for m in req.body["messages"]] == ["user"]
    record = stack.gw.observer.wait_for(resp.headers["x-request-id"])
    assert (record.prompt_tokens, record.completion_tokens) == (4, 5)


def test_streaming_passes_sdk_chunks_as_sse_with_usage(stack: Stack) -> None:
    stream = stack.client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == f"Hello from fake Anthropic ({MODEL})."
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 5)
    assert stack.a.messages_to()[-1].body["stream"] is True


def test_raw_stream_is_openai_sse_ending_with_done_and_usage_is_recorded(stack: Stack) -> None:
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    with httpx.stream("POST", stack.gw.base_url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        text = resp.read().decode()
        rid = resp.headers["x-request-id"]
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert '"usage"' not in text  # the client did not ask for usage: the gateway hides it
    record = stack.gw.observer.wait_for(rid)
    assert (record.prompt_tokens, record.completion_tokens) == (1, 3)  # max_tokens cut the reply at 3


def test_text_completions_go_through_the_sdk_too(stack: Stack) -> None:
    done = stack.client.completions.create(model="claude", prompt="Say hello", max_tokens=20)
    assert done.choices[0].text == f"Hello from fake Anthropic ({MODEL})."
    assert done.usage is not None and done.usage.completion_tokens == 5
    req = stack.a.messages_to()[-1]
    assert req.body["messages"][0]["role"] == "user" and req.body["max_tokens"] == 20


def test_upstream_429_falls_back_to_another_deployment(stack: Stack) -> None:
    stack.a.fail_next(429, retry_after=1)
    before_b = len(stack.b.messages_to())
    resp = stack.client.chat.completions.with_raw_response.create(
        model="claude-limited", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    assert resp.parse().choices[0].message.content
    assert resp.headers["x-aib-provider"] == "claude-b"
    assert resp.headers["x-aib-fallbacks"] == "1"
    assert len(stack.b.messages_to()) == before_b + 1
    record = stack.gw.observer.wait_for(resp.headers["x-request-id"])
    assert record.attempts[0].provider == "claude-limited" and record.attempts[0].status == 429
    assert "rate_limit_error" in (record.attempts[0].error or "")


def _breaker_closed(stack: Stack, target: str) -> None:
    """Wait until the deployment's breaker lets requests through again (a Retry-After opened it)."""
    st = stack.gw.gateway.state.targets.get(target)
    if st is not None:
        wait_until(lambda: st.breaker.current(time.monotonic()) != "open", 10, 0.05, f"{target}'s breaker")


def test_overloaded_529_is_a_503_with_retry_after_and_moves_on(stack: Stack) -> None:
    _breaker_closed(stack, f"claude-limited/{MODEL}")
    stack.a.fail_next(529, retry_after=1)
    resp = stack.client.chat.completions.with_raw_response.create(
        model="claude-limited", messages=[{"role": "user", "content": "hi"}], max_tokens=20
    )
    assert resp.headers["x-aib-provider"] == "claude-b"
    record = stack.gw.observer.wait_for(resp.headers["x-request-id"])
    assert record.attempts[0].status == 503
    assert "overloaded" in (record.attempts[0].error or "").lower()


def test_upstream_401_reaches_the_client_as_an_authentication_error(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        stack.client.chat.completions.create(
            model="claude-wrong", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    assert info.value.status_code == 401
    err = info.value.body
    assert isinstance(err, dict) and err["type"] == "authentication_error"
    assert "invalid x-api-key" in err["message"]
    assert stack.a.messages_to()[-1].headers["x-api-key"] == KEY_WRONG


def test_a_model_anthropic_does_not_have_is_a_404(stack: Stack) -> None:
    stack.a.models.remove(MODEL)
    try:
        with pytest.raises(openai.NotFoundError) as info:
            stack.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    finally:
        stack.a.models.append(MODEL)
    assert f"not_found_error: model: {MODEL}" in str(info.value)


def test_unset_key_shows_the_provider_down_with_the_variable_named(stack: Stack) -> None:
    stack.gw.probe_now()
    nokey = _health(stack.gw)["providers"]["claude-nokey"]  # type: ignore[index]
    assert nokey["status"] == "unhealthy"
    assert "AIB_TEST_ANTHROPIC_UNSET is not set" in nokey["last_error"]
    typo = _health(stack.gw)["providers"]["claude-typo"]  # type: ignore[index]
    assert typo["status"] == "unhealthy"
    assert "LiteLLM does not know the provider of 'antropic/claude-3-5-haiku-latest'" in typo["last_error"]
    for name in ("claude-a", "claude-b"):
        assert _status(stack.gw, name) == "healthy"


def test_adapter_status_route_names_the_process(stack: Stack) -> None:
    body = httpx.get(stack.gw.base_url + "/admin/sdk-adapter", timeout=10).json()
    assert body["installed"] is True and body["litellm_version"]
    (adapter,) = body["adapters"]
    assert adapter["ready"] is True and adapter["pid"] > 0
    assert set(adapter["providers"]) == {
        "claude-a",
        "claude-b",
        "claude-limited",
        "claude-wrong",
        "claude-nokey",
        "claude-typo",
    }


def test_keys_never_appear_in_logs_records_health_or_metrics(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack.a.fail_next(500, message=f"upstream echoed the key {KEY_A} (a broken upstream)")
    with pytest.raises(openai.InternalServerError) as info:  # no fallback for `claude`: a 502
        stack.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert "upstream echoed the key" in str(info.value) and KEY_A not in str(info.value)
    with pytest.raises(openai.AuthenticationError):
        stack.client.chat.completions.create(
            model="claude-wrong", messages=[{"role": "user", "content": "x"}]
        )
    stack.gw.probe_now()
    assert stack.observe.request_log is not None and stack.observe.request_log.flush()
    texts = {
        "adapter log": stack.log_path.read_text(errors="replace"),
        "gateway log": caplog.text,
        "request log": stack.request_db.read_bytes().decode("latin-1"),
        "/health": httpx.get(stack.gw.base_url + "/health", timeout=10).text,
        "/metrics": httpx.get(stack.gw.base_url + "/metrics", timeout=10).text,
        "/admin/sdk-adapter": httpx.get(stack.gw.base_url + "/admin/sdk-adapter", timeout=10).text,
        "records": repr(stack.gw.observer.records),
    }
    assert "upstream echoed the key" in texts["adapter log"]  # the error was logged, the key masked
    for where, text in texts.items():
        for secret in SECRETS:
            assert secret not in text, f"a key shows in the {where}"
