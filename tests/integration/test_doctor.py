"""`aib doctor` against a healthy stack (real llama.cpp servers, a real gateway) and each failure it reports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE, PROVIDERS_FILE
from aib.devtools.fake_ollama import FakeOllama
from aib.devtools.llamacpp import LlamaCppServer, free_port
from aib.observe import install_observability
from aib.observe.settings import ObserveSettings
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    dead_url,
    gateway_settings,
    running_gateway,
    stop_process,
    write_config,
)
from observe_support import require_tool

pytestmark = pytest.mark.integration

SECRET = "sk-doctor-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIB_REQUEST_LOG", str(tmp_path / "requests.db"))
    for name in ("AIB_PROMETHEUS_URL", "AIB_CONFIG_DIR", "AIB_GATEWAY_URL", "AIB_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)


def doctor(*args: str) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """Exit code, the --json report and its checks by name."""
    result = CliRunner().invoke(app, ["doctor", "--json", "--ui-port", str(free_port()), *args])
    assert "Traceback" not in result.output, result.output
    report = orjson.loads(result.stdout)
    return result.exit_code, report, {c["name"]: c for c in report["checks"]}


def generate(config_dir: Path) -> None:
    result = CliRunner().invoke(app, ["generate", "-c", str(config_dir)])
    assert result.exit_code == 0, result.output


def one_provider(tmp_path: Path, base_url: str, extra: str = "", models: str = "[m1]") -> Path:
    return write_config(
        tmp_path / "config",
        f"""
        version: 1
        providers:
          p1:
            type: openai_compatible
            base_url: {base_url}
            models: {models}
            health: {{timeout_s: 2}}{extra}
        """,
        "version: 1\nmodels:\n  m1: {provider: p1}\n",
    )


@pytest.fixture
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m1"]) as fake:
        yield fake


# --------------------------------------------------------------------------- a healthy stack


@pytest.fixture
def stack(llama_servers: list[LlamaCppServer], tmp_path: Path) -> Iterator[tuple[Path, RunningGateway]]:
    a, b = llama_servers
    cdir = write_config(
        tmp_path / "config",
        f"""
        version: 1
        providers:
          llama_a: {{type: llamacpp, base_url: "{a.root_url}", models: [smollm2]}}
          llama_b: {{type: llamacpp, base_url: "{b.root_url}", models: [smollm2]}}
        """,
        """
        version: 1
        models:
          smollm2:
            deployments: [{provider: llama_a}, {provider: llama_b}]
        """,
    )
    generate(cdir)
    with running_gateway(cdir, gateway_settings(health_checks=True)) as rg:
        rg.wait_first_probe()
        yield cdir, rg


def test_healthy_stack_passes_every_check(stack: tuple[Path, RunningGateway]) -> None:
    cdir, rg = stack
    code, report, checks = doctor("-c", str(cdir), "-g", rg.base_url)
    assert code == 0, report
    assert report["ok"] is True
    statuses = {n: c["status"] for n, c in checks.items()}
    assert statuses.pop("prometheus") == "skip"
    assert set(statuses.values()) == {"ok"}, statuses
    assert {"config", "generated file", f"port {rg.port}", "provider llama_a", "provider llama_b",
            "gateway", "request log"} <= set(checks)  # fmt: skip
    assert checks["provider llama_a"]["models"] == ["smollm2"]
    assert checks["gateway"]["health"]["status"] == "healthy"
    assert "2/2 providers up" in checks["gateway"]["message"]
    assert report["verdict"].startswith("all ") and report["summary"]["fail"] == 0


def test_healthy_stack_in_one_screen(stack: tuple[Path, RunningGateway]) -> None:
    cdir, rg = stack
    result = CliRunner().invoke(
        app, ["doctor", "-c", str(cdir), "-g", rg.base_url, "--ui-port", str(free_port())]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(line[0] in "✓!✗- " for line in lines if line), result.output
    assert sum(line.startswith("✓") for line in lines) >= 7
    assert "serves 1: smollm2" in result.output
    assert lines[-1].startswith("✓ all ") and lines[-1].endswith("checks passed")


# --------------------------------------------------------------------------- each failure


def test_bad_config_is_reported_with_file_and_line(tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", "providers: {\n", "models: {}\n")
    code, report, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert code == 1 and report["ok"] is False
    assert checks["config"]["status"] == "fail"
    assert any(f"{PROVIDERS_FILE}:" in d and "YAML" in d for d in checks["config"]["detail"])
    assert checks["providers"]["status"] == "skip"
    assert "generated file" not in checks
    assert checks["request log"]["status"] == "ok"  # the checks that need no config still ran


def test_config_warnings_are_warnings(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = one_provider(tmp_path, up.base_url, "\n            api_key_env: AIB_TEST_DOCTOR_UNSET_KEY")
    generate(cdir)
    with running_gateway(cdir) as rg:
        _, _, checks = doctor("-c", str(cdir), "-g", rg.base_url)
    assert checks["config"]["status"] == "warn"
    assert "AIB_TEST_DOCTOR_UNSET_KEY" in " ".join(checks["config"]["detail"])
    assert checks["provider p1"]["status"] == "warn"
    assert "AIB_TEST_DOCTOR_UNSET_KEY is not set" in checks["provider p1"]["message"]
    strict = CliRunner().invoke(app, ["doctor", "--strict", "-c", str(cdir), "-g", dead_url()])
    assert strict.exit_code == 1


@pytest.mark.parametrize("how", ["stale", "hand-edited", "missing"])
def test_generated_file_state(tmp_path: Path, up: ScriptedUpstream, how: str) -> None:
    cdir = one_provider(tmp_path, up.base_url)
    generate(cdir)
    gen = cdir / GENERATED_FILE
    if how == "stale":
        (cdir / MAPPINGS_FILE).write_text("version: 1\nmodels:\n  m1: {provider: p1, aliases: [one]}\n")
    elif how == "hand-edited":
        gen.write_text(gen.read_text() + "# my tweak\n")
    else:
        gen.unlink()
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    check = checks["generated file"]
    assert check["state"] == how
    assert check["status"] == ("warn" if how == "missing" else "fail")
    assert "aib generate" in check["message"]


class _NotAGateway(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_port_taken_by_something_else(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = one_provider(tmp_path, up.base_url)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotAGateway)
    t = Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        code, _, checks = doctor("-c", str(cdir), "-g", f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
    assert code == 1
    assert checks[f"port {port}"]["status"] == "fail"
    assert "not the gateway" in checks[f"port {port}"]["message"]
    assert checks["gateway"]["status"] == "fail" and "not aib" in checks["gateway"]["message"]


def test_provider_down_and_gateway_down(tmp_path: Path) -> None:
    dead = dead_url()
    cdir = one_provider(tmp_path, dead)
    gw = dead_url()
    code, _, checks = doctor("-c", str(cdir), "-g", gw)
    assert code == 1
    p = checks["provider p1"]
    assert p["status"] == "fail" and p["healthy"] is False
    assert f"nothing listens on {dead.removeprefix('http://')}" in p["message"]
    g = checks["gateway"]
    assert g["status"] == "fail" and gw in g["message"] and "make run" in g["message"]
    port = int(gw.rsplit(":", 1)[1])
    assert checks[f"port {port}"]["status"] == "ok" and "free" in checks[f"port {port}"]["message"]
    text = CliRunner().invoke(app, ["doctor", "-c", str(cdir), "-g", gw]).output
    assert "✗ provider p1" in text and "make demo" in text and "problems" in text.splitlines()[-1]


def test_gateway_degraded_and_running_another_config(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = write_config(
        tmp_path / "config",
        f"""
        version: 1
        providers:
          p1: {{type: openai_compatible, base_url: "{up.base_url}", models: [m1]}}
          p2: {{type: openai_compatible, base_url: "{dead_url()}", models: [m2], health: {{timeout_s: 1}}}}
        """,
        "version: 1\nmodels:\n  m1: {provider: p1}\n  m2: {provider: p2}\n",
    )
    generate(cdir)
    with running_gateway(cdir, gateway_settings(health_checks=True)) as rg:
        rg.wait_first_probe()
        (cdir / MAPPINGS_FILE).write_text(
            "version: 1\nmodels:\n  m1: {provider: p1, aliases: [one]}\n  m2: {provider: p2}\n"
        )
        generate(cdir)
        code, _, checks = doctor("-c", str(cdir), "-g", rg.base_url)
    g = checks["gateway"]
    assert g["status"] == "warn"
    assert "1/2 providers up" in g["message"] and "reload is pending" in g["message"]
    assert any(d.startswith("p2 (") for d in g["detail"])
    assert checks["provider p2"]["status"] == "fail" and code == 1


def test_provider_missing_a_configured_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_TEST_DOCTOR_KEY", SECRET)
    with FakeOllama().serve_in_thread() as fake:
        cdir = write_config(
            tmp_path / "config",
            f"""
            version: 1
            providers:
              ollama:
                type: ollama
                base_url: {fake.base_url}
                api_key_env: AIB_TEST_DOCTOR_KEY
                models: [llama3.2, qwen2.5-coder:7b]
            """,
            "version: 1\nmodels:\n  llama3.2: {provider: ollama}\n  qwen2.5-coder:7b: {provider: ollama}\n",
        )
        result = CliRunner().invoke(app, ["doctor", "--json", "-c", str(cdir), "-g", dead_url()])
    checks = {c["name"]: c for c in orjson.loads(result.stdout)["checks"]}
    p = checks["provider ollama"]
    assert p["status"] == "warn"
    assert p["missing"] == ["qwen2.5-coder:7b"]  # llama3.2 is served as llama3.2:latest
    assert "ollama pull" in p["message"] and "llama3.2:latest" in p["models"]
    assert SECRET not in result.output


def test_disabled_provider_is_skipped(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = one_provider(tmp_path, up.base_url)
    (cdir / PROVIDERS_FILE).write_text(
        (cdir / PROVIDERS_FILE).read_text()
        + f"  off:\n    type: openai_compatible\n    base_url: {dead_url()}\n    enabled: false\n    models: [m9]\n"
    )
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert checks["provider off"]["status"] == "skip"
    assert checks["provider p1"]["status"] == "ok"


@pytest.mark.parametrize("setting", ["not-sqlite", "a-folder", "off", "bad-format"])
def test_request_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: ScriptedUpstream, setting: str
) -> None:
    cdir = one_provider(tmp_path, up.base_url)
    if setting == "not-sqlite":
        path = tmp_path / "junk.db"
        path.write_bytes(b"this is not a database, just text" * 100)
        monkeypatch.setenv("AIB_REQUEST_LOG", str(path))
    elif setting == "a-folder":
        monkeypatch.setenv("AIB_REQUEST_LOG", str(tmp_path))
    elif setting == "off":
        monkeypatch.setenv("AIB_REQUEST_LOG", "off")
    else:
        monkeypatch.setenv("AIB_LOG_FORMAT", "xml")
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    check = checks["request log"]
    expected = {"not-sqlite": "not a usable SQLite file", "a-folder": "not a writable file",
                "off": "off", "bad-format": "AIB_LOG_FORMAT"}[setting]  # fmt: skip
    assert expected in check["message"]
    assert check["status"] == ("ok" if setting == "off" else "fail")


def test_existing_request_log_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: ScriptedUpstream
) -> None:
    cdir = one_provider(tmp_path, up.base_url)
    db = tmp_path / "var" / "requests.db"
    monkeypatch.setenv("AIB_REQUEST_LOG", str(db))
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert "will be created" in checks["request log"]["message"]
    with running_gateway(cdir) as rg:  # the gateway's request log creates the file
        handle = install_observability(rg.gateway, ObserveSettings(request_log=db, access_log=False))
        handle.close()
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert checks["request log"]["status"] == "ok" and "writable" in checks["request log"]["message"]


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int, int]]:
    """A real Prometheus scraping a live gateway port (job aib-gateway) and a dead one (job gone)."""
    binary = require_tool("prometheus")
    live_port, dead_port, port = free_port(), free_port(), free_port()
    conf = tmp_path / "prometheus.yml"
    conf.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "aib-gateway", "static_configs": [{"targets": [f"127.0.0.1:{live_port}"]}]},
                    {"job_name": "gone", "static_configs": [{"targets": [f"127.0.0.1:{dead_port}"]}]},
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    try:
        yield f"http://127.0.0.1:{port}", live_port, dead_port
    finally:
        stop_process(proc, timeout=20)


def _targets_health(url: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=2) as r:
            data = orjson.loads(r.read())
    except OSError:
        return {}
    return {t["labels"]["job"]: t["health"] for t in data["data"]["activeTargets"]}


def test_prometheus_scraping_the_gateway(
    tmp_path: Path, up: ScriptedUpstream, prometheus: tuple[str, int, int]
) -> None:
    url, live_port, dead_port = prometheus
    cdir = one_provider(tmp_path, up.base_url)
    from aib.gateway.server import build_gateway

    gw = build_gateway(gateway_settings(config_dir=cdir), ObserveSettings(request_log=None, access_log=False))
    import uvloop

    from aib.gateway.server import serve_app

    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await serve_app(gw, "127.0.0.1", live_port, stop=holder["stop"], drain_s=1)

    t = Thread(target=uvloop.run, args=(main(),), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while _targets_health(url) != {"aib-gateway": "up", "gone": "down"}:
            assert time.monotonic() < deadline, _targets_health(url)
            time.sleep(0.2)
        _, _, ok = doctor("-c", str(cdir), "-g", f"http://127.0.0.1:{live_port}", "--prometheus", url)
        _, _, down = doctor("-c", str(cdir), "-g", f"http://127.0.0.1:{dead_port}", "--prometheus", url)
        _, _, unscraped = doctor("-c", str(cdir), "-g", dead_url(), "--prometheus", url)
    finally:
        while "stop" not in holder and t.is_alive():
            time.sleep(0.01)
        if "stop" in holder:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        t.join(10)
    assert ok["prometheus"]["status"] == "ok" and "job aib-gateway, up" in ok["prometheus"]["message"]
    assert down["prometheus"]["status"] == "fail" and "job gone" in down["prometheus"]["message"]
    assert (
        unscraped["prometheus"]["status"] == "warn"
        and "no target scrapes" in unscraped["prometheus"]["message"]
    )


def test_prometheus_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cdir = one_provider(tmp_path, dead_url())
    monkeypatch.setenv("AIB_PROMETHEUS_URL", dead_url())
    _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert checks["prometheus"]["status"] == "fail" and "nothing answers" in checks["prometheus"]["message"]


def test_provider_probes_like_the_gateway(tmp_path: Path) -> None:
    """vLLM: /health, then /v1/models; a 503; a list that does not parse; a probe slower than its timeout."""
    with (
        ScriptedUpstream(models=["meta/llama"]) as good,
        ScriptedUpstream() as sick,
        ScriptedUpstream() as odd,
        ScriptedUpstream() as slow,
    ):
        sick.healthy = False
        odd.models_body = b"{not json"
        slow.probe_delay_s = 3
        cdir = write_config(
            tmp_path / "config",
            f"""
            version: 1
            providers:
              good: {{type: vllm, base_url: "{good.base_url}", models: [meta/llama]}}
              sick: {{type: vllm, base_url: "{sick.base_url}", models: [m]}}
              odd: {{type: openai_compatible, base_url: "{odd.base_url}", models: [m]}}
              slow: {{type: openai_compatible, base_url: "{slow.base_url}", models: [m], health: {{timeout_s: 0.5}}}}
            """,
            "version: 1\nmodels:\n  meta/llama: {provider: good}\n  m: {provider: sick}\n",
        )
        _, _, checks = doctor("-c", str(cdir), "-g", dead_url())
    assert checks["provider good"]["status"] == "ok" and checks["provider good"]["models"] == ["meta/llama"]
    assert good.probes == 2  # vLLM: /health, then /v1/models for the list
    sick_msg = checks["provider sick"]["message"]
    assert checks["provider sick"]["status"] == "fail" and "answered 503: scripted: unhealthy" in sick_msg
    assert checks["provider odd"]["status"] == "ok" and checks["provider odd"]["models"] is None
    assert "serves" not in checks["provider odd"]["message"]
    assert (
        checks["provider slow"]["status"] == "fail"
        and "no answer within 0.5s" in checks["provider slow"]["message"]
    )


def test_config_folder_is_the_one_aib_serve_would_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config here: the defaults shipped in the package
    _, report, checks = doctor("-g", dead_url())
    assert "the defaults shipped in the package" in checks["config"]["message"]
    assert checks["generated file"]["status"] == "warn"  # the package has no generated file
    cdir = one_provider(tmp_path, dead_url())  # ./config now exists
    _, report, _ = doctor("-g", dead_url())
    assert report["config_dir"] == "config"
    monkeypatch.setenv("AIB_CONFIG_DIR", str(cdir))
    _, report, _ = doctor("-g", dead_url())
    assert report["config_dir"] == str(cdir)
