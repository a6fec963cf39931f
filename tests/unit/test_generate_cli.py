"""`aib generate` and `aib schema` through typer's CliRunner, on config written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aib.cli.main import app
from aib.config.compile import build_plan
from aib.config.export_litellm import render_litellm
from aib.config.jsonschema import SCHEMA_FILES
from aib.config.load import GENERATED_FILE, MAPPINGS_FILE, PROVIDERS_FILE
from config_support import copy_examples

pytestmark = pytest.mark.unit

runner = CliRunner()


def run(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("AIB_CONFIG_DIR", raising=False)
    return copy_examples(tmp_path / "config")


def expected(d: Path) -> str:
    plan, loaded, _ = build_plan(d)
    return render_litellm(loaded, plan)


def test_generate_writes_the_file(cfg: Path) -> None:
    r = run("generate", "--config-dir", str(cfg))
    assert r.exit_code == 0, r.output
    out = cfg / GENERATED_FILE
    assert out.read_text() == expected(cfg)
    assert "wrote" in r.output and "model_list entries" in r.output
    assert "not in LiteLLM" in r.output  # discovery and disabled providers are reported
    again = run("generate", "--config-dir", str(cfg))
    assert again.exit_code == 0 and "unchanged" in again.output


def test_generate_output_and_stdout(cfg: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "litellm.yaml"
    assert run("generate", "-c", str(cfg), "--output", str(other)).exit_code == 0
    assert other.read_text() == expected(cfg)
    r = run("generate", "-c", str(cfg), "--stdout")
    assert r.exit_code == 0
    assert r.stdout == expected(cfg)
    assert not (cfg / GENERATED_FILE).exists()


def test_generate_check_exit_codes(cfg: Path) -> None:
    out = cfg / GENERATED_FILE
    missing = run("generate", "-c", str(cfg), "--check")
    assert missing.exit_code == 1 and "does not exist" in missing.output

    assert run("generate", "-c", str(cfg)).exit_code == 0
    fresh = run("generate", "-c", str(cfg), "--check")
    assert fresh.exit_code == 0 and "up to date" in fresh.output
    assert out.read_text() == expected(cfg)  # --check writes nothing

    out.write_text(out.read_text().replace("cooldown_time: 30", "cooldown_time: 5"))
    edited = run("generate", "-c", str(cfg), "--check")
    assert edited.exit_code == 1 and "edited by hand" in edited.output

    assert run("generate", "-c", str(cfg)).exit_code == 0
    mappings = cfg / MAPPINGS_FILE
    mappings.write_text(mappings.read_text().replace("cooldown_s: 30", "cooldown_s: 45"))
    stale = run("generate", "-c", str(cfg), "--check")
    assert stale.exit_code == 1 and "stale" in stale.output and "run `aib generate`" in stale.output


def test_generate_check_json(cfg: Path) -> None:
    r = run("generate", "-c", str(cfg), "--check", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["state"] == "missing"
    run("generate", "-c", str(cfg))
    r = run("generate", "-c", str(cfg), "--check", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True


def test_bad_config_exits_2_with_every_message_and_no_traceback(cfg: Path) -> None:
    mappings = cfg / MAPPINGS_FILE
    text = mappings.read_text()
    text = text.replace("    provider: anthropic\n", "    provider: anthropik\n")
    text = text.replace("  chat: llama3.1:8b\n", "  chat: llama3.1:8bb\n")
    mappings.write_text(text)
    lines = text.splitlines()
    bad_provider = next(i for i, ln in enumerate(lines, 1) if "anthropik" in ln)
    bad_alias = next(i for i, ln in enumerate(lines, 1) if "llama3.1:8bb" in ln)
    for args in (["generate"], ["generate", "--check"], ["generate", "--stdout"]):
        r = runner.invoke(app, [*args, "-c", str(cfg)])
        assert r.exit_code == 2, r.output
        assert (
            f"model-mappings.yaml:{bad_provider}: models.claude.provider: unknown provider 'anthropik'"
            in r.output
        )
        assert f"model-mappings.yaml:{bad_alias}: aliases.chat: alias points to unknown model" in r.output
        assert "Traceback" not in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (cfg / GENERATED_FILE).exists()


def test_bad_yaml_exits_2(cfg: Path) -> None:
    (cfg / PROVIDERS_FILE).write_text("providers:\n  x: [unclosed\n")
    r = runner.invoke(app, ["generate", "-c", str(cfg)])
    assert r.exit_code == 2
    assert "providers.yaml:" in r.output and "YAML syntax error" in r.output
    assert "Traceback" not in r.output


def test_schema_writes_and_checks(cfg: Path) -> None:
    r = run("schema", "-c", str(cfg))
    assert r.exit_code == 0
    for fname in SCHEMA_FILES:
        assert json.loads((cfg / "schemas" / fname).read_text())["$schema"].startswith(
            "https://json-schema.org/"
        )
    assert run("schema", "-c", str(cfg), "--check").exit_code == 0
    (cfg / "schemas" / "model-mappings.schema.json").write_text("{}\n")
    r = run("schema", "-c", str(cfg), "--check")
    assert r.exit_code == 1 and "model-mappings.schema.json" in r.output and "aib schema" in r.output


def test_schema_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert run("schema", "--output-dir", str(out)).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(SCHEMA_FILES)
    assert run("schema", "--output-dir", str(tmp_path / "none"), "--check").exit_code == 1


@pytest.mark.parametrize("command", ["generate", "schema"])
def test_help(command: str) -> None:
    r = run(command, "--help")
    assert r.exit_code == 0
    assert "--check" in r.output and "--config-dir" in r.output
