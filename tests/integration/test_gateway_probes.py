"""The native gateway's health probes and discovery, and what ``/health`` says when things are down.

Discovery on an OpenAI-compatible server (models appear and go), discovery answers that are not usable,
probe timeouts (down when idle, busy while a request runs there), llama.cpp's own status, every provider
down, and states plus breakers side by side. Upstreams are ``ScriptedUpstream`` servers on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gateway_client import (
    CHAIN_PROVIDERS,
    CHAT,
    REFUSED,
    TIMEOUT,
    breaker_state,
    model_ids,
    post_chat,
    provider_health,
)
from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    assert_envelope,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration


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


# --------------------------------------------------------------------------- health when things are down


def test_health_503_when_every_provider_is_down(chain: Callable[..., RunningGateway]) -> None:
    gw = chain(urls={n: dead_url() for n in CHAIN_PROVIDERS}, health=True, threshold=2)
    r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unhealthy" and body["healthy_providers"] == 0
    for n in CHAIN_PROVIDERS:
        assert body["providers"][n]["status"] == "unhealthy"
        assert REFUSED.search(body["providers"][n]["last_error"])
    assert httpx.get(gw.base_url + "/health/live").status_code == 200
    assert httpx.get(gw.base_url + "/health/ready").status_code == 200
    # requests still try (health may be stale) and fail with an envelope naming a provider
    err = assert_envelope(post_chat(gw), 502, "upstream_unreachable")
    assert any(n in err["message"] for n in CHAIN_PROVIDERS) and REFUSED.search(err["message"])
    for n in CHAIN_PROVIDERS:
        assert breaker_state(gw, n)["consecutive_failures"] == 1


def test_health_shows_states_and_breakers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    trio[2].healthy = False  # gamma answers its probe with 503
    gw = chain(urls={"beta": dead_url()}, health=True, threshold=1)
    trio[0].enqueue(Reply.error(500, "kaput"))
    err = assert_envelope(post_chat(gw), 502)  # alpha 500; beta and gamma are down: not tried
    # the deployment tried and why it failed, then those not tried and why not
    assert err["message"].startswith(
        "Tried 1 deployment: alpha/m: alpha answered 500: kaput. Not tried: beta: down ("
    )
    assert REFUSED.search(err["message"]) and "gamma: down (health endpoint answered 503" in err["message"]
    r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200  # alpha answers its probes: it takes requests again (a trial first)
    body = r.json()
    assert body["status"] == "degraded" and body["healthy_providers"] == 0 and body["degraded_providers"] == 1
    ps = body["providers"]
    assert ps["alpha"]["status"] == "degraded"  # it answers its probe, but its breaker is open
    assert ps["beta"]["status"] == "unhealthy" and REFUSED.search(ps["beta"]["last_error"])
    assert ps["gamma"]["status"] == "unhealthy" and "503" in ps["gamma"]["last_error"]
    assert ps["alpha"]["breakers"]["alpha/m"]["state"] == "open"
    assert "kaput" in ps["alpha"]["breakers"]["alpha/m"]["last_error"]
    assert err["message"]
