"""The Anthropic fake answers as Anthropic's API documentation says (Messages, streaming, errors, models)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aib.devtools.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.contract

KEY = "sk-ant-fake"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
BODY = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi there"}],
}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(keys={KEY}).serve_in_thread() as f:
        yield f


def post(fake: FakeAnthropic, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        fake.base_url + "/v1/messages", json=body, headers=HEADERS if headers is None else headers
    )


def error_of(resp: httpx.Response, status: int, kind: str) -> str:
    assert resp.status_code == status, resp.text
    doc = resp.json()
    assert doc["type"] == "error" and doc["error"]["type"] == kind and doc["request_id"].startswith("req_")
    assert resp.headers["request-id"] == doc["request_id"]
    return str(doc["error"]["message"])


def test_a_message(fake: FakeAnthropic) -> None:
    resp = post(fake, {**BODY, "system": [{"type": "text", "text": "Be brief"}]})
    assert resp.status_code == 200 and resp.headers["request-id"].startswith("req_")
    msg = resp.json()
    assert msg["id"].startswith("msg_") and (msg["type"], msg["role"]) == ("message", "assistant")
    assert msg["content"] == [
        {"type": "text", "text": "Hello from fake Anthropic (claude-3-5-haiku-latest)."}
    ]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    assert msg["usage"] == {"input_tokens": 4, "output_tokens": 5}


def test_max_tokens_and_stop_sequences_end_the_message(fake: FakeAnthropic) -> None:
    cut = post(fake, {**BODY, "max_tokens": 2}).json()
    assert cut["content"][0]["text"] == "Hello from" and cut["stop_reason"] == "max_tokens"
    stop = post(fake, {**BODY, "stop_sequences": ["fake"]}).json()
    assert stop["content"][0]["text"] == "Hello from " and stop["stop_reason"] == "stop_sequence"
    assert stop["stop_sequence"] == "fake"


@pytest.mark.parametrize(
    ("headers", "status", "kind", "text"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error", "x-api-key header is required"),
        (
            {"x-api-key": "wrong", "anthropic-version": "2023-06-01"},
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        ({"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version: header is required"),
    ],
)
def test_headers_are_required(
    fake: FakeAnthropic, headers: dict[str, str], status: int, kind: str, text: str
) -> None:
    assert error_of(post(fake, BODY, headers), status, kind) == text


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ([1], 400, "request body must be a JSON object"),
        ({"model": "claude-3-5-haiku-latest", "messages": []}, 400, "max_tokens: Field required"),
        ({**BODY, "max_tokens": 0}, 400, "max_tokens: Input should be"),
        ({**BODY, "messages": []}, 400, "at least one message"),
        ({**BODY, "messages": [{"role": "system", "content": "x"}]}, 400, "messages.0.role"),
        ({**BODY, "messages": [{"role": "user", "content": [1]}]}, 400, "messages.0.content"),
        ({**BODY, "system": 3}, 400, "system: Input should be"),
        ({**BODY, "temperature": 1.5}, 400, "temperature"),
        ({**BODY, "frequency_penalty": 1}, 400, "frequency_penalty: Extra inputs are not permitted"),
        ({**BODY, "model": "claude-nope"}, 404, "model: claude-nope"),
    ],
)
def test_invalid_requests(fake: FakeAnthropic, body: Any, status: int, text: str) -> None:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    assert text in error_of(post(fake, body), status, kind)


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        kind, data = block.split("\n")
        assert kind.startswith("event: ") and data.startswith("data: ")
        out.append((kind[7:], json.loads(data[6:])))
    return out


def test_stream_events_in_documented_order(fake: FakeAnthropic) -> None:
    resp = post(fake, {**BODY, "stream": True})
    assert resp.headers["content-type"].startswith("text/event-stream")
    evs = events(resp.text)
    kinds = [k for k, _ in evs]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(k == "content_block_delta" for k in kinds[3:-3]) and len(kinds) == 3 + 5 + 3
    assert all(d["type"] == k for k, d in evs)
    start = evs[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] == 2
    text = "".join(d["delta"]["text"] for k, d in evs if k == "content_block_delta")
    assert text == "Hello from fake Anthropic (claude-3-5-haiku-latest)."
    assert evs[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert evs[-2][1]["usage"] == {"output_tokens": 5}


def test_a_stream_can_break_with_an_error_event(fake: FakeAnthropic) -> None:
    fake.break_stream_after(2)
    evs = events(post(fake, {**BODY, "stream": True}).text)
    assert [k for k, _ in evs][-1] == "error"
    assert evs[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert len([k for k, _ in evs if k == "content_block_delta"]) == 2


def test_scripted_failures_have_the_documented_shapes(fake: FakeAnthropic) -> None:
    fake.fail_next(429, retry_after=3)
    fake.fail_next(529)
    fake.fail_next(500, message="boom")
    resp = post(fake, BODY)
    assert "rate limit" in error_of(resp, 429, "rate_limit_error") and resp.headers["retry-after"] == "3"
    assert error_of(post(fake, BODY), 529, "overloaded_error") == "Overloaded"
    assert error_of(post(fake, BODY), 500, "api_error") == "boom"
    assert post(fake, BODY).status_code == 200


def test_models_list(fake: FakeAnthropic) -> None:
    resp = httpx.get(fake.base_url + "/v1/models", headers=HEADERS)
    doc = resp.json()
    assert [m["id"] for m in doc["data"]] == ["claude-3-5-haiku-latest", "claude-sonnet-4-5"]
    assert doc["data"][0]["type"] == "model" and doc["has_more"] is False
    assert (doc["first_id"], doc["last_id"]) == ("claude-3-5-haiku-latest", "claude-sonnet-4-5")
    assert httpx.get(fake.base_url + "/v1/models").status_code == 401
    assert fake.messages_to("/v1/models")[-1].method == "GET"
