"""The seed's script names, now thin wrappers over `aib`, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aib.cli.main import app
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE
from aib.devtools.llamacpp import free_port
from config_support import write_files
from gateway_harness import RunningGateway, ScriptedUpstream, gateway_settings, running_gateway, write_config

pytestmark = pytest.mark.unit

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
WRAPPERS = [
    "validate-config-consistency.py",
    "check-port-conflicts.sh",
    "generate-litellm-config.py",
    "validate-unified-backend.sh",
    "monitor-redis-cache.sh",
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


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_files(tmp_path / "config", PROVIDERS, MAPPINGS)


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


# --------------------------------------------------------------------------- validate-unified-backend.sh: aib doctor


def test_validate_unified_backend_with_real_aib_fails_on_bad_config(cfg: Path) -> None:
    (cfg / PROVIDERS_FILE).write_text("providers: {\n")
    url = f"http://127.0.0.1:{free_port()}"
    result = run(
        "validate-unified-backend.sh",
        "--ui-port",
        str(free_port()),
        AIB_CONFIG_DIR=str(cfg),
        AIB_GATEWAY_URL=url,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "YAML syntax error" in result.stdout
    assert f"nothing answers at {url}/health" in result.stdout  # $AIB_GATEWAY_URL still names the gateway
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, RunningGateway, ScriptedUpstream]]:
    """A real gateway (in this process) in front of a scripted upstream, on a config folder of its own."""
    with ScriptedUpstream(models=["m1"]) as up:
        cdir = write_config(
            tmp_path / "live",
            f"""
            version: 1
            providers:
              up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m1], health: {{timeout_s: 2}}}}
            """,
            "version: 1\nmodels:\n  m1: {provider: up}\n",
        )
        with running_gateway(cdir, gateway_settings(health_checks=True)) as gw:
            gw.wait_first_probe()
            yield cdir, gw, up


def test_validate_unified_backend_passes_on_a_healthy_backend(
    live: tuple[Path, RunningGateway, ScriptedUpstream],
) -> None:
    cdir, gw, _up = live
    args = ("-c", str(cdir), "-g", gw.base_url + "/", "--ui-port", str(free_port()))
    ok = run("validate-unified-backend.sh", *args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "provider up" in ok.stdout and f"{gw.base_url}: healthy, 1/1 providers up" in ok.stdout
    assert "no problems, 1 warning: generated file" in ok.stdout
    strict = run("validate-unified-backend.sh", *args, "--strict", "--json")  # options are doctor's
    assert strict.returncode == 1, strict.stdout + strict.stderr  # the missing LiteLLM file is a warning
    report = json.loads(strict.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["ok"] is False and statuses["generated file"] == "warn"
    assert statuses["config"] == statuses["provider up"] == statuses["gateway"] == "ok"


def test_validate_unified_backend_unhealthy_gateway_fails(
    live: tuple[Path, RunningGateway, ScriptedUpstream],
) -> None:
    cdir, gw, up = live
    up.healthy = False  # its probes answer 503 from now on
    gw.probe_now()
    result = run(
        "validate-unified-backend.sh",
        "--ui-port",
        str(free_port()),
        AIB_CONFIG_DIR=str(cdir),
        AIB_GATEWAY_URL=gw.base_url,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "503" in result.stdout and "no provider answers" in result.stdout
    assert "2 problems" in result.stdout and "provider up, gateway" in result.stdout


def test_validate_unified_backend_without_gateway_fails_and_says_how_to_start_it(cfg: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("validate-unified-backend.sh", "-c", str(cfg), "-g", url, "--ui-port", str(free_port()))
    assert result.returncode == 1
    assert f"nothing answers at {url}/health" in result.stdout and "make run (or aib serve)" in result.stdout


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


def test_validate_unified_backend_help_is_doctors() -> None:
    result = run("validate-unified-backend.sh", "--help")
    assert result.returncode == 0, result.stderr
    assert (
        "Usage: aib doctor" in result.stdout and "--strict" in result.stdout and "--gateway" in result.stdout
    )


def test_validate_unified_backend_execs_aib_doctor(fake_aib: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    env = {"AIB_BIN": str(fake_aib), "FAKE_AIB_LOG": str(log)}
    assert run("validate-unified-backend.sh", **env).returncode == 0
    args = ("--strict", "--json", "-c", "cfg", "-g", "http://127.0.0.1:9", "--prometheus", "http://p:9090")
    assert run("validate-unified-backend.sh", *args, **env).returncode == 0
    assert log.read_text().splitlines() == ["doctor", "doctor " + " ".join(args)]
    failed = run("validate-unified-backend.sh", FAKE_AIB_FAIL="doctor", **env)
    assert failed.returncode == 3  # aib's own exit code
    assert "fake doctor failed" in failed.stderr


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
