"""deploy/systemd: the user units pass `systemd-analyze verify` (no systemd needed as PID 1) and install.sh works.

`systemd-analyze` comes from the Debian package `systemd` (in the Makefile's APT_PACKAGES).
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALL = UNITS / "install.sh"
PLACEHOLDER = "%h/ai-backend-unified"


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is missing: apt-get install systemd (listed in the Makefile's APT_PACKAGES)"
        )
    return path


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def verify(directory: Path, *units: str) -> subprocess.CompletedProcess[str]:
    runtime = directory / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}  # --user needs one, even without a user manager
    return subprocess.run(
        [analyze(), "--user", "verify", *units], cwd=directory, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_units_verify_with_the_venv_aib(tmp_path: Path) -> None:
    """The placeholder path replaced by this checkout (where .venv/bin/aib exists), as install.sh does."""
    assert (REPO / ".venv" / "bin" / "aib").exists() or shutil.which("aib")
    for name in ("aib-gateway.service", "aib-ui.service"):
        text = (UNITS / name).read_text()
        assert PLACEHOLDER + "/.venv/bin/aib" in text
        (tmp_path / name).write_text(text.replace(PLACEHOLDER, str(REPO)))
    result = verify(tmp_path, "aib-gateway.service", "aib-ui.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys and bad values are only warned about


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    text = (UNITS / "aib-gateway.service").read_text().replace(PLACEHOLDER, "/nonexistent/aib-checkout")
    (tmp_path / "aib-gateway.service").write_text(text)
    result = verify(tmp_path, "aib-gateway.service")
    assert result.returncode != 0 and "/nonexistent/aib-checkout/.venv/bin/aib" in result.stderr


def test_gateway_unit_settings() -> None:
    u = unit("aib-gateway.service")
    svc = u["Service"]
    assert svc["ExecStart"].endswith("aib serve --host 127.0.0.1 --port 4000")
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "2"
    assert svc["EnvironmentFile"] == "-%h/.config/aib/env"
    assert u["Install"]["Alias"] == "litellm.service"  # the seed's service name keeps working
    assert u["Install"]["WantedBy"] == "default.target"


def test_ui_unit_settings() -> None:
    u = unit("aib-ui.service")
    assert u["Unit"]["After"] == "aib-gateway.service"
    svc = u["Service"]
    assert svc["ExecStart"].endswith("aib ui --port 5001") and svc["Restart"] == "on-failure"
    assert svc["EnvironmentFile"] == "-%h/.config/aib/env"


def test_install_script_writes_units_and_a_private_env_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "SYSTEMCTL": str(tmp_path / "no-systemctl")}
    env.pop("XDG_CONFIG_HOME", None)
    run = subprocess.run([str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    installed = home / ".config" / "systemd" / "user"
    for name in ("aib-gateway.service", "aib-ui.service"):
        text = (installed / name).read_text()
        assert PLACEHOLDER not in text.replace("%h/.config", "") and f"{REPO}/.venv/bin/aib" in text
    env_file = home / ".config" / "aib" / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "no systemd user manager here" in run.stdout
    check = tmp_path / "check"  # outside the user unit path, so only these two units are loaded
    shutil.copytree(installed, check)
    result = verify(check, "aib-gateway.service", "aib-ui.service")
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    env_file.write_text("OPENAI_API_KEY=kept\n")  # a second run keeps the user's keys
    again = subprocess.run([str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and env_file.read_text() == "OPENAI_API_KEY=kept\n"


def test_install_script_check_mode_and_bad_option() -> None:
    analyze()
    ok = subprocess.run([str(INSTALL), "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0 and "units verified" in ok.stdout, ok.stderr
    bad = subprocess.run(
        [str(INSTALL), "--frobnicate"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2 and "unknown option" in bad.stderr
