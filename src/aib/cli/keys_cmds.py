"""`aib keys`: client keys (create, list, show, revoke, rotate, usage).

By default the commands work on the key store itself, so they work with no gateway running: Redis
when the configuration says ``auth.store: redis`` (``./config`` or ``$AIB_CONFIG_DIR``), else the SQLite
file (``--db``, ``$AIB_KEYS_DB``, else ``keys.db`` beside the request log); gateways sharing that store pick a
change up within a second. With ``--gateway URL`` they go through that gateway's ``/admin/keys``
instead (the admin key from ``$AIB_ADMIN_KEY``): for a gateway on another machine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from aib.cli.common import EXIT_BAD_INPUT, JsonOpt, UnusedConfigDirOpt, console, err_console, fail, print_json

keys_app = typer.Typer(
    help="Client keys: who may use the gateway, which models, how much (docs/security.md).",
    no_args_is_help=True,
)

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        envvar="AIB_KEYS_DB",
        help="A SQLite key store (default: Redis when the configuration says auth.store: redis, else keys.db "
        "beside the request log, else var/keys.db).",
        show_default=False,
    ),
]
RemoteOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        "-g",
        help="Manage the keys of this running gateway through its /admin/keys (needs $AIB_ADMIN_KEY).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


def _configured_store() -> Any:
    """The Redis key store when the configuration says ``auth.store: redis`` (``./config`` or
    ``$AIB_CONFIG_DIR``), else None (the SQLite file)."""
    from aib.config.errors import ConfigError
    from aib.config.load import MAPPINGS_FILE, load_config, resolve_config_dir

    cdir = resolve_config_dir(None)
    if not (cdir / MAPPINGS_FILE).exists():
        return None
    try:
        mappings = load_config(cdir).mappings
    except ConfigError as exc:
        fail(f"{cdir}: the configuration does not load, so the key store it names is unknown:\n{exc}")
    if mappings.auth.store != "redis" or mappings.redis is None:
        return None
    from aib.auth.redis_store import RedisKeyStore

    return RedisKeyStore(mappings.redis)


class _Local:
    def __init__(self, db: Path | None) -> None:
        from aib.auth.store import SqliteKeyStore, default_path
        from aib.observe.settings import ObserveSettings

        store = None if db is not None else _configured_store()
        if store is None:
            store = SqliteKeyStore(db or default_path(ObserveSettings.from_env().request_log))
        self.store = store

    def all_keys(self) -> list[dict[str, Any]]:
        return [k.public() for k in self.store.load()]

    def create(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        from aib.auth.manage import created, settings_from

        key, secret = self.store.create(name, **settings_from(settings))
        return created(key, secret)

    def show(self, ident: str) -> dict[str, Any] | None:
        from aib.limits.budgets import day_and_month

        keys = self.store.find(ident)
        if len(keys) != 1:
            return None if not keys else {"ambiguous": [k.public() for k in keys]}
        key = keys[0]
        day, month = day_and_month(time.time())
        d, m = self.store.charged(day, month).get(key.num, (0, 0))
        return {**key.public(), "tokens_today": d, "tokens_this_month": m}

    def revoke(self, ident: str) -> list[dict[str, Any]]:
        return [k.public() for k in self.store.revoke(ident)]

    def rotate(self, ident: str, grace_s: float) -> dict[str, Any]:
        from aib.auth.manage import created

        keys = [k for k in self.store.find(ident) if k.state() == "active"]
        if len(keys) != 1:
            raise ValueError(
                f"{ident!r} names {len(keys)} active keys; give one key's id (aib keys list)"
                if keys
                else f"no active key with the id or name {ident!r}"
            )
        new, secret, old = self.store.rotate(keys[0].id, grace_s)
        return {**created(new, secret), "replaces": old.public()}

    def usage(self, since: str | None) -> list[dict[str, Any]]:
        from aib.auth.manage import since_day, usage_report

        return usage_report(self.store, since_day(since))


class _Remote:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, path: str, method: str = "GET", body: Any = None) -> Any:
        from aib.cli.http import GatewayDown, request_json

        try:  # the admin key from $AIB_ADMIN_KEY (aib.clientauth)
            status, data = request_json(f"{self.url}{path}", method, body)
        except GatewayDown as exc:
            fail(str(exc))
        if status >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            msg = err.get("message") if isinstance(err, dict) else f"HTTP {status}"
            if status == 404 and isinstance(err, dict) and err.get("code") == "key_not_found":
                return None
            fail(f"{self.url}: {msg}" + (" Set AIB_ADMIN_KEY for this command." if status == 401 else ""))
        return data

    def all_keys(self) -> list[dict[str, Any]]:
        return list(self._call("/admin/keys")["keys"])

    def create(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("/admin/keys", "POST", {"name": name, **settings}))

    def show(self, ident: str) -> dict[str, Any] | None:
        found = self._call(f"/admin/keys/{ident}")
        return dict(found) if found else None

    def revoke(self, ident: str) -> list[dict[str, Any]]:
        found = self._call(f"/admin/keys/{ident}/revoke", "POST", {})
        return list(found["revoked"]) if found else []

    def rotate(self, ident: str, grace_s: float) -> dict[str, Any]:
        found = self._call(f"/admin/keys/{ident}/rotate", "POST", {"grace": grace_s})
        if not found:
            raise ValueError(f"no key with the id {ident!r}")
        return dict(found)

    def usage(self, since: str | None) -> list[dict[str, Any]]:
        q = f"?since={since}" if since else ""
        return list(self._call(f"/admin/keys/usage{q}")["keys"])


def _backend(db: Path | None, gateway: str | None) -> _Local | _Remote:
    return _Remote(gateway) if gateway else _Local(db)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _limits(k: dict[str, Any]) -> str:
    parts = [f"{name} {k[f]}" for f, name in (
        ("rpm", "rpm"), ("tpm", "tpm"), ("concurrency", "conc"), ("budget_day", "day"), ("budget_month", "month"),
    ) if k.get(f) is not None]  # fmt: skip
    return ", ".join(parts) or "none"


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Who the key belongs to: a person or a project.")],
    models: Annotated[
        str | None,
        typer.Option(
            help="Models it may use: names and globs, comma-separated (default: every model).",
            show_default=False,
        ),
    ] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.", show_default=False)] = None,
    tpm: Annotated[
        int | None, typer.Option(min=1, help="Tokens per minute (prompt + completion).", show_default=False)
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Requests in flight at once.", show_default=False)
    ] = None,
    budget_day: Annotated[
        int | None, typer.Option(min=1, help="Tokens per UTC day.", show_default=False)
    ] = None,
    budget_month: Annotated[
        int | None, typer.Option(min=1, help="Tokens per UTC month.", show_default=False)
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 90d, 12h (default: none).", show_default=False)
    ] = None,
    meta: Annotated[
        list[str] | None, typer.Option(help="Metadata as KEY=VALUE (repeat).", show_default=False)
    ] = None,
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Make a key for NAME. The key is printed once: only its hash is kept."""
    metadata: dict[str, str] = {}
    for item in meta or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            fail(f"--meta {item!r}: use KEY=VALUE", EXIT_BAD_INPUT)
        metadata[k] = v
    settings: dict[str, Any] = {
        "models": models,
        "rpm": rpm,
        "tpm": tpm,
        "concurrency": concurrency,
        "budget_day": budget_day,
        "budget_month": budget_month,
        "expires_in": expires,
        "metadata": metadata or None,
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    try:
        out = _backend(db, gateway).create(name, settings)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if as_json:
        print_json(out)
        return
    console.print(f"[bold]{out['key']}[/bold]")
    err_console.print(
        f"key {out['id']} for {out['name']}: models {', '.join(out['models']) or 'all'}; limits {_limits(out)}; "
        f"expires {_when(out['expires_at'])}.\nThis is the only time the key is shown: store it now."
    )


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Also revoked and expired keys.")] = False,
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Every key: id, owner, state, models, limits (never a secret)."""
    from rich.table import Table

    keys = _backend(db, gateway).all_keys()
    if not all_keys:
        keys = [k for k in keys if k["state"] == "active"]
    if as_json:
        print_json(keys)
        return
    table = Table(title=f"{len(keys)} key{'s' if len(keys) != 1 else ''}")
    for col in ("id", "name", "prefix", "state", "models", "limits", "created", "expires"):
        table.add_column(col)
    for k in keys:
        table.add_row(
            k["id"], k["name"], k["prefix"] + "…", k["state"], ", ".join(k["models"]) or "all", _limits(k),
            _when(k["created_at"]), _when(k["expires_at"]),
        )  # fmt: skip
    console.print(table)


@keys_app.command("show")
def show(
    ident: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="A key's id, or its owner's name.")],
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """One key, with what it used today and this month."""
    found = _backend(db, gateway).show(ident)
    if found is None:
        fail(f"no key with the id or name {ident!r} (aib keys list --all)")
    if "ambiguous" in found:
        ids = ", ".join(f"{k['id']} ({k['state']})" for k in found["ambiguous"])
        fail(f"{ident!r} has several keys: {ids}; give one id", EXIT_BAD_INPUT)
    if as_json:
        print_json(found)
        return
    for field in ("id", "name", "prefix", "state", "models", "rpm", "tpm", "concurrency", "budget_day",
                  "budget_month", "tokens_today", "tokens_this_month", "metadata", "rotated_from"):  # fmt: skip
        value = found.get(field)
        console.print(f"{field:18} {', '.join(value) if isinstance(value, list) else value}")
    for field in ("created_at", "expires_at", "revoked_at"):
        console.print(f"{field:18} {_when(found.get(field))}")


@keys_app.command("revoke")
def revoke(
    ident: Annotated[
        str, typer.Argument(metavar="ID_OR_NAME", help="A key's id, or a name: every active key of it.")
    ],
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Revoke a key (or every key of a name): refused by every gateway sharing the store within a second."""
    revoked = _backend(db, gateway).revoke(ident)
    if as_json:
        print_json(revoked)
    if not revoked:
        fail(f"no active key with the id or name {ident!r}")
    if not as_json:
        for k in revoked:
            console.print(f"revoked {k['id']} ({k['name']}, {k['prefix']}…)")


@keys_app.command("rotate")
def rotate(
    ident: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key to replace.")],
    grace: Annotated[
        str, typer.Option(help="How long the old key keeps working, e.g. 1h (default: it stops now).")
    ] = "0",
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """A new key with the same owner, models and limits; the old one stops now or after --grace."""
    from aib.auth.keys import parse_duration

    try:
        out = _backend(db, gateway).rotate(ident, parse_duration(grace))
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if as_json:
        print_json(out)
        return
    console.print(f"[bold]{out['key']}[/bold]")
    old = out["replaces"]
    err_console.print(
        f"key {out['id']} replaces {old['id']} for {out['name']}; the old key stops {_when(old['revoked_at'])}.\n"
        "This is the only time the new key is shown: store it now."
    )


@keys_app.command("usage")
def usage(
    since: Annotated[
        str | None, typer.Option(help="Period, e.g. 24h, 7d, 30d (default: everything).", show_default=False)
    ] = None,
    db: DbOpt = None,
    gateway: RemoteOpt = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Requests, tokens and refusals per key; budget use today and this month."""
    from rich.table import Table

    try:
        rows = _backend(db, gateway).usage(since)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"usage per key{f' since {since}' if since else ''}")
    for col in (
        "name",
        "id",
        "requests",
        "prompt tok",
        "completion tok",
        "limited",
        "errors",
        "today / budget",
        "month / budget",
    ):
        table.add_column(col, justify="left" if col in ("name", "id") else "right")
    for r in rows:
        table.add_row(
            r["name"], r["id"], str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]),
            str(r["limited"]), str(r["errors"]), f"{r['tokens_today']} / {r['budget_day'] or '-'}",
            f"{r['tokens_this_month']} / {r['budget_month'] or '-'}",
        )  # fmt: skip
    console.print(table)
