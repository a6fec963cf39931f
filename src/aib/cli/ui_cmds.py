"""`aib ui`: the web UI (Gradio) on 127.0.0.1:5001, a client of a running gateway.

aib ui                                   gateway http://127.0.0.1:4000, request log var/requests.db
aib ui --port 5002 --gateway http://127.0.0.1:4001 --db /srv/aib/requests.db
"""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from aib.cli.common import (
    EXIT_BAD_INPUT,
    GatewayOpt,
    ServedConfigDirOpt,
    console,
    err_console,
    fail,
    served_version_note,
)

DEFAULT_DB = "var/requests.db"
UI_MODULES = ("gradio", "matplotlib", "openai")
OFF = ("off", "none", "0", "false", "no", "")


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)


def ui(
    port: Annotated[int, typer.Option(help="Port of the web UI (on 127.0.0.1).", min=1, max=65535)] = 5001,
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    db: Annotated[
        str,
        typer.Option(
            "--db",
            envvar="AIB_REQUEST_LOG",
            help="The gateway's request log (SQLite), read for analytics and history; 'off' for none.",
        ),
    ] = DEFAULT_DB,
    config_dir: ServedConfigDirOpt = None,
) -> None:
    """Start the web UI: chat, compare models side by side, analytics, request history, provider health.

    The UI talks to the gateway like any client (OpenAI API) and reads the request log read-only.
    Installs the ui extra (gradio, matplotlib, openai) the first time it runs, with pip, into the same
    environment.
    """
    from aib.cli.extras import ExtraError, ensure_extra

    try:  # make run installs only the gateway: the UI's libraries come with the first `aib ui`
        ensure_extra("ui", UI_MODULES, lambda line: err_console.print(line, soft_wrap=True, markup=False))
    except ExtraError as exc:
        fail(str(exc))
    from aib.cli.http import GatewayDown, request_json
    from aib.webui.gateway import root_url

    try:
        url = root_url(gateway)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    request_log = None if db.strip().lower() in OFF else db
    if not _port_free(port):
        fail(f"port {port} on 127.0.0.1 is in use: choose another with --port")
    try:
        _, ready = request_json(url + "/health/ready", timeout=2)
    except GatewayDown:
        err_console.print(
            f"[yellow]warning:[/yellow] nothing answers at {url} yet; the UI says so until the gateway runs "
            "(start it with `aib serve`)",
            soft_wrap=True,
        )
    else:
        note = served_version_note(ready.get("plan_version") if isinstance(ready, dict) else None, config_dir)
        if note:
            err_console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    from aib.webui.app import close_ui, create_ui, launch_ui

    demo = create_ui(url, request_log)
    console.print(
        f"web UI on http://127.0.0.1:{port}  (gateway {url}, request log {request_log or 'off'})",
        soft_wrap=True,
    )
    console.print("Ctrl-C stops it.")
    try:
        launch_ui(demo, port, block=True, quiet=True)
    except OSError as exc:  # taken between the check and the launch
        fail(f"cannot listen on 127.0.0.1:{port}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C while starting
        pass
    finally:
        close_ui(demo)
    console.print("web UI stopped")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
