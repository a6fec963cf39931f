"""The response cache behind the front doors: it works on the internal (OpenAI-shaped) request and
answer, so a hit through the Anthropic door is re-encoded by the door (the official anthropic client
reads it, streamed or whole); an answer an upstream gave in the door's own API (a same-API
pass-through) is never stored, since a hit is replayed in the OpenAI shape."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest

from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)

pytestmark = pytest.mark.integration

RESPONSE = {
    "id": "resp_up", "object": "response", "created_at": 1700000000, "status": "completed", "model": "gpt-up",
    "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": "From the upstream.", "annotations": []}]}],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15},
}  # fmt: skip


@pytest.fixture(scope="module")
def ups() -> Iterator[tuple[ScriptedUpstream, ScriptedUpstream]]:
    with ScriptedUpstream(["gpt-up"]) as responses_api, ScriptedUpstream(["chat-only"]) as chat:
        yield responses_api, chat


@pytest.fixture(scope="module")
def gw(
    ups: tuple[ScriptedUpstream, ScriptedUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    responses_api, chat = ups
    providers = f"""
        providers:
          oai: {{type: openai, base_url: {responses_api.base_url}, models: [gpt-up], health: {{enabled: false}}}}
          chat: {{type: openai_compatible, base_url: {chat.base_url}, models: [chat-only], health: {{enabled: false}}}}
    """
    mappings = """
        defaults:
          cache: {enabled: true, when: always}
        models:
          smart: {provider: oai, upstream: gpt-up}
          plain: {provider: chat, upstream: chat-only}
    """
    with running_gateway(
        plan_from_yaml(tmp_path_factory.mktemp("cache-doors"), providers, mappings), gateway_settings()
    ) as g:
        yield g


def test_a_hit_through_the_anthropic_door_is_an_anthropic_message(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream]
) -> None:
    _, chat = ups
    chat.clear()
    chat.enqueue(Reply.chat("Bonjour from the cache."))
    client = anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0)
    try:
        _anthropic_hit(gw, chat, client)
    finally:
        client.close()


def _anthropic_hit(gw: RunningGateway, chat: ScriptedUpstream, client: anthropic.Anthropic) -> None:
    ask = {"model": "plain", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello."}]}
    first = client.messages.with_raw_response.create(**ask)  # type: ignore[arg-type]
    assert first.headers["x-aib-cache"] == "miss"
    second = client.messages.with_raw_response.create(**ask)  # type: ignore[arg-type]
    assert second.headers["x-aib-cache"] == "hit"
    message = second.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].text == "Bonjour from the cache."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    with client.messages.stream(**ask) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Bonjour from the cache." and final.stop_reason == "end_turn"
    assert len(chat.requests) == 1  # the hits never reached the upstream
    records = [r for r in gw.observer.records if r.door == "anthropic"]
    assert [r.cache for r in records[-3:]] == ["miss", "hit", "hit"]


def test_an_answer_passed_through_in_the_doors_own_api_is_not_stored(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream]
) -> None:
    responses_api, _ = ups
    responses_api.clear()
    responses_api.enqueue(Reply.json(RESPONSE), Reply.json(RESPONSE))
    body = {"model": "smart", "input": "hi"}
    answers = [httpx.post(f"{gw.base_url}/v1/responses", json=body, timeout=10) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-aib-cache"] for a in answers] == ["miss", "miss"]
    assert all(a.json()["id"] == "resp_up" for a in answers)  # the upstream's own Response, both times
    assert len(responses_api.requests) == 2
