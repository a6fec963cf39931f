"""`aib generate` (the LiteLLM config) and `aib schema` (the JSON Schemas of the two config files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from aib.cli.common import (
    EXIT_PROBLEM,
    ConfigDirOpt,
    JsonOpt,
    config_errors,
    console,
    fail,
    print_issues,
    print_json,
)
from aib.config.compile import build_plan
from aib.config.export_litellm import export_litellm, generated_state
from aib.config.jsonschema import stale_schemas, write_schemas
from aib.config.load import GENERATED_FILE, resolve_config_dir

OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="File to write or check (default: <config-dir>/litellm-unified.yaml).",
        show_default=False,
    ),
]
CheckOpt = Annotated[
    bool,
    typer.Option(
        "--check",
        help="Write nothing; exit 1 with the reason when the file on disk is missing, stale or edited by hand.",
    ),
]
StdoutOpt = Annotated[bool, typer.Option("--stdout", help="Print the file instead of writing it.")]
SchemaDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output-dir",
        help="Folder for providers.schema.json and model-mappings.schema.json (default: <config-dir>/schemas).",
        show_default=False,
    ),
]


def _write(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` in one rename; False when it already holds exactly that."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return True


def generate(
    config_dir: ConfigDirOpt = None,
    output: OutputOpt = None,
    check: CheckOpt = False,
    stdout: StdoutOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the LiteLLM proxy config (litellm-unified.yaml) from providers.yaml and model-mappings.yaml.

    The file is generated: never edit it. Its header holds a hash of both sources and of its own body, so `--check` tells a stale file from a hand-edited one. Exits 2 on a config error.
    """
    cdir = resolve_config_dir(config_dir)
    with config_errors(as_json):
        plan, cfg, warnings = build_plan(cdir)
    export = export_litellm(cfg, plan)
    if stdout:
        sys.stdout.write(export.text)
        return
    path = output if output is not None else cdir / GENERATED_FILE
    if check:
        state, reason = generated_state(path, export.text)
        if as_json:
            print_json({"ok": state == "fresh", "state": state, "file": str(path), "reason": reason})
            if state != "fresh":
                raise typer.Exit(EXIT_PROBLEM)
            return
        if state != "fresh":
            fail(reason)
        console.print(reason, soft_wrap=True)
        return
    changed = _write(path, export.text)
    if as_json:
        print_json(
            {
                "ok": True,
                "file": str(path),
                "changed": changed,
                "entries": export.entries,
                "notes": list(export.notes),
            }
        )
        return
    print_issues(warnings)
    verb = "wrote" if changed else "unchanged:"
    console.print(f"{verb} {path} ({export.entries} model_list entries)")
    for note in export.notes:
        console.print(f"  not in LiteLLM: {note}", soft_wrap=True)


def schema(
    config_dir: ConfigDirOpt = None,
    output_dir: SchemaDirOpt = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 when a schema file is missing or out of date."),
    ] = False,
) -> None:
    """Write the JSON Schemas of providers.yaml and model-mappings.yaml (for editors and CI).

    They are generated from the Pydantic models; the config files point at them on their first line (`# yaml-language-server: $schema=schemas/...`).
    """
    out = output_dir if output_dir is not None else resolve_config_dir(config_dir) / "schemas"
    if check:
        problems = stale_schemas(out)
        if problems:
            fail("; ".join(problems) + "; run `aib schema`")
        console.print(f"schemas in {out} are up to date")
        return
    changed = write_schemas(out)
    for path in changed:
        console.print(f"wrote {path}")
    if not changed:
        console.print(f"schemas in {out} are up to date")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("schema")(schema)
