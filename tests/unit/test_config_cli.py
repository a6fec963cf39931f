"""`aib validate`, `explain`, `models`, `ports` through typer's CliRunner, on config written to tmp_path."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aib.cli import ports as portscan
from aib.cli.main import app
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, load_config
from aib.devtools.llamacpp import free_port
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    discovery: true
    models:
      - name: llama3.1:8b
        capabilities: [chat, tools]
      - name: qwen2.5-coder:7b
        capabilities: [chat, code]
  vllm:
    type: vllm
    base_url: http://127.0.0.1:8001
    models: [meta-llama/Llama-3.1-8B-Instruct]
"""
MAPPINGS = """\
models:
  llama3.1:8b:
    provider: ollama
    aliases: [llama3]
    fallbacks: [llama-3.1-8b-instruct]
  qwen2.5-coder:7b:
    provider: ollama
  llama-3.1-8b-instruct:
    provider: vllm
    upstream: meta-llama/Llama-3.1-8B-Instruct
patterns:
  - match: "ollama/*"
    provider: ollama
capabilities:
  code:
    prefer: [qwen2.5-coder:7b]
"""

runner = CliRunner()


def write(d: Path, providers: str = PROVIDERS, mappings: str = MAPPINGS) -> Path:
    return write_files(d, providers, mappings)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


@pytest.fixture
def listener() -> Iterator[int]:
    """A socket listening on 127.0.0.1, held by this process; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write(tmp_path)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    "args",
    [["--help"], ["validate", "--help"], ["explain", "--help"], ["models", "--help"], ["ports", "--help"]],
)
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


# --------------------------------------------------------------------------- validate


def test_validate_ok(cfg: Path) -> None:
    result = run("validate", "--config-dir", str(cfg))
    assert result.exit_code == 0, result.output
    assert f"OK {cfg}: 2 providers, 3 routes, 1 alias, 1 pattern" in result.stdout


def test_validate_config_dir_from_env(cfg: Path) -> None:
    result = run("validate", env={"AIB_CONFIG_DIR": str(cfg)})
    assert result.exit_code == 0, result.output
    assert f"OK {cfg}:" in result.stdout


def test_validate_shipped_config() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = run("validate", "-c", str(repo / "config"), env={"AIB_CONFIG_DIR": "/nonexistent"})
    assert result.exit_code == 0, result.output
    assert "4 providers" in result.stdout


def test_validate_errors_exit_2_with_every_message(tmp_path: Path) -> None:
    write(
        tmp_path,
        PROVIDERS.replace("type: vllm", "type: vlm"),
        MAPPINGS.replace("    provider: ollama\n    aliases", "    provder: ollama\n    aliases"),
    )
    result = run("validate", "--config-dir", str(tmp_path))
    assert result.exit_code == 2
    assert (
        f"{tmp_path}/{PROVIDERS_FILE}:13: providers.vllm.type: unknown provider type 'vlm'" in result.stderr
    )
    assert f"{tmp_path}/{MAPPINGS_FILE}:3: models.llama3.1:8b.provder: unknown key" in result.stderr
    assert "2 errors: configuration not used" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_validate_missing_dir_exit_2(tmp_path: Path) -> None:
    result = run("validate", "-c", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert f"{tmp_path}/nope/{PROVIDERS_FILE}: file not found" in result.stderr
    assert "Traceback" not in result.output


def test_validate_cross_file_errors_and_warnings_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIB_TEST_KEY", raising=False)
    write(tmp_path, PROVIDERS + "    api_key_env: AIB_TEST_KEY\n", MAPPINGS + "aliases:\n  fast: llama-3.1\n")
    result = run("validate", "-c", str(tmp_path))
    assert result.exit_code == 2
    assert f"{MAPPINGS_FILE}:18: aliases.fast: alias points to unknown model 'llama-3.1'" in result.stderr
    assert (
        f"{PROVIDERS_FILE}:16: providers.vllm.api_key_env: warning: environment variable AIB_TEST_KEY is not set"
        in result.stderr
    )
    assert "1 error: configuration not used" in result.stderr
    assert "Traceback" not in result.output


def test_validate_warning_and_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIB_TEST_KEY", raising=False)
    write(tmp_path, PROVIDERS + "    api_key_env: AIB_TEST_KEY\n")
    relaxed = run("validate", "-c", str(tmp_path))
    assert relaxed.exit_code == 0
    assert "warning: environment variable AIB_TEST_KEY is not set" in relaxed.stderr
    assert "1 warning" in relaxed.stdout
    strict = run("validate", "-c", str(tmp_path), "--strict")
    assert strict.exit_code == 1
    assert "FAILED (--strict)" in strict.stdout
    monkeypatch.setenv("AIB_TEST_KEY", "sk-test")
    assert run("validate", "-c", str(tmp_path), "--strict").exit_code == 0


def test_validate_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIB_TEST_KEY", raising=False)
    write(tmp_path)
    ok = run("validate", "-c", str(tmp_path), "--json")
    assert ok.exit_code == 0
    data = json.loads(ok.stdout)
    assert data == {
        "ok": True,
        "config_dir": str(tmp_path),
        "issues": [],
        "summary": {"providers": 2, "routes": 3, "aliases": 1, "patterns": 1, "warnings": 0},
    }
    write(tmp_path, PROVIDERS + "    api_key_env: AIB_TEST_KEY\n")
    strict = run("validate", "-c", str(tmp_path), "--json", "--strict")
    assert strict.exit_code == 1
    data = json.loads(strict.stdout)
    assert data["ok"] is False
    assert [(i["line"], i["path"], i["severity"]) for i in data["issues"]] == [
        (16, "providers.vllm.api_key_env", "warning")
    ]
    write(tmp_path, PROVIDERS.replace("http://127.0.0.1:8001", "127.0.0.1:8001"))
    bad = run("validate", "-c", str(tmp_path), "--json")
    assert bad.exit_code == 2
    data = json.loads(bad.stdout)
    assert data["ok"] is False
    assert data["issues"] == [
        {
            "file": f"{tmp_path}/{PROVIDERS_FILE}",
            "line": 14,
            "path": "providers.vllm.base_url",
            "message": "URL needs a scheme http:// or https:// (got '127.0.0.1:8001')",
            "severity": "error",
        }
    ]


# --------------------------------------------------------------------------- explain


def test_explain_table(cfg: Path) -> None:
    result = run("explain", "llama3", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "llama3 -> route llama3.1:8b" in out
    assert "matched by alias: alias 'llama3' -> 'llama3.1:8b'" in out
    assert "up to 3 attempts" in out
    rows = [line for line in out.splitlines() if "primary" in line or "fallback" in line]
    assert len(rows) == 2
    assert "llama3.1:8b" in rows[0] and "ollama -> llama3.1:8b" in rows[0] and "round_robin" in rows[0]
    assert "llama-3.1-8b-instruct" in rows[1] and "vllm -> meta-llama/Llama-3.1-8B-Instruct" in rows[1]


def test_explain_pattern_and_group(tmp_path: Path) -> None:
    pool = (
        "  pool:\n    strategy: weighted\n    deployments:\n"
        "      - {provider: ollama, upstream: llama3.1:8b, weight: 3}\n"
        "      - {provider: vllm, upstream: meta-llama/Llama-3.1-8B-Instruct}\n"
    )
    write(tmp_path, mappings=MAPPINGS.replace("patterns:\n", pool + "patterns:\n"))
    pattern = run("explain", "ollama/mistral", "-c", str(tmp_path))
    assert pattern.exit_code == 0, pattern.output
    assert "matched by pattern: pattern #1 'ollama/*' -> ollama as 'mistral'" in pattern.stdout
    group = run("explain", "pool", "-c", str(tmp_path))
    assert group.exit_code == 0, group.output
    assert "ollama -> llama3.1:8b  (weight 3)" in group.stdout
    assert "weighted" in group.stdout


def test_explain_json(cfg: Path) -> None:
    result = run("explain", "capability/code", "-c", str(cfg), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["matched_by"] == "capability"
    assert data["route"] == "qwen2.5-coder:7b"
    assert [c["route"] for c in data["candidates"]] == ["qwen2.5-coder:7b"]
    assert data["candidates"][0]["deployments"] == [
        {"id": "ollama/qwen2.5-coder:7b", "provider": "ollama", "upstream": "qwen2.5-coder:7b", "weight": 1.0}
    ]


def test_explain_unknown_model(cfg: Path) -> None:
    result = run("explain", "llama3.1", "-c", str(cfg))
    assert result.exit_code == 1
    assert "model 'llama3.1' is not configured; closest: llama3, llama3.1:8b" in result.stderr
    nothing = run("explain", "zzzzzzzzzz", "-c", str(cfg))
    assert nothing.exit_code == 1
    assert "closest: none" in nothing.stderr
    js = run("explain", "llama3.1", "-c", str(cfg), "--json")
    assert js.exit_code == 1
    data = json.loads(js.stdout)
    assert data["ok"] is False and data["suggestions"][:2] == ["llama3", "llama3.1:8b"]


def test_explain_bad_config_exit_2(tmp_path: Path) -> None:
    write(tmp_path, mappings=MAPPINGS + "aliases:\n  x: nowhere\n")
    result = run("explain", "llama3", "-c", str(tmp_path))
    assert result.exit_code == 2
    assert "aliases.x: alias points to unknown model 'nowhere'" in result.stderr
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- models


def test_models_table(cfg: Path) -> None:
    result = run("models", "-c", str(cfg))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    llama3 = next(line for line in lines if line.startswith("│ llama3 "))
    assert "llama3.1:8b" in llama3 and "ollama: llama3.1:8b" in llama3 and "alias" in llama3
    pattern = next(line for line in lines if "ollama/*" in line)
    assert "ollama: {1}" in pattern and "pattern #1" in pattern
    assert any("capability/code" in line and "qwen2.5-coder:7b" in line for line in lines)
    assert "ollama: discovery on" in result.stdout


def test_models_json(cfg: Path) -> None:
    result = run("models", "--json", env={"AIB_CONFIG_DIR": str(cfg)})
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["discovery"] == ["ollama"]
    rows = {r["name"]: r for r in data["models"]}
    assert rows["llama-3.1-8b-instruct"] == {
        "name": "llama-3.1-8b-instruct",
        "route": "llama-3.1-8b-instruct",
        "providers": ["vllm"],
        "upstreams": ["meta-llama/Llama-3.1-8B-Instruct"],
        "deployments": ["vllm: meta-llama/Llama-3.1-8B-Instruct"],
        "capabilities": ["chat"],
        "matched_by": "exact",
    }
    assert (rows["llama3"]["route"], rows["llama3"]["matched_by"]) == ("llama3.1:8b", "alias")
    assert rows["ollama/*"]["matched_by"] == "pattern #1"
    assert rows["capability/code"]["route"] == "qwen2.5-coder:7b"
    assert rows["capability/tools"]["capabilities"] == ["tools"]


# --------------------------------------------------------------------------- ports


def ports_json(cfg: Path, *extra: str) -> tuple[int, dict[int, dict[str, object]]]:
    result = run(
        "ports",
        "-c",
        str(cfg),
        "--json",
        "--gateway-port",
        str(free_port()),
        "--ui-port",
        str(free_port()),
        *extra,
    )
    data = json.loads(result.stdout)
    return result.exit_code, {p["port"]: p for p in data["ports"]}


def test_ports_clash_between_two_providers(tmp_path: Path) -> None:
    providers = PROVIDERS + "  twin:\n    type: llamacpp\n    base_url: http://localhost:8001\n"
    write(tmp_path, providers)
    result = run(
        "ports", "-c", str(tmp_path), "--gateway-port", str(free_port()), "--ui-port", str(free_port())
    )
    assert result.exit_code == 1, result.output
    assert "conflict" in result.stdout
    assert "provider vllm" in result.stdout and "provider twin" in result.stdout
    assert "1 port conflict(s)" in result.stdout
    code, ports = ports_json(tmp_path)
    assert code == 1
    assert ports[8001]["status"] == "conflict"
    assert ports[8001]["users"] == ["provider vllm", "provider twin"]


def test_ports_gateway_and_ui_on_one_port(cfg: Path) -> None:
    port = free_port()
    result = run("ports", "-c", str(cfg), "--gateway-port", str(port), "--ui-port", str(port), "--json")
    assert result.exit_code == 1
    clash = next(p for p in json.loads(result.stdout)["ports"] if p["port"] == port)
    assert (clash["status"], clash["users"]) == ("conflict", ["gateway", "ui"])


def test_ports_provider_port_listening(tmp_path: Path, listener: int) -> None:
    write(tmp_path, PROVIDERS.replace("http://127.0.0.1:8001", f"http://127.0.0.1:{listener}"))
    code, ports = ports_json(tmp_path)
    assert code == 0
    mine = ports[listener]
    assert mine["listening"] is True
    assert mine["status"] == "ok"
    assert mine["users"] == ["provider vllm"]
    assert mine["pid"] == os.getpid()
    assert mine["process"]
    result = run(
        "ports", "-c", str(tmp_path), "--gateway-port", str(free_port()), "--ui-port", str(free_port())
    )
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if f"│ {listener} " in line)
    assert "yes" in row and f"(pid {os.getpid()})" in row and " ok " in row


def test_ports_gateway_port_taken_is_a_warning(cfg: Path, listener: int) -> None:
    result = run(
        "ports", "-c", str(cfg), "--gateway-port", str(listener), "--ui-port", str(free_port()), "--json"
    )
    assert result.exit_code == 0
    gw = next(p for p in json.loads(result.stdout)["ports"] if p["port"] == listener)
    assert gw["users"] == ["gateway"]
    assert gw["status"] == "warning"
    assert "the gateway cannot listen here" in gw["note"]


def test_ports_remote_and_free(tmp_path: Path) -> None:
    providers = PROVIDERS.replace("http://127.0.0.1:8001", "https://gpu.lab.example")
    providers = providers.replace("http://127.0.0.1:11434", f"http://127.0.0.1:{free_port()}")
    write(tmp_path, providers)
    code, ports = ports_json(tmp_path)
    assert code == 0
    remote = ports[443]
    assert (remote["host"], remote["status"], remote["listening"]) == ("gpu.lab.example", "remote", None)
    ollama = next(p for p in ports.values() if p["users"] == ["provider ollama"])
    assert (ollama["listening"], ollama["status"]) == (False, "free")


def test_ports_bad_config_exit_2(tmp_path: Path) -> None:
    write(tmp_path, "providers: [\n")
    result = run("ports", "-c", str(tmp_path))
    assert result.exit_code == 2
    assert "YAML syntax error" in result.stderr


def test_port_scan_without_psutil(cfg: Path, listener: int) -> None:
    """The fallback when psutil cannot tell: a connect to loopback, then a bind attempt."""
    reports = portscan.configured(load_config(cfg), gateway_port=listener, ui_port=free_port())
    portscan.scan(reports, use_psutil=False)
    by_port = {r.port: r for r in reports}
    assert by_port[listener].listening is True
    assert by_port[listener].status == "warning"
    assert by_port[listener].pid is None
    assert "another process" in by_port[listener].note
    assert portscan.probe(free_port()) is False


def test_port_probe_sees_a_bound_socket_that_does_not_accept() -> None:
    """Nothing accepts a connection, but the port is taken: a server could not bind it."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        assert portscan.probe(s.getsockname()[1]) is True
