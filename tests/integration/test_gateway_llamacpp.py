"""The gateway in front of two real llama.cpp servers (SmolLM2-135M), driven by the official ``openai`` client.

Uses the session fixture ``llama_servers`` (two servers serving alias ``smollm2``). Generation is kept
short. The servers are shared with other tests: whatever a test stops, it starts again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from aib.config.load import LoadedConfig
from aib.config.plan import RoutingPlan
from aib.devtools.llamacpp import LlamaCppServer
from gateway_client import REFUSED, breaker_state
from gateway_harness import RunningGateway, dead_url, gateway_settings, plan_from_yaml, running_gateway
from openai_support import PROMPT, ask, assert_clean_sse, sdk_client, stream_chat

pytestmark = pytest.mark.integration

MAPPINGS = """
    defaults:
      timeouts: {connect_s: 2, first_byte_s: 60, total_s: 120}
      retries: {max_attempts: 3}
      breaker: {failure_threshold: 2, cooldown_s: 1}
    models:
      smollm-a: {provider: llama_a, upstream: smollm2}
      smollm-b: {provider: llama_b, upstream: smollm2}
      smollm:
        strategy: round_robin
        deployments:
          - {provider: llama_a, upstream: smollm2}
          - {provider: llama_b, upstream: smollm2}
      smollm-chain:
        provider: llama_dead
        upstream: smollm2
        fallbacks: [smollm]
"""


def llama_plan(config_dir: Path, servers: list[LlamaCppServer]) -> tuple[RoutingPlan, LoadedConfig]:
    a, b = servers
    providers = f"""
        providers:
          llama_a:
            type: llamacpp
            base_url: {a.root_url}
            models: [smollm2]
            health: {{interval_s: 60}}
          llama_b:
            type: llamacpp
            base_url: {b.root_url}
            models: [smollm2]
            health: {{interval_s: 60}}
          llama_dead:
            type: llamacpp
            base_url: {dead_url()}
            models: [smollm2]
            health: {{enabled: false}}
    """
    return plan_from_yaml(config_dir, providers, MAPPINGS)


def client(gw: RunningGateway, v1: bool = True) -> OpenAI:
    # no SDK retries: every failure the gateway lets through must be visible here
    return sdk_client(gw.base_url + ("/v1" if v1 else ""))


@pytest.fixture(scope="module")
def gw(
    llama_servers: list[LlamaCppServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    plan = llama_plan(tmp_path_factory.mktemp("llama-gw"), llama_servers)
    with running_gateway(plan, gateway_settings(health_checks=True)) as g:
        g.wait_first_probe(15)
        yield g


# --------------------------------------------------------------------------- the basics


@pytest.mark.parametrize(
    ("model", "providers"),
    [("smollm-a", {"llama_a"}), ("smollm-b", {"llama_b"}), ("smollm", {"llama_a", "llama_b"})],
)
def test_chat_returns_text(gw: RunningGateway, model: str, providers: set[str]) -> None:
    text, headers = ask(client(gw), model)
    assert text.strip()
    assert headers["x-aib-provider"] in providers
    assert headers["x-aib-model"] == "smollm2" and headers["x-aib-fallbacks"] == "0"


def test_base_url_without_v1(gw: RunningGateway) -> None:
    text, headers = ask(client(gw, v1=False), "smollm-a")
    assert text.strip() and headers["x-aib-provider"] == "llama_a"
    models = {m.id for m in client(gw, v1=False).models.list()}
    assert "smollm-a" in models


def test_streaming_yields_chunks_and_ends_cleanly(gw: RunningGateway) -> None:
    n, text, finish = stream_chat(client(gw), "smollm")
    assert n >= 3 and text.strip()
    assert finish in ("length", "stop")


def test_stream_bytes_end_with_done_and_no_error_event(gw: RunningGateway) -> None:
    body = {"model": "smollm-b", "messages": PROMPT, "max_tokens": 8, "stream": True}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert_clean_sse(r)
    assert r.headers["content-type"] == "text/event-stream" and r.headers["x-aib-provider"] == "llama_b"


def test_completions(gw: RunningGateway) -> None:
    raw = client(gw).completions.with_raw_response.create(
        model="smollm-a", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert completion.choices[0].text.strip()
    assert raw.headers["x-aib-provider"] == "llama_a"


@pytest.mark.parametrize("rid", ["req-1", "2f1c8a7e-9b1d-4c3a-8e5f-0a1b2c3d4e5f"])
def test_any_client_request_id_works(gw: RunningGateway, rid: str) -> None:
    """llama-cpp-python rejects a non-UUID x-request-id with 400; the gateway maps it, the client keeps it."""
    raw = client(gw).chat.completions.with_raw_response.create(
        model="smollm-a", messages=PROMPT, max_tokens=4, extra_headers={"x-request-id": rid}
    )
    assert raw.parse().choices[0].message.content is not None
    assert raw.headers["x-request-id"] == rid


def test_models_list_names_the_providers(gw: RunningGateway) -> None:
    c = client(gw)
    owners = {m.id: m.owned_by for m in c.models.list()}
    assert owners["smollm-a"] == "llama_a"
    assert owners["smollm-b"] == "llama_b"
    assert owners["smollm-chain"] == "llama_dead"
    assert owners["smollm"] == "aib:group"
    assert c.models.retrieve("smollm-b").owned_by == "llama_b"


def test_health_sees_both_servers(gw: RunningGateway) -> None:
    r = httpx.get(gw.base_url + "/health", timeout=10)
    assert r.status_code == 200
    ps = r.json()["providers"]
    assert ps["llama_a"]["status"] == "healthy" and ps["llama_b"]["status"] == "healthy"
    assert ps["llama_dead"]["status"] == "unknown"  # never probed (health disabled)


def test_load_balancing_spreads_requests(gw: RunningGateway) -> None:
    c = client(gw)
    counts = Counter(ask(c, "smollm")[1]["x-aib-provider"] for _ in range(20))
    assert counts == {"llama_a": 10, "llama_b": 10}


def test_fallback_chain_from_a_dead_port(gw: RunningGateway) -> None:
    c = client(gw)
    text, headers = ask(c, "smollm-chain")
    assert text.strip()
    assert headers["x-aib-provider"] in ("llama_a", "llama_b")
    assert headers["x-aib-fallbacks"] == "1"  # the dead port was tried first
    ask(c, "smollm-chain")  # second connection refused: breaker threshold 2
    b = breaker_state(gw, "llama_dead", "smollm2")
    assert b["state"] == "open" and REFUSED.search(b["last_error"]), b
    text, headers = ask(c, "smollm-chain")
    assert text.strip() and headers["x-aib-fallbacks"] == "0"  # the open breaker skips the dead port


# --------------------------------------------------------------------------- a server dies and comes back


def test_kill_one_server_mid_traffic(llama_servers: list[LlamaCppServer], tmp_path: Path) -> None:
    victim = llama_servers[1]
    plan = llama_plan(tmp_path, llama_servers)
    failures: list[str] = []
    served: list[str] = []
    states: list[str] = []
    stopper = threading.Thread(target=victim.stop, name="stop-llama-b")
    try:
        with running_gateway(plan, gateway_settings(health_checks=True)) as g:
            g.wait_first_probe(15)
            c = client(g)
            deadline = time.monotonic() + 120
            for i in range(30):
                if time.monotonic() > deadline:
                    break
                if i == 6:
                    stopper.start()  # dies while the next requests are being sent
                try:
                    text, headers = ask(c, "smollm")
                    assert text is not None
                    served.append(headers["x-aib-provider"])
                except Exception as exc:  # collected, asserted below
                    failures.append(f"request {i}: {type(exc).__name__}: {exc}")
                if i > 6:
                    states.append(str(breaker_state(g, "llama_b", "smollm2").get("state")))
            stopper.join(30)
            assert not victim.is_running()
            assert failures == [], failures
            assert len(served) == 30
            assert "llama_b" in served[:6]  # both were serving before
            assert "open" in states, states  # the dead deployment's breaker opened
            print(f"served {served}\nbreaker states after the kill {states}")
            tail = served[-10:]
            assert set(tail) == {"llama_a"}  # and traffic went to the live one
            b = breaker_state(g, "llama_b", "smollm2")
            assert b["consecutive_failures"] >= 2 and b["last_error"]

            victim.start()  # same port; waits until it answers
            recovered = False
            for _ in range(20):  # bounded: the 1 s cool-down passes within a few requests
                text, headers = ask(c, "smollm")
                if headers["x-aib-provider"] == "llama_b":
                    recovered = True
                    break
                time.sleep(0.2)
            assert recovered, "llama_b never served again after its restart"
            b = breaker_state(g, "llama_b", "smollm2")
            assert (b["state"], b["consecutive_failures"]) == ("closed", 0)
            counts = Counter(ask(c, "smollm")[1]["x-aib-provider"] for _ in range(4))
            assert counts == {"llama_a": 2, "llama_b": 2}
    finally:
        if stopper.is_alive():
            stopper.join(30)
        if not victim.is_running():
            victim.start()  # the servers are shared: leave it running and ready
