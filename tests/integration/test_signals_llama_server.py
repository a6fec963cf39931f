"""Backend signals and the load-aware strategies against real llama.cpp servers with SmolLM2.

Two ``llama-server`` processes (``native_servers``: 2 slots each, ``--metrics``) and one llama-cpp-python
server (``llama_servers``, which has no signal endpoint) behind one gateway with health checks and
signal polling on. Load that the gateway did not send is put on a server directly, as another client
would.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from aib.devtools.llama_server import LlamaServer
from aib.devtools.llamacpp import LlamaCppServer
from aib.gateway.app import Gateway
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from gateway_harness import (
    RunningGateway,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    wait_until,
)

pytestmark = pytest.mark.integration

TIMEOUT = httpx.Timeout(60.0)
# llama-server: not faster (aib validate says why); a generous time limit for a busy, shared machine
FAST = "{interval_s: 1.5, timeout_s: 1, stale_after_s: 10}"


@pytest.fixture(scope="module")
def gw(
    native_servers: list[LlamaServer],
    llama_servers: list[LlamaCppServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    n1, n2 = native_servers
    providers = f"""
        providers:
          n1: {{type: llamacpp, base_url: "{n1.root_url}", models: [smollm2], signals: {FAST}}}
          n2: {{type: llamacpp, base_url: "{n2.root_url}", models: [smollm2], signals: {FAST}}}
          py: {{type: llamacpp, base_url: "{llama_servers[0].root_url}", models: [smollm2], signals: {FAST}}}
          gone:
            type: llamacpp
            base_url: {dead_url()}
            models: [smollm2]
            health: {{enabled: false}}
    """

    def group(strategy: str, *providers: str) -> str:
        deps = ", ".join(f"{{provider: {p}, upstream: smollm2}}" for p in providers)
        return f"{{strategy: {strategy}, deployments: [{deps}]}}"

    mappings = f"""
        defaults:
          breaker: {{failure_threshold: 2, cooldown_s: 120}}
          timeouts: {{connect_s: 1, first_byte_s: 60, total_s: 120}}
        models:
          ll: {group("least_loaded", "n1", "n2")}
          lo: {group("least_outstanding", "n1", "n2")}
          rr: {group("round_robin", "n1", "n2")}
          sticky: {group("prefix_affinity", "n1", "n2")}
          sticky-gone: {group("prefix_affinity", "gone", "n1")}
          mixed: {group("least_loaded", "py", "n1")}
    """
    plan = plan_from_yaml(tmp_path_factory.mktemp("signals-real"), providers, mappings)
    observe = ObserveSettings(access_log=False, request_log=None, writer="thread")

    def with_metrics(g: Gateway) -> None:
        install_observability(g, observe)

    with running_gateway(plan, gateway_settings(health_checks=True), setup=with_metrics) as running:
        running.wait_first_probe(30)
        yield running


def health(gw: RunningGateway) -> dict[str, Any]:
    return dict(httpx.get(gw.base_url + "/health", timeout=TIMEOUT).json())


def signals(gw: RunningGateway, provider: str) -> dict[str, Any]:
    return dict(health(gw)["providers"][provider].get("signals") or {})


def chat(gw: RunningGateway, model: str, messages: list[dict[str, str]], **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 8, "temperature": 0, **extra}
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r


@contextlib.contextmanager
def unread(port: int, bodies: list[dict[str, Any]]) -> Iterator[None]:
    """Send these chat requests on raw connections and leave the answers unread; the connections are
    closed when the block ends (the server then drops the requests)."""
    conns = []
    try:
        for body in bodies:
            data = orjson.dumps(body)
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            conns.append(sock)
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(data), data)
            )
        yield
    finally:
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def busy(server: LlamaServer, requests: int = 4) -> contextlib.AbstractContextManager[None]:
    """Another client keeps ``server`` busy: long generations straight to it (two run, the rest wait)."""
    long = {"model": "smollm2", "max_tokens": 1500, "ignore_eos": True}
    return unread(
        server.port,
        [
            {**long, "messages": [{"role": "user", "content": f"Count to a thousand, run {i}."}]}
            for i in range(requests)
        ],
    )


# --------------------------------------------------------------------------- what the gateway shows


def test_health_shows_each_servers_signals_with_their_age(gw: RunningGateway) -> None:
    wait_until(lambda: signals(gw, "n1").get("state") == "fresh", 10, what="a fresh reading of n1")
    s = signals(gw, "n1")
    assert s["source"] == "/metrics" and s["running"] == 0 and s["waiting"] == 0
    assert 0 <= s["age_s"] <= 2.5 and s["weight"] == 1.0 and s["polls"] >= 1
    wait_until(lambda: signals(gw, "py").get("state") == "unsupported", 10, what="py unsupported")
    assert "GET /metrics answered 404" in signals(gw, "py")["unsupported"]  # llama-cpp-python has none
    gone = signals(gw, "gone")  # never answered: no reading, the error of the last poll
    assert gone["state"] == "none" and "cannot connect" in gone["last_error"] and gone["failures"] >= 1


def test_metrics_expose_the_backend_gauges(gw: RunningGateway) -> None:
    wait_until(lambda: signals(gw, "n2").get("state") == "fresh", 10, what="a fresh reading of n2")
    text = httpx.get(gw.base_url + "/metrics", timeout=TIMEOUT).text
    assert 'aib_backend_requests_running{provider="n1"} 0.0' in text
    assert 'aib_backend_requests_waiting{provider="n2"} 0.0' in text
    assert 'aib_backend_signal_age_seconds{provider="n1"}' in text
    assert 'aib_deployment_load{deployment="n1/smollm2"} 0.0' in text
    assert 'provider="py"' not in text.split("aib_backend_requests_running")[1].split("# HELP")[0]


# --------------------------------------------------------------------------- least_loaded


def test_least_loaded_avoids_a_server_busy_with_another_client(
    gw: RunningGateway, native_servers: list[LlamaServer]
) -> None:
    n1 = native_servers[0]
    msgs = [{"role": "user", "content": "Say hi."}]
    with busy(n1):
        wait_until(lambda: signals(gw, "n1").get("waiting", 0) >= 1, 20, what="n1 reporting a queue")
        s = signals(gw, "n1")
        assert s["running"] == 2 and s["running"] + s["waiting"] >= 3
        served = [chat(gw, "ll", msgs).headers["x-aib-provider"] for _ in range(4)]
        assert served == ["n2"] * 4  # it knows n1 is busy although the gateway sent it nothing
        # least_outstanding counts only its own requests: of two, one goes to the busy n1. Counted by
        # attempts started (the in-flight count of n2's quick answer may be back to 0 before a poll on
        # a busy machine sees both)
        stats = gw.gateway.state.stats
        before = {d: stats(d).requests for d in ("n1/smollm2", "n2/smollm2")}
        with unread(gw.port, [{"model": "lo", "messages": msgs, "max_tokens": 4}] * 2):
            started = lambda d: stats(d).requests - before[d]  # noqa: E731
            wait_until(lambda: started("n1/smollm2") + started("n2/smollm2") == 2, 30, what="both attempts")
            assert started("n1/smollm2") == 1
        live = httpx.get(gw.base_url + "/admin/route", params={"model": "ll"}, timeout=TIMEOUT).json()["live"]
        ranking = live["routes"][0]["deployments"]
        assert [d["id"] for d in ranking] == ["n2/smollm2", "n1/smollm2"]
        assert ranking[1]["from"] == "server signals" and ranking[1]["server_queue"] >= 3
        assert ranking[1]["load"] > ranking[0]["load"] and ranking[0]["rank"] == 1
        assert live["routes"][0]["rule"].startswith("lowest load")


def idle(gw: RunningGateway, provider: str) -> bool:
    s = signals(gw, provider)
    return s.get("state") == "fresh" and s.get("running") == 0 and s.get("waiting") == 0


def test_a_server_without_signals_is_ranked_by_the_gateways_own_count(gw: RunningGateway) -> None:
    wait_until(lambda: idle(gw, "n1"), 30, what="n1 idle again")  # it dropped the other client's requests
    live = httpx.get(gw.base_url + "/admin/route", params={"model": "mixed"}, timeout=TIMEOUT).json()["live"]
    by_id = {d["id"]: d for d in live["routes"][0]["deployments"]}
    assert by_id["py/smollm2"]["from"].startswith("gateway count")
    assert by_id["py/smollm2"]["signals"]["state"] == "unsupported"
    served = {
        chat(gw, "mixed", [{"role": "user", "content": "Hi"}]).headers["x-aib-provider"] for _ in range(4)
    }
    assert served == {"py", "n1"}  # idle both: in turn


# --------------------------------------------------------------------------- prefix_affinity


def conversation(nonce: str) -> list[dict[str, str]]:
    system = f"Session {nonce}. You are a helpful assistant for a library. " + " ".join(
        f"Rule {i}: answer briefly and politely about books, opening hours and loans." for i in range(25)
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": "What time do you open?"}]


def two_turns(gw: RunningGateway, model: str) -> tuple[httpx.Response, httpx.Response]:
    msgs = conversation(uuid.uuid4().hex)  # a prompt neither server has seen
    first = chat(gw, model, msgs)
    answer = first.json()["choices"][0]["message"]["content"]
    msgs += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And on Sundays?"}]
    return first, chat(gw, model, msgs)


def test_prefix_affinity_keeps_a_conversation_where_its_prompt_is_cached(gw: RunningGateway) -> None:
    for _ in range(3):
        first, second = two_turns(gw, "sticky")
        assert first.headers["x-aib-provider"] == second.headers["x-aib-provider"]
        prompt = first.json()["usage"]["prompt_tokens"]
        assert prompt > 300
        assert second.json()["timings"]["cache_n"] >= prompt - 2  # llama-server reused the first turn
    rr_first, rr_second = two_turns(gw, "rr")
    assert rr_first.headers["x-aib-provider"] != rr_second.headers["x-aib-provider"]
    assert rr_second.json()["timings"]["cache_n"] < 50  # the other server computes it all again


def test_session_header_wins_and_admin_route_explains_the_ring(gw: RunningGateway) -> None:
    body = {"model": "sticky", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    seen = set()
    for _ in range(3):
        r = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json=body,
            headers={"x-session-id": "team-a"},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200
        seen.add(r.headers["x-aib-provider"])
    assert len(seen) == 1
    live = httpx.get(
        gw.base_url + "/admin/route", params={"model": "sticky", "session": "team-a"}, timeout=TIMEOUT
    ).json()["live"]
    aff = live["routes"][0]["affinity"]
    assert (
        aff["key_from"] == "session" and aff["chosen"] == f"{seen.pop()}/smollm2" and aff["spilled"] is False
    )


def test_prefix_affinity_falls_back_and_streams_like_any_strategy(gw: RunningGateway) -> None:
    """Sessions whose home is a dead deployment fail over to the next on the ring; once its breaker
    opens they go there directly. Streams work the same."""
    statuses = []
    for i in range(12):
        body = {"model": "sticky-gone", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        r = httpx.post(
            gw.base_url + "/v1/chat/completions",
            json=body,
            headers={"x-session-id": f"s{i}"},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200 and r.headers["x-aib-provider"] == "n1", r.text
        statuses.append(int(r.headers["x-aib-fallbacks"]))
    assert statuses.count(1) == 2  # the two failures that open the breaker (threshold 2)...
    assert statuses[-1] == 0  # ...then nothing is sent to it any more
    body = {
        "model": "sticky-gone",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "stream": True,
    }
    with httpx.stream("POST", gw.base_url + "/v1/chat/completions", json=body, timeout=TIMEOUT) as r:
        text = r.read().decode()
    assert r.status_code == 200 and r.headers["x-aib-provider"] == "n1"
    assert text.rstrip().endswith("data: [DONE]")
    live = httpx.get(gw.base_url + "/admin/route", params={"model": "sticky-gone"}, timeout=TIMEOUT).json()[
        "live"
    ]
    gone = next(d for d in live["routes"][0]["deployments"] if d["id"] == "gone/smollm2")
    assert gone["rank"] is None and gone["excluded"].startswith("circuit open")
