"""The seed's script names, now thin wrappers over `aib`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aib.cli.main import app
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE

pytestmark = pytest.mark.unit

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
WRAPPERS = [
    "validate-config-consistency.py",
    "check-port-conflicts.sh",
    "generate-litellm-config.py",
    "validate-unified-backend.sh",
]
PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models: [llama3]
"""
MAPPINGS = "models:\n  llama3:\n    provider: ollama\n"
FAKE_AIB = """\
#!/usr/bin/env bash
echo "$*" >> "$FAKE_AIB_LOG"
[[ "$1" == "${FAKE_AIB_FAIL:-}" ]] && { echo "fake $1 failed" >&2; exit 3; }
echo "fake $1 ok"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    (d / PROVIDERS_FILE).write_text(PROVIDERS)
    (d / MAPPINGS_FILE).write_text(MAPPINGS)
    return d


@pytest.fixture
def fake_aib(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "aib"
    path.parent.mkdir()
    path.write_text(FAKE_AIB)
    path.chmod(0o755)
    return path


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **env}
    full_env.pop("AIB_BIN", None) if "AIB_BIN" not in env else None
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=full_env, capture_output=True, text=True, timeout=120, check=False
    )


def has_command(name: str) -> bool:
    return any(c.name == name for c in app.registered_commands)


class _Health(BaseHTTPRequestHandler):
    health_status = 200

    def do_GET(self) -> None:
        status, body = (
            (200, b"{}") if self.path == "/health/live" else (self.health_status, b'{"status": "healthy"}')
        )
        if self.path not in ("/health/live", "/health"):
            status, body = 404, b"{}"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, type[_Health]]]:
    """A stand-in gateway on loopback answering /health/live and /health."""
    handler = type("Handler", (_Health,), {"health_status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("script", WRAPPERS)
def test_scripts_are_executable_thin_wrappers(script: str) -> None:
    path = SCRIPTS / script
    assert os.access(path, os.X_OK)
    text = path.read_text()
    assert text.startswith(("#!/usr/bin/env bash\n", "#!/usr/bin/env python3\n"))
    assert len(text.splitlines()) <= 25


# --------------------------------------------------------------------------- against the real aib


def test_validate_config_consistency(cfg: Path) -> None:
    ok = run("validate-config-consistency.py", AIB_CONFIG_DIR=str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert f"OK {cfg}: 1 provider, 1 route, 0 aliases, 0 patterns" in ok.stdout
    (cfg / MAPPINGS_FILE).write_text("models:\n  llama3:\n    provider: olama\n")
    bad = run("validate-config-consistency.py", AIB_CONFIG_DIR=str(cfg))
    assert bad.returncode == 2
    assert f"{cfg}/{MAPPINGS_FILE}:3: models.llama3.provider: unknown provider 'olama'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_validate_config_consistency_passes_options(cfg: Path, tmp_path: Path) -> None:
    result = run(
        "validate-config-consistency.py", "--json", "--config-dir", str(cfg), AIB_CONFIG_DIR=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert '"ok": true' in result.stdout


def test_check_port_conflicts(cfg: Path) -> None:
    ports = ("--gateway-port", str(free_port()), "--ui-port", str(free_port()))
    ok = run("check-port-conflicts.sh", *ports, AIB_CONFIG_DIR=str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert "provider ollama" in ok.stdout
    (cfg / PROVIDERS_FILE).write_text(
        PROVIDERS + "  twin:\n    type: vllm\n    base_url: http://localhost:11434\n"
    )
    clash = run("check-port-conflicts.sh", *ports, AIB_CONFIG_DIR=str(cfg))
    assert clash.returncode == 1
    assert "conflict" in clash.stdout


@pytest.mark.skipif(not has_command("generate"), reason="`aib generate` has not landed yet")
def test_generate_litellm_config_help() -> None:
    result = run("generate-litellm-config.py", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


@pytest.mark.skipif(not has_command("generate"), reason="`aib generate` has not landed yet")
def test_validate_unified_backend_with_real_aib_fails_on_bad_config(cfg: Path) -> None:
    (cfg / PROVIDERS_FILE).write_text("providers: {\n")
    result = run(
        "validate-unified-backend.sh",
        AIB_CONFIG_DIR=str(cfg),
        AIB_GATEWAY_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert result.returncode == 2
    assert "YAML syntax error" in result.stderr


# --------------------------------------------------------------------------- wiring, through a fake aib


def test_wrappers_forward_their_arguments(fake_aib: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    env = {"AIB_BIN": str(fake_aib), "FAKE_AIB_LOG": str(log)}
    assert run("generate-litellm-config.py", "--check", "-c", "x", **env).returncode == 0
    assert run("validate-config-consistency.py", "--strict", **env).returncode == 0
    assert run("check-port-conflicts.sh", "--json", **env).returncode == 0
    assert log.read_text().splitlines() == ["generate --check -c x", "validate --strict", "ports --json"]


def test_wrapper_exit_code_is_aibs(fake_aib: Path, tmp_path: Path) -> None:
    env = {"AIB_BIN": str(fake_aib), "FAKE_AIB_LOG": str(tmp_path / "log"), "FAKE_AIB_FAIL": "generate"}
    result = run("generate-litellm-config.py", **env)
    assert result.returncode == 3
    assert "fake generate failed" in result.stderr


def test_validate_unified_backend_all_steps_and_health(
    fake_aib: Path, tmp_path: Path, gateway: tuple[str, type[_Health]]
) -> None:
    url, _handler = gateway
    log = tmp_path / "calls.log"
    result = run(
        "validate-unified-backend.sh", AIB_BIN=str(fake_aib), FAKE_AIB_LOG=str(log), AIB_GATEWAY_URL=url + "/"
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["validate", "generate --check"]
    assert f"gateway at {url} /health:" in result.stdout
    assert '{"status": "healthy"}' in result.stdout


def test_validate_unified_backend_unhealthy_gateway_fails(
    fake_aib: Path, tmp_path: Path, gateway: tuple[str, type[_Health]]
) -> None:
    url, handler = gateway
    handler.health_status = 503
    result = run(
        "validate-unified-backend.sh",
        AIB_BIN=str(fake_aib),
        FAKE_AIB_LOG=str(tmp_path / "log"),
        AIB_GATEWAY_URL=url,
    )
    assert result.returncode != 0
    assert "503" in result.stderr


def test_validate_unified_backend_without_gateway_skips_health(fake_aib: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run(
        "validate-unified-backend.sh",
        AIB_BIN=str(fake_aib),
        FAKE_AIB_LOG=str(tmp_path / "log"),
        AIB_GATEWAY_URL=url,
    )
    assert result.returncode == 0, result.stderr
    assert f"no gateway answers at {url}; health check skipped" in result.stdout


@pytest.mark.parametrize("step", ["validate", "generate"])
def test_validate_unified_backend_stops_at_a_failing_step(fake_aib: Path, tmp_path: Path, step: str) -> None:
    log = tmp_path / "calls.log"
    result = run(
        "validate-unified-backend.sh",
        AIB_BIN=str(fake_aib),
        FAKE_AIB_LOG=str(log),
        FAKE_AIB_FAIL=step,
        AIB_GATEWAY_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert result.returncode == 3
    assert log.read_text().splitlines()[-1].startswith(step)
    assert "health" not in result.stdout


@pytest.mark.parametrize("script", WRAPPERS)
def test_wrapper_without_aib_says_how_to_install(script: str, tmp_path: Path) -> None:
    """Copied away from the repo's .venv and with no `aib` on PATH, a wrapper says what to do."""
    copy = tmp_path / script
    shutil.copy2(SCRIPTS / script, copy)
    bare_path = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "aib").exists()
    )
    env = {k: v for k, v in os.environ.items() if k != "AIB_BIN"} | {"PATH": bare_path}
    result = subprocess.run([str(copy)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "aib not found" in result.stderr
