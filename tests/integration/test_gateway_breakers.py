"""Breakers that trust a recovered server, and ``/health`` that shows them.

* a probe that finds a server up ends its breaker's cool-down (half-open: the next request is a trial);
* when breakers shut out every deployment of a chain while probes say some are up, requests go to
  those (panic routing, as Envoy does) instead of a 503;
* ``/health`` calls a provider whose breaker is not closed ``degraded``, not ``healthy``;
* an answer after every candidate failed names each one and why.

The chain fixture: ``primary`` (alpha) falls back to ``backup`` (beta), then ``last`` (gamma), all
``ScriptedUpstream`` servers whose probes answer 200 unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway_client import TIMEOUT, assert_served, breaker_state, post_chat, provider_health
from gateway_harness import Reply, RunningGateway, ScriptedUpstream, assert_envelope

pytestmark = pytest.mark.integration


def test_a_probe_that_finds_the_server_up_half_opens_its_breaker(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=1, cooldown_s=60)
    alpha.enqueue(Reply.error(500, "crashed"))
    assert_served(post_chat(gw), "beta", 1)
    assert breaker_state(gw, "alpha")["state"] == "open"
    assert provider_health(gw, "alpha")["status"] == "degraded"  # answers probes, shut out by its breaker
    assert_served(post_chat(gw), "beta", 0)  # the cool-down holds while nothing says otherwise
    gw.probe_now()  # the server answers its probe: no need to wait out 60 s
    assert breaker_state(gw, "alpha")["state"] == "half_open"
    assert_served(post_chat(gw), "alpha", 0)  # the trial
    assert breaker_state(gw, "alpha")["state"] == "closed"
    assert provider_health(gw, "alpha")["status"] == "healthy"
    assert len(alpha.requests) == 2


def test_a_probe_that_fails_leaves_the_breaker_open(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=1, cooldown_s=60)
    alpha.enqueue(Reply.error(500, "crashed"))
    assert_served(post_chat(gw), "beta", 1)
    alpha.healthy = False  # its probe answers 503 now
    gw.probe_now()
    assert breaker_state(gw, "alpha")["state"] == "open"
    assert provider_health(gw, "alpha")["status"] == "unhealthy"


def test_panic_routing_when_breakers_shut_out_every_deployment_that_probes_say_is_up(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(health=True, threshold=1, cooldown_s=60)
    for f in trio:
        f.enqueue(Reply.error(500, f"{f.base_url} crashed"))
    err = assert_envelope(post_chat(gw), 502, "upstream_error")
    # every deployment tried, each with its own reason (not only the last)
    assert err["message"].startswith("Tried 3 deployments, all failed: alpha/m: alpha answered 500: ")
    for name, f in zip(("alpha", "beta", "gamma"), trio, strict=True):
        assert f"{name}/m: {name} answered 500: {f.base_url} crashed" in err["message"]
    body = httpx.get(gw.base_url + "/health", timeout=TIMEOUT).json()
    assert body["status"] == "degraded" and body["degraded_providers"] == 3 and body["healthy_providers"] == 0
    assert {n: breaker_state(gw, n)["state"] for n in ("alpha", "beta", "gamma")} == dict.fromkeys(
        ("alpha", "beta", "gamma"), "open"
    )
    # breakers say no to all three, the probes say all three are up: the servers are asked anyway
    assert_served(post_chat(gw), "alpha", 0)
    assert breaker_state(gw, "alpha")["state"] == "closed"  # a success closes it
    assert breaker_state(gw, "beta")["state"] == "open"
    assert_served(post_chat(gw), "alpha", 0)  # now the ordinary way
    assert [len(f.requests) for f in trio] == [3, 1, 1]


def test_no_panic_routing_to_servers_the_probes_say_are_down(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(health=True, threshold=1, cooldown_s=60)
    for f in trio:
        f.enqueue(Reply.error(500))
    assert_envelope(post_chat(gw), 502, "upstream_error")
    for f in trio:
        f.healthy = False
    gw.probe_now()
    r = post_chat(gw)
    err = assert_envelope(r, 503, "no_healthy_deployment")
    assert err["message"].count("circuit open") == 3 and 1 <= int(r.headers["retry-after"]) <= 60
    assert [len(f.requests) for f in trio] == [1, 1, 1]
