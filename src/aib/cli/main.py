"""The `aib` command line. Each group of commands lives in its own module and registers here."""

from __future__ import annotations

import importlib

import typer

from aib import __version__

app = typer.Typer(
    name="aib",
    help="ai-backend-unified: one OpenAI-compatible endpoint for the lab's inference servers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules that define `register(app)`; imported when the CLI is built, not at package import.
COMMAND_MODULES = (
    "config_cmds",  # validate, explain, models, ports
    "generate_cmds",  # generate, schema
    "gateway_cmds",  # serve, health
    "logs_cmds",  # logs, logs trace, logs stats
    "reload_cmds",  # reload, rollback, backups
    "bench_cmds",  # bench
    "ops_cmds",  # doctor, monitor, demo
    "ui_cmds",  # ui
    "keys_cmds",  # keys create|list|show|revoke|rotate|usage
    "cache_cmds",  # cache stats|flush|inspect
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aib {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    """ai-backend-unified: one OpenAI-compatible endpoint for the lab's inference servers."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"aib.cli.{_name}").register(app)
