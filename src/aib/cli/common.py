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
# the same option for commands that read no config file: every `aib` command takes it (scripts can pass
# -c to all), and says here that it does not use it
UnusedConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        "-c",
        envvar="AIB_CONFIG_DIR",
        help="Accepted like by every aib command; this one reads no config file.",
        show_default=False,
    ),
]
# commands that talk to a running gateway: the files it should be serving
ServedConfigDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--config-dir",
        "-c",
        envvar="AIB_CONFIG_DIR",
        help="Say so when the gateway serves another version of the config files than those in this folder.",
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


def files_version(config_dir: Path) -> str | None:
    """The version a gateway reports (``plan_version``) for the files in ``config_dir``; None when they
    cannot be read."""
    from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, sources_hash

    try:
        return sources_hash(
            (config_dir / PROVIDERS_FILE).read_bytes(), (config_dir / MAPPINGS_FILE).read_bytes()
        )
    except OSError:
        return None


def served_version_note(served: object, config_dir: Path | None) -> str | None:
    """A sentence when a gateway serving ``served`` (its ``plan_version``) does not serve the files in
    ``config_dir``; None when it does, or when there is nothing to compare (no folder given)."""
    if config_dir is None or not served:
        return None
    mine = files_version(config_dir)
    if mine is None:
        return f"cannot read the config files in {config_dir} to compare"
    if mine == served:
        return None
    return (
        f"the gateway serves config version {served}; the files in {config_dir} are version {mine} "
        "(another folder, or a reload is pending: `aib reload`)"
    )
