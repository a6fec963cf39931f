"""Ollama's native API out (``type: ollama``, ``api: native``, the default), against the contract fake:
OpenAI clients reach /api/chat, /api/generate and /api/embed with ``options.num_ctx`` from the model's
``context_length`` and its ``keep_alive``; NDJSON comes back as SSE; a prompt Ollama cut is counted and
logged. The Ollama door in front of an Ollama upstream passes requests through as sent."""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from openai import OpenAI

from aib.devtools.fake_ollama import FakeModel, FakeOllama
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)
from openai_support import sdk_client

pytestmark = pytest.mark.contract

MAPPINGS = """
    models:
      chat:
        provider: ollama
        upstream: llama3.2:latest
      small:
        provider: ollama
        upstream: tiny:latest
      embed:
        provider: ollama
        upstream: nomic-embed-text:latest
      elsewhere:
        provider: scripted
        upstream: m
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    models = [FakeModel("llama3.2:latest"), FakeModel("tiny:latest"), FakeModel("nomic-embed-text:latest", capabilities=["embedding"], embedding_length=8)]  # fmt: skip
    with FakeOllama(models).serve_in_thread() as f:
        yield f


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["m"]) as up:
        yield up


@pytest.fixture(scope="module")
def gw(
    fake: FakeOllama, scripted: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    providers = f"""
        providers:
          ollama:
            type: ollama
            base_url: {fake.base_url}
            health: {{interval_s: 60}}
            models:
              - {{name: "llama3.2:latest", context_length: 16384, keep_alive: 30m}}
              - {{name: "tiny:latest", context_length: 8}}
              - {{name: "nomic-embed-text:latest", capabilities: [embeddings], context_length: 2048}}
          scripted:
            type: openai_compatible
            base_url: {scripted.base_url}
            models: [m]
    """
    with running_gateway(
        plan_from_yaml(tmp_path_factory.mktemp("out-ollama"), providers, MAPPINGS), gateway_settings()
    ) as g:
        yield g


@pytest.fixture
def client(gw: RunningGateway) -> Iterator[OpenAI]:
    with sdk_client(gw.base_url) as c:
        yield c


@pytest.fixture
def oc(gw: RunningGateway) -> Iterator[ollama.Client]:
    with ollama.Client(host=gw.base_url) as c:
        yield c


def last_body(fake: FakeOllama, path: str) -> dict[str, object]:
    return next(b for p, b in reversed(fake.bodies) if p == path)


def test_openai_chat_goes_native_with_num_ctx_and_keep_alive(
    gw: RunningGateway, fake: FakeOllama, client: OpenAI
) -> None:
    r = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi there"}], max_tokens=50, temperature=0.2, stop=["zzz"])  # fmt: skip
    assert r.choices[0].message.content == "Hello from fake Ollama (llama3.2:latest)."
    assert r.choices[0].finish_reason == "stop" and r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (2, 5)
    body = last_body(fake, "/api/chat")
    assert body["model"] == "llama3.2:latest" and body["stream"] is False and body["keep_alive"] == "30m"
    assert body["options"] == {"temperature": 0.2, "num_predict": 50, "stop": ["zzz"], "num_ctx": 16384}
    rec = gw.observer.records[-1]
    assert (rec.door, rec.prompt_tokens, rec.completion_tokens, rec.prompt_truncated) == (
        "openai",
        2,
        5,
        False,
    )


def test_openai_stream_from_ndjson(gw: RunningGateway, fake: FakeOllama, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=3)  # fmt: skip
    parts = list(stream)
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert text == "Hello from fake"
    assert [p.choices[0].finish_reason for p in parts if p.choices and p.choices[0].finish_reason] == [
        "length"
    ]
    assert last_body(fake, "/api/chat")["stream"] is True
    raw = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
    assert raw.headers["content-type"].startswith("text/event-stream") and raw.text.endswith(
        "data: [DONE]\n\n"
    )
    assert '"usage":{"prompt_tokens":1,"completion_tokens":5' in raw.text


def test_tool_calls_come_back_as_openai_tool_calls(
    gw: RunningGateway, fake: FakeOllama, client: OpenAI
) -> None:
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]  # fmt: skip
    fake.enqueue_tool_calls({"name": "weather", "arguments": {"city": "Oslo"}})
    r = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "weather?"}], tools=tools
    )  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.function.name, call.function.arguments, r.choices[0].finish_reason) == (
        "weather",
        '{"city":"Oslo"}',
        "tool_calls",
    )  # type: ignore[union-attr]
    assert last_body(fake, "/api/chat")["tools"] == tools
    fake.enqueue_tool_calls({"name": "weather", "arguments": {"city": "Rome"}})
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True
    )  # type: ignore[arg-type]
    frags = [tc for p in stream if p.choices for tc in (p.choices[0].delta.tool_calls or [])]
    assert (
        frags[0].function.name == "weather"
        and "".join(f.function.arguments or "" for f in frags) == '{"city":"Rome"}'
    )  # type: ignore[union-attr]


def test_a_prompt_ollama_cut_is_counted_and_logged(
    gw: RunningGateway, fake: FakeOllama, caplog: pytest.LogCaptureFixture, client: OpenAI
) -> None:
    """tiny:latest has context_length 8: a 20-word prompt is cut to 8 tokens by Ollama (the fake does
    as Ollama does); prompt_eval_count then fills the context."""
    with caplog.at_level(logging.WARNING, "aib.gateway"):
        client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": " ".join(["word"] * 20)}]
        )
    assert last_body(fake, "/api/chat")["options"] == {"num_ctx": 8}
    rec = gw.observer.wait_for(gw.observer.records[-1].request_id)
    assert rec.prompt_truncated and rec.prompt_tokens == 8
    assert "most likely cut to fit" in caplog.text and "raise context_length" in caplog.text
    client.chat.completions.create(model="small", messages=[{"role": "user", "content": "two words"}])
    assert not gw.observer.records[-1].prompt_truncated


def test_completions_go_raw_to_generate(gw: RunningGateway, fake: FakeOllama, client: OpenAI) -> None:
    r = client.completions.create(model="chat", prompt="Once upon", max_tokens=2)
    assert (r.object, r.choices[0].text, r.choices[0].finish_reason) == (
        "text_completion",
        "Hello from",
        "length",
    )
    body = last_body(fake, "/api/generate")
    assert (body["prompt"], body["raw"], body["options"]) == (
        "Once upon",
        True,
        {"num_predict": 2, "num_ctx": 16384},
    )
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(model="chat", prompt="x", stream=True)
        if c.choices
    )
    assert text == "Hello from fake Ollama (llama3.2:latest)."


def test_embeddings_through_api_embed(gw: RunningGateway, fake: FakeOllama, client: OpenAI) -> None:
    r = client.embeddings.create(model="embed", input=["alpha", "beta gamma"])  # the SDK asks for base64
    assert [len(d.embedding) for d in r.data] == [8, 8] and r.usage.prompt_tokens == 3
    body = last_body(fake, "/api/embed")
    assert body == {"model": "nomic-embed-text:latest", "input": ["alpha", "beta gamma"], "truncate": True, "options": {"num_ctx": 2048}}  # fmt: skip
    floats = httpx.post(gw.base_url + "/v1/embeddings", json={"model": "embed", "input": "alpha"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(r.data[0].embedding)
    b64 = httpx.post(
        gw.base_url + "/v1/embeddings", json={"model": "embed", "input": "alpha", "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == pytest.approx(floats["data"][0]["embedding"])


def test_ollama_errors_keep_their_meaning(gw: RunningGateway, fake: FakeOllama) -> None:
    fake.fail_next(500, "an error was encountered while running the model")
    r = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}]},
    )
    assert (
        r.status_code == 502
        and "an error was encountered while running the model" in r.json()["error"]["message"]
    )
    r = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 3},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})  # fmt: skip
    assert r.status_code == 400 and "inline images only" in r.json()["error"]["message"]


def test_the_ollama_door_passes_requests_through_to_ollama(
    gw: RunningGateway, fake: FakeOllama, oc: ollama.Client
) -> None:
    r = oc.chat(model="chat", messages=[{"role": "user", "content": "hi"}], options={"mirostat": 2, "num_ctx": 1024}, keep_alive="5m", think=False)  # fmt: skip
    assert r.message.content == "Hello from fake Ollama (llama3.2:latest)." and r.done_reason == "stop"
    body = last_body(fake, "/api/chat")
    assert (
        body["options"] == {"mirostat": 2, "num_ctx": 1024} and body["keep_alive"] == "5m"
    )  # the client's own win
    assert body["model"] == "llama3.2:latest" and body["think"] is False
    parts = list(oc.chat(model="chat", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content or "" for p in parts) == "Hello from fake Ollama (llama3.2:latest)."
    assert parts[-1].done and parts[-1].eval_count == 5
    assert last_body(fake, "/api/chat")["options"] == {
        "num_ctx": 16384
    }  # the config's context when the client sets none
    gen = oc.generate(model="chat", prompt="", keep_alive=0)  # unload: only an Ollama upstream can do that
    assert gen.done_reason == "unload"
    emb = oc.embed(model="embed", input="alpha")
    assert len(emb.embeddings[0]) == 8
    rec = gw.observer.records[-1]
    assert (rec.door, rec.provider) == ("ollama", "ollama")


def test_what_only_ollama_understands_is_refused_elsewhere(gw: RunningGateway, oc: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        oc.chat(model="elsewhere", messages=[{"role": "user", "content": "hi"}], options={"mirostat": 2})
    assert exc.value.status_code == 400 and "options.mirostat" in exc.value.error
    assert oc.chat(
        model="elsewhere",
        messages=[{"role": "user", "content": "hi"}],
        options={"num_ctx": 4096, "temperature": 0},
    ).done


def test_models_listed_in_ollamas_shape(gw: RunningGateway, oc: ollama.Client) -> None:
    names = [m.model for m in oc.list().models]
    assert names == ["chat", "small", "embed", "elsewhere"]
    shown = oc.show("chat")
    assert shown.modelinfo == {
        "general.architecture": "aib",
        "aib.context_length": 16384,
    } and shown.capabilities == ["completion"]
    assert "embedding" in (oc.show("embed").capabilities or [])
    with pytest.raises(ollama.ResponseError) as exc:
        oc.show("nope")
    assert exc.value.status_code == 404
    assert [m.model for m in oc.ps().models] == names  # health checks off: every deployment counts as up
    assert httpx.get(gw.base_url + "/api/version").json() == {"version": "0.12.0"}
    with pytest.raises(ollama.ResponseError) as exc:
        oc.pull("llama3.2")
    assert exc.value.status_code == 501 and "Ollama server itself" in exc.value.error


def test_config_keeps_ollama_settings_where_they_belong(tmp_path: Path) -> None:
    from aib.config.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_alive is an Ollama setting"):
        plan_from_yaml(tmp_path, "providers:\n  a:\n    type: vllm\n    base_url: http://127.0.0.1:1\n    models: [{name: x, keep_alive: 5m}]\n", "models:\n  x: {provider: a}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="responses_api needs"):
        plan_from_yaml(tmp_path, "providers:\n  a:\n    type: ollama\n    base_url: http://127.0.0.1:1\n    responses_api: true\n    models: [x]\n", "models:\n  x: {provider: a}\n")  # fmt: skip
    plan, _ = plan_from_yaml(tmp_path, "providers:\n  a:\n    type: ollama\n    api: openai\n    base_url: http://127.0.0.1:1\n    responses_api: true\n    models: [x]\n", "models:\n  x: {provider: a}\n")  # fmt: skip
    info = plan.providers["a"]
    assert (info.wire, info.native_apis, info.api_base) == (
        None,
        frozenset({"responses"}),
        "http://127.0.0.1:1/v1",
    )
