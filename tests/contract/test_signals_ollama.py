"""loaded_first against the Ollama contract fake: ``GET /api/ps`` says which models are in memory.

Ollama loads a model on its first request (5-60 s on real hardware, ``load_delay`` here) and may evict
another; loaded_first sends requests to the server that already has it. The fake's ``/api/ps`` follows
Ollama's API documentation ("List Running Models").
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from aib.devtools.fake_ollama import FakeOllama
from aib.gateway.app import Gateway
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from aib.providers.signals import OllamaSignals
from gateway_harness import RunningGateway, gateway_settings, plan_from_yaml, running_gateway, wait_until

pytestmark = pytest.mark.contract

MODEL = "llama3.2"  # as the route names it; Ollama lists it as llama3.2:latest


@pytest.fixture
def ollamas() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    a, b = FakeOllama([MODEL], load_delay=0.5), FakeOllama([MODEL], load_delay=0.5)
    with a.serve_in_thread(), b.serve_in_thread():
        yield a, b


@pytest.fixture
def gw(
    ollamas: tuple[FakeOllama, FakeOllama], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    a, b = ollamas
    signals = "{interval_s: 0.2, timeout_s: 1, stale_after_s: 3}"
    providers = f"""
        providers:
          oa: {{type: ollama, base_url: "{a.base_url}", models: [{MODEL}], signals: {signals}}}
          ob: {{type: ollama, base_url: "{b.base_url}", models: [{MODEL}], signals: {signals}}}
    """
    deps = f"[{{provider: oa, upstream: {MODEL}}}, {{provider: ob, upstream: {MODEL}}}]"
    mappings = f"""
        models:
          warm: {{strategy: loaded_first, deployments: {deps}, balance: {{tie_break: round_robin}}}}
          turns: {{strategy: round_robin, deployments: {deps}}}
    """
    plan = plan_from_yaml(tmp_path_factory.mktemp("ollama-signals"), providers, mappings)
    observe = ObserveSettings(access_log=False, request_log=None, writer="thread")

    def setup(g: Gateway) -> None:
        install_observability(g, observe)

    with running_gateway(plan, gateway_settings(health_checks=True), setup=setup) as running:
        running.wait_first_probe()
        yield running


def chat(gw: RunningGateway, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-aib-provider"]


def loaded(gw: RunningGateway, provider: str) -> list[str] | None:
    s = httpx.get(gw.base_url + "/health").json()["providers"][provider].get("signals") or {}
    return s.get("loaded_models") if s.get("state") == "fresh" else None


def load_directly(fake: FakeOllama) -> None:
    """Another client uses the model on this server: Ollama loads it."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(fake.base_url + "/v1/chat/completions", json=body, timeout=30).status_code == 200


def test_api_ps_as_documented(ollamas: tuple[FakeOllama, FakeOllama]) -> None:
    a, _ = ollamas
    assert httpx.get(a.base_url + "/api/ps").json() == {"models": []}
    load_directly(a)
    (entry,) = httpx.get(a.base_url + "/api/ps").json()["models"]
    assert set(entry) == {
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    }
    assert entry["name"] == entry["model"] == f"{MODEL}:latest"
    reading = OllamaSignals().parse("/api/ps", httpx.get(a.base_url + "/api/ps").content)
    assert reading.loaded is not None and f"{MODEL}:latest" in reading.loaded
    a.unload(MODEL)
    assert not a.is_loaded(MODEL) and httpx.get(a.base_url + "/api/ps").json() == {"models": []}


def test_loaded_first_goes_where_the_model_is_in_memory(
    gw: RunningGateway, ollamas: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = ollamas
    load_directly(a)
    wait_until(lambda: loaded(gw, "oa") == [f"{MODEL}:latest"] and loaded(gw, "ob") == [], 5, what="/api/ps")
    assert [chat(gw, "warm") for _ in range(4)] == ["oa"] * 4
    assert b.loads == 0  # nobody waited for b to load the model
    # the model moves: a drops it, another client loads it on b
    a.unload(MODEL)
    load_directly(b)
    wait_until(lambda: loaded(gw, "oa") == [] and loaded(gw, "ob") == [f"{MODEL}:latest"], 5, what="the move")
    assert [chat(gw, "warm") for _ in range(3)] == ["ob"] * 3
    assert a.loads == 1  # only the load_directly above
    text = httpx.get(gw.base_url + "/metrics").text
    assert f'aib_backend_model_loaded{{model="{MODEL}",provider="ob"}} 1.0' in text
    assert f'aib_backend_model_loaded{{model="{MODEL}",provider="oa"}} 0.0' in text


def test_round_robin_makes_a_server_load_the_model(
    gw: RunningGateway, ollamas: tuple[FakeOllama, FakeOllama]
) -> None:
    """The same situation under round_robin: half the requests go to b, which loads the model first."""
    a, b = ollamas
    load_directly(a)
    wait_until(lambda: loaded(gw, "oa") == [f"{MODEL}:latest"], 5, what="/api/ps")
    assert sorted(chat(gw, "turns") for _ in range(4)) == ["oa", "oa", "ob", "ob"]
    assert b.loads == 1


def test_when_nobody_has_it_the_tie_break_decides(
    gw: RunningGateway, ollamas: tuple[FakeOllama, FakeOllama]
) -> None:
    wait_until(lambda: loaded(gw, "oa") == [] and loaded(gw, "ob") == [], 5, what="/api/ps")
    first = chat(gw, "warm")  # round robin among the equally cold
    assert first in ("oa", "ob")
    wait_until(lambda: loaded(gw, first) == [f"{MODEL}:latest"], 5, what="the load to show")
    assert {chat(gw, "warm") for _ in range(3)} == {first}  # now it is the warm one
    live = httpx.get(gw.base_url + "/admin/route", params={"model": "warm"}).json()["live"]["routes"][0]
    tiers = {d["provider"]: d["tier"] for d in live["deployments"]}
    other = "ob" if first == "oa" else "oa"
    assert tiers == {first: "model loaded", other: "model not loaded"}
