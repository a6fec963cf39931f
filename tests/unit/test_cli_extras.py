"""`aib ui` installs the ui extra the first time it runs (`make run` installs only the gateway)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from aib.cli.extras import ExtraError, ensure_extra, extra_requirements

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def pinned(extra: str) -> list[str]:
    return list(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    )


@pytest.mark.parametrize("extra", ["ui", "llamacpp", "test"])
def test_the_requirements_are_the_extras_pins(extra: str) -> None:
    assert sorted(extra_requirements(extra)) == sorted(pinned(extra))
    assert extra_requirements("no-such-extra") == []


def test_nothing_is_installed_when_nothing_is_missing() -> None:
    calls: list[list[str]] = []
    assert ensure_extra("ui", ["json", "sqlite3"], print, lambda argv: calls.append(argv) or 0) == []
    assert calls == []


def test_a_missing_module_installs_the_pinned_extra_with_this_interpreters_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    said: list[str] = []
    calls: list[list[str]] = []

    def pip(argv: list[str]) -> int:  # stands in for pip: the module appears where imports look
        calls.append(argv)
        (tmp_path / "aib_test_extra_module.py").write_text("")
        return 0

    assert ensure_extra("ui", ["json", "aib_test_extra_module"], said.append, pip) == [
        "aib_test_extra_module"
    ]
    assert calls == [[sys.executable, "-m", "pip", "install", *extra_requirements("ui")]]
    assert "installing the ui extra now (gradio==" in said[0]


def test_pip_failing_or_installing_nothing_is_a_clear_error() -> None:
    with pytest.raises(
        ExtraError, match=r"pip could not install the ui extra \(exit 1\): pip install gradio=="
    ):
        ensure_extra("ui", ["aib_test_never_there"], print, lambda argv: 1)
    with pytest.raises(ExtraError, match="aib_test_never_there still missing after installing the ui extra"):
        ensure_extra("ui", ["aib_test_never_there"], print, lambda argv: 0)
    with pytest.raises(ExtraError, match="unknown to this installation"):
        ensure_extra("nope", ["aib_test_never_there"], print, lambda argv: 0)
