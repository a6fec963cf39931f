"""The OpenAI Responses codec (aib.codecs.responses, .responses_stream): requests to chat, answers and
streams back, validated by the official ``openai`` SDK's own Response and event models."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from aib.codecs.common import event_fields, split_events
from aib.codecs.responses import request_to_openai, response_from_completion
from aib.codecs.responses_stream import ResponseStreamEncoder
from aib.gateway.errors import GatewayError
from codec_support import FIXTURES, Turn, chunks, completion, read_sse, turns

pytestmark = pytest.mark.unit
EVENT = TypeAdapter(ResponseStreamEvent)


def test_text_input_and_instructions() -> None:
    payload, stream, problems, echo = request_to_openai(
        {
            "model": "m",
            "input": "hi",
            "instructions": "be brief",
            "max_output_tokens": 16,
            "temperature": 0.3,
            "stream": True,
        }
    )
    assert payload == {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 16,
        "temperature": 0.3,
    }
    assert stream and problems == [] and echo["instructions"] == "be brief"


def test_items_with_function_calls_and_outputs() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "developer", "content": "use tools"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather "}, {"type": "input_text", "text": "in Oslo?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call", "call_id": "call_2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "-3C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low"},
        "parallel_tool_calls": False,
        "store": False,
        "include": ["reasoning.encrypted_content"],
    }  # fmt: skip
    payload, stream, problems, _ = request_to_openai(body)
    assert not stream and problems == []
    msgs = payload["messages"]
    assert msgs[0] == {"role": "system", "content": "use tools"}
    assert msgs[1] == {"role": "user", "content": "weather in Oslo?"}
    assert msgs[2]["role"] == "assistant" and [c["id"] for c in msgs[2]["tool_calls"]] == ["call_1", "call_2"]
    assert msgs[3:5] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "-3C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    assert msgs[5]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
    ]
    assert payload["tools"] == [{"type": "function", "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}, "strict": True}}]  # fmt: skip
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert payload["response_format"] == {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}  # fmt: skip
    assert (payload["reasoning_effort"], payload["parallel_tool_calls"]) == ("low", False)


def test_hosted_tools_and_files_are_problems() -> None:
    body = {
        "model": "m",
        "input": [{"type": "item_reference", "id": "x"}, {"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}],
        "tools": [{"type": "web_search"}],
        "tool_choice": {"type": "web_search"},
        "prompt": {"id": "pmpt_1"},
    }  # fmt: skip
    _, _, problems, _ = request_to_openai(body)
    assert sorted(p.param or "" for p in problems) == [
        "input.0.type",
        "input.1.content.0.type",
        "prompt",
        "tool_choice",
        "tools.0.type",
    ]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "stateless_gateway"),
        ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation", "stateless_gateway"),
        ({"model": "m", "input": "x", "background": True}, "background", "stateless_gateway"),
        ({"input": "x"}, "model", "missing_required_parameter"),
        ({"model": "m"}, "input", "missing_required_parameter"),
        ({"model": "m", "input": 3}, "input", "invalid_type"),
        ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input.0.role", "invalid_value"),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input.0.call_id", "missing_required_parameter"),
        ({"model": "m", "input": [{"type": "function_call_output"}]}, "input.0.call_id", "missing_required_parameter"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"model": "m", "input": "x", "instructions": []}, "instructions", "invalid_type"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools.0.name", "missing_required_parameter"),
    ],
)  # fmt: skip
def test_bad_and_stateful_requests_are_400s(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(GatewayError) as exc:
        request_to_openai(body)
    assert (exc.value.status, exc.value.param, exc.value.code) == (400, param, code)


ECHO = {"instructions": "be brief", "tools": [], "metadata": {"k": "v"}, "max_output_tokens": 50}


def test_a_recorded_llamacpp_answer_is_a_valid_response() -> None:
    answer = orjson.loads((FIXTURES / "llamacpp_chat.json").read_bytes())
    r = Response.model_validate(response_from_completion(answer, "smollm", "abc", ECHO))
    assert r.output_text == answer["choices"][0]["message"]["content"] and r.status == "completed"
    assert (r.id, r.output[0].id, r.model, r.instructions, r.metadata) == (
        "resp_abc",
        "msg_abc",
        "smollm",
        "be brief",
        {"k": "v"},
    )
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (
        26,
        18,
        44,
    )


def test_tool_calls_and_token_limits() -> None:
    t = Turn(["checking"], [("call_1", "f", {"a": 1}), ("", "g", {})], "tool_calls")
    r = Response.model_validate(response_from_completion(completion(t), "m", "r1", {}))
    assert [o.type for o in r.output] == ["message", "function_call", "function_call"]
    assert (r.output[1].call_id, r.output[1].arguments, r.output[2].call_id) == (
        "call_1",
        '{"a": 1}',
        "call_r1_1",
    )  # type: ignore[union-attr]
    cut = Response.model_validate(
        response_from_completion(completion(Turn(["x"], finish="length")), "m", "r", {})
    )
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"


def events_of(data: bytes) -> list[Any]:
    events, rest = split_events(data)
    assert rest == b""
    out = []
    for ev in events:
        name, payload = event_fields(ev)
        assert name is not None and payload is not None
        parsed = EVENT.validate_python(orjson.loads(payload))
        assert parsed.type == name.decode()
        out.append(parsed)
    assert [e.sequence_number for e in out] == list(range(len(out)))
    return out


def encode(objs: list[dict[str, Any] | None]) -> bytes:
    enc = ResponseStreamEncoder("m", "r1", 1700000000, dict(ECHO))
    return enc.start() + b"".join(enc.done() if o is None else enc.chunk(o) for o in objs)


def test_a_recorded_llamacpp_stream_is_the_responses_event_sequence() -> None:
    evs = events_of(encode(read_sse((FIXTURES / "llamacpp_chat_stream.sse").read_bytes())))
    kinds = [e.type for e in evs]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert evs[-1].response.output_text.startswith("The sky")


def test_a_streamed_tool_call() -> None:
    evs = events_of(encode(read_sse((FIXTURES / "openai_tool_stream.sse").read_bytes())))
    kinds = [e.type for e in evs]
    assert kinds[2] == "response.output_item.added" and evs[2].item.type == "function_call"
    args = "".join(e.delta for e in evs if e.type == "response.function_call_arguments.delta")
    assert args == '{"location":"Paris, France"}'
    done = next(e for e in evs if e.type == "response.function_call_arguments.done")
    assert done.arguments == args and evs[-1].response.usage.input_tokens == 81


def test_a_broken_stream_fails_the_response() -> None:
    enc = ResponseStreamEncoder("m", "r1", 0, {})
    evs = events_of(
        enc.start()
        + enc.chunk(chunks(Turn(["a"]))[1])
        + enc.error(502, {"message": "gone", "code": "stream_interrupted"})
    )
    assert [e.type for e in evs[-2:]] == ["error", "response.failed"]
    assert evs[-1].response.status == "failed" and evs[-1].response.error.message == "gone"


@settings(max_examples=60, deadline=None)
@given(turn=turns())
def test_stream_and_whole_answer_agree(turn: Turn) -> None:
    """Property: the final event's Response has the same output, status and usage as the non-streamed
    Response of the same answer."""
    last = events_of(encode([*chunks(turn), None]))[-1]
    whole = Response.model_validate(response_from_completion(completion(turn), "m", "r1", dict(ECHO)))
    assert last.response.model_dump() == whole.model_dump() | {"created_at": last.response.created_at}
