"""The Ollama codec (aib.codecs.ollama, .ollama_stream): requests, answers and NDJSON streams both
ways, checked with the official ``ollama`` client's own response models, on recorded fixtures, with
round-trip properties."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama import ChatResponse, EmbedResponse, GenerateResponse

from aib.codecs import ollama as codec
from aib.codecs.common import args_object, args_text
from aib.codecs.ollama_stream import NdjsonDecoder, NdjsonEncoder
from aib.gateway.errors import GatewayError
from codec_support import FIXTURES, Turn, accumulate, chunks, completion, read_sse, turns

pytestmark = pytest.mark.unit
PNG = "iVBORw0KGgoAAAANSUhEUg=="
TIMINGS = (9_000_000, 2_000_000, 7_000_000)


# --------------------------------------------------------------------------- requests in


def test_a_chat_with_options_format_images_and_tools() -> None:
    body = {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is in this picture?", "images": [PNG]},
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "lookup", "arguments": {"q": "cat"}}}]},
            {"role": "tool", "content": "a cat", "tool_name": "lookup"},
        ],
        "options": {"temperature": 0.1, "top_p": 0.9, "top_k": 20, "num_predict": 64, "stop": ["\n"], "seed": 7, "num_ctx": 8192},
        "format": {"type": "object", "properties": {"animal": {"type": "string"}}},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        "keep_alive": "10m",
    }  # fmt: skip
    payload, stream, problems = codec.chat_to_openai(body)
    assert stream and problems == []  # streaming is Ollama's default; num_ctx and keep_alive are hints
    msgs = payload["messages"]
    assert msgs[1]["content"] == [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert msgs[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_2_0", "type": "function", "function": {"name": "lookup", "arguments": '{"q":"cat"}'}}
        ],
    }
    assert msgs[3] == {"role": "tool", "content": "a cat", "tool_call_id": "call_2_0"}
    assert {k: payload[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")} == {
        "temperature": 0.1, "top_p": 0.9, "top_k": 20, "max_tokens": 64, "stop": ["\n"], "seed": 7,
    }  # fmt: skip
    assert payload["response_format"]["json_schema"]["schema"]["properties"] == {"animal": {"type": "string"}}
    assert payload["tools"] == body["tools"] and payload["stream_options"] == {"include_usage": True}
    assert codec.chat_to_openai({**body, "format": "json", "stream": False})[0]["response_format"] == {
        "type": "json_object"
    }


def test_tool_results_find_their_calls() -> None:
    calls = [{"function": {"name": "a", "arguments": {}}}, {"function": {"name": "b", "arguments": {}}}]
    msgs = codec.chat_to_openai(
        {"model": "m", "messages": [
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "content": "B", "tool_name": "b"},
            {"role": "tool", "content": "A"},
            {"role": "tool", "content": "?", "tool_call_id": "given"},
        ]}
    )[0]["messages"]  # fmt: skip
    assert [m.get("tool_call_id") for m in msgs[1:]] == ["call_0_1", "call_0_0", "given"]


def test_only_ollama_options_are_problems() -> None:
    body = {
        "model": "m",
        "messages": [],
        "options": {"mirostat": 2, "num_gpu": 1},
        "think": True,
        "logprobs": True,
    }
    _, _, problems = codec.chat_to_openai(body)
    assert sorted(p.param or "" for p in problems) == ["logprobs", "messages", "options.mirostat", "think"]
    _, _, problems = codec.generate_to_openai({"model": "m", "prompt": "", "raw": True, "suffix": "x"})
    assert sorted(p.param or "" for p in problems) == ["prompt", "raw", "suffix"]


def test_generate_and_embeddings_translate() -> None:
    payload, stream, problems = codec.generate_to_openai(
        {
            "model": "m",
            "prompt": "why?",
            "system": "sys",
            "images": [PNG],
            "stream": False,
            "options": {"num_predict": -1},
        }
    )
    assert not stream and problems == [] and "max_tokens" not in payload  # -1: no limit
    assert payload["messages"][0] == {"role": "system", "content": "sys"}
    assert payload["messages"][1]["content"][0] == {"type": "text", "text": "why?"}
    assert codec.embed_to_openai({"model": "e", "input": ["a", "b"], "dimensions": 3, "truncate": True}) == (
        {"model": "e", "input": ["a", "b"], "dimensions": 3},
        [],
    )
    assert codec.embeddings_to_openai({"model": "e", "prompt": "a"}) == ({"model": "e", "input": "a"}, [])


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("chat", {"messages": []}, "model"),
        ("chat", {"model": "m", "messages": {}}, "messages"),
        ("chat", {"model": "m", "messages": [{"role": "robot"}]}, "messages.0.role"),
        ("chat", {"model": "m", "messages": [{"role": "user", "content": 1}]}, "messages.0.content"),
        ("chat", {"model": "m", "messages": [{"role": "user", "images": "x"}]}, "messages.0.images"),
        ("chat", {"model": "m", "messages": [{"role": "user", "images": ["%%%"]}]}, "messages.0.images.0"),
        ("chat", {"model": "m", "messages": [], "options": {"temperature": "hot"}}, "options.temperature"),
        ("chat", {"model": "m", "messages": [], "options": {"num_predict": 1.5}}, "options.num_predict"),
        ("chat", {"model": "m", "messages": [], "options": []}, "options"),
        ("chat", {"model": "m", "messages": [], "format": 3}, "format"),
        ("chat", {"model": "m", "messages": [], "stream": "no"}, "stream"),
        ("chat", {"model": "m", "messages": [], "tools": {}}, "tools"),
        ("chat", {"model": "m", "messages": [], "keep_alive": []}, "keep_alive"),
        ("chat", {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{}]}]}, "messages.0.tool_calls.0"),
        ("generate", {"model": "m", "prompt": 3}, "prompt"),
        ("generate", {"model": "m", "prompt": "x", "system": 1}, "system"),
        ("embed", {"model": "m"}, "input"),
        ("embed", {"model": "m", "input": [1, 2]}, "input"),
        ("embed", {"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ("embeddings", {"model": "m", "prompt": ["x"]}, "prompt"),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_naming_the_field(kind: str, body: dict[str, Any], param: str) -> None:
    decode = {"chat": codec.chat_to_openai, "generate": codec.generate_to_openai, "embed": codec.embed_to_openai, "embeddings": codec.embeddings_to_openai}[kind]  # fmt: skip
    with pytest.raises(GatewayError) as exc:
        decode(body)
    assert exc.value.status == 400 and exc.value.param == param


# --------------------------------------------------------------------------- answers out


def test_a_recorded_llamacpp_answer_is_a_valid_chat_response() -> None:
    answer = orjson.loads((FIXTURES / "llamacpp_chat.json").read_bytes())
    out = ChatResponse.model_validate(
        codec.chat_from_completion(answer, "smollm", "2026-01-01T00:00:00.000000000Z", TIMINGS)
    )
    assert out.message.content == answer["choices"][0]["message"]["content"]
    assert (out.done, out.done_reason, out.prompt_eval_count, out.eval_count) == (True, "stop", 26, 18)
    assert (out.total_duration, out.prompt_eval_duration, out.eval_duration) == TIMINGS
    gen = GenerateResponse.model_validate(
        codec.generate_from_completion(answer, "smollm", "2026-01-01T00:00:00Z", TIMINGS)
    )
    assert gen.response == out.message.content


def test_tool_calls_have_object_arguments() -> None:
    t = Turn([], [("call_9", "weather", {"city": "Oslo"})], "tool_calls")
    out = ChatResponse.model_validate(
        codec.chat_from_completion(completion(t), "m", "2026-01-01T00:00:00Z", (1, 0, 1))
    )
    assert out.done_reason == "stop"  # Ollama says stop when it calls tools
    call = out.message.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, call.function.arguments) == ("weather", {"city": "Oslo"})


def test_embeddings_out_both_encodings() -> None:
    vec = [0.25, -0.5, 1.0]
    b64 = base64.b64encode(struct.pack("<3f", *vec)).decode()
    answer = {
        "data": [{"index": 1, "embedding": b64}, {"index": 0, "embedding": vec}],
        "usage": {"prompt_tokens": 4},
    }
    out = EmbedResponse.model_validate(codec.embed_from_openai(answer, "e", 5))
    assert [list(e) for e in out.embeddings] == [vec, vec] and out.prompt_eval_count == 4
    assert codec.embeddings_from_openai(answer) == {"embedding": vec}
    back = codec.embed_answer_to_openai({"model": "e", "embeddings": [vec], "prompt_eval_count": 2}, "base64")
    assert back["data"][0]["embedding"] == b64 and back["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_big_integers_in_tool_arguments_never_crash() -> None:
    assert args_text({"n": 2**70}) == '{"n":1180591620717411303424}'
    assert args_object("[1]") == {"_unparsed_arguments": "[1]"}


# --------------------------------------------------------------------------- streams


def encode(objs: list[dict[str, Any] | None], chat: bool = True) -> list[dict[str, Any]]:
    enc = NdjsonEncoder("m", chat)
    out = b"".join(
        enc.done("2026-01-01T00:00:00Z", TIMINGS) if o is None else enc.chunk(o, "2026-01-01T00:00:00Z")
        for o in objs
    )
    assert out.endswith(b"\n")
    return [orjson.loads(line) for line in out.splitlines()]


def test_a_recorded_llamacpp_stream_as_ndjson() -> None:
    lines = encode(read_sse((FIXTURES / "llamacpp_chat_stream.sse").read_bytes()))
    parsed = [ChatResponse.model_validate(x) for x in lines]
    assert all(not p.done for p in parsed[:-1]) and parsed[-1].done and parsed[-1].done_reason == "stop"
    assert "".join(p.message.content or "" for p in parsed).startswith("The sky")
    assert parsed[-1].total_duration == TIMINGS[0]
    gen = encode(read_sse((FIXTURES / "llamacpp_chat_stream.sse").read_bytes()), chat=False)
    assert all("response" in g and "message" not in g for g in gen)


def test_streamed_tool_calls_come_whole() -> None:
    lines = encode(read_sse((FIXTURES / "openai_tool_stream.sse").read_bytes()))
    calls = [x for x in lines if x["message"].get("tool_calls")]
    assert len(calls) == 1 and calls[0]["message"]["tool_calls"][0]["function"] == {
        "index": 0,
        "name": "get_weather",
        "arguments": {"location": "Paris, France"},
    }
    assert lines[-1]["prompt_eval_count"] == 81 and lines[-1]["eval_count"] == 17


def test_errors_are_ollama_lines() -> None:
    assert orjson.loads(NdjsonEncoder.error(502, {"message": "gone"})) == {"error": "gone"}
    dec = NdjsonDecoder(True, 0, "c")
    out = dec.feed(
        b'{"model":"m","message":{"content":"Hi"},"done":false}\n{"error":"model \'x\' not found"}\n'
    )
    assert [e["choices"][0]["delta"]["content"] for e in read_sse(out) if e] == ["Hi"]
    assert dec.error == "model 'x' not found" and dec.feed(b'{"done":true}\n') == b""
    assert NdjsonDecoder(True, 0, "c").feed(b"[1]\n") == b""


@settings(max_examples=60, deadline=None)
@given(turn=turns(), cut=st.integers(1, 40), chat=st.booleans())
def test_ndjson_decodes_back_to_the_same_answer(turn: Turn, cut: int, chat: bool) -> None:
    """Property: OpenAI chunks -> Ollama NDJSON (door) -> OpenAI chunks (outbound) keeps text, tool
    calls (chat), finish and usage, however the lines are cut."""
    if not chat:
        turn.calls, turn.finish = [], "stop" if turn.finish == "tool_calls" else turn.finish
        turn.texts = turn.texts or ["x"]
    data = b"".join(orjson.dumps(x) + b"\n" for x in encode([*chunks(turn), None], chat))
    dec = NdjsonDecoder(chat, 0, "chatcmpl-1")
    out = b"".join(dec.feed(data[i : i + cut]) for i in range(0, len(data), cut)) + dec.close()
    events = read_sse(out)
    if chat:
        back = accumulate(events)
    else:
        text = "".join(c["text"] for e in events if e for c in e["choices"])
        back = {
            "text": text,
            "calls": [],
            "finish": next(
                c["finish_reason"] for e in events if e for c in e["choices"] if c["finish_reason"]
            ),
        }
    want = accumulate([*chunks(turn), None])
    assert (back["text"], back["finish"]) == (want["text"], want["finish"])
    assert [(n, a) for _, n, a in back["calls"]] == [(n, a) for _, n, a in want["calls"]]
    usage = next(e["usage"] for e in events if e and e.get("usage"))
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (turn.usage or (0, 0))
    assert dec.final is not None and out.endswith(b"data: [DONE]\n\n")


# --------------------------------------------------------------------------- requests out (outbound)

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20
)


@st.composite
def ollama_chats(draw: Any) -> dict[str, Any]:
    """/api/chat bodies in the forms chat_from_openai writes."""
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for _ in range(draw(st.integers(1, 3))):
        user: dict[str, Any] = {"role": "user", "content": draw(_text)}
        if draw(st.booleans()):
            user["images"] = [PNG]
        messages.append(user)
        if draw(st.booleans()):
            cid = f"call_{len(messages)}_0"
            name = draw(st.from_regex(r"[a-z]{1,8}", fullmatch=True))
            args = draw(
                st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.integers(-9, 9), max_size=2)
            )
            call = {"function": {"index": 0, "name": name, "arguments": args}, "id": cid}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "content": draw(_text), "tool_call_id": cid, "tool_name": name})
        messages.append({"role": "assistant", "content": draw(_text)})
    body: dict[str, Any] = {"model": "m", "messages": messages, "stream": draw(st.booleans())}
    options: dict[str, Any] = {}
    for key, strat in (("temperature", st.floats(0, 2)), ("top_k", st.integers(1, 99)), ("seed", st.integers(0, 99)), ("num_predict", st.integers(0, 999))):  # fmt: skip
        if draw(st.booleans()):
            options[key] = draw(strat)
    if draw(st.booleans()):
        options["stop"] = draw(st.lists(_text, min_size=1, max_size=2))
    if draw(st.booleans()):
        body["format"] = draw(st.sampled_from(["json", {"type": "object"}]))
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    if options:
        body["options"] = options
    return body


@settings(max_examples=80, deadline=None)
@given(body=ollama_chats())
def test_chats_round_trip(body: dict[str, Any]) -> None:
    """Property: /api/chat -> OpenAI chat (door) -> /api/chat (outbound adapter) is the identity."""
    payload, stream, problems = codec.chat_to_openai(body)
    assert problems == []
    assert codec.chat_from_openai(payload, stream, None, None) == body


def test_openai_requests_get_num_ctx_and_keep_alive() -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9, "stream_options": {"include_usage": True}, "user": "u"}  # fmt: skip
    out = codec.chat_from_openai(payload, False, 32768, "30m")
    assert out["options"] == {"num_predict": 9, "num_ctx": 32768} and out["keep_alive"] == "30m"
    gen = codec.generate_from_openai(
        {"model": "m", "prompt": ["def f():"], "suffix": "return 1", "temperature": 0}, True, 4096, None
    )
    assert gen == {"model": "m", "prompt": "def f():", "raw": True, "stream": True, "suffix": "return 1", "options": {"temperature": 0, "num_ctx": 4096}}  # fmt: skip
    emb = codec.embed_request_from_openai({"model": "e", "input": ["a"], "dimensions": 8}, 2048, 0)
    assert emb == {
        "model": "e",
        "input": ["a"],
        "truncate": True,
        "dimensions": 8,
        "options": {"num_ctx": 2048},
        "keep_alive": 0,
    }


@pytest.mark.parametrize(
    ("payload", "param"),
    [({"n": 2}, "n"), ({"logit_bias": {"1": 1}}, "logit_bias"), ({"tool_choice": "required"}, "tool_choice"),
     ({"response_format": {"type": "grammar"}}, "response_format"),
     ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, "messages.0.content.0.image_url"),
     ({"messages": [{"role": "user", "content": [{"type": "file"}]}]}, "messages.0.content.0.type")],
)  # fmt: skip
def test_openai_fields_ollama_lacks_are_refused(payload: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as exc:
        codec.chat_from_openai({"model": "m", "messages": [], **payload}, False, None, None)
    assert exc.value.param == param
    with pytest.raises(GatewayError):
        codec.generate_from_openai({"model": "m", "prompt": ["a", "b"]}, False, None, None)
    with pytest.raises(GatewayError):
        codec.embed_request_from_openai({"model": "m", "input": [[1, 2]]}, None, None)


def test_ollama_answers_become_openai_answers() -> None:
    answer = {
        "model": "m",
        "message": {"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
        "done": True,
        "done_reason": "stop",
        "prompt_eval_count": 11,
        "eval_count": 4,
    }  # fmt: skip
    c = codec.completion_from_chat(answer, 5, "chatcmpl-x")
    msg = c["choices"][0]["message"]
    assert msg["content"] is None and msg["reasoning_content"] == "hmm"
    assert msg["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert c["choices"][0]["finish_reason"] == "tool_calls" and c["usage"]["total_tokens"] == 15
    g = codec.completion_from_generate(
        {"model": "m", "response": "x", "done_reason": "length", "eval_count": 1}, 5, "cmpl-x"
    )
    assert (g["object"], g["choices"][0]["text"], g["choices"][0]["finish_reason"]) == (
        "text_completion",
        "x",
        "length",
    )
    assert (
        codec.error_message({"error": "boom"}, 500) == "boom"
        and codec.error_message(None, 502) == "Ollama answered 502"
    )
