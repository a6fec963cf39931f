"""Fixtures shared by the gateway's HTTP tests (test_gateway_*.py): scripted upstreams and gateways.

* ``up1``, ``up2`` - two ``ScriptedUpstream`` servers (module scope); ``routed`` - one gateway over them and
  the Ollama contract fake (discovery on, health checks on, 4 KiB body limit) for read-mostly tests;
  ``routed_client`` - an ``httpx.Client`` on it, with both upstreams' scripts and records cleared.
* ``trio`` - three ``ScriptedUpstream`` servers; ``chain`` - starts a gateway per call whose ``primary``
  (alpha) falls back to ``backup`` (beta), then ``last`` (gamma), with the knobs a test needs.

Everything listens on 127.0.0.1 and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aib.devtools.fake_ollama import FakeOllama
from gateway_client import CHAIN_PROVIDERS, TIMEOUT
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)

# --------------------------------------------------------------------------- one gateway, two upstreams


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
def routed_client(
    routed: RunningGateway, up1: ScriptedUpstream, up2: ScriptedUpstream
) -> Iterator[httpx.Client]:
    """A client of ``routed``; both upstreams start with an empty script and no recorded requests."""
    up1.clear()
    up2.clear()
    with httpx.Client(base_url=routed.base_url, timeout=TIMEOUT) as c:
        yield c


# --------------------------------------------------------------------------- a fallback chain per test


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
        addr = {n: f.base_url for n, f in zip(CHAIN_PROVIDERS, trio, strict=True)} | (urls or {})
        providers = "providers:\n" + "".join(
            f"  {n}:\n    type: openai_compatible\n    base_url: {addr[n]}\n    models: [m]\n"
            f"    health: {{interval_s: 60, timeout_s: 1}}\n"
            for n in CHAIN_PROVIDERS
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
