"""`.serena/`: a project file Serena can read, and memories that stay true (paths, names, commands exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from aib.cli.main import app

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SERENA = REPO / ".serena"
MEMORIES = sorted((SERENA / "memories").glob("*.md"))
TOP = ("src/", "tests/", "config/", "docs/", "deploy/", "scripts/", "monitoring/", "bench/", ".serena/")
SOURCE = "\n".join(p.read_text() for p in (REPO / "src" / "aib").rglob("*.py"))


def test_project_file_has_what_serena_requires() -> None:
    data = YAML(typ="safe").load((SERENA / "project.yml").read_text())
    assert data["project_name"] == "ai-backend-unified"
    # every Serena version reads a single `language` (newer ones map it to `language_servers`)
    assert data["language"] == "python" and "languages" not in data and "language_servers" not in data
    assert data["ignore_all_files_in_gitignore"] is True and data["read_only"] is False
    assert isinstance(data["ignored_paths"], list) and data["encoding"] == "utf-8"
    mentioned = set(re.findall(r"`(\w+)`", data["initial_prompt"]))
    assert {p.stem for p in MEMORIES} <= mentioned  # the prompt points to every memory


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


@pytest.mark.parametrize("memory", MEMORIES, ids=lambda p: p.name)
def test_memory_paths_exist(memory: Path) -> None:
    for token in backticked(memory.read_text()):
        path = token.split()[0].rstrip(",.:;)")
        if path.startswith(TOP) and "<" not in path:  # <kind>: a placeholder, not a file
            assert list(REPO.glob(path.rstrip("/"))) or (REPO / path).exists(), f"{memory.name}: {path}"


@pytest.mark.parametrize("memory", MEMORIES, ids=lambda p: p.name)
def test_memory_names_are_defined_in_the_code(memory: Path) -> None:
    for token in backticked(memory.read_text()):
        m = re.fullmatch(r"(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)(?:\(.*\))?", token)
        if (
            m is None
            or "/" in token
            or token.endswith((".py", ".md", ".yaml", ".yml", ".json", ".sh", ".service"))
        ):
            continue
        name = m.group(1)
        pattern = (
            rf"^\s*(?:async def|def|class) {name}\b|^{name}\b.*=|self\.{name}(?::[^=]+)? = |^\s+{name}: "
        )
        defined = re.search(pattern, SOURCE, re.MULTILINE)
        assert defined, f"{memory.name}: `{token}` ({name} is defined nowhere in src/aib)"


@pytest.mark.parametrize("memory", MEMORIES, ids=lambda p: p.name)
def test_memory_commands_exist(memory: Path) -> None:
    commands = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for token in backticked(memory.read_text()):
        for cmd in re.findall(r"(?:^|\| )aib (\w[\w-]*)", token):
            assert cmd in commands, f"{memory.name}: `aib {cmd}` is not a command"
