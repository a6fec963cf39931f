"""`aib monitor` against a real gateway (in-process, with metrics), a dead one and a silent one."""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from aib.cli.main import app
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from aib.ops.monitor import scrape
from aib.ops.monitor_view import run_live, run_once
from gateway_harness import (
    Reply,
    RunningGateway,
    ScriptedUpstream,
    dead_url,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
CHAT = [{"role": "user", "content": "hi"}]
MAPPINGS = """
    version: 1
    defaults:
      breaker: {failure_threshold: 1, cooldown_s: 60}
    models:
      m1: {provider: up}
      flaky: {provider: dead, upstream: m0, fallbacks: [m1]}
"""


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[RunningGateway]:
    providers = f"""
    version: 1
    providers:
      up: {{type: openai_compatible, base_url: "{{up}}", models: [m1]}}
      dead: {{type: openai_compatible, base_url: "{dead_url()}", models: [m0], health: {{timeout_s: 1}}}}
    """
    with ScriptedUpstream(models=["m1"]) as up:
        plan = plan_from_yaml(tmp_path / "config", providers.replace("{up}", up.base_url), MAPPINGS)
        with running_gateway(plan, gateway_settings(health_checks=True)) as rg:
            install_observability(rg.gateway, ObserveSettings(request_log=None, access_log=False))
            rg.wait_first_probe()
            with httpx.Client(base_url=rg.base_url, timeout=10) as client:
                for _ in range(3):
                    assert client.post(
                        "/v1/chat/completions", json={"model": "m1", "messages": CHAT}
                    ).is_success
                assert client.post(
                    "/v1/chat/completions", json={"model": "flaky", "messages": CHAT}
                ).is_success
                up.enqueue(Reply.error(500, "boom"))
                client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT})
            yield rg


def test_once_renders_providers_routes_and_numbers(gw: RunningGateway) -> None:
    console = Console(record=True, width=200)
    assert run_once(gw.base_url, 0.2, console) == 0
    text = console.export_text()
    for expected in ("aib monitor", gw.base_url, "degraded", "Providers", "up", "healthy", "dead",
                     "unhealthy", "cannot connect", "1 open", "Models", "m1", "flaky", "p50", "p95"):  # fmt: skip
        assert expected in text, expected
    assert "gateway down" not in text


def test_once_json_counts_what_was_sent(gw: RunningGateway) -> None:
    result = CliRunner().invoke(app, ["monitor", "--once", "--json", "-g", gw.base_url, "--interval", "0.2"])
    assert result.exit_code == 0, result.output
    view = orjson.loads(result.stdout)
    routes = {r["route"]: r for r in view["routes"]}
    assert routes["m1"]["requests"] == 4 and routes["m1"]["errors"] == 1
    assert routes["flaky"]["requests"] == 1 and routes["flaky"]["fallbacks"] == 1
    assert routes["m1"]["p50_s"] is not None and routes["m1"]["p95_s"] >= routes["m1"]["p50_s"]
    providers = {p["name"]: p for p in view["providers"]}
    # "up" answers its probes but a breaker of it is open (the flaky deployment): degraded
    assert providers["up"]["status"] == "degraded" and providers["dead"]["status"] == "unhealthy"
    assert view["up"] is True and view["status"] == "degraded" and view["rate"] == 0.0


def test_live_refreshes_and_rates_follow_traffic(gw: RunningGateway) -> None:
    console = Console(record=True, width=200, force_terminal=False)
    stop = threading.Event()

    def load() -> None:  # a bounded trickle while the monitor refreshes
        with httpx.Client(base_url=gw.base_url, timeout=10) as client:
            for _ in range(20):
                if stop.is_set():
                    return
                client.post("/v1/chat/completions", json={"model": "m1", "messages": CHAT})
                time.sleep(0.02)

    t = threading.Thread(target=load)
    t.start()
    try:
        run_live(gw.base_url, 0.3, 60, console, frames=3)
    finally:
        stop.set()
        t.join(10)
    text = console.export_text()
    assert "q or Ctrl-C quits" in text and "m1" in text and "gateway down" not in text


def test_dead_gateway_once_says_down_and_exits_1() -> None:
    url = dead_url()
    result = CliRunner().invoke(app, ["monitor", "--once", "-g", url])
    assert result.exit_code == 1
    assert "gateway down" in result.output and "Traceback" not in result.output


def test_dead_gateway_live_keeps_running() -> None:
    console = Console(record=True, width=160)
    run_live(dead_url(), 0.1, 60, console, frames=3)
    assert "gateway down" in console.export_text()


def test_silent_gateway_times_out_instead_of_hanging() -> None:
    """A gateway that accepts connections and never answers: each scrape gives up after its timeout."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t0 = time.monotonic()
        result = scrape(url, timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert not result.ok and "timed out" in (result.error or "")
        console = Console(record=True, width=160)
        assert run_once(url, 0.1, console) == 1
        assert "gateway down" in console.export_text()


def test_json_needs_once() -> None:
    result = CliRunner().invoke(app, ["monitor", "--json"])
    assert result.exit_code == 2 and "--json needs --once" in result.output


def test_scripts_monitor_wraps_aib_monitor(gw: RunningGateway) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("AIB_BIN", None)
    run = subprocess.run(
        [str(SCRIPTS / "monitor"), "--once", "--gateway", gw.base_url, "--interval", "0.2"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Providers" in run.stdout and "m1" in run.stdout


class _Stub(BaseHTTPRequestHandler):
    """A server at a gateway's address that is not (quite) a gateway."""

    answers: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("health", "metrics", "expected"),
    [
        ((200, b'{"status": "ok"}'), (200, b""), "did not answer the gateway's JSON (not aib?)"),
        ((200, b'{"providers": {}}'), (404, b"nope"), "/metrics answered 404"),
        ((200, b'{"providers": {}}'), (200, b"this is { not prometheus\n"), "is not Prometheus text"),
    ],
)
def test_not_quite_a_gateway(health: tuple[int, bytes], metrics: tuple[int, bytes], expected: str) -> None:
    handler = type("Stub", (_Stub,), {"answers": {"/health": health, "/metrics": metrics}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        result = scrape(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
    assert not result.ok and expected in (result.error or "")


def test_q_quits_the_live_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal (a pty here) one key press is read without Enter; q ends the view at once."""
    master, slave = pty.openpty()
    with os.fdopen(slave, "r") as tty_in:
        monkeypatch.setattr("sys.stdin", tty_in)
        before = termios.tcgetattr(slave)
        # typed once the view runs (in cbreak mode): an unknown key is ignored, q quits
        typing = threading.Timer(0.5, os.write, (master, b"xq"))
        typing.start()
        console = Console(record=True, width=120)
        t0 = time.monotonic()
        run_live(dead_url(), 30, 60, console, frames=3)  # a minute without the q
        typing.join()
        assert time.monotonic() - t0 < 25
        assert termios.tcgetattr(slave) == before  # the terminal is left as it was found
    os.close(master)
    assert "gateway down" in console.export_text()
