"""Same-API pass-through: a Responses request to a provider with ``responses_api`` goes as the client
sent it (model rewritten) and its answer, streamed or whole, comes back untouched with its usage read;
a fallback from it to a chat-only provider translates. The OpenAI pass-through itself stays byte for
byte. Upstreams are scripted (``ScriptedUpstream``): no server with a Responses API runs here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)
from openai_support import sdk_client

pytestmark = pytest.mark.integration

RESPONSE = {
    "id": "resp_up",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "gpt-up",
    "output": [{"id": "msg_up", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": "From the upstream.", "annotations": []}]}],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15},
}  # fmt: skip


def event(kind: str, **fields: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


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
          breaker: {failure_threshold: 1000, cooldown_s: 1}
        models:
          smart: {provider: oai, upstream: gpt-up, fallbacks: [plain], params: {max_tokens: 50}}
          plain: {provider: chat, upstream: chat-only}
    """
    with running_gateway(
        plan_from_yaml(tmp_path_factory.mktemp("passthrough"), providers, mappings), gateway_settings()
    ) as g:
        yield g


@pytest.fixture
def client(gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream]) -> Iterator[OpenAI]:
    for up in ups:
        up.clear()
    with sdk_client(gw.base_url + "/v1") as c:
        yield c


def test_a_responses_request_goes_as_sent(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream], client: OpenAI
) -> None:
    responses_api, _ = ups
    responses_api.enqueue(Reply.json(RESPONSE))
    r = client.responses.create(model="smart", input="hi", store=True, include=["reasoning.encrypted_content"], tools=[{"type": "web_search"}])  # type: ignore[list-item]  # fmt: skip
    assert (r.id, r.output_text) == ("resp_up", "From the upstream.")  # the upstream's own Response
    seen = responses_api.requests[-1]
    assert seen.path == "/v1/responses"
    assert seen.json == {"model": "gpt-up", "input": "hi", "store": True, "include": ["reasoning.encrypted_content"], "tools": [{"type": "web_search"}], "max_output_tokens": 50}  # fmt: skip
    rec = gw.observer.records[-1]
    assert (rec.door, rec.provider, rec.prompt_tokens, rec.completion_tokens) == ("responses", "oai", 11, 4)


def test_a_responses_stream_passes_event_by_event(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream], client: OpenAI
) -> None:
    responses_api, _ = ups
    events = (
        event("response.created", response={**RESPONSE, "status": "in_progress", "output": [], "usage": None}, sequence_number=0),
        event("response.output_text.delta", item_id="msg_up", output_index=0, content_index=0, delta="From the upstream.", logprobs=[], sequence_number=1),
        event("response.completed", response=RESPONSE, sequence_number=2),
    )  # fmt: skip
    responses_api.enqueue(Reply(content_type="text/event-stream", chunks=events))
    raw = httpx.post(gw.base_url + "/v1/responses", json={"model": "smart", "input": "hi", "stream": True})
    assert raw.status_code == 200 and raw.content == b"".join(events)  # untouched; no [DONE] added
    responses_api.enqueue(Reply(content_type="text/event-stream", chunks=events))
    kinds = [e.type for e in client.responses.create(model="smart", input="hi", stream=True)]
    assert kinds == ["response.created", "response.output_text.delta", "response.completed"]
    rec = gw.observer.wait_for(gw.observer.records[-1].request_id)
    assert (rec.stream, rec.prompt_tokens, rec.completion_tokens) == (True, 11, 4)


def test_a_fallback_to_a_chat_only_provider_translates(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream], client: OpenAI
) -> None:
    responses_api, chat = ups
    responses_api.enqueue(Reply.error(503, "busy"))
    chat.enqueue(Reply.chat("From the chat provider."))
    r = client.responses.create(model="smart", input="hi", instructions="be brief")
    assert r.output_text == "From the chat provider." and r.id.startswith("resp_")
    assert chat.requests[-1].path == "/v1/chat/completions"
    assert chat.requests[-1].json["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]
    responses_api.enqueue(Reply.error(503, "busy"))
    with pytest.raises(openai.BadRequestError, match=r"tools\.0\.type"):  # a hosted tool cannot be translated
        client.responses.create(model="smart", input="hi", tools=[{"type": "web_search"}])  # type: ignore[list-item]


def test_the_openai_pass_through_stays_byte_for_byte(
    gw: RunningGateway, ups: tuple[ScriptedUpstream, ScriptedUpstream], tmp_path: Path
) -> None:
    _, chat = ups
    body = b'{"id":"x","object":"chat.completion","created":1,"model":"chat-only","choices":[{"index":0,"message":{"role":"assistant","content":"exact  bytes"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"extra":{"kept":true}}'
    chat.enqueue(Reply(body=body))
    sent = b'{"model": "plain", "messages": [{"role": "user", "content": "hi"}], "unknown_field": [1, 2]}'
    r = httpx.post(
        gw.base_url + "/v1/chat/completions", content=sent, headers={"content-type": "application/json"}
    )
    assert r.content == body
    assert chat.requests[-1].json == {
        "model": "chat-only",
        "messages": [{"role": "user", "content": "hi"}],
        "unknown_field": [1, 2],
    }
    assert gw.observer.records[-1].door == "openai"
