"""The gateway against the Ollama contract fake: /v1 passthrough (``api: openai``), streams, discovery,
health. The native API (the default, ``api: native``) is in test_outbound_ollama.py.

Read-only checks use the session fixture ``fake_ollama``; checks that install or remove models or
inject failures run their own fake.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aib.devtools.fake_ollama import FakeOllama
from gateway_client import model_ids
from gateway_harness import (
    RunningGateway,
    assert_envelope,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_data,
    wait_until,
)
from openai_support import sdk_client

pytestmark = pytest.mark.contract

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]
MAPPINGS = """
    models:
      local-llama:
        provider: ollama
        upstream: llama3.2:latest
        aliases: [llama]
      embed:
        provider: ollama
        upstream: nomic-embed-text:latest
    patterns:
      - match: "ollama/*"
        provider: ollama
        upstream: "{1}"
"""


def ollama_gateway(
    tmp_path: Path, fake: FakeOllama, interval_s: float = 60
) -> contextlib.AbstractContextManager[RunningGateway]:
    providers = f"""
        providers:
          ollama:
            type: ollama
            api: openai
            base_url: {fake.base_url}
            discovery: true
            health: {{interval_s: {interval_s}, timeout_s: 2}}
    """
    return running_gateway(
        plan_from_yaml(tmp_path, providers, MAPPINGS), gateway_settings(health_checks=True)
    )


@pytest.fixture(scope="module")
def gw(fake_ollama: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with ollama_gateway(tmp_path_factory.mktemp("ollama-gw"), fake_ollama) as g:
        g.wait_first_probe()
        yield g


def post(gw: RunningGateway, body: dict[str, object], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, timeout=10)


def test_chat_passthrough(gw: RunningGateway, fake_ollama: FakeOllama) -> None:
    r = post(gw, {"model": "local-llama", "messages": CHAT, "max_tokens": 50})
    assert r.status_code == 200
    assert (r.headers["x-aib-provider"], r.headers["x-aib-model"]) == ("ollama", "llama3.2:latest")
    body = r.json()
    # Ollama's own OpenAI shape, passed on byte for byte
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["system_fingerprint"] == "fp_ollama" and body["model"] == "llama3.2:latest"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from fake Ollama (llama3.2:latest).",
    }
    assert body["usage"]["completion_tokens"] == 5
    assert ("POST", "/v1/chat/completions") in fake_ollama.requests


def test_chat_with_the_openai_client(gw: RunningGateway) -> None:
    c = sdk_client(gw.base_url + "/v1", timeout=10)
    out = c.chat.completions.create(model="llama", messages=CHAT, max_tokens=3)
    assert out.choices[0].message.content == "Hello from fake"
    assert out.choices[0].finish_reason == "length"
    emb = c.embeddings.create(model="embed", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 768


def test_pattern_to_a_model_ollama_lacks_passes_its_404_on(gw: RunningGateway) -> None:
    r = post(gw, {"model": "ollama/mistral:7b", "messages": CHAT})
    err = assert_envelope(r, 404)
    assert err["message"] == "model 'mistral:7b' not found"  # Ollama's words
    assert err["type"] == "not_found_error"
    assert r.headers["x-aib-provider"] == "ollama"


def test_stream_with_include_usage(gw: RunningGateway) -> None:
    body = {
        "model": "local-llama",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = post(gw, body)
    assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello from fake Ollama (llama3.2:latest)."
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5


def test_stream_without_include_usage_hides_the_usage_chunk(gw: RunningGateway) -> None:
    r = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "local-llama", "messages": CHAT, "stream": True},
        headers={"x-request-id": "ollama-usage"},
        timeout=10,
    )
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert all(e["choices"] for e in events) and not any(e.get("usage") for e in events)
    rec = gw.observer.wait_for("ollama-usage")  # the gateway asked for usage anyway, for its metrics
    assert (rec.prompt_tokens, rec.completion_tokens) == (5, 5)  # words, as the fake counts


def test_stream_through_the_openai_client(gw: RunningGateway) -> None:
    c = sdk_client(gw.base_url, timeout=10)
    chunks = list(
        c.chat.completions.create(
            model="llama", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).startswith("Hello")
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 10


def test_health_uses_api_tags(gw: RunningGateway, fake_ollama: FakeOllama) -> None:
    r = httpx.get(gw.base_url + "/health", timeout=10)
    assert r.status_code == 200
    p = r.json()["providers"]["ollama"]
    assert p["status"] == "healthy" and p["type"] == "ollama"
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= set(p["discovered_models"])
    before = len(fake_ollama.requests)  # the fake is shared: look only at what one probe round sends
    gw.probe_now()
    assert fake_ollama.requests[before:] == [("GET", "/api/tags")]  # discovery reuses that answer


# --------------------------------------------------------------------------- own fakes (state changes)


@pytest.fixture
def own_fake() -> Iterator[FakeOllama]:
    with FakeOllama().serve_in_thread() as fake:
        yield fake


def test_pulled_model_becomes_routable_after_a_probe(own_fake: FakeOllama, tmp_path: Path) -> None:
    with ollama_gateway(tmp_path, own_fake, interval_s=0.2) as gw:
        gw.wait_first_probe()
        assert "qwen-test:1b" not in model_ids(gw)
        assert_envelope(post(gw, {"model": "qwen-test:1b", "messages": CHAT}), 404, "model_not_found")
        own_fake.pull("qwen-test:1b")
        wait_until(lambda: "qwen-test:1b" in model_ids(gw), 5, 0.05, "the pulled model in /v1/models")
        r = post(gw, {"model": "qwen-test:1b", "messages": CHAT})
        assert r.status_code == 200 and r.headers["x-aib-provider"] == "ollama"
        assert r.json()["choices"][0]["message"]["content"] == "Hello from fake Ollama (qwen-test:1b)."
        explain = httpx.get(gw.base_url + "/admin/route", params={"model": "qwen-test:1b"}, timeout=10).json()
        assert explain["matched_by"] == "discovered"
        owners = {
            m["id"]: m["owned_by"] for m in httpx.get(gw.base_url + "/v1/models", timeout=10).json()["data"]
        }
        assert owners["qwen-test:1b"] == "ollama"
        # removed on the server: no longer routable after the next probe
        own_fake.remove("qwen-test:1b")
        wait_until(lambda: "qwen-test:1b" not in model_ids(gw), 5, 0.05, "the removed model to disappear")
        assert_envelope(post(gw, {"model": "qwen-test:1b", "messages": CHAT}), 404, "model_not_found")


def test_pull_over_http_then_probe_now(own_fake: FakeOllama, tmp_path: Path) -> None:
    with ollama_gateway(tmp_path, own_fake, interval_s=60) as gw:
        gw.wait_first_probe()
        r = httpx.post(
            own_fake.base_url + "/api/pull", json={"model": "phi3:mini", "stream": False}, timeout=10
        )
        assert r.status_code == 200
        assert "phi3:mini" not in model_ids(gw)  # not until the gateway looks again
        gw.probe_now()
        assert "phi3:mini" in model_ids(gw)
        assert post(gw, {"model": "phi3:mini", "messages": CHAT}).status_code == 200


def test_ollama_error_is_an_envelope_naming_the_provider(own_fake: FakeOllama, tmp_path: Path) -> None:
    with ollama_gateway(tmp_path, own_fake) as gw:
        gw.wait_first_probe()
        own_fake.fail_next(500, "an error was encountered while running the model", count=3)
        err = assert_envelope(post(gw, {"model": "local-llama", "messages": CHAT}), 502, "upstream_error")
        assert "ollama" in err["message"] and "an error was encountered" in err["message"]
        # the route has no fallback and max_attempts 3 counts deployments, not retries of one
        assert [p for m, p in own_fake.requests if m == "POST"] == ["/v1/chat/completions"]


def test_health_unhealthy_when_ollama_goes_away(tmp_path: Path) -> None:
    fake = FakeOllama()
    serving: contextlib.AbstractContextManager[FakeOllama] | None = fake.serve_in_thread()
    assert serving is not None
    serving.__enter__()
    try:
        with ollama_gateway(tmp_path, fake, interval_s=0.2) as gw:
            gw.wait_first_probe()
            assert httpx.get(gw.base_url + "/health", timeout=10).status_code == 200
            serving.__exit__(None, None, None)  # Ollama stops
            serving = None

            def down() -> bool:
                return httpx.get(gw.base_url + "/health", timeout=10).status_code == 503

            wait_until(down, 5, 0.05, "/health 503")
            p = httpx.get(gw.base_url + "/health", timeout=10).json()["providers"]["ollama"]
            assert p["status"] == "unhealthy" and re.search(
                r"cannot connect|unreachable|refused", p["last_error"], re.I
            )
            err = assert_envelope(
                post(gw, {"model": "local-llama", "messages": CHAT}), 502, "upstream_unreachable"
            )
            assert "ollama" in err["message"]
    finally:
        if serving is not None:
            serving.__exit__(None, None, None)


@pytest.mark.parametrize("include_usage", [True, False])
def test_completions_stream_usage(gw: RunningGateway, include_usage: bool) -> None:
    """Ollama puts a zero `usage` on every /v1/completions chunk when asked for usage: the gateway
    always asks (token metrics) and hides it again when the client did not."""
    body: dict[str, object] = {"model": "local-llama", "prompt": "Once upon a time", "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    rid = f"completions-usage-{include_usage}"
    r = httpx.post(gw.base_url + "/v1/completions", json=body, headers={"x-request-id": rid}, timeout=10)
    assert r.status_code == 200
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    assert text == "Hello from fake Ollama (llama3.2:latest)."
    if include_usage:
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
        assert all("usage" in e for e in events)
    else:
        assert all(e["choices"] for e in events)
        assert not any(e.get("usage") for e in events)
    rec = gw.observer.wait_for(rid)
    assert (rec.prompt_tokens, rec.completion_tokens) == (4, 5)
