"""`aib reload`, `aib rollback` and `aib backups`: change the configuration of a running gateway safely.

`reload` and `rollback` talk to the gateway (POST /admin/reload, /admin/rollback; the admin key comes
from $AIB_ADMIN_KEY). `rollback` with no gateway running restores the files in the config folder
itself. `backups` reads the backups folder. Exit codes: 0 done (or nothing to do), 1 rolled back, failed
or no gateway, 2 the configuration (or the backup asked for) is not usable.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from aib.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_PROBLEM,
    ConfigDirOpt,
    GatewayOpt,
    JsonOpt,
    config_errors,
    console,
    err_console,
    fail,
    print_json,
)
from aib.cli.http import GatewayDown, request_json

EXIT_BY_RESULT = {"applied": 0, "unchanged": 0, "rejected": EXIT_BAD_INPUT, "rolled_back": EXIT_PROBLEM}
STYLE = {
    "applied": "green",
    "unchanged": "green",
    "rejected": "red",
    "rolled_back": "yellow",
    "failed": "red",
}
TIMEOUT_S = 120.0  # a reload waits for probes of new providers (AIB_RELOAD_VERIFY_TIMEOUT_S)


def who(command: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        user = "unknown"
    return f"aib {command} ({user}@{socket.gethostname()})"


def admin_call(
    gateway: str, path: str, method: str = "GET", body: Any = None, expect: str = "result"
) -> tuple[int, Any]:
    """Ask the gateway; an error envelope (bad key, nothing to reload) ends the command with its message."""
    status, data = request_json(f"{gateway.rstrip('/')}{path}", method, body, timeout=TIMEOUT_S)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        msg = str(data["error"].get("message"))
        code = data["error"].get("code")
        if code == "invalid_admin_key":
            msg += " Set AIB_ADMIN_KEY for this command."
        fail(msg, EXIT_BAD_INPUT if code == "backup_not_found" else EXIT_PROBLEM)
    if not isinstance(data, dict) or expect not in data:
        fail(f"{gateway}{path} did not answer like an aib gateway (status {status}); is the URL right?")
    return status, data


def print_report(res: dict[str, Any]) -> None:
    from aib.reload.diff import lines_of

    result = str(res.get("result"))
    style = STYLE.get(result, "red")
    console.print(f"[{style}]{result}[/{style}]: {res.get('message')}", soft_wrap=True)
    for line in lines_of(res.get("diff") or {}):
        console.print(f"  {line}", soft_wrap=True, markup=False)
    verify = res.get("verify") or {}
    for name, state in (verify.get("probes") or {}).items():
        console.print(f"  probe {name}: {state}", soft_wrap=True, markup=False)
    for note in verify.get("notes") or []:
        console.print(f"  note: {note}", soft_wrap=True, markup=False)
    if res.get("backup"):
        console.print(f"  backup of the previous files: {res['backup']}", markup=False)
    if res.get("generated"):
        console.print(f"  regenerated {res['generated']}", markup=False)
    for w in res.get("warnings") or []:
        err_console.print(f"[yellow]{w}[/yellow]", soft_wrap=True)
    for e in res.get("errors") or []:
        err_console.print(f"[red]{e}[/red]", soft_wrap=True)


def _exit_for(res: dict[str, Any]) -> None:
    raise typer.Exit(EXIT_BY_RESULT.get(str(res.get("result")), EXIT_PROBLEM))


def reload(
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    as_json: JsonOpt = False,
    history: Annotated[bool, typer.Option("--history", help="Show the last reloads instead.")] = False,
    limit: Annotated[int, typer.Option(help="With --history: how many.", min=1)] = 20,
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            "-c",
            envvar="AIB_CONFIG_DIR",
            help="The folder you edited: refuse (exit 2) when the gateway serves another one (it reloads "
            "its own files).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Reload the configuration of a running gateway now (POST /admin/reload) and show the result.

    The gateway validates both files, shows the diff, backs up the files in force, swaps the plan without dropping a request, probes new providers and rolls back if a `critical: true` model is left without a healthy deployment. Exit 0 applied or unchanged, 1 rolled back or failed, 2 the new files are invalid (the gateway keeps serving the old ones).
    """
    try:
        if history:
            _, data = admin_call(gateway, f"/admin/reloads?limit={limit}", expect="reloads")
            if as_json:
                print_json(data)
                return
            _print_history(data)
            return
        if config_dir is not None:
            _same_folder(gateway, config_dir)
        _, res = admin_call(gateway, "/admin/reload", "POST", {"by": who("reload")})
    except GatewayDown as exc:
        fail(f"{exc}. Start the gateway with `aib serve`, or check the files with `aib validate`.")
    if as_json:
        print_json(res)
    else:
        print_report(res)
    _exit_for(res)


def _same_folder(gateway: str, config_dir: Path) -> None:
    """Exit 2 when the gateway's config folder is not ``config_dir``."""
    _, data = admin_call(gateway, "/admin/reloads?limit=1", expect="reloads")
    theirs = data.get("config_dir")
    if theirs and Path(str(theirs)).resolve() != config_dir.resolve():
        fail(
            f"the gateway at {gateway} serves the files in {theirs}, not {config_dir}: it would reload "
            "those. Edit them, or start a gateway on this folder (aib serve -c).",
            EXIT_BAD_INPUT,
        )


def _print_history(data: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"reloads of {data.get('config_dir')} (serving {data.get('plan_version')})")
    for col in ("#", "time (UTC)", "trigger", "result", "version", "message"):
        table.add_column(col)
    for r in data.get("reloads", []):
        style = STYLE.get(r["result"], "red")
        table.add_row(
            str(r["id"]),
            str(r["started_at"])[:23],
            f"{r['trigger']}: {r['by']}" if r.get("by") else r["trigger"],
            f"[{style}]{r['result']}[/{style}]",
            f"{r['from_version']} -> {r['version']}",
            r["message"],
        )
    console.print(table)


def rollback(
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Backup id, id prefix or hash prefix (default: the newest of another version)."
        ),
    ] = None,
    gateway: GatewayOpt = "http://127.0.0.1:4000",
    config_dir: ConfigDirOpt = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Restore the files without asking a gateway (none is running).")
    ] = False,
    drill: Annotated[
        bool,
        typer.Option(
            "--drill",
            help="Rehearse on a running gateway: a bad config must be rejected, a dead critical provider rolled "
            "back; the original files are restored at the end.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup of the config files and reload it (on a running gateway: POST /admin/rollback).

    With no gateway answering (or --offline) the files are restored in the config folder, after a backup of the ones there; they take effect when the gateway starts. `aib backups` lists the ids.
    """
    if drill:
        from aib.cli.reload_drill import run_drill

        raise typer.Exit(run_drill(gateway, as_json))
    if not offline:
        try:
            _, res = admin_call(gateway, "/admin/rollback", "POST", {"by": who("rollback"), "to": to})
        except GatewayDown:
            err_console.print(f"no gateway answers at {gateway}: restoring the files only", soft_wrap=True)
        else:
            print_json(res) if as_json else print_report(res)
            _exit_for(res)
    _offline_rollback(config_dir, to, as_json)


def _offline_rollback(config_dir: Path | None, to: str | None, as_json: bool) -> None:
    from aib.config.load import resolve_config_dir
    from aib.reload.backups import BackupError
    from aib.reload.offline import pick_backup, restore_offline, store_for

    cdir = resolve_config_dir(config_dir)
    with config_errors(as_json):
        store = store_for(cdir)
        try:
            info = pick_backup(store, cdir, to)
        except BackupError as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        try:
            out = restore_offline(store, cdir, info, who("rollback --offline"))
        except BackupError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot write the config files in {cdir}: {exc.strerror or exc}")
    if as_json:
        print_json(out)
        return
    console.print(
        f"[green]restored[/green] backup {out['restored']} ({out['version']}) into {cdir}", soft_wrap=True
    )
    if out.get("backup"):
        console.print(f"  backup of the files it replaced: {out['backup']}", markup=False)
    console.print("  the gateway uses them when it starts (or on `aib reload`)", markup=False)


def backups(config_dir: ConfigDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the backups of the config files, newest first: id, time, hash, result, what triggered it."""
    from rich.table import Table

    from aib.config.load import resolve_config_dir
    from aib.reload.backups import BackupError
    from aib.reload.offline import store_for
    from aib.reload.sources import read_sources

    cdir = resolve_config_dir(config_dir)
    with config_errors(as_json):
        store = store_for(cdir)
    try:
        items = store.list()
    except BackupError as exc:
        fail(str(exc))
    current = read_sources(cdir).version
    if as_json:
        print_json(
            {"backups_dir": str(store.root), "current": current, "backups": [b.as_dict() for b in items]}
        )
        return
    if not items:
        console.print(
            f"no backups in {store.root} yet (a reload writes one before it swaps the configuration)"
        )
        return
    table = Table(title=f"backups in {store.root} (files in {cdir}: {current or 'unreadable'})")
    for col in ("id", "time (UTC)", "hash", "result", "triggered by"):
        table.add_column(col)
    for b in items:
        style = STYLE.get("applied" if b.result == "applied" else b.result, "yellow")
        mark = " (= current files)" if b.hash == current else ""
        table.add_row(
            b.id, b.created_at[:23], b.hash + mark, f"[{style}]{b.result}[/{style}]", f"{b.trigger}: {b.by}"
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("reload")(reload)
    app.command("rollback")(rollback)
    app.command("backups")(backups)
