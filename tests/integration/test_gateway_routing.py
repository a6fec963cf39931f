"""The native gateway over real HTTP: bad input, routing order, models, health, admin, fallback, streams.

The gateway runs in-process under uvicorn (``gateway_harness.running_gateway``); upstreams are
``ScriptedUpstream`` servers (answers scripted per request), ``fake_openai`` processes and the Ollama
contract fake. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import re
import socket
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aib.devtools.fake_ollama import FakeOllama
from gateway_harness import (
    SSE_DONE,
    Reply,
    RunningGateway,
    ScriptedUpstream,
    assert_envelope,
    chat_chunk,
    dead_url,
    fake_openai_process,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_data,
    wait_until,
)

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "hi"}]
REFUSED = re.compile(r"cannot connect|unreachable|refused", re.IGNORECASE)  # wording may vary
TIMEOUT = httpx.Timeout(15.0)


def chat(
    client: httpx.Client,
    model: str,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    return client.post(path, json={"model": model, "messages": CHAT, **extra}, headers=headers)


# =========================================================================== a shared gateway


@pytest.fixture(scope="module")
def up1() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m-one", "coder-x"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def up2() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m-two", "emb-x"]) as fake:
        yield fake


ROUTING_MAPPINGS = """
    defaults:
      breaker: {failure_threshold: 1000, cooldown_s: 1}
    models:
      m-one:
        provider: up1
        aliases: [one, first]
        description: the first model
      m-two:
        provider: up2
        params: {max_tokens: 7, temperature: 0.5}
      off-model:
        provider: "off"
        upstream: m
      coder:
        provider: up1
        upstream: coder-x
      embedder:
        provider: up2
        upstream: emb-x
      nomic-embed-text:latest:
        provider: up2
        upstream: emb-x
      pair:
        strategy: round_robin
        deployments:
          - {provider: up1, upstream: m-one}
          - {provider: up2, upstream: m-two}
    aliases:
      up2/special: m-one
    patterns:
      - match: "up2/*"
        provider: up2
        upstream: "{1}"
      - match: "tmpl-*-v?"
        provider: up1
        upstream: "x-{1}-{2}"
      - match: "llama*"
        provider: up1
        upstream: "{0}"
    capabilities:
      code:
        prefer: [coder]
"""


@pytest.fixture(scope="module")
def routed(
    up1: ScriptedUpstream,
    up2: ScriptedUpstream,
    fake_ollama: FakeOllama,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    """One gateway for the read-mostly tests: two scripted upstreams and Ollama with discovery."""
    providers = f"""
        providers:
          up1:
            type: openai_compatible
            base_url: {up1.base_url}
            models: [m-one, {{name: coder-x, capabilities: [chat, code]}}]
          up2:
            type: openai_compatible
            base_url: {up2.base_url}
            models: [m-two, {{name: emb-x, capabilities: [embeddings]}}]
          ollama:
            type: ollama
            base_url: {fake_ollama.base_url}
            discovery: true
            health: {{interval_s: 60}}
          "off":
            type: openai_compatible
            base_url: {dead_url()}
            enabled: false
            models: [m]
    """
    plan = plan_from_yaml(tmp_path_factory.mktemp("routed"), providers, ROUTING_MAPPINGS)
    with running_gateway(plan, gateway_settings(health_checks=True, max_body_bytes=4096)) as gw:
        gw.wait_first_probe()
        yield gw


@pytest.fixture
def client(routed: RunningGateway, up1: ScriptedUpstream, up2: ScriptedUpstream) -> Iterator[httpx.Client]:
    up1.clear()
    up2.clear()
    with httpx.Client(base_url=routed.base_url, timeout=TIMEOUT) as c:
        yield c


# --------------------------------------------------------------------------- bad input

PREFIXES = ["/v1", ""]

BAD_BODIES: list[tuple[str, str, bytes, int, str | None, str | None]] = [
    # id, endpoint, body, status, code, param
    ("empty", "chat/completions", b"", 400, "invalid_request", None),
    ("not-json", "chat/completions", b"{model: m-one", 400, "invalid_json", None),
    ("not-utf8", "chat/completions", b"\xff\xfe\x00{", 400, "invalid_json", None),
    ("array", "chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("string", "chat/completions", b'"m-one"', 400, "invalid_json", None),
    ("too-deep", "chat/completions", b"[" * 2000 + b"]" * 2000, 400, "invalid_json", None),
    ("no-model", "chat/completions", b'{"messages": []}', 400, "missing_required_parameter", "model"),
    (
        "null-model",
        "chat/completions",
        b'{"model": null, "messages": []}',
        400,
        "missing_required_parameter",
        "model",
    ),
    ("int-model", "chat/completions", b'{"model": 5, "messages": []}', 400, "invalid_type", "model"),
    ("list-model", "chat/completions", b'{"model": ["m-one"], "messages": []}', 400, "invalid_type", "model"),
    ("empty-model", "chat/completions", b'{"model": "", "messages": []}', 400, "invalid_type", "model"),
    # a pattern would copy these into the x-aib-model header: an invalid header used to drop the connection
    (
        "newline-model",
        "chat/completions",
        b'{"model": "up2/a\\nb", "messages": []}',
        400,
        "invalid_value",
        "model",
    ),
    (
        "nul-model",
        "chat/completions",
        b'{"model": "up2/a\\u0000b", "messages": []}',
        400,
        "invalid_value",
        "model",
    ),
    ("no-messages", "chat/completions", b'{"model": "m-one"}', 400, "missing_required_parameter", "messages"),
    (
        "str-messages",
        "chat/completions",
        b'{"model": "m-one", "messages": "hi"}',
        400,
        "invalid_type",
        "messages",
    ),
    (
        "str-stream",
        "chat/completions",
        b'{"model": "m-one", "messages": [], "stream": "yes"}',
        400,
        "invalid_type",
        "stream",
    ),
    ("int-prompt", "completions", b'{"model": "m-one", "prompt": 5}', 400, "invalid_type", "prompt"),
    ("no-prompt", "completions", b'{"model": "m-one"}', 400, "missing_required_parameter", "prompt"),
    ("dict-input", "embeddings", b'{"model": "embedder", "input": {}}', 400, "invalid_type", "input"),
    (
        "stream-embeddings",
        "embeddings",
        b'{"model": "embedder", "input": "x", "stream": true}',
        400,
        "invalid_value",
        "stream",
    ),
    (
        "unknown-model",
        "chat/completions",
        b'{"model": "no-such-model", "messages": []}',
        404,
        "model_not_found",
        "model",
    ),
    (
        "unknown-capability",
        "chat/completions",
        b'{"model": "capability/telepathy", "messages": []}',
        404,
        "model_not_found",
        "model",
    ),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code", "param"),
    [c[1:] for c in BAD_BODIES],
    ids=[c[0] for c in BAD_BODIES],
)
def test_bad_request_bodies(
    client: httpx.Client,
    up1: ScriptedUpstream,
    prefix: str,
    endpoint: str,
    body: bytes,
    status: int,
    code: str,
    param: str | None,
) -> None:
    r = client.post(
        f"{prefix}/{endpoint}",
        content=body,
        headers={"content-type": "application/json", "x-request-id": "bad-1"},
    )
    assert_envelope(r, status, code, param)
    assert r.headers["x-request-id"] == "bad-1"
    assert up1.requests == []  # nothing reached an upstream


@pytest.mark.parametrize("prefix", PREFIXES)
def test_body_over_the_limit(client: httpx.Client, up1: ScriptedUpstream, prefix: str) -> None:
    big = json.dumps({"model": "m-one", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    err = assert_envelope(client.post(f"{prefix}/chat/completions", content=big), 413, "request_too_large")
    assert "4096" in err["message"]

    def chunked() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    assert_envelope(client.post(f"{prefix}/chat/completions", content=chunked()), 413, "request_too_large")
    # just under the limit is fine
    ok = json.dumps({"model": "m-one", "messages": [{"role": "user", "content": "x" * 3000}]})
    assert client.post(f"{prefix}/chat/completions", content=ok).status_code == 200
    assert len(up1.requests) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/chat/completions"),
        ("POST", "/v1/chat"),
        ("GET", "/"),
        ("POST", "/v1/responses"),
        ("GET", "/admin/nothing"),
    ],
)
def test_unknown_path(client: httpx.Client, method: str, path: str) -> None:
    assert_envelope(client.request(method, path), 404, "unknown_url")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/models", "GET"),
        ("DELETE", "/v1/models/m-one", "GET"),
        ("PUT", "/models/m-one", "GET"),
        ("POST", "/health", "GET"),
        ("POST", "/health/live", "GET"),
        ("POST", "/admin/route", "GET"),
    ],
)
def test_wrong_method(client: httpx.Client, method: str, path: str, allow: str) -> None:
    r = client.request(method, path, json={"model": "m-one", "messages": CHAT})
    assert_envelope(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow


def test_trailing_slash_is_tolerated(client: httpx.Client) -> None:
    assert chat(client, "m-one", "/v1/chat/completions/").status_code == 200
    assert client.get("/v1/models/").status_code == 200


def test_upstream_4xx_is_passed_on_not_retried(
    client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream
) -> None:
    up1.enqueue(Reply.error(400, "context length exceeded"))
    r = chat(client, "pair")  # a group: a 5xx would move on to up2, a 400 must not
    err = assert_envelope(r, 400)
    assert err["message"] == "context length exceeded"
    assert r.headers["x-aib-provider"] == "up1"
    up1.enqueue(Reply.text("nope", content_type="text/plain", status=404))
    err = assert_envelope(chat(client, "m-one"), 404, "upstream_rejected")
    assert "up1" in err["message"] and "nope" in err["message"]
    assert len(up1.requests) == 2 and up2.requests == []


# --------------------------------------------------------------------------- routing order


def test_exact_name(client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = chat(client, "m-one")
    assert r.status_code == 200, r.text
    assert (r.headers["x-aib-provider"], r.headers["x-aib-model"], r.headers["x-aib-fallbacks"]) == (
        "up1",
        "m-one",
        "0",
    )
    assert r.json()["choices"][0]["message"]["content"]
    sent = up1.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {"model": "m-one", "messages": CHAT}  # only `model` rewritten


@pytest.mark.parametrize("alias", ["one", "first", "up2/special"])
def test_alias(client: httpx.Client, up1: ScriptedUpstream, alias: str) -> None:
    r = chat(client, alias)
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up1", "m-one")
    assert up1.requests[-1].json["model"] == "m-one"  # "up2/special": the alias beats the pattern up2/*


@pytest.mark.parametrize(
    ("model", "provider", "upstream"),
    [
        ("up2/some-model:7b", "up2", "some-model:7b"),
        ("tmpl-abc-v7", "up1", "x-abc-7"),
        ("llama-other", "up1", "llama-other"),
    ],
)
def test_pattern_with_upstream_template(
    client: httpx.Client,
    up1: ScriptedUpstream,
    up2: ScriptedUpstream,
    model: str,
    provider: str,
    upstream: str,
) -> None:
    r = chat(client, model)
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, provider, upstream)
    fake = up1 if provider == "up1" else up2
    assert fake.requests[-1].json["model"] == upstream


def test_capability(client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream) -> None:
    r = chat(client, "capability/code")
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up1", "coder-x")
    r = client.post("/v1/embeddings", json={"model": "capability/embeddings", "input": "text"})
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up2", "emb-x")
    assert up2.requests[-1].path == "/v1/embeddings" and up2.requests[-1].json["model"] == "emb-x"


def test_discovered_model_from_ollama(client: httpx.Client, up1: ScriptedUpstream) -> None:
    # llama3.2:latest is on the Ollama fake; the pattern llama* would also match: discovery wins
    r = chat(client, "llama3.2:latest")
    assert r.status_code == 200, r.text
    assert (r.headers["x-aib-provider"], r.headers["x-aib-model"]) == ("ollama", "llama3.2:latest")
    assert "fake Ollama" in r.json()["choices"][0]["message"]["content"]
    assert up1.requests == []
    explain = client.get("/admin/route", params={"model": "llama3.2:latest"}).json()
    assert explain["matched_by"] == "discovered" and "ollama" in explain["rule"]


def test_configured_name_beats_discovered(client: httpx.Client, up2: ScriptedUpstream) -> None:
    # nomic-embed-text:latest is on the Ollama fake too, but the config names it
    r = client.post("/v1/embeddings", json={"model": "nomic-embed-text:latest", "input": "x"})
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up2", "emb-x")
    assert (
        client.get("/admin/route", params={"model": "nomic-embed-text:latest"}).json()["matched_by"]
        == "exact"
    )


@pytest.mark.parametrize(
    ("model", "matched_by", "route"),
    [
        ("m-one", "exact", "m-one"),
        ("first", "alias", "m-one"),
        ("up2/special", "alias", "m-one"),
        ("llama3.2:latest", "discovered", "llama3.2:latest"),
        ("up2/x", "pattern", "up2/x"),
        ("capability/code", "capability", "coder"),
    ],
)
def test_admin_route_explains_the_order(
    client: httpx.Client, model: str, matched_by: str, route: str
) -> None:
    r = client.get("/admin/route", params={"model": model})
    assert r.status_code == 200
    body = r.json()
    assert (body["requested"], body["matched_by"], body["route"]) == (model, matched_by, route)
    assert body["candidates"][0]["role"] == "primary" and body["candidates"][0]["deployments"]
    assert set(body["timeouts"]) == {"connect_s", "first_byte_s", "total_s"}


def test_admin_route_matches_explain(routed: RunningGateway, client: httpx.Client) -> None:
    for model in ("pair", "one", "tmpl-q-v1"):
        res = routed.gateway.plan.resolve(model)
        assert res is not None
        assert client.get("/admin/route", params={"model": model}).json() == json.loads(
            json.dumps(res.explain())
        )


def test_admin_route_errors(client: httpx.Client) -> None:
    assert_envelope(client.get("/admin/route"), 400, "missing_required_parameter", "model")
    err = assert_envelope(client.get("/admin/route", params={"model": "m-onee"}), 404, "model_not_found")
    assert "m-one" in err["message"]


def test_admin_route_with_admin_key(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_ADMIN_KEY", "s3cret")
    q = {"model": "m-one"}
    err = assert_envelope(client.get("/admin/route", params=q), 401, "invalid_admin_key")
    assert "AIB_ADMIN_KEY" in err["message"] and "s3cret" not in err["message"]
    assert err["type"] == "authentication_error"
    assert_envelope(client.get("/admin/route", params=q, headers={"authorization": "Bearer wrong"}), 401)
    assert client.get("/admin/route", params=q, headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/admin/route", params=q, headers={"x-admin-key": "s3cret"}).status_code == 200
    # the inference endpoints do not need it
    assert chat(client, "m-one").status_code == 200
    monkeypatch.delenv("AIB_ADMIN_KEY")
    assert client.get("/admin/route", params=q).status_code == 200


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("m-onee", "m-one"),
        ("M-TWO", "m-two"),
        ("coderr", "coder"),
        ("embeder", "embedder"),
        ("frist", "first"),
    ],
)
def test_404_names_the_closest(client: httpx.Client, asked: str, expected: str) -> None:
    err = assert_envelope(chat(client, asked), 404, "model_not_found", "model")
    assert asked in err["message"] and expected in err["message"]
    assert "/v1/models" in err["message"]


def test_404_without_any_close_name(client: httpx.Client) -> None:
    err = assert_envelope(chat(client, "zzzzzzzzzzzzzzzz"), 404, "model_not_found")
    assert "Did you mean" not in err["message"]


def test_round_robin_group_over_http(
    client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream
) -> None:
    providers = Counter(chat(client, "pair").headers["x-aib-provider"] for _ in range(10))
    assert providers == {"up1": 5, "up2": 5}
    assert len(up1.requests) == 5 and len(up2.requests) == 5
    assert {r.json["model"] for r in up2.requests} == {"m-two"}


def test_completions_and_embeddings_without_v1(client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = client.post("/completions", json={"model": "m-one", "prompt": "Once"})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert up1.requests[-1].path == "/v1/completions"
    r = client.post("/embeddings", json={"model": "embedder", "input": ["a", "b"]})
    assert r.status_code == 200 and r.json()["object"] == "list"
    r = client.post("/chat/completions", json={"model": "one", "messages": CHAT})
    assert r.status_code == 200 and r.headers["x-aib-model"] == "m-one"


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_list(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    for m in body["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int)
    assert owners["m-one"] == "up1" and owners["one"] == "up1" and owners["first"] == "up1"
    assert owners["m-two"] == "up2" and owners["coder"] == "up1" and owners["embedder"] == "up2"
    assert owners["pair"] == "aib:group"
    assert owners["llama3.2:latest"] == "ollama"  # discovered
    assert owners["nomic-embed-text:latest"] == "up2"  # configured, not duplicated by discovery
    assert len(owners) == len(body["data"])


@pytest.mark.parametrize(
    ("path", "owner"),
    [
        ("/v1/models/m-one", "up1"),
        ("/models/one", "up1"),
        ("/v1/models/pair", "aib:group"),
        ("/v1/models/llama3.2:latest", "ollama"),
        ("/v1/models/up2/special", "up1"),
    ],
)
def test_model_detail(client: httpx.Client, path: str, owner: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["id"] == path.split("/models/", 1)[1] and body["owned_by"] == owner and body["object"] == "model"
    )


def test_model_detail_unknown(client: httpx.Client) -> None:
    err = assert_envelope(client.get("/v1/models/m-onee"), 404, "model_not_found", "model")
    assert "m-one" in err["message"]
    assert_envelope(client.get("/models/nothing-like-it"), 404, "model_not_found")


# --------------------------------------------------------------------------- request ids


def test_request_id_round_trip(client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = chat(client, "m-one", headers={"x-request-id": "req-abc-123"})
    assert r.headers["x-request-id"] == "req-abc-123"
    assert up1.requests[-1].headers["x-request-id"] == "req-abc-123"
    r = chat(client, "m-one", stream=True, headers={"x-request-id": "req-stream-9"})
    assert r.headers["x-request-id"] == "req-stream-9"
    assert up1.requests[-1].headers["x-request-id"] == "req-stream-9"


def test_request_id_generated(client: httpx.Client, up1: ScriptedUpstream) -> None:
    r1, r2 = chat(client, "m-one"), chat(client, "m-one")
    rid = r1.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid != r2.headers["x-request-id"]
    assert up1.requests[0].headers["x-request-id"] == rid
    assert re.fullmatch(r"[0-9a-f]{32}", assert_envelope_id(chat(client, "unknown-x")))


@pytest.mark.parametrize("bad", ["x" * 129, "caf\u00e9", "tab\there"])
def test_unusable_request_id_is_replaced(client: httpx.Client, up1: ScriptedUpstream, bad: str) -> None:
    """Too long, non-ASCII or with control characters: a fresh id everywhere, never a truncated one."""
    r = chat(client, "m-one", headers={"x-request-id": bad.encode("utf-8")})  # type: ignore[dict-item]
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert up1.requests[-1].headers["x-request-id"] == rid
    assert re.fullmatch(
        r"[0-9a-f]{32}", assert_envelope_id(chat(client, "unknown-x", headers={"x-request-id": "y" * 200}))
    )


def assert_envelope_id(r: httpx.Response) -> str:
    assert r.status_code == 404
    return r.headers["x-request-id"]


def test_stream_passthrough(client: httpx.Client, up1: ScriptedUpstream, routed: RunningGateway) -> None:
    r = chat(client, "m-one", stream=True, headers={"x-request-id": "pass-1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream" and r.headers["x-aib-fallbacks"] == "0"
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1]) == "Hello!"
    rec = routed.observer.wait_for("pass-1")
    assert rec.stream and rec.status == 200 and rec.error is None and rec.provider == "up1"


# --------------------------------------------------------------------------- health


def test_health_endpoints(client: httpx.Client) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["healthy_providers"] == 3
    for name in ("up1", "up2", "ollama"):
        p = body["providers"][name]
        assert p["status"] == "healthy" and p["healthy"] is True and p["last_checked"]
    assert "llama3.2:latest" in body["providers"]["ollama"]["discovered_models"]


def test_health_does_not_call_upstreams(client: httpx.Client, up1: ScriptedUpstream) -> None:
    probes = up1.probes
    for _ in range(5):
        assert client.get("/health").status_code == 200
    assert up1.probes == probes


def test_route_params_fill_unset_fields(client: httpx.Client, up2: ScriptedUpstream) -> None:
    assert chat(client, "m-two").status_code == 200
    assert up2.requests[-1].json == {"model": "m-two", "messages": CHAT, "max_tokens": 7, "temperature": 0.5}
    assert chat(client, "m-two", max_tokens=3).status_code == 200
    assert up2.requests[-1].json["max_tokens"] == 3  # the client's value wins


def test_disabled_provider_is_never_called(client: httpx.Client) -> None:
    err = assert_envelope(chat(client, "off-model"), 503, "no_healthy_deployment")
    assert "off/m: disabled" in err["message"]
    assert client.get("/health").json()["providers"]["off"]["status"] == "disabled"


def test_sse_events_split_across_reads_are_forwarded_whole(
    client: httpx.Client, up1: ScriptedUpstream
) -> None:
    one, two = chat_chunk("Hel"), chat_chunk("lo")
    pieces = (one[:9], one[9:] + two[:20], two[20:-1], two[-1:] + SSE_DONE[:8], SSE_DONE[8:])
    up1.enqueue(Reply(content_type="text/event-stream", chunks=pieces, chunk_delay_s=0.02))
    r = chat(client, "m-one", stream=True)
    assert r.status_code == 200
    assert r.content == one + two + SSE_DONE  # the same bytes, event boundaries kept


def test_last_event_without_its_blank_line(client: httpx.Client, up1: ScriptedUpstream) -> None:
    up1.enqueue(Reply(content_type="text/event-stream", chunks=(chat_chunk("a"), b"data: [DONE]")))
    r = chat(client, "m-one", stream=True)
    assert sse_data(r.text)[-1] == "[DONE]" and '"error"' not in r.text
    assert r.text.endswith("data: [DONE]\n\n")


def test_client_gone_while_sending_the_body(
    routed: RunningGateway, client: httpx.Client, up1: ScriptedUpstream
) -> None:
    with socket.create_connection(("127.0.0.1", routed.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-request-id: half-body\r\n"
            b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model": "m-one"'
        )
        time.sleep(0.1)
    rec = routed.observer.wait_for("half-body")
    assert rec.client_disconnected and rec.attempts == []
    assert up1.requests == []


def test_upstream_keys_are_sent(
    tmp_path: Path, up1: ScriptedUpstream, up2: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIB_TEST_ANTHROPIC_KEY", "sk-ant-test")
    monkeypatch.setenv("AIB_TEST_OPENAI_KEY", "sk-oai-test")
    providers = f"""
        providers:
          claude:
            type: anthropic
            base_url: {up1.base_url}
            api_key_env: AIB_TEST_ANTHROPIC_KEY
            models: [claude-x]
            health: {{enabled: false}}
          oai:
            type: openai
            base_url: {up2.base_url}
            api_key_env: AIB_TEST_OPENAI_KEY
            models: [gpt-x]
            health: {{enabled: false}}
    """
    mappings = """
        models:
          claude-x: {provider: claude}
          gpt-x: {provider: oai}
    """
    with (
        running_gateway(plan_from_yaml(tmp_path, providers, mappings)) as gw,
        httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
    ):
        assert chat(c, "claude-x").status_code == 200
        assert chat(c, "gpt-x").status_code == 200
        shown = c.get("/health").text + c.get("/admin/route", params={"model": "claude-x"}).text
        assert "sk-" not in shown  # keys are sent upstream, never shown
    h = up1.requests[-1].headers
    assert (h["authorization"], h["x-api-key"], h["anthropic-version"]) == (
        "Bearer sk-ant-test",
        "sk-ant-test",
        "2023-06-01",
    )
    h = up2.requests[-1].headers
    assert h["authorization"] == "Bearer sk-oai-test" and "x-api-key" not in h


# --------------------------------------------------------------------------- probes and discovery


@contextlib.contextmanager
def one_provider(
    tmp_path: Path, provider_yaml: str, mappings: str = "models: {}"
) -> Iterator[RunningGateway]:
    plan = plan_from_yaml(
        tmp_path, "providers:\n" + textwrap.indent(textwrap.dedent(provider_yaml).strip(), "  "), mappings
    )
    with running_gateway(plan, gateway_settings(health_checks=True)) as gw:
        gw.wait_first_probe()
        yield gw


def provider_health(gw: RunningGateway, name: str) -> dict[str, Any]:
    return dict(httpx.get(gw.base_url + "/health", timeout=TIMEOUT).json()["providers"][name])


def model_ids(gw: RunningGateway) -> set[str]:
    return {m["id"] for m in httpx.get(gw.base_url + "/v1/models", timeout=TIMEOUT).json()["data"]}


def test_discovery_on_an_openai_compatible_server(tmp_path: Path, up1: ScriptedUpstream) -> None:
    up1.clear()
    up1.models = ["found-1"]
    try:
        yaml = f"""
            disc:
              type: openai_compatible
              base_url: {up1.base_url}
              discovery: true
              health: {{endpoint: /health, interval_s: 0.1}}
        """
        with one_provider(tmp_path, yaml) as gw:
            wait_until(lambda: "found-1" in model_ids(gw), 5, 0.05, "found-1 to be discovered")
            r = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "found-1", "messages": CHAT})
            assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (
                200,
                "disc",
                "found-1",
            )
            up1.models = ["found-2"]
            wait_until(lambda: model_ids(gw) == {"found-2"}, 5, 0.05, "found-2 to replace found-1")
            assert provider_health(gw, "disc")["discovered_models"] == ["found-2"]
    finally:
        up1.models = ["m-one", "coder-x"]


@pytest.mark.parametrize("body", [b"<html>", b'{"data": null}'], ids=["not-json", "no-data-list"])
def test_failed_discovery_keeps_the_provider_healthy(
    tmp_path: Path, up1: ScriptedUpstream, body: bytes
) -> None:
    up1.clear()
    up1.models_body = body
    yaml = f"""
        disc:
          type: openai_compatible
          base_url: {up1.base_url}
          discovery: true
          health: {{endpoint: /health, interval_s: 60}}
    """
    with one_provider(tmp_path, yaml) as gw:
        p = provider_health(gw, "disc")
        assert p["status"] == "healthy" and p["discovered_models"] == []
    up1.clear()


def test_probe_timeout_marks_the_provider_down(tmp_path: Path, up1: ScriptedUpstream) -> None:
    up1.clear()
    up1.probe_delay_s = 2
    yaml = f"""
        slow:
          type: openai_compatible
          base_url: {up1.base_url}
          health: {{interval_s: 60, timeout_s: 0.2}}
    """
    with one_provider(tmp_path, yaml) as gw:
        p = provider_health(gw, "slow")
        assert p["status"] == "unhealthy" and p["last_error"] == "no answer within 0.2s"
        assert httpx.get(gw.base_url + "/health", timeout=TIMEOUT).status_code == 503
    up1.clear()


def test_probe_timeout_while_busy_keeps_the_provider(tmp_path: Path, up1: ScriptedUpstream) -> None:
    """A single-request server (llama-cpp-python) answers probes only between generations: a probe that
    times out while the gateway has a request in flight there means busy, not down."""
    up1.clear()
    yaml = f"""
        single:
          type: openai_compatible
          base_url: {up1.base_url}
          health: {{interval_s: 0.2, timeout_s: 0.2}}
    """
    with one_provider(tmp_path, yaml, "models:\n  m: {provider: single}\n") as gw:
        assert provider_health(gw, "single")["status"] == "healthy"
        up1.probe_delay_s = 1.5  # from now on every probe times out
        up1.enqueue(Reply.sse(texts=("a", "b"), chunk_delay_s=0.6))  # a 1.2 s generation
        body = {"model": "m", "messages": CHAT, "stream": True}
        with (
            httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
            c.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            chunks = r.iter_raw()
            next(chunks)
            time.sleep(0.5)  # probes time out while the generation runs
            p = provider_health(gw, "single")
            rest = b"".join(chunks)
        assert r.status_code == 200 and b"data: [DONE]" in rest
        assert p["status"] == "healthy" and "busy" in (p["last_error"] or ""), p
        deadline = time.monotonic() + 5  # idle now: the next timed-out probe marks it down
        while provider_health(gw, "single")["status"] != "unhealthy":
            assert time.monotonic() < deadline, "an idle provider whose probes time out must go down"
            time.sleep(0.1)
    up1.clear()


@pytest.mark.parametrize(
    ("health_body", "healthy", "reason"),
    [
        (b'{"status": "loading model"}', False, "server status 'loading model'"),
        (b'{"status": "ok"}', True, None),
    ],
)
def test_llamacpp_server_status(
    tmp_path: Path, up1: ScriptedUpstream, health_body: bytes, healthy: bool, reason: str | None
) -> None:
    up1.clear()
    up1.health_body = health_body
    yaml = f"""
        llama:
          type: llamacpp
          base_url: {up1.base_url}
          health: {{endpoint: /health, interval_s: 60}}
    """
    with one_provider(tmp_path, yaml) as gw:
        p = provider_health(gw, "llama")
        assert p["healthy"] is healthy and p["last_error"] == reason
    up1.clear()


def test_health_without_background_checks(tmp_path: Path, up1: ScriptedUpstream) -> None:
    plan = plan_from_yaml(
        tmp_path,
        f"providers:\n  p: {{type: openai_compatible, base_url: '{up1.base_url}', models: [m]}}",
        "models: {m: {provider: p}}",
    )
    with running_gateway(plan, gateway_settings(health_checks=False)) as gw:
        r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["status"] == "unknown" and r.json()["health_checks"] is False


# =========================================================================== failures: a chain per test

PROVIDER_NAMES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def trio() -> Iterator[tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]]:
    with ScriptedUpstream(["m"]) as a, ScriptedUpstream(["m"]) as b, ScriptedUpstream(["m"]) as c:
        yield a, b, c


@pytest.fixture
def chain(
    tmp_path: Path, trio: tuple[ScriptedUpstream, ScriptedUpstream, ScriptedUpstream]
) -> Iterator[Callable[..., RunningGateway]]:
    """Start a gateway whose route ``primary`` (alpha) falls back to ``backup`` (beta), then ``last`` (gamma).

    Call it with the knobs a test needs; ``urls`` replaces upstream addresses (e.g. a dead port).
    """
    for f in trio:
        f.clear()
        f.healthy = True
    stack = contextlib.ExitStack()
    started = [0]

    def start(
        *,
        urls: dict[str, str] | None = None,
        first_byte_s: float = 2.0,
        total_s: float = 20.0,
        max_attempts: int = 3,
        threshold: int = 5,
        cooldown_s: float = 30.0,
        health: bool = False,
    ) -> RunningGateway:
        addr = {n: f.base_url for n, f in zip(PROVIDER_NAMES, trio, strict=True)} | (urls or {})
        providers = "providers:\n" + "".join(
            f"  {n}:\n    type: openai_compatible\n    base_url: {addr[n]}\n    models: [m]\n"
            f"    health: {{interval_s: 60, timeout_s: 1}}\n"
            for n in PROVIDER_NAMES
        )
        mappings = f"""
            defaults:
              timeouts: {{connect_s: 1, first_byte_s: {first_byte_s}, total_s: {total_s}}}
              retries: {{max_attempts: {max_attempts}}}
              breaker: {{failure_threshold: {threshold}, cooldown_s: {cooldown_s}}}
            models:
              primary: {{provider: alpha, upstream: m, fallbacks: [backup]}}
              backup: {{provider: beta, upstream: m, fallbacks: [last]}}
              last: {{provider: gamma, upstream: m}}
        """
        started[0] += 1
        plan = plan_from_yaml(tmp_path / f"cfg{started[0]}", providers, mappings)
        gw = stack.enter_context(running_gateway(plan, gateway_settings(health_checks=health)))
        if health:
            gw.wait_first_probe()
        return gw

    with stack:
        yield start


def post(
    gw: RunningGateway, model: str = "primary", *, stream: bool = False, rid: str | None = None
) -> httpx.Response:
    headers = {"x-request-id": rid} if rid else {}
    body: dict[str, Any] = {"model": model, "messages": CHAT}
    if stream:
        body["stream"] = True
    return httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)


def breaker(gw: RunningGateway, provider: str) -> dict[str, Any]:
    r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    return dict(r.json()["providers"][provider]["breakers"][f"{provider}/m"])


def served(r: httpx.Response, provider: str, fallbacks: int) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["x-aib-provider"] == provider
    assert r.headers["x-aib-fallbacks"] == str(fallbacks)


def test_fallback_on_connection_refused(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(urls={"alpha": dead_url()})
    r = post(gw, rid="refused-1")
    served(r, "beta", 1)
    rec = gw.observer.wait_for("refused-1")
    assert [a.provider for a in rec.attempts] == ["alpha", "beta"]
    error = rec.attempts[0].error or ""
    assert "alpha" in error and REFUSED.search(error), error
    assert len(trio[1].requests) == 1


TRUNCATED = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"id": '

# what alpha answers -> what the gateway must have recorded about it (then beta answers)
FALLBACK_REPLIES: dict[str, tuple[Reply, str]] = {
    "503": (Reply.error(503, "overloaded"), "alpha answered 503: overloaded"),
    "500": (Reply.error(500), "alpha answered 500"),
    "500-empty": (Reply.text("", status=500), "alpha answered 500"),
    "502-html": (Reply.text("<html>bad gateway</html>", status=502), "alpha answered 502: <html>bad gateway"),
    "garbage-json": (Reply.garbage(), "alpha sent an unusable answer (non-JSON)"),
    "wrong-content-type": (Reply.text("<p>hi</p>"), "alpha sent an unusable answer (content type 'text/html"),
    "no-content-type": (Reply(body=b"hello", content_type=None), "alpha sent an unusable answer"),
    "json-not-object": (Reply.json([1, 2, 3]), "alpha sent an unusable answer"),
    "reset-before-headers": (Reply.reset(), "alpha broke the connection"),
    "not-http": (Reply(raw=b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "alpha broke the connection"),
    "truncated-body": (Reply(raw=TRUNCATED), "alpha broke the connection"),
}


@pytest.mark.parametrize(("reply", "error"), list(FALLBACK_REPLIES.values()), ids=list(FALLBACK_REPLIES))
def test_fallback_on_bad_answers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], reply: Reply, error: str
) -> None:
    gw = chain()
    trio[0].enqueue(reply)
    r = post(gw, rid="bad-answer")
    served(r, "beta", 1)
    assert r.json()["object"] == "chat.completion"
    assert len(trio[0].requests) == 1 and len(trio[1].requests) == 1 and trio[2].requests == []
    rec = gw.observer.wait_for("bad-answer")
    assert error in (rec.attempts[0].error or ""), rec.attempts[0].error
    assert rec.attempts[1].ok and rec.status == 200


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (Reply.garbage(), 502, "upstream_bad_response"),
        (Reply.text("<html/>", content_type="text/html"), 502, "upstream_bad_response"),
        (Reply.error(503), 502, "upstream_error"),
        (Reply.reset(), 502, "upstream_connection_error"),
    ],
    ids=["garbage", "content-type", "503", "reset"],
)
def test_when_every_candidate_fails_the_error_names_the_last_provider(
    chain: Callable[..., RunningGateway],
    trio: tuple[ScriptedUpstream, ...],
    reply: Reply,
    status: int,
    code: str,
) -> None:
    gw = chain()
    for f in trio:
        f.enqueue(reply)
    err = assert_envelope(post(gw), status, code)
    assert "gamma" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 1, 1]


STREAM_FALLBACK_REPLIES: dict[str, tuple[Reply, str]] = {
    "503": (Reply.error(503), "alpha answered 503"),
    "json-instead-of-sse": (Reply.chat(), "with content type 'application/json'"),
    "html": (Reply.text("<html/>"), "with content type 'text/html"),
    "empty-stream": (
        Reply(content_type="text/event-stream", chunks=()),
        "alpha answered a streaming request with an empty stream",
    ),
    "reset-before-headers": (Reply.reset(), "alpha broke the connection"),
    "reset-after-headers": (Reply.sse(reset_after=0), "alpha"),
}


@pytest.mark.parametrize(
    ("reply", "error"), list(STREAM_FALLBACK_REPLIES.values()), ids=list(STREAM_FALLBACK_REPLIES)
)
def test_stream_falls_back_before_the_first_byte(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], reply: Reply, error: str
) -> None:
    gw = chain()
    trio[0].enqueue(reply)
    r = post(gw, stream=True, rid="stream-fallback")
    served(r, "beta", 1)
    data = sse_data(r.text)
    assert data[-1] == "[DONE]" and not any('"error"' in d for d in data)
    assert len(trio[0].requests) == 1 and len(trio[1].requests) == 1
    rec = gw.observer.wait_for("stream-fallback")
    assert error in (rec.attempts[0].error or ""), rec.attempts[0].error


def test_fallback_on_first_byte_timeout(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.chat(delay_s=5))
    t0 = time.monotonic()
    r = post(gw, rid="slow-1")
    elapsed = time.monotonic() - t0
    served(r, "beta", 1)
    assert 0.3 <= elapsed < 2.0
    rec = gw.observer.wait_for("slow-1")
    assert "did not answer within the time limit (first byte)" in (rec.attempts[0].error or "")
    assert trio[0].wait_disconnect(5)  # the gateway hung up on the slow one


def test_stream_fallback_when_headers_come_but_no_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.sse(body_delay_s=5))
    t0 = time.monotonic()
    r = post(gw, stream=True)
    served(r, "beta", 1)
    assert time.monotonic() - t0 < 2.0
    assert sse_data(r.text)[-1] == "[DONE]"


def test_fallback_on_429_and_retry_after_opens_the_breaker(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=5)
    alpha.enqueue(Reply.error(429, "slow down", retry_after=1))
    served(post(gw), "beta", 1)
    b = breaker(gw, "alpha")
    assert b["state"] == "open" and 0 < b["retry_in_s"] <= 1.0  # after one failure: Retry-After wins
    assert "429" in b["last_error"]
    served(post(gw), "beta", 0)  # alpha is not even tried while open
    assert len(alpha.requests) == 1
    wait_until(lambda: breaker(gw, "alpha")["state"] == "half_open", 3, 0.05, "alpha half-open")
    served(post(gw), "alpha", 0)  # the trial request succeeds ...
    assert len(alpha.requests) == 2
    assert breaker(gw, "alpha")["state"] == "closed"  # ... and closes the breaker


def test_429_everywhere_is_passed_on_with_retry_after(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    for f in trio:
        f.enqueue(Reply.error(429, "rate limited", retry_after=7))
    r = post(gw)
    err = assert_envelope(r, 429, "upstream_rate_limited")
    assert "gamma" in err["message"] and r.headers["retry-after"] == "7"


def test_breaker_opens_after_consecutive_failures_and_recovers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=2, cooldown_s=0.5)
    alpha.enqueue(Reply.error(500), Reply.error(500))
    served(post(gw), "beta", 1)
    assert breaker(gw, "alpha")["state"] == "closed" and breaker(gw, "alpha")["consecutive_failures"] == 1
    served(post(gw), "beta", 1)
    b = breaker(gw, "alpha")
    assert b["state"] == "open" and b["consecutive_failures"] == 2
    for _ in range(3):
        served(post(gw), "beta", 0)
    assert len(alpha.requests) == 2
    wait_until(lambda: breaker(gw, "alpha")["state"] == "half_open", 3, 0.05, "alpha half-open")
    served(post(gw), "alpha", 0)
    assert breaker(gw, "alpha") == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_in_s": 0.0,
        "last_error": b["last_error"],
    }


def test_failed_trial_reopens(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=1, cooldown_s=0.3)
    alpha.enqueue(Reply.error(500), Reply.error(502))
    served(post(gw), "beta", 1)
    wait_until(lambda: breaker(gw, "alpha")["state"] == "half_open", 3, 0.05, "alpha half-open")
    served(post(gw), "beta", 1)  # the trial failed
    assert breaker(gw, "alpha")["state"] == "open"
    assert len(alpha.requests) == 2


def test_all_breakers_open_is_503_with_retry_after(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(threshold=1, cooldown_s=30)
    for f in trio:
        f.enqueue(Reply.error(500))
    assert_envelope(post(gw), 502, "upstream_error")
    r = post(gw)
    err = assert_envelope(r, 503, "no_healthy_deployment")
    assert "circuit open" in err["message"] and "/health" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 30
    assert [len(f.requests) for f in trio] == [1, 1, 1]


def test_max_attempts_is_respected(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(max_attempts=2)
    for f in trio:
        f.enqueue(Reply.error(503))
    err = assert_envelope(post(gw, rid="bounded"), 502, "upstream_error")
    assert "beta" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 1, 0]
    assert len(gw.observer.wait_for("bounded").attempts) == 2


def test_total_deadline_is_respected(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.7, total_s=1.0)
    for f in trio:
        f.enqueue(Reply.chat(delay_s=5))
    t0 = time.monotonic()
    r = post(gw, rid="deadline")
    elapsed = time.monotonic() - t0
    err = assert_envelope(r, 504, "upstream_timeout")
    assert "beta" in err["message"]
    assert 0.9 <= elapsed < 1.8
    assert [len(f.requests) for f in trio] == [1, 1, 0]  # alpha 0.7 s, beta the 0.3 s left, gamma none
    rec = gw.observer.wait_for("deadline")
    assert rec.attempts[1].duration_s < 0.6


def test_fallbacks_header_counts_failed_attempts(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    served(post(gw), "alpha", 0)
    served(post(gw, stream=True), "alpha", 0)
    trio[0].enqueue(Reply.error(503))
    served(post(gw, stream=True), "beta", 1)
    trio[0].enqueue(Reply.error(503))
    trio[1].enqueue(Reply.garbage())
    served(post(gw), "gamma", 2)
    trio[0].enqueue(Reply.error(503))
    trio[1].enqueue(Reply.reset())
    served(post(gw, stream=True), "gamma", 2)


def test_stream_broken_mid_way_ends_with_an_error_event_and_no_retry(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    trio[0].enqueue(Reply.sse(texts=("a", "b", "c", "d"), reset_after=2, chunk_delay_s=0.02))
    r = post(gw, stream=True, rid="broken")
    served(r, "alpha", 0)
    data = sse_data(r.text)
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:2]] == ["a", "b"]
    err = json.loads(data[-1])["error"]
    assert err["code"] == "stream_interrupted" and "alpha" in err["message"]
    assert "[DONE]" not in data
    assert [len(f.requests) for f in trio] == [1, 0, 0]  # exactly one upstream request
    rec = gw.observer.wait_for("broken")
    assert rec.error_code == "stream_interrupted" and len(rec.attempts) == 1


def test_truncated_stream_without_done_ends_with_an_error_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    trio[0].enqueue(Reply.sse(texts=("x", "y"), done=False))
    r = post(gw, stream=True)
    served(r, "alpha", 0)
    data = sse_data(r.text)
    assert len(data) == 4  # x, y, finish, error
    err = json.loads(data[-1])["error"]
    assert err["code"] == "stream_interrupted" and "before [DONE]" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 0, 0]


def test_stream_stalling_mid_way_ends_with_an_error_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.sse(texts=("x", "y"), chunk_delay_s=3))
    t0 = time.monotonic()
    r = post(gw, stream=True)
    assert time.monotonic() - t0 < 2.5
    served(r, "alpha", 0)
    data = sse_data(r.text)
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "x"
    assert json.loads(data[-1])["error"]["code"] == "stream_interrupted"
    assert [len(f.requests) for f in trio] == [1, 0, 0]


def test_client_disconnect_mid_stream_closes_the_upstream(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain()
    alpha.enqueue(Reply.sse(texts=[f"t{i}" for i in range(100)], chunk_delay_s=0.05))
    body = {"model": "primary", "messages": CHAT, "stream": True}
    with (
        httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
        c.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "gone-1"}) as r,
    ):
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    # the client has hung up: the gateway must drop the upstream connection
    assert alpha.wait_disconnect(5), "the upstream never saw the disconnect"
    sent = alpha.requests[0]
    assert sent.disconnected and sent.chunks_sent < 100
    rec = gw.observer.wait_for("gone-1")
    assert rec.client_disconnected
    assert gw.gateway.state.stats("alpha/m").inflight == 0
    assert gw.gateway.state.stats("alpha/m").breaker.current() == "closed"
    served(post(gw), "alpha", 0)  # and the deployment is fine for the next request


def test_client_disconnect_during_a_long_non_streaming_request_closes_the_upstream(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    """A long generation (no answer for 1.5 s) whose client hangs up: the upstream is told, at once."""
    alpha = trio[0]
    gw = chain()
    alpha.enqueue(Reply(delay_s=6))
    body = {"model": "primary", "messages": CHAT}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gw.base_url, timeout=1.5) as c:
        c.post("/v1/chat/completions", json=body, headers={"x-request-id": "gone-2"})
    # the gateway starts watching after 1 s; the client left at 1.5 s; the upstream sees it well before 6 s
    assert alpha.wait_disconnect(3), "the upstream never saw the disconnect"
    rec = gw.observer.wait_for("gone-2")
    assert rec.client_disconnected
    assert rec.attempts[0].error == "client disconnected"
    assert gw.gateway.state.stats("alpha/m").inflight == 0
    assert gw.gateway.state.stats("alpha/m").breaker.current() == "closed"
    served(post(gw), "alpha", 0)


# --------------------------------------------------------------------------- health when things are down


def test_health_503_when_every_provider_is_down(chain: Callable[..., RunningGateway]) -> None:
    gw = chain(urls={n: dead_url() for n in PROVIDER_NAMES}, health=True, threshold=2)
    r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy" and body["healthy_providers"] == 0
    for n in PROVIDER_NAMES:
        assert body["providers"][n]["status"] == "unhealthy"
        assert REFUSED.search(body["providers"][n]["last_error"])
    assert httpx.get(gw.base_url + "/health/live").status_code == 200
    assert httpx.get(gw.base_url + "/health/ready").status_code == 200
    # requests still try (health may be stale) and fail with an envelope naming a provider
    err = assert_envelope(post(gw), 502, "upstream_unreachable")
    assert any(n in err["message"] for n in PROVIDER_NAMES) and REFUSED.search(err["message"])
    for n in PROVIDER_NAMES:
        assert breaker(gw, n)["consecutive_failures"] == 1


def test_health_shows_states_and_breakers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    trio[2].healthy = False  # gamma answers its probe with 503
    gw = chain(urls={"beta": dead_url()}, health=True, threshold=1)
    trio[0].enqueue(Reply.error(500, "kaput"))
    err = assert_envelope(post(gw), 502)  # alpha 500, beta refused, gamma unhealthy but tried last
    r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200  # alpha is healthy
    body = r.json()
    assert body["status"] == "degraded" and body["healthy_providers"] == 1
    ps = body["providers"]
    assert ps["alpha"]["status"] == "healthy"
    assert ps["beta"]["status"] == "unhealthy" and REFUSED.search(ps["beta"]["last_error"])
    assert ps["gamma"]["status"] == "unhealthy" and "503" in ps["gamma"]["last_error"]
    assert ps["alpha"]["breakers"]["alpha/m"]["state"] == "open"
    assert "kaput" in ps["alpha"]["breakers"]["alpha/m"]["last_error"]
    assert err["message"]


# =========================================================================== real processes: fake_openai


@pytest.fixture(scope="module")
def two_fakes() -> Iterator[tuple[Any, Any]]:
    with (
        fake_openai_process("--chunks", "40", "--chunk-delay-ms", "100") as f1,
        fake_openai_process("--chunks", "40", "--chunk-delay-ms", "100") as f2,
    ):
        yield f1, f2


def fake_pair_gateway(
    tmp_path: Path, fakes: tuple[Any, Any], strategy: str, weights: tuple[float, float]
) -> Any:
    f1, f2 = fakes
    providers = f"""
        providers:
          fo1: {{type: openai_compatible, base_url: "{f1.base_url}", models: [fake-model]}}
          fo2: {{type: openai_compatible, base_url: "{f2.base_url}", models: [fake-model]}}
    """
    mappings = f"""
        models:
          duo:
            strategy: {strategy}
            deployments:
              - {{provider: fo1, upstream: fake-model, weight: {weights[0]}}}
              - {{provider: fo2, upstream: fake-model, weight: {weights[1]}}}
    """
    return running_gateway(plan_from_yaml(tmp_path, providers, mappings))


@pytest.mark.parametrize(
    ("strategy", "weights", "expected"),
    [("round_robin", (1, 1), {"fo1": 20, "fo2": 20}), ("weighted", (3, 1), {"fo1": 30, "fo2": 10})],
)
def test_distribution_over_two_processes(
    tmp_path: Path,
    two_fakes: tuple[Any, Any],
    strategy: str,
    weights: tuple[float, float],
    expected: dict[str, int],
) -> None:
    with (
        fake_pair_gateway(tmp_path, two_fakes, strategy, weights) as gw,
        httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
    ):
        counts = Counter(chat(c, "duo").headers["x-aib-provider"] for _ in range(40))
    assert counts == expected


def test_least_outstanding_over_two_processes(tmp_path: Path, two_fakes: tuple[Any, Any]) -> None:
    with (
        fake_pair_gateway(tmp_path, two_fakes, "least_outstanding", (1, 1)) as gw,
        httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
    ):
        body = {"model": "duo", "messages": CHAT, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as held:  # a 4 s stream stays in flight
            assert held.status_code == 200
            busy = held.headers["x-aib-provider"]
            events = held.iter_raw()  # keep a reference: a dropped iterator closes the stream
            assert next(events).startswith(b"data: ")
            others = Counter(chat(c, "duo").headers["x-aib-provider"] for _ in range(10))
            assert others == {({"fo1", "fo2"} - {busy}).pop(): 10}
        state = gw.gateway.state
        wait_until(lambda: state.stats(f"{busy}/fake-model").inflight == 0, 5, what="the held stream to end")
        after = Counter(chat(c, "duo").headers["x-aib-provider"] for _ in range(4))
        assert after == {"fo1": 2, "fo2": 2}  # ties rotate again


@pytest.mark.parametrize(
    ("retry_after", "opens"),
    [("soon", False), ("1.5x", False), ("-3", False), ("HTTP-DATE", True)],
    ids=["word", "junk-number", "negative", "http-date"],
)
def test_retry_after_forms(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], retry_after: str, opens: bool
) -> None:
    if retry_after == "HTTP-DATE":  # two seconds from now, as an HTTP date
        retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)
    gw = chain(health=True)
    trio[0].enqueue(Reply.error(429, "busy", headers={"retry-after": retry_after}))
    served(post(gw), "beta", 1)  # never a 500, whatever the header says
    b = breaker(gw, "alpha")
    assert (b["state"] == "open") is opens, b
    if opens:
        assert 0 < b["retry_in_s"] <= 2.0


def test_set_plan_swaps_routes_and_sessions(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], tmp_path: Path
) -> None:
    """A new plan: alpha moves to beta's server, beta goes away. In-flight requests keep the old plan."""
    alpha, beta, gamma = trio
    gw = chain(health=True)
    providers = f"""
        providers:
          alpha: {{type: openai_compatible, base_url: "{beta.base_url}", models: [m], health: {{interval_s: 60}}}}
          gamma: {{type: openai_compatible, base_url: "{gamma.base_url}", models: [m], health: {{interval_s: 60}}}}
    """
    mappings = """
        models:
          primary: {provider: alpha, upstream: m, fallbacks: [last]}
          last: {provider: gamma, upstream: m}
    """
    new_plan, _ = plan_from_yaml(tmp_path / "reloaded", providers, mappings)
    alpha.enqueue(Reply.chat("from the old alpha", delay_s=0.6))
    results: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: results.append(post(gw)))
    slow.start()
    alpha.wait_requests(1)

    async def swap() -> None:
        gw.gateway.set_plan(new_plan)

    gw.call(swap())
    slow.join(10)
    assert results[0].json()["choices"][0]["message"]["content"] == "from the old alpha"
    served(post(gw), "alpha", 0)
    assert len(beta.requests) == 1  # alpha's new address
    assert "backup" not in {m["id"] for m in httpx.get(gw.base_url + "/v1/models").json()["data"]}
    assert_envelope(post(gw, "backup"), 404, "model_not_found")
    assert set(httpx.get(gw.base_url + "/health").json()["providers"]) == {"alpha", "gamma"}
    assert "beta" not in gw.gateway.state.health
