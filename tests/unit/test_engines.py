"""The LiteLLM engine's pure parts: finding the executable, its environment and command, back-off."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.engines import litellm as engine
from aib.engines.litellm import (
    ENV_BIN,
    PERMIT_OPEN_ENV,
    EngineError,
    find_litellm,
    is_loopback,
    litellm_command,
    litellm_env,
)
from aib.engines.supervisor import Backoff

pytestmark = pytest.mark.unit


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No litellm anywhere: no project venv, none beside this Python, an empty PATH."""
    monkeypatch.setattr(engine, "_project_roots", lambda: [tmp_path / "project"])
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python" / "bin" / "python"))
    return tmp_path


def test_env_variable_wins(nowhere: Path) -> None:
    exe = executable(nowhere / "x" / "litellm")
    executable(nowhere / "project" / ".venv-litellm" / "bin" / "litellm")
    assert find_litellm({ENV_BIN: str(exe), "PATH": ""}) == exe


def test_env_variable_must_be_an_executable(nowhere: Path) -> None:
    (nowhere / "plain").write_text("not executable")
    for bad in (nowhere / "missing", nowhere / "plain", nowhere):
        with pytest.raises(EngineError, match=rf"\${ENV_BIN}=.* is not an executable file.*make litellm"):
            find_litellm({ENV_BIN: str(bad), "PATH": ""})


def test_search_order_venv_then_beside_python_then_path(nowhere: Path) -> None:
    on_path = executable(nowhere / "path" / "litellm")
    env = {"PATH": str(on_path.parent)}
    assert find_litellm(env) == on_path
    beside = executable(nowhere / "python" / "bin" / "litellm")
    assert find_litellm(env) == beside
    venv = executable(nowhere / "project" / ".venv-litellm" / "bin" / "litellm")
    assert find_litellm(env) == venv


def test_missing_litellm_says_how_to_get_it(nowhere: Path) -> None:
    with pytest.raises(EngineError) as err:
        find_litellm({"PATH": str(nowhere / "empty")})
    msg = str(err.value)
    assert msg.startswith("LiteLLM is not installed")
    assert "make litellm" in msg and "pip install 'ai-backend-unified[litellm]'" in msg and ENV_BIN in msg


def test_project_roots_include_the_checkout() -> None:
    roots = engine._project_roots()
    assert Path.cwd() in roots
    assert any((r / "pyproject.toml").exists() for r in roots)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("lab-box", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_env_offline_defaults_and_open_on_loopback() -> None:
    env = litellm_env("127.0.0.1", {"PATH": "/bin", "LITELLM_TELEMETRY_DISABLED": "false"})
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_TELEMETRY_DISABLED"] == "false"  # what the user set stays
    assert env[PERMIT_OPEN_ENV] == "true" and env["PATH"] == "/bin"


def test_env_with_a_master_key_is_not_opened() -> None:
    env = litellm_env("0.0.0.0", {"LITELLM_MASTER_KEY": "sk-secret"})
    assert PERMIT_OPEN_ENV not in env and env["LITELLM_MASTER_KEY"] == "sk-secret"


def test_env_off_loopback_needs_a_master_key() -> None:
    with pytest.raises(EngineError, match=r"LiteLLM on 0\.0\.0\.0 needs \$LITELLM_MASTER_KEY"):
        litellm_env("0.0.0.0", {})


def test_command() -> None:
    cmd = litellm_command(Path("/x/litellm"), Path("/c.yaml"), "127.0.0.1", 4000)
    assert cmd == [
        "/x/litellm",
        "--config",
        "/c.yaml",
        "--host",
        "127.0.0.1",
        "--port",
        "4000",
        "--num_workers",
        "1",
    ]
    cmd = litellm_command(Path("/x/litellm"), Path("/c.yaml"), "127.0.0.1", 4000, workers=2)
    assert cmd[-4:] == ["--num_workers", "2", "--timeout_worker_healthcheck", "120"]


def test_engine_rejects_zero_workers(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="at least 1"):
        engine.LiteLLMEngine(tmp_path, workers=0)


def test_backoff() -> None:
    b = Backoff(initial_s=0.5, factor=2, max_s=30)
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert b.delay(0) == 0.5


def test_http_ok_false_when_nothing_answers() -> None:
    assert engine.http_ok("http://127.0.0.1:9/health/readiness", timeout=0.5) is False
    assert engine.http_ok("not a url") is False


# --------------------------------------------------------------------------- aib serve --engine litellm


def test_cli_missing_litellm(nowhere: Path) -> None:
    res = CliRunner().invoke(
        app, ["serve", "--engine", "litellm", "--port", "1"], env={ENV_BIN: str(nowhere / "none")}
    )
    assert res.exit_code == 1
    assert "is not an executable file" in res.output and "make litellm" in res.output
    assert "Traceback" not in res.output


def test_cli_bad_engine_name() -> None:
    res = CliRunner().invoke(app, ["serve", "--engine", "vllm"])
    assert res.exit_code == 2 and "litellm" in res.output


def test_cli_off_loopback_without_key(nowhere: Path) -> None:
    exe = executable(nowhere / "bin" / "litellm")
    res = CliRunner().invoke(
        app,
        ["serve", "--engine", "litellm", "--litellm-direct", "--host", "0.0.0.0"],
        env={ENV_BIN: str(exe), "LITELLM_MASTER_KEY": ""},
    )
    assert res.exit_code == 1 and "needs $LITELLM_MASTER_KEY" in res.output


def test_cli_config_error_exits_2(nowhere: Path) -> None:
    exe = executable(nowhere / "bin" / "litellm")
    cfg = nowhere / "cfg"
    cfg.mkdir()
    (cfg / "providers.yaml").write_text("providers:\n  a: {type: llamacpp, base_url: 'http://127.0.0.1:9'}\n")
    (cfg / "model-mappings.yaml").write_text("models:\n  m: {provider: nowhere}\n")
    res = CliRunner().invoke(app, ["serve", "--engine", "litellm", "-c", str(cfg)], env={ENV_BIN: str(exe)})
    assert res.exit_code == 2
    assert "nowhere" in res.output and "configuration not used" in res.output


def test_workers_from_env() -> None:
    assert engine.workers_from_env({}) == 1
    assert engine.workers_from_env({"AIB_LITELLM_WORKERS": "3"}) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(EngineError, match="AIB_LITELLM_WORKERS"):
            engine.workers_from_env({"AIB_LITELLM_WORKERS": bad})


def test_cli_bad_worker_count(nowhere: Path) -> None:
    exe = executable(nowhere / "bin" / "litellm")
    res = CliRunner().invoke(
        app, ["serve", "--engine", "litellm"], env={ENV_BIN: str(exe), "AIB_LITELLM_WORKERS": "zero"}
    )
    assert res.exit_code == 1 and "at least 1" in res.output
