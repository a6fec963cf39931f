"""JSON Schemas, the commented examples and docs/configuration.md stay true to the Pydantic models."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ruamel.yaml import YAML

from aib.config.compile import build_plan
from aib.config.jsonschema import (
    DESCRIPTIONS,
    PROVIDER_DEFS,
    SCHEMA_FILES,
    build_schema,
    render_schema,
    schema_texts,
    stale_schemas,
    write_schemas,
)
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE
from aib.config.schema import MappingsFile, ProvidersFile
from aib.config.yamlsource import to_plain
from config_support import copy_examples

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
SCHEMAS = CONFIG / "schemas"
EXAMPLES = CONFIG / "examples"
# (config file, example file, schema file, model)
PAIRS = [
    (CONFIG / PROVIDERS_FILE, EXAMPLES / "providers.example.yaml", "providers.schema.json", ProvidersFile),
    (
        CONFIG / MAPPINGS_FILE,
        EXAMPLES / "model-mappings.example.yaml",
        "model-mappings.schema.json",
        MappingsFile,
    ),
]


def read_yaml(path: Path) -> Any:
    return to_plain(YAML(typ="rt").load(path.read_text(encoding="utf-8")))


def nodes(schema: dict[str, Any], root: str) -> list[tuple[str, dict[str, Any]]]:
    return [*schema["$defs"].items(), (root, schema)]


def gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the schema files


def test_shipped_schemas_are_current() -> None:
    assert stale_schemas(SCHEMAS) == [], "run `aib schema` in the repo root"


def test_schema_text_is_deterministic_sorted_and_ends_with_newline() -> None:
    for model in SCHEMA_FILES.values():
        text = render_schema(model)
        assert text == render_schema(model)
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_write_schemas_then_check(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    assert sorted(p.name for p in write_schemas(out)) == sorted(SCHEMA_FILES)
    assert write_schemas(out) == []  # unchanged files are not rewritten
    assert stale_schemas(out) == []
    (out / "providers.schema.json").write_text("{}\n")
    assert len(stale_schemas(out)) == 1
    assert schema_texts()["providers.schema.json"] != "{}\n"


def test_schemas_have_id_title_and_draft() -> None:
    for fname, model in SCHEMA_FILES.items():
        schema = build_schema(model)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith(fname)
        assert schema["title"] in ("providers.yaml", "model-mappings.yaml")


def test_every_key_has_a_description_and_an_example() -> None:
    for model in SCHEMA_FILES.values():
        schema = build_schema(model)
        for name, node in nodes(schema, model.__name__):
            assert node.get("description"), name
            for field, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{name}.{field}: add a description in aib.config.schema"
                assert prop.get("examples"), (
                    f"{name}.{field}: add an example in aib.config.jsonschema.EXAMPLES"
                )


def test_filled_descriptions_are_only_for_keys_schema_py_leaves_bare() -> None:
    raw = {**ProvidersFile.model_json_schema()["$defs"], **MappingsFile.model_json_schema()["$defs"]}
    raw["ProvidersFile"] = ProvidersFile.model_json_schema()
    raw["MappingsFile"] = MappingsFile.model_json_schema()
    for (name, field), _ in DESCRIPTIONS.items():
        for d in PROVIDER_DEFS if name == "*Provider" else (name,):
            node = raw[d] if not field else raw[d]["properties"][field]
            assert not node.get("description"), (
                f"{d}.{field or '<model>'} now has a description in aib.config.schema: "
                "delete its entry from aib.config.jsonschema.DESCRIPTIONS"
            )


def test_schema_accepts_the_models_shorthand_and_rejects_bad_provider_names() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    v = jsonschema.Draft202012Validator(build_schema(ProvidersFile))
    good = {"providers": {"o": {"type": "ollama", "base_url": "http://h:1", "models": ["m", {"name": "n"}]}}}
    assert list(v.iter_errors(good)) == []
    bad = {"providers": {"-bad name": {"type": "ollama", "base_url": "http://h:1"}}}
    assert list(v.iter_errors(bad))
    typo = {"providers": {"o": {"type": "ollama", "base_url": "http://h:1", "enabeld": True}}}
    assert list(v.iter_errors(typo))


def test_every_example_value_validates_against_its_key() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for model in SCHEMA_FILES.values():
        schema = build_schema(model)
        for name, node in nodes(schema, model.__name__):
            for field, prop in node.get("properties", {}).items():
                v = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **prop})
                for example in prop.get("examples", []):
                    assert list(v.iter_errors(example)) == [], f"{name}.{field}: {example!r}"


# --------------------------------------------------------------------------- the config files and examples


@pytest.mark.parametrize(("config", "example", "fname", "model"), PAIRS, ids=["providers", "mappings"])
def test_shipped_files_and_examples_validate_against_the_json_schema(
    config: Path, example: Path, fname: str, model: type
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / fname).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    for path in (config, example):
        errors = [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(read_yaml(path))
        ]
        assert errors == [], path


def test_examples_compile_into_a_plan_without_errors(tmp_path: Path) -> None:
    plan, _, warnings = build_plan(copy_examples(tmp_path / "cfg"))  # raises ConfigError on any error
    assert all(w.severity == "warning" for w in warnings)
    assert {p.type for p in plan.providers.values()} == {
        "ollama",
        "llamacpp",
        "vllm",
        "openai",
        "anthropic",
        "openai_compatible",
        "litellm_sdk",
    }
    assert any(len(g.targets) > 1 and g.strategy == "weighted" for g in plan.groups.values())
    assert plan.aliases and plan.patterns and plan.capabilities


@pytest.mark.parametrize(("config", "example", "fname", "model"), PAIRS, ids=["providers", "mappings"])
def test_examples_show_every_key_with_a_comment(config: Path, example: Path, fname: str, model: type) -> None:
    schema = build_schema(model)
    keys = {f for _, node in nodes(schema, model.__name__) for f in node.get("properties", {})}
    lines = example.read_text().splitlines()
    for key in sorted(keys):
        first = next((ln for ln in lines if re.match(rf"\s*(- )?{re.escape(key)}:", ln)), None)
        assert first is not None, f"{example.name} does not show `{key}`"
        assert "#" in first, f"{example.name}: the first `{key}:` line has no comment"


@pytest.mark.parametrize(("config", "example", "fname", "model"), PAIRS, ids=["providers", "mappings"])
def test_files_name_their_schema_on_the_first_line(
    config: Path, example: Path, fname: str, model: type
) -> None:
    for path in (config, example):
        first = path.read_text().splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{path}: first line must be `# yaml-language-server: $schema=...`"
        target = (path.parent / m.group(1)).resolve()
        assert target == (SCHEMAS / fname).resolve() and target.is_file(), path


# --------------------------------------------------------------------------- docs/configuration.md


def test_configuration_doc_reference_is_current() -> None:
    docs = gen_docs()
    text = docs.DOC.read_text()
    assert docs.update(text) == text, "run `python scripts/gen_config_docs.py`"


def test_configuration_doc_names_every_key_and_covers_every_model() -> None:
    docs = gen_docs()
    text = docs.DOC.read_text()
    covered = {d for _, _, _, defs in docs.SECTIONS for d in defs}
    for model in SCHEMA_FILES.values():
        schema = build_schema(model)
        for name, node in nodes(schema, model.__name__):
            assert name in covered, f"add a section for {name} to scripts/gen_config_docs.py"
            for field in node.get("properties", {}):
                assert f"`{field}`" in text, field
    for topic in ("sources-sha256", "aib generate --check", "api_key_env", "capability/<name>", "$schema="):
        assert topic in text
