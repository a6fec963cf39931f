"""The signal poller against scripted servers: endpoints in order, unsupported ones, failures, ageing.

Real servers (llama-server, llama-cpp-python, the Ollama fake) are in test_signals_llama_server.py and
the contract tests; here a scripted server answers the odd cases a real one rarely gives on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from aib.config.plan import RoutingPlan
from aib.gateway.signals import SignalMonitor, source_of
from aib.gateway.upstream import UpstreamPool
from aib.routing.state import RuntimeState
from gateway_harness import Reply, ScriptedUpstream, dead_url, plan_from_yaml

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "signals"
METRICS_BUSY = (FIXTURES / "llama_server_metrics_busy.txt").read_text()
SLOTS_BUSY = (FIXTURES / "llama_server_slots_busy.json").read_bytes()


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["m"]) as fake:
        yield fake


def make_plan(
    tmp_path: Path, url: str, kind: str = "llamacpp", signals: str = "{timeout_s: 0.5}"
) -> RoutingPlan:
    providers = f"""
        providers:
          srv:
            type: {kind}
            base_url: {url}
            models: [m]
            signals: {signals}
          cloud:
            type: openai_compatible
            base_url: {dead_url()}
            models: [m]
    """
    return plan_from_yaml(tmp_path, providers, "models:\n  m: {provider: srv}\n")[0]


async def poll_once(
    plan: RoutingPlan, state: RuntimeState | None = None
) -> tuple[SignalMonitor, RuntimeState]:
    state = state or RuntimeState()
    pool = UpstreamPool()
    mon = SignalMonitor(lambda: plan, state, pool)
    try:
        await mon.poll(plan.providers["srv"])
    finally:
        await pool.close()
    return mon, state


async def test_metrics_first(tmp_path: Path, up: ScriptedUpstream) -> None:
    up.clear()
    up.enqueue(Reply.text(METRICS_BUSY, content_type="text/plain; version=0.0.4"))
    _, state = await poll_once(make_plan(tmp_path, up.base_url))
    sig = state.signals["srv"]
    assert sig.reading is not None and sig.reading.source == "/metrics"
    assert (sig.reading.running, sig.reading.waiting) == (2.0, 2.0)
    assert [r.path for r in up.requests] == ["/metrics"]
    assert sig.polls == 1 and sig.failures == 0 and sig.last_error is None


async def test_slots_when_metrics_are_off_and_it_remembers(tmp_path: Path, up: ScriptedUpstream) -> None:
    """llama-server without --metrics answers 501 there; /slots is on by default."""
    up.clear()
    off = {
        "error": {
            "code": 501,
            "message": "This server does not support metrics endpoint. Start it with `--metrics`",
            "type": "not_supported_error",
        }
    }
    up.enqueue(Reply.json(off, status=501), Reply(body=SLOTS_BUSY), Reply(body=SLOTS_BUSY))
    plan = make_plan(tmp_path, up.base_url)
    mon, state = await poll_once(plan)
    sig = state.signals["srv"]
    assert sig.reading is not None and sig.reading.source == "/slots" and sig.reading.running == 2.0
    pool = UpstreamPool()
    mon.pool = pool
    try:
        await mon.poll(plan.providers["srv"])  # straight to /slots this time
    finally:
        await pool.close()
    assert [r.path for r in up.requests] == ["/metrics", "/slots", "/slots"]


async def test_a_server_with_no_signal_endpoint_is_unsupported(
    tmp_path: Path, up: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """llama-cpp-python: 404 on both; the strategies then use the gateway's own counts."""
    up.clear()
    up.enqueue(Reply.error(404, "Not Found"), Reply.error(404, "Not Found"))
    with caplog.at_level(logging.INFO, logger="aib.signals"):
        _, state = await poll_once(make_plan(tmp_path, up.base_url))
    sig = state.signals["srv"]
    assert sig.reading is None and sig.unsupported is not None
    assert "GET /metrics answered 404; GET /slots answered 404" in sig.unsupported
    assert sig.report(0.0)["state"] == "unsupported"
    assert "gateway's own counts" in caplog.text


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.error(500, "boom"), "GET /metrics answered 500"),
        (
            Reply.text("<html>oops</html>", content_type="text/html"),
            "GET /metrics: not a Prometheus sample line",
        ),
        (Reply.text("other_metric 1\n", content_type="text/plain"), "no llamacpp:requests_processing"),
        (Reply(delay_s=2.0, body=b"late"), "GET /metrics: no answer within 0.5s"),
    ],
)
async def test_a_failed_poll_keeps_the_last_reading(
    tmp_path: Path, up: ScriptedUpstream, reply: Reply, error: str
) -> None:
    up.clear()
    up.enqueue(Reply.text(METRICS_BUSY, content_type="text/plain"), reply)
    plan = make_plan(tmp_path, up.base_url)
    _, state = await poll_once(plan)
    first = state.signals["srv"].reading
    await poll_once(plan, state)
    sig = state.signals["srv"]
    assert sig.reading is first  # it fades with its age instead
    assert sig.last_error is not None and error in sig.last_error
    assert sig.failures == 1 and sig.polls == 2


async def test_a_dead_server(tmp_path: Path) -> None:
    _, state = await poll_once(make_plan(tmp_path, dead_url()))
    sig = state.signals["srv"]
    assert sig.reading is None and sig.last_error is not None and "GET /metrics" in sig.last_error


async def test_sync_follows_the_plan(tmp_path: Path, up: ScriptedUpstream) -> None:
    """A loop per polled provider; a reload that drops a provider or turns its signals off drops it."""
    up.clear()
    plans = [make_plan(tmp_path / "a", up.base_url, signals="{interval_s: 0.05, stale_after_s: 5}")]
    state = RuntimeState()
    pool = UpstreamPool()
    mon = SignalMonitor(lambda: plans[-1], state, pool)
    try:
        assert source_of(plans[0].providers["cloud"]) is None  # openai_compatible reports nothing
        mon.sync()
        for _ in range(100):
            if state.signals["srv"].polls >= 3:
                break
            await asyncio.sleep(0.05)
        assert state.signals["srv"].polls >= 3  # every 0.05 s (each answer fails to parse: still a poll)
        assert set(state.signals) == {"srv"}
        plans.append(make_plan(tmp_path / "b", up.base_url, signals="{enabled: false}"))
        mon.sync()
        assert state.signals == {} and mon._tasks == {}
    finally:
        await mon.close()
        await pool.close()
