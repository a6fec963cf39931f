"""Anthropic's Messages API out (``type: anthropic``, ``api: native``, the default), against the contract
fake, on the gateway's own HTTP client (no LiteLLM): OpenAI clients get OpenAI answers, streams and
errors; the Anthropic door in front of an Anthropic upstream passes requests through as sent (system
blocks with cache_control, anthropic-beta), including a tool-use loop of several turns with the
official ``anthropic`` SDK."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest
from openai import OpenAI

from aib.devtools.fake_anthropic import FakeAnthropic
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_data,
)
from openai_support import sdk_client

pytestmark = pytest.mark.contract
KEY = "sk-ant-contract"
WEATHER = {"name": "get_weather", "description": "Weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(keys={KEY}, models=["claude-x"]).serve_in_thread() as f:
        yield f


@pytest.fixture(scope="module")
def gw(fake: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with anthropic_gateway(fake, tmp_path_factory.mktemp("out-anthropic")) as g:
        yield g


@contextlib.contextmanager
def anthropic_gateway(fake: FakeAnthropic, where: Path) -> Iterator[RunningGateway]:
    with pytest.MonkeyPatch.context() as mp, ScriptedUpstream(["m"]) as scripted:
        mp.setenv("AIB_TEST_ANTHROPIC_KEY", KEY)
        providers = f"""
            providers:
              claude:
                type: anthropic
                base_url: {fake.base_url}
                api_key_env: AIB_TEST_ANTHROPIC_KEY
                max_tokens: 300
                models: [claude-x, claude-gone]
                health: {{enabled: false}}
              scripted:
                type: openai_compatible
                base_url: {scripted.base_url}
                models: [m]
        """
        mappings = """
            models:
              claude: {provider: claude, upstream: claude-x}
              gone: {provider: claude, upstream: claude-gone}
              elsewhere: {provider: scripted, upstream: m}
        """
        plan = plan_from_yaml(where, providers, mappings)
        with running_gateway(plan, gateway_settings()) as g:
            yield g


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[OpenAI]:
    with sdk_client(gw.base_url) as c:
        yield c


@pytest.fixture
def ac(gw: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.base_url, api_key="client-key", max_retries=0) as c:
        yield c


def test_openai_chat_reaches_the_messages_api(
    gw: RunningGateway, fake: FakeAnthropic, client: OpenAI
) -> None:
    r = client.chat.completions.create(
        model="claude",
        messages=[{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}],
        stop=["zz"],
    )
    assert r.choices[0].message.content == "Hello from fake Anthropic (claude-x)."
    assert r.choices[0].finish_reason == "stop" and r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 5)
    seen = fake.messages_to()[-1]
    assert seen.headers["x-api-key"] == KEY and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers  # the Messages API takes the key as x-api-key only
    assert seen.body == {"model": "claude-x", "max_tokens": 300, "messages": [{"role": "user", "content": "hi there"}], "system": "be kind", "stop_sequences": ["zz"]}  # fmt: skip
    rec = gw.observer.records[-1]
    assert (rec.provider, rec.prompt_tokens, rec.completion_tokens) == ("claude", 4, 5)


def test_openai_stream_from_anthropic_events(fake: FakeAnthropic, client: OpenAI) -> None:
    parts = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == "Hello from fake"
    assert [p.choices[0].finish_reason for p in parts if p.choices and p.choices[0].finish_reason] == [
        "length"
    ]
    usage = [p.usage for p in parts if p.usage]
    assert usage and (usage[-1].prompt_tokens, usage[-1].completion_tokens) == (1, 3)
    assert fake.messages_to()[-1].body["stream"] is True


def test_a_tool_loop_from_an_openai_client(fake: FakeAnthropic, client: OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    fake.enqueue_content(
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "name": "get_weather", "input": {"city": "Oslo"}},
    )
    messages: list[dict[str, object]] = [{"role": "user", "content": "weather in Oslo?"}]
    r = client.chat.completions.create(model="claude", messages=messages, tools=tools)  # type: ignore[arg-type]
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content == "Checking."
    call = msg.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Oslo"}')  # type: ignore[union-attr]
    messages += [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "-3C"},
    ]
    fake.enqueue_content({"type": "tool_use", "name": "get_weather", "input": {"city": "Bergen"}})
    stream = client.chat.completions.create(model="claude", messages=messages, tools=tools, stream=True)  # type: ignore[arg-type]
    frags = [tc for p in stream if p.choices for tc in (p.choices[0].delta.tool_calls or [])]
    assert (
        frags[0].function.name == "get_weather"
        and "".join(f.function.arguments or "" for f in frags) == '{"city":"Bergen"}'
    )  # type: ignore[union-attr]
    sent = fake.messages_to()[-1].body
    assert sent["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Oslo"},
    }
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-3C"}],
    }
    assert sent["tools"] == [{"name": "get_weather", "input_schema": WEATHER["input_schema"]}]


def test_anthropic_errors_become_openai_errors(tmp_path: Path) -> None:
    """Its own fake and gateway: a 429 opens the breaker for the retry-after it names."""
    with (
        FakeAnthropic(keys={KEY}, models=["claude-x"]).serve_in_thread() as fake,
        anthropic_gateway(fake, tmp_path) as gw,
    ):
        errors_become_openai_errors(gw, fake)


def errors_become_openai_errors(gw: RunningGateway, fake: FakeAnthropic) -> None:
    chat = {"model": "claude", "messages": [{"role": "user", "content": "x"}]}
    fake.break_stream_after(2)
    r = httpx.post(gw.base_url + "/v1/chat/completions", json={**chat, "stream": True})
    last = sse_data(r.text)[-1]
    assert "Overloaded" in last and "stream_interrupted" in last
    r = httpx.post(gw.base_url + "/v1/chat/completions", json={**chat, "model": "gone"})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(gw.base_url + "/v1/chat/completions", json={**chat, "seed": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    r = httpx.post(gw.base_url + "/v1/embeddings", json={"model": "claude", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_endpoint"
    fake.fail_next(529)  # last: the 529 and the 429 open the breaker
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=chat)
    assert r.status_code == 502 and "Overloaded" in r.json()["error"]["message"]
    fake.fail_next(429, retry_after=7)
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=chat)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"


def test_the_anthropic_door_passes_requests_through(
    gw: RunningGateway, fake: FakeAnthropic, ac: anthropic.Anthropic
) -> None:
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    msg = ac.messages.create(model="claude", max_tokens=50, system=system, messages=[{"role": "user", "content": "hi"}], extra_headers={"anthropic-beta": "token-efficient-tools-2025-02-19"})  # type: ignore[arg-type]  # fmt: skip
    assert msg.content[0].text == "Hello from fake Anthropic (claude-x)." and msg.id.startswith("msg_fake")  # type: ignore[union-attr]
    seen = fake.messages_to()[-1]
    assert (
        seen.body["system"] == system and seen.body["model"] == "claude-x"
    )  # blocks kept, cache_control too
    assert (
        seen.headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
        and seen.headers["x-api-key"] == KEY
    )
    rec = gw.observer.records[-1]
    assert (rec.door, rec.prompt_tokens, rec.completion_tokens) == (
        "anthropic",
        4,
        5,
    )  # system + message words
    with ac.messages.stream(model="claude", max_tokens=2, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from" and final.stop_reason == "max_tokens" and final.usage.output_tokens == 2
    rec = gw.observer.wait_for(gw.observer.records[-1].request_id)
    assert (rec.stream, rec.prompt_tokens, rec.completion_tokens) == (True, 1, 2)


def test_a_tool_use_loop_of_several_turns_with_the_anthropic_sdk(
    fake: FakeAnthropic, ac: anthropic.Anthropic
) -> None:
    """Three turns: two tool calls (one streamed), then the answer; the fake checks every tool_use
    gets its tool_result in the next message, as the real API does."""
    fake.enqueue_content({"type": "tool_use", "name": "get_weather", "input": {"city": "Oslo"}})
    fake.enqueue_content(
        {"type": "text", "text": "And Bergen:"},
        {"type": "tool_use", "name": "get_weather", "input": {"city": "Bergen"}},
    )
    fake.enqueue_content({"type": "text", "text": "Oslo -3C, Bergen 4C."})
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Oslo and Bergen?"}]
    first = ac.messages.create(model="claude", max_tokens=100, tools=[WEATHER], messages=messages)  # type: ignore[list-item,arg-type]
    assert first.stop_reason == "tool_use" and first.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]
    messages += [{"role": "assistant", "content": first.content}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[0].id, "content": "-3C"}]}]  # type: ignore[union-attr]  # fmt: skip
    with ac.messages.stream(model="claude", max_tokens=100, tools=[WEATHER], messages=messages) as s:  # type: ignore[list-item,arg-type]
        second = s.get_final_message()
    assert second.stop_reason == "tool_use" and second.content[1].input == {"city": "Bergen"}  # type: ignore[union-attr]
    messages += [{"role": "assistant", "content": second.content}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": second.content[1].id, "content": "4C"}]}]  # type: ignore[union-attr]  # fmt: skip
    third = ac.messages.create(model="claude", max_tokens=100, tools=[WEATHER], messages=messages)  # type: ignore[list-item,arg-type]
    assert third.stop_reason == "end_turn" and third.content[0].text == "Oslo -3C, Bergen 4C."  # type: ignore[union-attr]
    assert len(fake.messages_to()[-1].body["messages"]) == 5


def test_count_tokens_and_untranslatable_requests(gw: RunningGateway, ac: anthropic.Anthropic) -> None:
    counted = ac.messages.count_tokens(
        model="claude", messages=[{"role": "user", "content": "How many tokens is this?"}]
    )
    assert 5 <= counted.input_tokens <= 10  # an estimate: the gateway has no tokenizer
    with pytest.raises(anthropic.NotFoundError) as nf:
        ac.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        ac.messages.create(model="elsewhere", max_tokens=5, messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}])  # type: ignore[list-item]  # fmt: skip
    err = bad.value.body["error"]  # type: ignore[index]
    assert err["type"] == "invalid_request_error" and "messages.0.content.0.type" in err["message"]
