"""Options and output helpers shared by every `aib` command."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console

from aib.config.errors import ConfigError, ConfigIssue

ConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        "-c",
        envvar="AIB_CONFIG_DIR",
        help="Folder holding providers.yaml and model-mappings.yaml (default: config/).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
GatewayOpt = Annotated[
    str,
    typer.Option("--gateway", "-g", envvar="AIB_GATEWAY_URL", help="Base URL of a running gateway."),
]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_PROBLEM = 1  # the command ran and found something wrong
EXIT_BAD_INPUT = 2  # bad config or bad arguments


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def print_issues(issues: tuple[ConfigIssue, ...] | list[ConfigIssue]) -> None:
    for issue in issues:
        style = "yellow" if issue.severity == "warning" else "red"
        err_console.print(f"[{style}]{issue}[/{style}]", markup=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_PROBLEM) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def config_errors(as_json: bool = False) -> Iterator[None]:
    """Turn a :class:`ConfigError` into every message on stderr (or JSON) and exit code 2."""
    try:
        yield
    except ConfigError as exc:
        if as_json:
            print_json({"ok": False, "issues": [i.as_dict() for i in exc.issues]})
        else:
            print_issues(exc.issues)
            n = len(exc.errors)
            err_console.print(f"[red]{n} error{'s' if n != 1 else ''}[/red]: configuration not used")
        raise typer.Exit(EXIT_BAD_INPUT) from None
