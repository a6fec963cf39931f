"""The Ollama fake answers with the shapes Ollama documents (docs/api.md, docs/api/openai-compatibility.mdx)
and produces in its source (server/routes.go, openai/openai.go, middleware/openai.go; v0.33.0-rc2).

Read-only checks use the session fixture ``fake_ollama``; checks that change state use their own fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from aib.devtools import fake_ollama as fo
from aib.devtools.fake_ollama import FakeModel, FakeOllama

pytestmark = pytest.mark.contract

TAG_KEYS = {"name", "model", "modified_at", "size", "digest", "details"}
DETAIL_KEYS = {"parent_model", "format", "family", "families", "parameter_size", "quantization_level"}
PS_KEYS = {"name", "model", "size", "digest", "details", "expires_at", "size_vram", "context_length"}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@contextmanager
def fresh(*models: FakeModel | str, **kwargs: Any) -> Iterator[FakeOllama]:
    with FakeOllama(models or None, **kwargs).serve_in_thread() as fake:
        yield fake


def oa(fake: FakeOllama) -> OpenAI:
    return OpenAI(base_url=f"{fake.base_url}/v1", api_key="ollama", max_retries=0)


def sse(resp: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an SSE body, JSON-decoded except the final ``[DONE]``."""
    events: list[Any] = []
    for block in resp.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: ")
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def openai_error(message: str, etype: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": None}}


# ----- native API ---------------------------------------------------------------------------------


def test_root_and_version(fake_ollama: FakeOllama) -> None:
    r = httpx.get(fake_ollama.base_url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert r.headers["content-type"].startswith("text/plain")
    assert httpx.head(fake_ollama.base_url + "/").status_code == 200
    r = httpx.get(fake_ollama.base_url + "/api/version")
    assert r.json() == {"version": fo.DEFAULT_VERSION}
    assert r.headers["content-type"] == "application/json; charset=utf-8"


def test_tags_shape(fake_ollama: FakeOllama) -> None:
    models = httpx.get(fake_ollama.base_url + "/api/tags").json()["models"]
    names = [m["name"] for m in models]
    assert "llama3.2:latest" in names and "nomic-embed-text:latest" in names
    for m in models:
        assert set(m) == TAG_KEYS
        assert m["model"] == m["name"]
        assert isinstance(m["size"], int) and m["size"] > 0
        assert len(m["digest"]) == 64 and int(m["digest"], 16) >= 0
        assert datetime.fromisoformat(m["modified_at"]).tzinfo is not None
        assert set(m["details"]) == DETAIL_KEYS
        assert m["details"]["format"] == "gguf" and m["details"]["parent_model"] == ""
        assert m["details"]["families"] == [m["details"]["family"]]
    llama = models[names.index("llama3.2:latest")]["details"]
    assert (llama["family"], llama["parameter_size"], llama["quantization_level"]) == (
        "llama",
        "3.2B",
        "Q4_K_M",
    )


def test_show(fake_ollama: FakeOllama) -> None:
    url = fake_ollama.base_url + "/api/show"
    r = httpx.post(url, json={"model": "llama3.2"})
    assert r.status_code == 200
    body = r.json()
    assert {
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    } <= set(body)
    assert set(body["details"]) == DETAIL_KEYS
    assert body["capabilities"] == ["completion"]
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["llama.context_length"] == 131072
    assert httpx.post(url, json={"name": "nomic-embed-text"}).json()["capabilities"] == ["embedding"]
    r = httpx.post(url, json={"model": "nope"})
    assert (r.status_code, r.json()) == (404, {"error": "model 'nope:latest' not found"})
    r = httpx.post(url, content=b"")
    assert (r.status_code, r.json()) == (400, {"error": "missing request body"})
    r = httpx.post(url, json={})
    assert (r.status_code, r.json()) == (400, {"error": "model is required"})
    assert httpx.post(url, content=b"{bad").status_code == 400
    assert httpx.post(url, json=["x"]).status_code == 400


def test_ps_lists_models_loaded_by_requests() -> None:
    with fresh() as fake:
        assert httpx.get(fake.base_url + "/api/ps").json() == {"models": []}
        with oa(fake) as client:
            client.chat.completions.create(model="llama3.2", messages=USER)
        models = httpx.get(fake.base_url + "/api/ps").json()["models"]
        assert [m["name"] for m in models] == ["llama3.2:latest"]
        (m,) = models
        assert set(m) == PS_KEYS and set(m["details"]) == DETAIL_KEYS
        expires = datetime.fromisoformat(m["expires_at"])
        left = expires - datetime.now().astimezone()
        assert timedelta(minutes=4) < left <= timedelta(minutes=5)
        assert m["size_vram"] == 0 and m["context_length"] > 0
        # an expired entry disappears; a removed model too
        fake._loaded["llama3.2:latest"] = datetime.now().astimezone() - timedelta(seconds=1)
        assert httpx.get(fake.base_url + "/api/ps").json() == {"models": []}
        fake._mark_loaded(fake.add_model("gone"))
        fake._models.pop("gone:latest")
        assert httpx.get(fake.base_url + "/api/ps").json() == {"models": []}


def test_unknown_route_and_method_like_gin(fake_ollama: FakeOllama) -> None:
    r = httpx.get(fake_ollama.base_url + "/api/nothing")
    assert (r.status_code, r.text) == (404, "404 page not found")
    r = httpx.get(fake_ollama.base_url + "/api/show")
    assert (r.status_code, r.text) == (405, "405 method not allowed")


# ----- OpenAI-compatible API ---------------------------------------------------------------------


def test_v1_models(fake_ollama: FakeOllama) -> None:
    r = httpx.get(fake_ollama.base_url + "/v1/models")
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    tags = {m["name"]: m for m in httpx.get(fake_ollama.base_url + "/api/tags").json()["models"]}
    assert {m["id"] for m in body["data"]} == set(tags)
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model" and m["owned_by"] == "library"
        assert m["created"] == int(datetime.fromisoformat(tags[m["id"]]["modified_at"]).timestamp())
    with oa(fake_ollama) as client:
        assert "llama3.2:latest" in [m.id for m in client.models.list()]


def test_v1_models_empty_is_null_and_namespaces() -> None:
    with fresh() as fake:
        for name in fake.model_names():
            fake.remove(name)
        assert httpx.get(fake.base_url + "/v1/models").json() == {"object": "list", "data": None}
        assert httpx.get(fake.base_url + "/api/tags").json() == {"models": []}
        fake.pull("jane/tiny:q4")
        fake.pull("hf.co/org/repo:Q8_0")
        owners = {m["id"]: m["owned_by"] for m in httpx.get(fake.base_url + "/v1/models").json()["data"]}
        assert owners == {"jane/tiny:q4": "jane", "hf.co/org/repo:Q8_0": "org"}


def test_v1_model_retrieve(fake_ollama: FakeOllama) -> None:
    r = httpx.get(fake_ollama.base_url + "/v1/models/llama3.2")
    assert r.status_code == 200
    assert set(r.json()) == {"id", "object", "created", "owned_by"}
    assert r.json()["id"] == "llama3.2" and r.json()["owned_by"] == "library"
    r = httpx.get(fake_ollama.base_url + "/v1/models/nope")
    assert r.status_code == 404
    assert r.json() == openai_error("model 'nope:latest' not found", "not_found_error")


def test_chat_completion(fake_ollama: FakeOllama) -> None:
    r = httpx.post(
        fake_ollama.base_url + "/v1/chat/completions", json={"model": "llama3.2", "messages": USER}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-") and 0 <= int(body["id"].split("-")[1]) < 999
    assert body["object"] == "chat.completion" and body["system_fingerprint"] == "fp_ollama"
    assert body["model"] == "llama3.2"  # echoed as sent
    assert abs(body["created"] - time.time()) < 60
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from fake Ollama (llama3.2)."},
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    with oa(fake_ollama) as client:
        resp = client.chat.completions.create(model="llama3.2:latest", messages=USER, max_tokens=2)
    assert resp.choices[0].message.content == "Hello from"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 2


def test_chat_stream_without_usage(fake_ollama: FakeOllama) -> None:
    r = httpx.post(
        fake_ollama.base_url + "/v1/chat/completions",
        json={"model": "llama3.2", "messages": USER, "stream": True},
    )
    assert r.headers["content-type"] == "text/event-stream"
    events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(
        set(c) == {"id", "object", "created", "model", "system_fingerprint", "choices"} for c in chunks
    )
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "Hello"}
    assert deltas[1] == {"content": " from"}
    assert "".join(d.get("content", "") for d in deltas) == "Hello from fake Ollama (llama3.2)."
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]


def test_chat_stream_include_usage(fake_ollama: FakeOllama) -> None:
    r = httpx.post(
        fake_ollama.base_url + "/v1/chat/completions",
        json={
            "model": "llama3.2",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse(r)
    assert events[-1] == "[DONE]"
    usage_chunk, finish_chunk = events[-2], events[-3]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert finish_chunk["choices"][0]["finish_reason"] == "stop" and "usage" not in finish_chunk
    assert all("usage" not in c for c in events[:-2])
    with oa(fake_ollama) as client:
        stream = client.chat.completions.create(
            model="llama3.2",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7


def test_chat_errors(fake_ollama: FakeOllama) -> None:
    url = fake_ollama.base_url + "/v1/chat/completions"
    r = httpx.post(url, json={"model": "nope", "messages": USER})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json() == openai_error("model 'nope' not found", "not_found_error")
    r = httpx.post(url, json={"model": "llama3.2", "messages": []})
    assert (r.status_code, r.json()) == (
        400,
        openai_error("[] is too short - 'messages'", "invalid_request_error"),
    )
    r = httpx.post(url, json={"messages": USER})
    assert (r.status_code, r.json()) == (400, openai_error("model is required", "invalid_request_error"))
    r = httpx.post(url, json={"model": "nomic-embed-text", "messages": USER})
    assert r.json() == openai_error('"nomic-embed-text" does not support chat', "invalid_request_error")
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, json=[1]).status_code == 400
    with oa(fake_ollama) as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=USER)
    assert info.value.status_code == 404


def test_completions(fake_ollama: FakeOllama) -> None:
    url = fake_ollama.base_url + "/v1/completions"
    body = httpx.post(url, json={"model": "llama3.2", "prompt": "Once upon a time"}).json()
    assert set(body) == {"id", "object", "created", "choices", "model", "system_fingerprint", "usage"}
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "Hello from fake Ollama (llama3.2).", "index": 0, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}

    plain = sse(httpx.post(url, json={"model": "llama3.2", "prompt": "Hi", "stream": True}))
    assert plain[-1] == "[DONE]" and all("usage" not in c for c in plain[:-1])
    assert plain[-2]["choices"] == [{"text": "", "index": 0, "finish_reason": "stop"}]

    events = sse(
        httpx.post(
            url,
            json={
                "model": "llama3.2",
                "prompt": "Hi",
                "stream": True,
                "max_tokens": 3,
                "stream_options": {"include_usage": True},
            },
        )
    )
    chunks, usage_chunk = events[:-2], events[-2]
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert [c["usage"] for c in chunks] == [zero] * 4  # Ollama puts a zero usage on every chunk
    assert [c["choices"][0]["text"] for c in chunks] == ["Hello", " from", " fake", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 3,
        "total_tokens": 4,
    }

    r = httpx.post(url, json={"model": "llama3.2", "prompt": ["a", "b"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, json={"model": "nomic-embed-text", "prompt": "x"})
    assert r.json() == openai_error('"nomic-embed-text" does not support generate', "invalid_request_error")
    r = httpx.post(url, json={"model": "nope", "prompt": "x"})
    assert (r.status_code, r.json()) == (404, openai_error("model 'nope' not found", "not_found_error"))


def test_embeddings(fake_ollama: FakeOllama) -> None:
    url = fake_ollama.base_url + "/v1/embeddings"
    body = httpx.post(url, json={"model": "nomic-embed-text", "input": "Why is the sky blue?"}).json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == "nomic-embed-text"
    (item,) = body["data"]
    assert (
        set(item) == {"object", "embedding", "index"} and item["object"] == "embedding" and item["index"] == 0
    )
    assert len(item["embedding"]) == 768
    assert abs(sum(v * v for v in item["embedding"]) - 1) < 1e-4
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}

    two = httpx.post(url, json={"model": "llama3.2", "input": ["a", "b"], "dimensions": 8}).json()
    assert [d["index"] for d in two["data"]] == [0, 1] and [len(d["embedding"]) for d in two["data"]] == [
        8,
        8,
    ]
    assert two["data"][0]["embedding"] != two["data"][1]["embedding"]

    b64 = httpx.post(
        url, json={"model": "llama3.2", "input": ["a"], "dimensions": 8, "encoding_format": "base64"}
    ).json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    assert list(struct.unpack("<8f", raw)) == two["data"][0]["embedding"]

    assert len(httpx.post(url, json={"model": "llama3.2", "input": ""}).json()["data"]) == 1
    with oa(fake_ollama) as client:
        emb = client.embeddings.create(model="nomic-embed-text", input=["x", "y"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 768


@pytest.mark.parametrize(
    "payload, status, message",
    [
        ({"model": "nomic-embed-text", "input": []}, 400, "invalid input"),
        ({"model": "nomic-embed-text"}, 400, "invalid input"),
        ({"model": "nomic-embed-text", "input": [1, 2]}, 400, "invalid input type"),
        (
            {"model": "nomic-embed-text", "input": "x", "encoding_format": "int8"},
            400,
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
        ({"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
    ],
)
def test_embedding_errors(
    fake_ollama: FakeOllama, payload: dict[str, Any], status: int, message: str
) -> None:
    r = httpx.post(fake_ollama.base_url + "/v1/embeddings", json=payload)
    etype = "not_found_error" if status == 404 else "invalid_request_error"
    assert (r.status_code, r.json()) == (status, openai_error(message, etype))


# ----- pulling models: discovery ------------------------------------------------------------------


def test_pull_makes_a_model_appear() -> None:
    with fresh() as fake:
        base = fake.base_url

        def tags() -> list[str]:
            return [m["name"] for m in httpx.get(base + "/api/tags").json()["models"]]

        def v1() -> list[str]:
            return [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]]

        assert "qwen2:0.5b" not in tags()
        r = httpx.post(
            base + "/_fake/pull", json={"name": "qwen2:0.5b", "family": "qwen2", "parameter_size": "494M"}
        )
        assert r.status_code == 200 and r.json()["name"] == "qwen2:0.5b"
        assert "qwen2:0.5b" in tags() and "qwen2:0.5b" in v1()
        details = next(
            m for m in httpx.get(base + "/api/tags").json()["models"] if m["name"] == "qwen2:0.5b"
        )["details"]
        assert (details["family"], details["families"], details["parameter_size"]) == (
            "qwen2",
            ["qwen2"],
            "494M",
        )
        with oa(fake) as client:
            resp = client.chat.completions.create(model="qwen2:0.5b", messages=USER)
        assert resp.model == "qwen2:0.5b"

        # Ollama's own pull endpoint, non-streamed and streamed (NDJSON progress)
        r = httpx.post(base + "/api/pull", json={"model": "smollm2", "stream": False})
        assert r.json() == {"status": "success"} and "smollm2:latest" in tags()
        r = httpx.post(base + "/api/pull", json={"name": "phi3:mini"})
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        assert {"status", "digest", "total", "completed"} <= set(lines[2])
        assert "phi3:mini" in v1()

        fake.pull("tinyllama")
        assert "tinyllama:latest" in tags()

        # removal: Python, test endpoint, Ollama's DELETE /api/delete
        assert fake.remove("tinyllama") is True and fake.remove("tinyllama") is False
        assert httpx.post(base + "/_fake/remove", json={"name": "phi3:mini"}).json() == {"removed": True}
        r = httpx.request("DELETE", base + "/api/delete", json={"model": "qwen2:0.5b"})
        assert r.status_code == 200
        r = httpx.request("DELETE", base + "/api/delete", json={"model": "qwen2:0.5b"})
        assert (r.status_code, r.json()) == (404, {"error": "model 'qwen2:0.5b' not found"})
        assert not {"tinyllama:latest", "phi3:mini", "qwen2:0.5b"} & set(tags())


def test_pull_validation(fake_ollama: FakeOllama) -> None:
    base = fake_ollama.base_url
    assert httpx.post(base + "/_fake/pull", json={}).json() == {"error": "name is required"}
    assert httpx.post(base + "/_fake/pull", json={"name": "x", "bogus": 1}).status_code == 400
    assert httpx.post(base + "/api/pull", json={}).json() == {"error": "invalid model name"}
    for path in ("/_fake/pull", "/_fake/remove", "/api/pull"):
        assert httpx.post(base + path, content=b"").json() == {"error": "missing request body"}
    assert httpx.request("DELETE", base + "/api/delete", content=b"").status_code == 400
    assert "x:latest" not in fake_ollama.model_names()


# ----- test controls ------------------------------------------------------------------------------


def test_fail_next_and_request_log() -> None:
    with fresh() as fake:
        fake.fail_next(503, "server busy", count=2)
        url = fake.base_url + "/v1/chat/completions"
        for _ in range(2):
            r = httpx.post(url, json={"model": "llama3.2", "messages": USER})
            assert (r.status_code, r.json()) == (503, openai_error("server busy", "api_error"))
        assert httpx.post(url, json={"model": "llama3.2", "messages": USER}).status_code == 200
        fake.fail_next()
        r = httpx.post(fake.base_url + "/v1/embeddings", json={"model": "llama3.2", "input": "x"})
        assert r.json() == openai_error("an error was encountered while running the model", "api_error")
        fake.fail_next(400, "bad")
        r = httpx.post(fake.base_url + "/v1/completions", json={"model": "llama3.2", "prompt": "x"})
        assert r.json() == openai_error("bad", "invalid_request_error")
        assert fake.requests[0] == ("POST", "/v1/chat/completions")
        assert len(fake.requests) == 5


def test_reply_and_delays() -> None:
    with fresh(FakeModel("m1"), reply="one two three", token_delay=0.02, delay=0.05) as fake:
        t0 = time.perf_counter()
        events = sse(
            httpx.post(
                fake.base_url + "/v1/chat/completions", json={"model": "m1", "messages": USER, "stream": True}
            )
        )
        assert time.perf_counter() - t0 >= 0.05 + 3 * 0.02
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "one two three"
        events = sse(
            httpx.post(fake.base_url + "/v1/completions", json={"model": "m1", "prompt": "x", "stream": True})
        )
        assert [e["choices"][0]["text"] for e in events[:-1]] == ["one", " two", " three", ""]
    with fresh(reply=lambda model, messages: f"{model}:{len(messages)}") as fake:
        with oa(fake) as client:
            resp = client.chat.completions.create(model="llama3.2", messages=[*USER, *USER])
        assert resp.choices[0].message.content == "llama3.2:2"
    with fresh(FakeModel("m1"), reply="") as fake:
        events = sse(
            httpx.post(
                fake.base_url + "/v1/chat/completions", json={"model": "m1", "messages": USER, "stream": True}
            )
        )
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_content_parts_are_counted(fake_ollama: FakeOllama) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    body = httpx.post(
        fake_ollama.base_url + "/v1/chat/completions", json={"model": "llama3.2", "messages": messages}
    ).json()
    assert body["usage"]["prompt_tokens"] == 5


# ----- running it ---------------------------------------------------------------------------------


async def test_async_start_stop() -> None:
    fake = FakeOllama([FakeModel("a"), "b:7b"], version="0.9.9")
    await fake.start()
    try:
        assert fake.port > 0
        async with httpx.AsyncClient(base_url=fake.base_url) as client:
            assert (await client.get("/api/version")).json() == {"version": "0.9.9"}
            names = [m["name"] for m in (await client.get("/api/tags")).json()["models"]]
            assert names == ["a:latest", "b:7b"]
    finally:
        await fake.stop()
    await fake.stop()  # idempotent
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(fake.base_url + "/")


async def test_serve_until_stopped() -> None:
    stop = asyncio.Event()
    ready: list[FakeOllama] = []
    task = asyncio.create_task(fo.serve(stop=stop, on_ready=ready.append))
    for _ in range(200):
        if ready:
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient() as client:
        assert (await client.get(ready[0].base_url + "/")).text == "Ollama is running"
    stop.set()
    await asyncio.wait_for(task, 5)


def test_port_in_use_is_reported() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError), FakeOllama().serve_in_thread(port=s.getsockname()[1]):
            pass


def test_main_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_serve = fo.serve
    served: list[FakeOllama] = []

    async def serve_once(host: str, port: int, *, fake: FakeOllama, on_ready: Any) -> None:
        stop = asyncio.Event()

        def ready(f: FakeOllama) -> None:
            on_ready(f)
            served.append(f)
            stop.set()

        await real_serve(host, port, fake=fake, stop=stop, on_ready=ready)

    monkeypatch.setattr(fo, "serve", serve_once)
    assert fo.main(["--port", "0", "--model", "x", "--version", "1.2.3"]) == 0
    assert served[0].model_names() == ["x:latest"] and served[0].version == "1.2.3"
    assert "fake ollama listening on http://127.0.0.1:" in capsys.readouterr().out


def test_runs_as_a_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aib.devtools.fake_ollama",
            "--port",
            str(port),
            "--model",
            "a",
            "--model",
            "b:1b",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"fake ollama listening on http://127.0.0.1:{port}"
        tags = httpx.get(f"http://127.0.0.1:{port}/api/tags").json()
        assert [m["name"] for m in tags["models"]] == ["a:latest", "b:1b"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
