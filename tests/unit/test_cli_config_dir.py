"""Every `aib` command takes `--config-dir` (and `-c`, and AIB_CONFIG_DIR), as the README says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from aib.cli.common import files_version, served_version_note
from aib.cli.main import app
from aib.config.load import load_config
from aib.ops import democonfig
from config_support import copy_examples

pytestmark = pytest.mark.unit


def commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command, groups with a callback of their own included (`aib logs` is one; `aib keys` only
    lists its subcommands)."""
    if path and (not hasattr(cmd, "commands") or cmd.callback is not None):
        yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_every_command_takes_config_dir() -> None:
    found = dict(commands(typer.main.get_command(app)))
    names = {" ".join(p) for p in found}
    assert {"serve", "health", "reload", "bench", "demo", "monitor", "ui", "logs", "logs trace"} <= names
    lacking = []
    for path, cmd in found.items():
        params = {o: p for p in cmd.params for o in getattr(p, "opts", [])}
        if "--config-dir" not in params or "-c" not in params:
            lacking.append(" ".join(path))
        elif path != ("demo",):  # the demo writes a config: never into $AIB_CONFIG_DIR unasked
            assert params["--config-dir"].envvar == "AIB_CONFIG_DIR", path
    assert lacking == []
    assert len(found) >= 19


def test_the_version_compared_is_the_one_a_gateway_reports(tmp_path: Path) -> None:
    cdir = copy_examples(tmp_path / "config")
    version = load_config(cdir).sources_hash  # what /health and /health/ready say as plan_version
    assert files_version(cdir) == version
    assert served_version_note(version, cdir) is None
    assert served_version_note(version, None) is None  # nothing to compare with
    note = served_version_note("0123456789abcdef", cdir)
    assert note is not None and f"are version {version}" in note and "0123456789abcdef" in note
    assert "cannot read" in (served_version_note("x", tmp_path / "none") or "")


def test_demo_never_overwrites_a_config_it_did_not_write(tmp_path: Path) -> None:
    mine = copy_examples(tmp_path / "mine")
    assert democonfig.not_ours(mine) == mine / "providers.yaml"
    ours = democonfig.write(tmp_path / "demo", (1234, 1235))
    assert democonfig.not_ours(ours) is None and democonfig.not_ours(tmp_path / "empty") is None
    out = CliRunner().invoke(
        app, ["demo", "--check", "--no-ui", "--dir", str(tmp_path / "d"), "-c", str(mine)]
    )
    assert out.exit_code == 1 and "was not written by aib demo" in out.output, out.output
    assert (mine / "providers.yaml").read_text() == (
        copy_examples(tmp_path / "again") / "providers.yaml"
    ).read_text()
