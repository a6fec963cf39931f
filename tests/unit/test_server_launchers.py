"""How the real test parts are found, built and started: llama-server and vLLM (no process here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aib.devtools import llama_server_build as lsb
from aib.devtools.llama_server import LlamaServer
from aib.devtools.vllm import VllmServer, vllm_model, vllm_python

pytestmark = pytest.mark.unit


def test_the_cache_is_per_llama_cpp_python_version_and_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(lsb.CACHE_ENV, str(tmp_path))
    folder = lsb.cache_dir()
    assert folder.parent == tmp_path and folder.name.startswith(lsb.version() + "-")
    assert lsb.find_binary() is None
    assert lsb.main(["--check"]) == 1 and "not built" in capsys.readouterr().out
    folder.mkdir(parents=True)
    binary = folder / "llama-server"
    binary.write_text("#!/bin/sh\n")
    assert lsb.find_binary() is None  # not executable
    binary.chmod(0o755)
    assert lsb.find_binary() == binary and lsb.build() == binary  # cached: nothing is built
    assert lsb.main(["--check"]) == 0 and str(binary) in capsys.readouterr().out
    assert lsb.main([]) == 0


def test_missing_tools_and_packages_say_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(lsb.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(lsb.shutil, "which", lambda tool: None)
    assert lsb.main([]) == 1
    assert "cmake is not installed: run `make sysdeps`" in capsys.readouterr().err

    def not_installed(name: str) -> str:
        raise lsb.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(lsb.metadata, "version", not_installed)
    with pytest.raises(lsb.BuildError, match="run `make install`"):
        lsb.version()


def test_a_failed_step_reports_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with pytest.raises(lsb.BuildError, match="failed \\(exit 3\\)") as err:
        lsb._run(["sh", "-c", "echo compiling; echo 'error: no such file' >&2; exit 3"], log)
    assert "error: no such file" in str(err.value) and "$ sh -c" in log.read_text()


def test_the_options_leave_out_everything_but_the_server() -> None:
    opts = set(lsb.CMAKE_OPTIONS)
    assert {"-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF"} <= opts


def test_llama_server_command(tmp_path: Path) -> None:
    srv = LlamaServer(
        tmp_path / "m.gguf", binary=tmp_path / "llama-server", port=1234, parallel=3, n_threads=2
    )
    cmd = srv.command()
    assert cmd[0] == str(tmp_path / "llama-server") and "--metrics" in cmd
    assert cmd[cmd.index("--parallel") + 1] == "3" and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and srv.environment() is None
    assert "--metrics" not in LlamaServer(tmp_path / "m", binary="x", metrics=False).command()


def test_vllm_command_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_VLLM_VENV", str(tmp_path / "venv"))
    monkeypatch.setenv("AIB_VLLM_MODEL", str(tmp_path / "hf"))
    assert vllm_python() == tmp_path / "venv" / "bin" / "python" and vllm_model() == tmp_path / "hf"
    srv = VllmServer(port=4321)
    cmd = srv.command()
    assert cmd[:3] == [str(tmp_path / "venv" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enforce-eager" in cmd and cmd[cmd.index("--served-model-name") + 1] == "smollm2"
    assert (
        cmd[cmd.index("--model") + 1] == str(tmp_path / "hf") and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    )
    env = srv.environment()
    assert env is not None and env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == f"0-{(os.cpu_count() or 2) - 1}"
