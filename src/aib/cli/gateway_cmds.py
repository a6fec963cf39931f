"""`aib serve` and the commands that talk to a running gateway (`health`)."""

from __future__ import annotations

import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from aib.cli.common import (
    EXIT_BAD_INPUT,
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

if TYPE_CHECKING:
    from aib.gateway.settings import GatewaySettings


class Engine(StrEnum):
    native = "native"
    litellm = "litellm"


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("health")(health)


def serve(
    config_dir: ConfigDirOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind. Keep 127.0.0.1 unless you mean to expose it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    no_health_checks: Annotated[
        bool, typer.Option("--no-health-checks", help="Do not probe providers.")
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="native: aib's own gateway. litellm: the real LiteLLM proxy, with a config generated "
            "from the same files, behind a thin aib front on this port that hot-reloads it without "
            "losing requests (needs LiteLLM: `make litellm`).",
        ),
    ] = Engine.native,
    litellm_direct: Annotated[
        bool,
        typer.Option(
            "--litellm-direct",
            help="With --engine litellm: LiteLLM itself on HOST:PORT, no front (benchmarks). A reload "
            "(SIGHUP) then restarts it and cuts requests in flight.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            envvar="AIB_WORKERS",
            help="Gateway processes sharing HOST:PORT (native engine). One serves about one core's "
            "worth of requests; use up to the number of cores the gateway may take.",
        ),
    ] = 1,
    insecure_open: Annotated[
        bool,
        typer.Option(
            "--insecure-open",
            help="Listen on a non-loopback address even with `auth: {mode: none}` or no $AIB_ADMIN_KEY: "
            "anyone who reaches the port can use it. Warned at start and in /health.",
        ),
    ] = False,
) -> None:
    """Start the gateway on HOST:PORT (the native engine, or with --engine litellm the LiteLLM proxy).

    Reads config/ (or --config-dir); without one, the defaults shipped in the package. Starts even when
    every provider is down: /health says which.
    """
    from aib.gateway.server import choose_config_dir
    from aib.gateway.server import serve as run
    from aib.gateway.settings import GatewaySettings
    from aib.observe.settings import ObserveSettings

    try:
        ObserveSettings.from_env()  # a bad AIB_* variable: one clear line, not a traceback
        settings = GatewaySettings(
            host=host,
            port=port,
            config_dir=Path(config_dir) if config_dir else None,
            health_checks=not no_health_checks,
            insecure_open=insecure_open,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if engine is Engine.native:
        _check_exposure(settings)
    if workers > 1 and engine is not Engine.native:
        fail("--workers is for the native engine; LiteLLM has its own --num_workers", EXIT_BAD_INPUT)
    if engine is Engine.litellm:
        from aib.engines.litellm import EngineError, serve_litellm
        from aib.engines.litellm_front import serve_front

        try:
            with config_errors():
                cdir = choose_config_dir(config_dir)
                if litellm_direct:
                    code = serve_litellm(cdir, host, port)
                else:
                    code = serve_front(cdir, settings, log_level)
        except EngineError as exc:
            fail(str(exc))
        raise typer.Exit(code)
    if workers == 1:  # measured: exec-ing a lean process here saves ~4 MB and costs ~0.4 s of start
        with config_errors():
            run(settings, log_level=log_level)
        return
    from aib.gateway.workers import supervisor_argv

    argv = supervisor_argv(
        workers,
        host,
        port,
        settings.config_dir,
        not no_health_checks,
        log_level,
        settings.drain_timeout_s,
        insecure_open,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # the supervisor: the same PID, without the CLI's libraries (~40 MB less)


def _check_exposure(settings: GatewaySettings) -> None:
    """Refuse to expose the gateway without keys and an admin key (docs/security.md), before anything
    starts; with --insecure-open, say loudly what that means."""
    from aib.config.compile import build_plan
    from aib.gateway.guard import exposure_problem, is_loopback_host
    from aib.gateway.server import choose_config_dir

    if is_loopback_host(settings.host):  # nothing to check: the config is read (once) by the server
        return
    with config_errors():
        plan, _, _ = build_plan(choose_config_dir(settings.config_dir))
    problem = exposure_problem(settings.host, plan.auth.mode, settings.admin_key is not None)
    if problem is None:
        return
    if not settings.insecure_open:
        fail(problem, EXIT_BAD_INPUT)
    err_console.print(
        f"[yellow]warning:[/yellow] --insecure-open: listening on {settings.host} with auth.mode "
        f"{plan.auth.mode}{'' if settings.admin_key else ' and no admin key'}: anyone who reaches this "
        "port can use every provider key.",
        soft_wrap=True,
    )


def health(
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    as_json: JsonOpt = False,
    config_dir: ServedConfigDirOpt = None,
) -> None:
    """Show a running gateway's /health: each provider's state, probe latency and last error."""
    from rich.table import Table

    from aib.cli.http import GatewayDown, request_json

    try:
        status, data = request_json(f"{gateway.rstrip('/')}/health")
    except GatewayDown as exc:
        fail(f"gateway down: {exc}")
    if not isinstance(data, dict):
        fail(f"{gateway}/health did not answer JSON (status {status})")
    if as_json:
        print_json(data)
    else:
        table = Table(title=f"{gateway}  status: {data.get('status')}")
        for col in ("provider", "type", "status", "probe ms", "last error"):
            table.add_column(col)
        for name, p in data.get("providers", {}).items():
            style = {"healthy": "green", "unhealthy": "red"}.get(p["status"], "yellow")
            table.add_row(
                name,
                p["type"],
                f"[{style}]{p['status']}[/{style}]",
                str(p.get("last_probe_latency_ms") or "-"),
                p.get("last_error") or "",
            )
        console.print(table)
        r = data.get("redis")
        if isinstance(r, dict):  # this process's view (docs/scaling.md)
            from rich.markup import escape

            style = "green" if r.get("status") == "up" else "red"
            uses = ", ".join(r.get("used_for") or [])
            line = f"redis {escape(str(r.get('where')))} ({uses}): [{style}]{r.get('status')}[/{style}]"
            if r.get("status") != "up" and r.get("last_error"):
                line += f", {escape(str(r['last_error']))}"
            console.print(line, soft_wrap=True)
    note = served_version_note(data.get("plan_version"), config_dir)
    if note:
        err_console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    raise typer.Exit(0 if status == 200 else 1)
