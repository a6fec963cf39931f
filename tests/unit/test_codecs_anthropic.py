"""The Anthropic Messages codec (aib.codecs.anthropic, .anthropic_stream): requests, answers, errors and
streams both ways, on recorded fixtures, with the official ``anthropic`` SDK's own stream accumulator as
the judge of the event sequence, and round-trip properties."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from aib.codecs import anthropic as codec
from aib.codecs.anthropic_stream import MessageStreamDecoder, MessageStreamEncoder, StreamError
from aib.codecs.common import event_fields, split_events
from aib.gateway.errors import GatewayError
from codec_support import FIXTURES, Turn, accumulate, chunks, completion, read_sse, turns

pytestmark = pytest.mark.unit
EVENT = TypeAdapter(RawMessageStreamEvent)


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


# --------------------------------------------------------------------------- requests in


def test_a_tool_turn_becomes_an_openai_chat() -> None:
    payload, problems = codec.request_to_openai(fixture("anthropic_tool_turn.json"))
    assert problems == []
    assert payload["messages"] == [
        {"role": "system", "content": "You are a weather assistant.\nUse the tools you are given."},
        {"role": "user", "content": "What's the weather like in San Francisco?"},
        {
            "role": "assistant",
            "content": "I'll check the weather.",  # the thinking block stays out, as Anthropic does
            "tool_calls": [
                {
                    "id": "toolu_01A09q90qw90lq917835lq9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert payload["tools"][0]["function"]["name"] == "get_weather"
    assert payload["tools"][0]["function"]["parameters"]["required"] == ["location"]
    assert (payload["tool_choice"], payload["parallel_tool_calls"]) == ("auto", False)
    assert (payload["stop"], payload["temperature"], payload["user"]) == (["\n\nHuman:"], 0.2, "u-42")
    assert payload["stream"] and payload["stream_options"] == {"include_usage": True}
    assert payload["max_tokens"] == 1024


def test_images_errors_and_tool_choices_translate() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}},
                    {"type": "text", "text": "what is this?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": True}
                ],
            },
        ],
        "tool_choice": {"type": "tool", "name": "look"},
        "thinking": {"type": "enabled", "budget_tokens": 20000},
        "top_k": 40,
    }
    payload, problems = codec.request_to_openai(body)
    assert problems == []
    parts = payload["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert parts[1]["image_url"]["url"] == "https://example.org/cat.jpg"
    assert payload["messages"][1]["content"] is None  # a turn of tool calls only
    assert payload["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"}
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "look"}}
    assert (payload["reasoning_effort"], payload["top_k"]) == ("high", 40)
    for kind, want in (("any", "required"), ("none", "none")):
        assert codec.request_to_openai({**body, "tool_choice": {"type": kind}})[0]["tool_choice"] == want


def test_what_only_anthropic_serves_is_a_problem_not_an_error() -> None:
    body = {
        "model": "m",
        "max_tokens": 5,
        "container": "c1",
        "service_tier": "priority",
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}
        ],
    }
    payload, problems = codec.request_to_openai(body)
    assert payload["messages"] == [] and payload.get("tools", []) == []
    params = sorted(p.param or "" for p in problems)
    assert params == ["container", "messages.0.content.0.type", "service_tier", "tools.0.type"]
    assert all(p.status == 400 and "Anthropic upstream" in p.message for p in problems)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 5, "messages": []}, "model"),
        ({"model": "m", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": "5", "messages": []}, "max_tokens"),
        ({"model": "m", "max_tokens": 5}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": "hi"}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
        ({"model": "m", "max_tokens": 5, "messages": [], "system": 3}, "system"),
        ({"model": "m", "max_tokens": 5, "messages": [], "stream": "yes"}, "stream"),
        ({"model": "m", "max_tokens": 5, "messages": [], "temperature": "hot"}, "temperature"),
        ({"model": "m", "max_tokens": 5, "messages": [], "stop_sequences": [1]}, "stop_sequences"),
        ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"name": "x"}]}, "tools.0.input_schema"),
        ({"model": "m", "max_tokens": 5, "messages": [], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages.0.content.0.tool_use_id"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as exc:
        codec.request_to_openai(body)
    assert exc.value.status == 400 and exc.value.param == param


# --------------------------------------------------------------------------- answers out


def test_a_recorded_llamacpp_answer_is_a_valid_message() -> None:
    answer = fixture("llamacpp_chat.json")
    msg = codec.message_from_completion(answer, "smollm", "msg_1")
    parsed = Message.model_validate(msg)  # the official SDK's model: every required field present
    assert (
        parsed.content[0].type == "text"
        and parsed.content[0].text == answer["choices"][0]["message"]["content"]
    )
    assert (parsed.stop_reason, parsed.usage.input_tokens, parsed.usage.output_tokens) == ("end_turn", 26, 18)
    assert parsed.model == "smollm"


def test_tool_calls_become_tool_use_blocks() -> None:
    t = Turn(
        ["Let me look."], [("call_1", "get_weather", {"city": "Paris"}), ("", "clock", {})], "tool_calls"
    )
    msg = Message.model_validate(codec.message_from_completion(completion(t), "m", "msg_abc"))
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"]
    assert msg.content[1].id == "call_1" and msg.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert msg.content[2].id == "toolu_abc_1"  # type: ignore[union-attr]  # a call without id gets one
    assert msg.stop_reason == "tool_use"
    bad = completion(Turn([], [("c", "f", {})], "tool_calls"))
    bad["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = "{not json"
    block = codec.message_from_completion(bad, "m", "msg_x")["content"][0]
    assert block["input"] == {"_unparsed_arguments": "{not json"}


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_stop_reasons(finish: str, stop: str) -> None:
    assert (
        codec.message_from_completion(completion(Turn(["x"], finish=finish)), "m", "msg_1")["stop_reason"]
        == stop
    )


def test_cached_tokens_are_reported_as_anthropic_counts_them() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 64}}
    assert codec.usage_from_openai(usage) == {
        "input_tokens": 36,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
        "output_tokens": 3,
    }
    assert codec.usage_to_openai(codec.usage_from_openai(usage))["prompt_tokens"] == 100


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"), (404, "not_found_error"),
     (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
     (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"), (418, "invalid_request_error")],
)  # fmt: skip
def test_errors_in_anthropic_shape(status: int, kind: str) -> None:
    body = codec.error_from_openai(status, {"message": "nope", "type": "x"})
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"}}
    back = codec.error_to_openai(status, body)
    assert (back["message"], back["type"]) == ("nope", kind)


# --------------------------------------------------------------------------- streams


def events_of(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events, rest = split_events(data)
    assert rest == b""
    out = []
    for ev in events:
        name, payload = event_fields(ev)
        assert name is not None and payload is not None, ev  # every event is named: the SDK skips others
        obj = orjson.loads(payload)
        assert obj["type"] == name.decode()
        out.append((name.decode(), obj))
    return out


def encode(objs: list[dict[str, Any] | None], model: str = "m") -> bytes:
    enc = MessageStreamEncoder(model, "msg_1")
    out = [enc.start()]
    for obj in objs:
        out.append(enc.done() if obj is None else enc.chunk(obj))
    return b"".join(out)


def sdk_message(data: bytes) -> Any:
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, obj in events_of(data):
        if name in ("ping", "error"):
            continue
        snapshot = accumulate_event(
            event=EVENT.validate_python(obj), current_snapshot=snapshot, json_bufs=bufs
        )
    return snapshot


def test_a_recorded_llamacpp_stream_is_anthropics_exact_sequence() -> None:
    data = encode(read_sse((FIXTURES / "llamacpp_chat_stream.sse").read_bytes()))
    names = [n for n, _ in events_of(data)]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    msg = sdk_message(data)
    assert msg.content[0].text.startswith("The sky") and msg.stop_reason == "end_turn"


def test_a_streamed_tool_call_is_input_json_deltas() -> None:
    data = encode(read_sse((FIXTURES / "openai_tool_stream.sse").read_bytes()))
    evs = events_of(data)
    start = next(o for n, o in evs if n == "content_block_start")
    assert start["content_block"] == {
        "type": "tool_use",
        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "name": "get_weather",
        "input": {},
    }
    pieces = [o["delta"]["partial_json"] for n, o in evs if n == "content_block_delta"]
    assert "".join(pieces) == '{"location":"Paris, France"}'
    delta = next(o for n, o in evs if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 17, "cache_read_input_tokens": 64, "output_tokens": 17}
    msg = sdk_message(data)
    assert msg.content[0].input == {"location": "Paris, France"} and msg.usage.input_tokens == 17


def test_a_broken_stream_ends_with_an_error_event() -> None:
    enc = MessageStreamEncoder("m", "msg_1")
    data = enc.start() + enc.chunk(chunks(Turn(["a"]))[1]) + enc.error(502, {"message": "upstream broke"})
    name, obj = events_of(data)[-1]
    assert name == "error" and obj["error"] == {"type": "api_error", "message": "upstream broke"}


@settings(max_examples=60, deadline=None)
@given(turn=turns())
def test_stream_and_whole_answer_agree(turn: Turn) -> None:
    """Property: the SDK's accumulation of the streamed events is the non-streamed Message."""
    streamed = sdk_message(encode([*chunks(turn), None])).to_dict()
    whole = Message.model_validate(codec.message_from_completion(completion(turn), "m", "msg_1")).to_dict()
    whole_usage, streamed_usage = whole.pop("usage"), streamed.pop("usage")
    streamed.pop("stop_details", None)  # set (to None) by the SDK's accumulator only
    assert streamed == whole
    assert (streamed_usage["input_tokens"], streamed_usage["output_tokens"]) == (
        whole_usage["input_tokens"],
        whole_usage["output_tokens"],
    )


@settings(max_examples=60, deadline=None)
@given(turn=turns(), cut=st.integers(1, 50))
def test_anthropic_stream_decodes_back_to_the_same_answer(turn: Turn, cut: int) -> None:
    """Property: OpenAI chunks -> Anthropic events (door) -> OpenAI chunks (outbound) keeps text, tool
    calls, finish and usage, however the bytes are cut."""
    events = encode([*chunks(turn), None])
    dec = MessageStreamDecoder(1700000000)
    out = b"".join(dec.feed(events[i : i + cut]) for i in range(0, len(events), cut))
    back = accumulate(read_sse(out))
    want = accumulate([*chunks(turn), None])
    assert (back["text"], back["calls"], back["finish"]) == (want["text"], want["calls"], want["finish"])
    if turn.usage is not None:
        assert (back["usage"]["prompt_tokens"], back["usage"]["completion_tokens"]) == turn.usage
    assert out.endswith(b"data: [DONE]\n\n")


def test_an_error_event_from_anthropic_stops_the_stream() -> None:
    """What came before the error is returned (the client gets it), then the error."""
    dec = MessageStreamDecoder(0)
    text = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    error = (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    out = dec.feed(text + error + text)
    assert [e["choices"][0]["delta"] for e in read_sse(out) if e] == [{"content": "Hi"}]
    assert dec.feed(text) == b""
    with pytest.raises(StreamError, match="overloaded_error: Overloaded"):
        dec.check()
    dec = MessageStreamDecoder(0)
    assert dec.feed(b"data: {not json\n\n") == b"" and dec.error == "Anthropic sent a malformed stream event"


# --------------------------------------------------------------------------- requests out (outbound)

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
)
_input = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    st.one_of(st.integers(-(2**63), 2**63 - 1), _text),
    max_size=3,
)


@st.composite
def anthropic_requests(draw: Any) -> dict[str, Any]:
    """Messages requests in the forms request_from_openai writes (the codec's canonical forms)."""
    messages: list[dict[str, Any]] = []
    for turn in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_text)})
        if draw(st.booleans()):
            calls = [
                {
                    "type": "tool_use",
                    "id": f"toolu_{turn}_{k}",
                    "name": draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True)),
                    "input": draw(_input),
                }
                for k in range(draw(st.integers(1, 2)))
            ]
            text = draw(st.one_of(st.none(), _text))
            messages.append(
                {"role": "assistant", "content": ([{"type": "text", "text": text}] if text else []) + calls}
            )
            results = [{"type": "tool_result", "tool_use_id": c["id"], "content": draw(_text)} for c in calls]
            messages.append({"role": "user", "content": results})
            messages.append({"role": "assistant", "content": draw(_text)})
        else:
            messages.append({"role": "assistant", "content": draw(_text)})
    body: dict[str, Any] = {"model": "m", "max_tokens": draw(st.integers(1, 9999)), "messages": messages}
    if draw(st.booleans()):
        body["system"] = draw(_text)
    if draw(st.booleans()):
        body["stop_sequences"] = draw(st.lists(_text, min_size=1, max_size=2))
    if draw(st.booleans()):
        body["tools"] = [{"name": "f", "input_schema": {"type": "object"}, "description": draw(_text)}]
        body["tool_choice"] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"}])
        )
    for key, strat in (
        ("temperature", st.floats(0, 1)),
        ("top_p", st.floats(0, 1)),
        ("top_k", st.integers(1, 99)),
    ):
        if draw(st.booleans()):
            body[key] = draw(strat)
    if draw(st.booleans()):
        body["stream"] = True
    if draw(st.booleans()):
        body["metadata"] = {"user_id": draw(_text)}
    return body


@settings(max_examples=80, deadline=None)
@given(body=anthropic_requests())
def test_requests_round_trip(body: dict[str, Any]) -> None:
    """Property: Messages -> OpenAI chat (door) -> Messages (outbound adapter) is the identity."""
    payload, problems = codec.request_to_openai(body)
    assert problems == []
    back = codec.request_from_openai(payload)
    assert back == body


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"seed": 1}, "seed"), ({"response_format": {"type": "json_object"}}, "response_format"),
     ({"messages": [{"role": "function", "content": "x"}]}, "messages.0.role"),
     ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages.0.content.0.type"),
     ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type"), ({"tool_choice": "sometimes"}, "tool_choice")],
)  # fmt: skip
def test_openai_fields_anthropic_lacks_are_refused(extra: dict[str, Any], param: str) -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(GatewayError) as exc:
        codec.request_from_openai(payload)
    assert exc.value.status == 400 and exc.value.param == param


def test_openai_requests_get_anthropics_required_fields() -> None:
    out = codec.request_from_openai(
        {"model": "m", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}], "reasoning_effort": "low", "parallel_tool_calls": False, "tools": [{"type": "function", "function": {"name": "f"}}]},
        max_tokens_default=123,
    )  # fmt: skip
    assert out["system"] == "be brief" and out["messages"] == [{"role": "user", "content": "hi"}]
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048} and out["max_tokens"] == 3072
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    plain = codec.request_from_openai({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, 77)
    assert plain["max_tokens"] == 77


def test_a_message_becomes_a_completion() -> None:
    msg = {
        "id": "msg_1",
        "model": "claude",
        "content": [{"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 3, "cache_read_input_tokens": 4, "output_tokens": 5},
    }  # fmt: skip
    c = codec.completion_from_message(msg, 1)
    m = c["choices"][0]["message"]
    assert (m["content"], m["reasoning_content"], c["choices"][0]["finish_reason"]) == (
        "ok",
        "hm",
        "tool_calls",
    )
    assert m["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert c["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_token_estimate_counts_what_the_model_reads() -> None:
    body = fixture("anthropic_tool_turn.json")
    n = codec.estimate_tokens(body)
    text = json.dumps(body["system"]) + json.dumps(body["messages"]) + json.dumps(body["tools"])
    assert 20 < n < len(text) // 2
    assert (
        1500 <= codec.estimate_tokens({"messages": [{"role": "user", "content": [{"type": "image"}]}]}) < 1510
    )
