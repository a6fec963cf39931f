"""The native gateway over real HTTP: which deployment a model name reaches, and how load is spread.

Routing order (exact name, alias, discovered model, pattern with an upstream template, capability),
``/admin/route`` explaining it, the 404 that names the closest model, route params, upstream keys,
disabled providers, round robin / weighted / least-outstanding groups (over two ``fake_openai``
processes) and a plan swapped under running requests. Shared fixtures: ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_client import CHAT, TIMEOUT, assert_served, chat, post_chat
from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    assert_envelope,
    fake_openai_process,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- routing order


def test_exact_name(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = chat(routed_client, "m-one")
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
def test_alias(routed_client: httpx.Client, up1: ScriptedUpstream, alias: str) -> None:
    r = chat(routed_client, alias)
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
    routed_client: httpx.Client,
    up1: ScriptedUpstream,
    up2: ScriptedUpstream,
    model: str,
    provider: str,
    upstream: str,
) -> None:
    r = chat(routed_client, model)
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, provider, upstream)
    fake = up1 if provider == "up1" else up2
    assert fake.requests[-1].json["model"] == upstream


def test_capability(routed_client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream) -> None:
    r = chat(routed_client, "capability/code")
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up1", "coder-x")
    r = routed_client.post("/v1/embeddings", json={"model": "capability/embeddings", "input": "text"})
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up2", "emb-x")
    assert up2.requests[-1].path == "/v1/embeddings" and up2.requests[-1].json["model"] == "emb-x"


def test_discovered_model_from_ollama(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    # llama3.2:latest is on the Ollama fake; the pattern llama* would also match: discovery wins
    r = chat(routed_client, "llama3.2:latest")
    assert r.status_code == 200, r.text
    assert (r.headers["x-aib-provider"], r.headers["x-aib-model"]) == ("ollama", "llama3.2:latest")
    assert "fake Ollama" in r.json()["choices"][0]["message"]["content"]
    assert up1.requests == []
    explain = routed_client.get("/admin/route", params={"model": "llama3.2:latest"}).json()
    assert explain["matched_by"] == "discovered" and "ollama" in explain["rule"]


def test_configured_name_beats_discovered(routed_client: httpx.Client, up2: ScriptedUpstream) -> None:
    # nomic-embed-text:latest is on the Ollama fake too, but the config names it
    r = routed_client.post("/v1/embeddings", json={"model": "nomic-embed-text:latest", "input": "x"})
    assert (r.status_code, r.headers["x-aib-provider"], r.headers["x-aib-model"]) == (200, "up2", "emb-x")
    assert (
        routed_client.get("/admin/route", params={"model": "nomic-embed-text:latest"}).json()["matched_by"]
        == "exact"
    )


def test_completions_and_embeddings_without_v1(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = routed_client.post("/completions", json={"model": "m-one", "prompt": "Once"})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert up1.requests[-1].path == "/v1/completions"
    r = routed_client.post("/embeddings", json={"model": "embedder", "input": ["a", "b"]})
    assert r.status_code == 200 and r.json()["object"] == "list"
    r = routed_client.post("/chat/completions", json={"model": "one", "messages": CHAT})
    assert r.status_code == 200 and r.headers["x-aib-model"] == "m-one"


def test_route_params_fill_unset_fields(routed_client: httpx.Client, up2: ScriptedUpstream) -> None:
    assert chat(routed_client, "m-two").status_code == 200
    assert up2.requests[-1].json == {"model": "m-two", "messages": CHAT, "max_tokens": 7, "temperature": 0.5}
    assert chat(routed_client, "m-two", max_tokens=3).status_code == 200
    assert up2.requests[-1].json["max_tokens"] == 3  # the routed_client's value wins


def test_disabled_provider_is_never_called(routed_client: httpx.Client) -> None:
    err = assert_envelope(chat(routed_client, "off-model"), 503, "no_healthy_deployment")
    assert "off/m: disabled" in err["message"]
    assert routed_client.get("/health").json()["providers"]["off"]["status"] == "disabled"


def test_upstream_keys_are_sent(
    tmp_path: Path, up1: ScriptedUpstream, up2: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIB_TEST_ANTHROPIC_KEY", "sk-ant-test")
    monkeypatch.setenv("AIB_TEST_OPENAI_KEY", "sk-oai-test")
    providers = f"""
        providers:
          claude:
            type: anthropic
            api: openai  # its OpenAI SDK compatibility endpoint (native: tests/contract/test_outbound_anthropic.py)
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


# --------------------------------------------------------------------------- explaining a route, unknown names


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
    routed_client: httpx.Client, model: str, matched_by: str, route: str
) -> None:
    r = routed_client.get("/admin/route", params={"model": model})
    assert r.status_code == 200
    body = r.json()
    assert (body["requested"], body["matched_by"], body["route"]) == (model, matched_by, route)
    assert body["candidates"][0]["role"] == "primary" and body["candidates"][0]["deployments"]
    assert set(body["timeouts"]) == {"connect_s", "first_byte_s", "total_s"}


def test_admin_route_matches_explain(routed: RunningGateway, routed_client: httpx.Client) -> None:
    for model in ("pair", "one", "tmpl-q-v1"):
        res = routed.gateway.plan.resolve(model)
        assert res is not None
        assert routed_client.get("/admin/route", params={"model": model}).json() == json.loads(
            json.dumps(res.explain())
        )


def test_admin_route_errors(routed_client: httpx.Client) -> None:
    assert_envelope(routed_client.get("/admin/route"), 400, "missing_required_parameter", "model")
    err = assert_envelope(
        routed_client.get("/admin/route", params={"model": "m-onee"}), 404, "model_not_found"
    )
    assert "m-one" in err["message"]


def test_admin_route_with_admin_key(routed_client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_ADMIN_KEY", "s3cret")
    q = {"model": "m-one"}
    err = assert_envelope(routed_client.get("/admin/route", params=q), 401, "invalid_admin_key")
    assert "AIB_ADMIN_KEY" in err["message"] and "s3cret" not in err["message"]
    assert err["type"] == "authentication_error"
    assert_envelope(
        routed_client.get("/admin/route", params=q, headers={"authorization": "Bearer wrong"}), 401
    )
    assert (
        routed_client.get("/admin/route", params=q, headers={"authorization": "Bearer s3cret"}).status_code
        == 200
    )
    assert routed_client.get("/admin/route", params=q, headers={"x-admin-key": "s3cret"}).status_code == 200
    # the inference endpoints do not need it
    assert chat(routed_client, "m-one").status_code == 200
    monkeypatch.delenv("AIB_ADMIN_KEY")
    assert routed_client.get("/admin/route", params=q).status_code == 200


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
def test_404_names_the_closest(routed_client: httpx.Client, asked: str, expected: str) -> None:
    err = assert_envelope(chat(routed_client, asked), 404, "model_not_found", "model")
    assert asked in err["message"] and expected in err["message"]
    assert "/v1/models" in err["message"]


def test_404_without_any_close_name(routed_client: httpx.Client) -> None:
    err = assert_envelope(chat(routed_client, "zzzzzzzzzzzzzzzz"), 404, "model_not_found")
    assert "Did you mean" not in err["message"]


# --------------------------------------------------------------------------- balancing


def test_round_robin_group_over_http(
    routed_client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream
) -> None:
    providers = Counter(chat(routed_client, "pair").headers["x-aib-provider"] for _ in range(10))
    assert providers == {"up1": 5, "up2": 5}
    assert len(up1.requests) == 5 and len(up2.requests) == 5
    assert {r.json["model"] for r in up2.requests} == {"m-two"}


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


# --------------------------------------------------------------------------- a new plan


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
    slow = threading.Thread(target=lambda: results.append(post_chat(gw)))
    slow.start()
    alpha.wait_requests(1)

    async def swap() -> None:
        gw.gateway.set_plan(new_plan)

    gw.call(swap())
    slow.join(10)
    assert results[0].json()["choices"][0]["message"]["content"] == "from the old alpha"
    assert_served(post_chat(gw), "alpha", 0)
    assert len(beta.requests) == 1  # alpha's new address
    assert "backup" not in {m["id"] for m in httpx.get(gw.base_url + "/v1/models").json()["data"]}
    assert_envelope(post_chat(gw, "backup"), 404, "model_not_found")
    assert set(httpx.get(gw.base_url + "/health").json()["providers"]) == {"alpha", "gamma"}
    assert "beta" not in gw.gateway.state.health
