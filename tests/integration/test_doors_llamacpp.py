"""The three front doors with their official clients (``anthropic``, ``ollama``, ``openai``'s
``responses``) against the gateway routing to real llama.cpp servers with SmolLM2-135M.

Real model: chat, streams, multi-turn, JSON mode, embeddings (a third llama.cpp server started with
``--embedding true``), the model lists. SmolLM2 through llama-cpp-python does not call tools reliably,
so the tool-use loops are scripted: the gateway routes ``tooly`` to a ``ScriptedUpstream`` answering
OpenAI tool calls, and the doors translate them both ways. Bad input gets each API's own error shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import pytest
from openai import OpenAI

from aib.devtools.embedding_model import ensure_embedding_model
from aib.devtools.llamacpp import LlamaCppServer
from gateway_harness import (  # fmt: skip
    Reply,
    RunningGateway,
    ScriptedUpstream,
    chat_chunk,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_event,
)
from openai_support import sdk_client

pytestmark = pytest.mark.integration
WEATHER = {"name": "get_weather", "description": "Weather in a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}  # fmt: skip


@pytest.fixture(scope="module")
def embedder(smollm_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """A third llama.cpp server, for embeddings: SmolLM2 with mean pooling (aib.devtools.embedding_model)."""
    log = tmp_path_factory.mktemp("embed-log") / "llamacpp-embed.log"
    srv = LlamaCppServer(
        ensure_embedding_model(), alias="smollm2-embed", extra_args=["--embedding", "true"], log_path=log
    )
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["tooly"]) as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    llama_servers: list[LlamaCppServer],
    embedder: LlamaCppServer,
    scripted: ScriptedUpstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    a, b = llama_servers
    providers = f"""
        providers:
          llama_a: {{type: llamacpp, base_url: {a.root_url}, models: [smollm2], health: {{interval_s: 60}}}}
          llama_b: {{type: llamacpp, base_url: {b.root_url}, models: [smollm2], health: {{interval_s: 60}}}}
          llama_embed:
            type: llamacpp
            base_url: {embedder.root_url}
            models: [{{name: smollm2-embed, capabilities: [embeddings], context_length: 2048}}]
            health: {{interval_s: 60}}
          scripted: {{type: openai_compatible, base_url: {scripted.base_url}, models: [tooly]}}
    """
    mappings = """
        defaults:
          timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
        models:
          smollm:
            deployments:
              - {provider: llama_a, upstream: smollm2}
              - {provider: llama_b, upstream: smollm2}
          smollm-embed: {provider: llama_embed, upstream: smollm2-embed}
          tooly: {provider: scripted}
    """
    plan = plan_from_yaml(tmp_path_factory.mktemp("doors-llama"), providers, mappings)
    with running_gateway(plan, gateway_settings()) as g:
        yield g


@pytest.fixture
def ac(gw: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.base_url, api_key="client-key", max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
def oc(gw: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gw.base_url, timeout=120) as c:
        yield c


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[OpenAI]:
    with sdk_client(gw.base_url + "/v1", timeout=120) as c:
        yield c


# --------------------------------------------------------------------------- Anthropic Messages


def test_anthropic_chat_stream_and_multi_turn(gw: RunningGateway, ac: anthropic.Anthropic) -> None:
    msg = ac.messages.create(model="smollm", max_tokens=12, system="Answer briefly.", messages=[{"role": "user", "content": "What is the capital of France?"}], extra_body={"temperature": 0})  # fmt: skip
    assert msg.type == "message" and msg.role == "assistant" and msg.model == "smollm"
    assert msg.content[0].type == "text" and msg.content[0].text.strip()
    assert (
        msg.stop_reason in ("end_turn", "max_tokens")
        and msg.usage.input_tokens > 5
        and 0 < msg.usage.output_tokens <= 12
    )
    rec = gw.observer.records[-1]
    assert (rec.door, rec.provider in ("llama_a", "llama_b"), rec.status) == ("anthropic", True, 200)
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada!"}]},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    with ac.messages.stream(model="smollm", max_tokens=12, system=[{"type": "text", "text": "Be brief."}], messages=history, extra_body={"temperature": 0}) as s:  # type: ignore[arg-type]  # fmt: skip
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text.strip() and final.stop_reason in ("end_turn", "max_tokens")  # type: ignore[union-attr]


def test_anthropic_tool_use_loop_scripted(scripted: ScriptedUpstream, ac: anthropic.Anthropic) -> None:
    """Three turns; the upstream's tool calls are scripted (OpenAI shape), the door does the rest."""
    scripted.clear()
    call = {"id": "call_oslo", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}  # fmt: skip
    first = {"id": "c1", "object": "chat.completion", "created": 0, "model": "tooly", "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}}  # fmt: skip
    base = {"id": "c2", "object": "chat.completion.chunk", "created": 0, "model": "tooly"}

    def frag(delta: dict[str, object], finish: str | None = None) -> bytes:
        return sse_event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    second = (
        frag({"role": "assistant", "content": "And Bergen: "}),
        frag({"tool_calls": [{"index": 0, "id": "call_bergen", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        frag({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        frag({"tool_calls": [{"index": 0, "function": {"arguments": '"Bergen"}'}}]}),
        frag({}, "tool_calls"),
        b"data: [DONE]\n\n",
    )  # fmt: skip
    scripted.enqueue(
        Reply.json(first),
        Reply(content_type="text/event-stream", chunks=second),
        Reply.chat("Oslo -3C, Bergen 4C."),
    )
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Oslo and Bergen?"}]
    r1 = ac.messages.create(model="tooly", max_tokens=100, tools=[WEATHER], messages=messages)  # type: ignore[list-item,arg-type]
    assert r1.stop_reason == "tool_use" and r1.content[0].type == "tool_use"
    assert (r1.content[0].id, r1.content[0].input) == ("call_oslo", {"city": "Oslo"})
    messages += [{"role": "assistant", "content": r1.content}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_oslo", "content": "-3C"}]}]  # fmt: skip
    with ac.messages.stream(model="tooly", max_tokens=100, tools=[WEATHER], messages=messages) as s:  # type: ignore[list-item,arg-type]
        r2 = s.get_final_message()
    assert [b.type for b in r2.content] == ["text", "tool_use"] and r2.content[1].input == {"city": "Bergen"}  # type: ignore[union-attr]
    messages += [{"role": "assistant", "content": r2.content}, {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_bergen", "content": "4C", "is_error": False}]}]  # fmt: skip
    r3 = ac.messages.create(model="tooly", max_tokens=100, tools=[WEATHER], messages=messages)  # type: ignore[list-item,arg-type]
    assert r3.content[0].text == "Oslo -3C, Bergen 4C." and r3.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = scripted.requests[-1].json
    assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["input_schema"]}}]  # fmt: skip
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool", "assistant", "tool"]
    assert (
        sent["messages"][3]["tool_calls"][0]["id"] == "call_bergen" and sent["messages"][4]["content"] == "4C"
    )


def test_anthropic_bad_input(gw: RunningGateway, ac: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as exc:
        ac.messages.create(model="smollm", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as nf:
        ac.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["type"] == "error" and nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    for body in (b"", b"{nope", b"[]", b'{"model": "smollm", "max_tokens": 5}', b'{"model": "smollm", "max_tokens": 5, "messages": [{"role": "user", "content": 1}]}'):  # fmt: skip
        r = httpx.post(
            gw.base_url + "/v1/messages",
            content=body,
            headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        )
        assert (
            r.status_code == 400
            and r.json()["type"] == "error"
            and r.json()["error"]["type"] == "invalid_request_error"
        ), r.text
        assert "Traceback" not in r.text


# --------------------------------------------------------------------------- Ollama


def test_ollama_chat_stream_generate_and_json(gw: RunningGateway, oc: ollama.Client) -> None:
    r = oc.chat(
        model="smollm",
        messages=[{"role": "user", "content": "Say hello."}],
        options={"temperature": 0, "num_predict": 8},
    )
    assert (
        r.message.role == "assistant" and r.message.content and r.done and r.done_reason in ("stop", "length")
    )
    assert (
        r.prompt_eval_count
        and r.prompt_eval_count > 3
        and r.eval_count
        and r.eval_count <= 8
        and r.total_duration
    )
    parts = list(oc.chat(model="smollm", stream=True, options={"num_predict": 6, "temperature": 0}, messages=[
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"}, {"role": "user", "content": "What is my name?"},
    ]))  # fmt: skip
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "length"
    assert "".join(p.message.content or "" for p in parts).strip()
    assert (
        parts[-1].eval_duration and parts[-1].prompt_eval_duration
    )  # measured by the door: first token splits them
    gen = oc.generate(
        model="smollm", prompt="The sky is", system="Complete the sentence.", options={"num_predict": 6}
    )
    assert gen.response and gen.done
    j = oc.chat(model="smollm", messages=[{"role": "user", "content": "Give a JSON object with a key name."}], format="json", options={"num_predict": 24, "temperature": 0})  # fmt: skip
    assert (
        (j.message.content or "").lstrip().startswith("{")
    )  # llama.cpp's JSON grammar (may be cut at num_predict)
    rec = gw.observer.records[-1]
    assert (rec.door, rec.endpoint, rec.stream) == (
        "ollama",
        "chat/completions",
        False,
    )  # the client asks stream=False


def test_ollama_embeddings_and_model_lists(gw: RunningGateway, oc: ollama.Client, client: OpenAI) -> None:
    emb = oc.embed(model="smollm-embed", input=["cats purr", "dogs bark"])
    assert (
        len(emb.embeddings) == 2 and len(emb.embeddings[0]) == 576 and emb.embeddings[0] != emb.embeddings[1]
    )
    legacy = oc.embeddings(model="smollm-embed", prompt="cats purr")
    assert list(legacy.embedding) == pytest.approx(list(emb.embeddings[0]), rel=1e-3, abs=1e-4)
    direct = client.embeddings.create(model="smollm-embed", input="cats purr")
    assert direct.data[0].embedding == pytest.approx(list(emb.embeddings[0]), rel=1e-3, abs=1e-4)
    names = [m.model for m in oc.list().models]
    assert names == ["smollm", "smollm-embed", "tooly"]
    assert oc.show("smollm-embed").capabilities == ["embedding"]
    assert oc.show("smollm-embed").modelinfo == {"general.architecture": "aib", "aib.context_length": 2048}
    assert {m.model for m in oc.ps().models} == set(names)


def test_ollama_bad_input(gw: RunningGateway, oc: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        oc.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404 and "not configured" in exc.value.error
    for path, body, status in (
        ("/api/chat", b"", 400), ("/api/chat", b'{"messages": []}', 400), ("/api/chat", b'{"model": "smollm", "messages": "x"}', 400),
        ("/api/chat", b'{"model": "smollm", "messages": [], "options": {"temperature": "hot"}}', 400),
        ("/api/generate", b'{"model": "smollm", "prompt": 5}', 400), ("/api/embed", b'{"model": "smollm-embed"}', 400),
        ("/api/show", b'{"model": "nope"}', 404), ("/api/show", b"{}", 400),
    ):  # fmt: skip
        r = httpx.post(gw.base_url + path, content=body)
        assert (
            r.status_code == status and set(r.json()) == {"error"} and isinstance(r.json()["error"], str)
        ), (path, r.text)


# --------------------------------------------------------------------------- OpenAI Responses


def test_responses_plain_stream_and_multi_turn(gw: RunningGateway, client: OpenAI) -> None:
    r = client.responses.create(model="smollm", input="What is 2+2?", instructions="Answer briefly.", max_output_tokens=10, temperature=0)  # fmt: skip
    assert r.object == "response" and r.status in ("completed", "incomplete") and r.output_text.strip()
    assert (
        r.usage is not None
        and r.usage.input_tokens > 5
        and 0 < r.usage.output_tokens <= 10
        and r.store is False
    )  # type: ignore[attr-defined]
    follow = client.responses.create(model="smollm", max_output_tokens=10, temperature=0, input=[
        {"role": "user", "content": "What is 2+2?"}, *[o.model_dump(exclude_none=True) for o in r.output], {"role": "user", "content": "And 3+3?"},
    ])  # type: ignore[list-item]  # fmt: skip
    assert follow.output_text.strip()
    stream = client.responses.create(model="smollm", input="Say hi.", max_output_tokens=8, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas and deltas == events[-1].response.output_text  # type: ignore[union-attr]
    assert gw.observer.records[-1].door == "responses"


def test_responses_function_calls_scripted(scripted: ScriptedUpstream, client: OpenAI) -> None:
    scripted.clear()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    first = {"id": "c1", "object": "chat.completion", "created": 0, "model": "tooly", "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}]}  # fmt: skip
    scripted.enqueue(Reply.json(first), Reply(content_type="text/event-stream", chunks=(chat_chunk("-3C in Oslo."), chat_chunk("", finish="stop"), b"data: [DONE]\n\n")))  # fmt: skip
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER["input_schema"]}]
    r = client.responses.create(model="tooly", input="Weather in Oslo?", tools=tools)  # type: ignore[arg-type]
    fc = r.output[0]
    assert fc.type == "function_call" and (fc.call_id, fc.name, fc.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Oslo"}',
    )
    stream = client.responses.create(model="tooly", tools=tools, stream=True, input=[  # type: ignore[arg-type]
        {"role": "user", "content": "Weather in Oslo?"}, fc.model_dump(exclude_none=True), {"type": "function_call_output", "call_id": "call_1", "output": "-3C"},
    ])  # type: ignore[list-item]  # fmt: skip
    assert [e for e in stream][-1].response.output_text == "-3C in Oslo."  # type: ignore[union-attr]
    sent = scripted.requests[-1].json["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "-3C",
    }


def test_responses_bad_input(gw: RunningGateway, client: OpenAI) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="smollm", input="x", previous_response_id="resp_123")
    assert exc.value.code == "stateless_gateway" and "previous_response_id" in exc.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    for body in (b"", b'{"model": "smollm"}', b'{"model": "smollm", "input": 3}', b'{"input": "x"}'):
        r = httpx.post(gw.base_url + "/v1/responses", content=body)
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
