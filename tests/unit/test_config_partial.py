"""A schema error no longer hides cross-file errors: both kinds come out of one run.

Entries with a schema error are left out of the cross-file checks (``aib.config.partial``), their
names stay known (no "unknown model" for a route that exists but has a bad key), and every issue
points at the line of the file as written, also after list entries were left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.config.errors import ConfigError
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, load_config
from config_support import write_files

pytestmark = pytest.mark.unit

PROVIDERS = """\
version: 1
providers:
  ollama:
    type: ollama
    base_url: http://127.0.0.1:11434
    models: [llama3, coder]
  broken:
    type: vllm
    base_url: not a url
    models: [big]
"""
MAPPINGS = """\
models:
  llama3:
    provider: ollama
    fallbacks: [nowhere]
  big:
    provider: broken
  coder:
    provider: ollama
    timeouts: {connect_s: -1}
  lost:
    provider: nobody
aliases:
  fast: coder
  quick: missing
patterns:
  - {match: "a/*", provider: ollama, colour: red}
  - {match: "b/*", provider: ghost}
fallbacks:
  coder: [llama3, zzz]
"""


def issues(tmp_path: Path, providers: str = PROVIDERS, mappings: str = MAPPINGS) -> list[str]:
    write_files(tmp_path, providers, mappings)
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    return [str(i).removeprefix(f"{tmp_path}/") for i in exc.value.issues]


def test_schema_and_cross_file_errors_in_one_run(tmp_path: Path) -> None:
    found = issues(tmp_path)
    schema = [i for i in found if "base_url" in i or "connect_s" in i or "colour" in i]
    assert [s.split(": ", 2)[:2] for s in schema] == [
        [f"{PROVIDERS_FILE}:9", "providers.broken.base_url"],
        [f"{MAPPINGS_FILE}:9", "models.coder.timeouts.connect_s"],
        [f"{MAPPINGS_FILE}:16", "patterns[0].colour"],
    ]
    cross = [i for i in found if i not in schema]
    assert cross == [
        f"{MAPPINGS_FILE}:11: models.lost.provider: unknown provider 'nobody' (known: ollama)",
        # the second pattern's own line, though the first one (a schema error) was left out
        f"{MAPPINGS_FILE}:17: patterns[1].provider: unknown provider 'ghost' (known: ollama)",
        f"{MAPPINGS_FILE}:14: aliases.quick: alias points to unknown model 'missing'",
        f"{MAPPINGS_FILE}:4: models.llama3.fallbacks[0]: fallback to unknown model 'nowhere'",
        f"{MAPPINGS_FILE}:19: fallbacks.coder[1]: fallback to unknown model 'zzz'",
    ]
    # names that exist with a schema error are not called unknown: big -> broken, fast -> coder,
    # fallbacks for coder, coder's fallback chain
    assert not [i for i in found if "'broken'" in i or "'coder'" in i]


CLEAN_PROVIDERS = "providers:\n  ollama: {type: ollama, base_url: 'http://127.0.0.1:11434'}\n"


def test_a_whole_section_wrong_reports_the_schema_error_alone(tmp_path: Path) -> None:
    found = issues(tmp_path, CLEAN_PROVIDERS, "models: [llama3]\naliases:\n  x: nowhere\n")
    assert len(found) == 1 and found[0].startswith(f"{MAPPINGS_FILE}:1: models: ")


def test_a_yaml_error_reports_only_itself(tmp_path: Path) -> None:
    found = issues(tmp_path, CLEAN_PROVIDERS, "models: {llama3: {provider: nobody}\n")
    assert len(found) == 1 and "nobody" not in found[0]


def test_aib_validate_prints_both_kinds(tmp_path: Path) -> None:
    write_files(tmp_path, PROVIDERS, MAPPINGS)
    out = CliRunner().invoke(app, ["validate", "-c", str(tmp_path)])
    assert out.exit_code == 2
    assert "providers.broken.base_url" in out.output and "unknown provider 'nobody'" in out.output
