"""The pre-commit hooks name commands that exist and pass on the shipped tree."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def hooks() -> list[dict[str, object]]:
    data = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    return [h for repo in data["repos"] for h in repo["hooks"]]


def test_every_hook_runs_a_venv_tool() -> None:
    names = {str(h["id"]) for h in hooks()}
    assert {"ruff", "ruff-format", "mypy", "aib-validate", "aib-generated-fresh"} <= names
    for h in hooks():
        entry = str(h["entry"])
        words = [w for t in shlex.split(entry) for w in shlex.split(t)]  # `bash -c '...'` nests one level
        tools = [w for w in words if w.startswith(".venv/bin/")]
        assert tools, f"{h['id']}: entry {entry!r} does not use the project's .venv"
        for tool in tools:
            assert (BIN / Path(tool).name).exists(), f"{h['id']}: {tool} is not installed"


@pytest.mark.parametrize("hook_id", ["aib-validate", "aib-generated-fresh"])
def test_config_hooks_pass_on_the_shipped_config(hook_id: str) -> None:
    entry = next(str(h["entry"]) for h in hooks() if h["id"] == hook_id)
    entry = entry.replace(".venv/bin/", f"{BIN}/")
    proc = subprocess.run(["bash", "-c", entry], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
