"""`aib cache`: the response cache of a running gateway (stats, flush, inspect), through its
``/admin/cache`` (the admin key from ``$AIB_ADMIN_KEY``). With ``cache.backend: redis`` every replica
shares what these commands show and change; with the memory backend it is that gateway's own.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from aib.cli.common import GatewayOpt, JsonOpt, UnusedConfigDirOpt, console, fail, print_json

cache_app = typer.Typer(
    help="The response cache of a running gateway: stats, flush, inspect (docs/scaling.md).",
    no_args_is_help=True,
)
DEFAULT_GATEWAY = "http://127.0.0.1:4000"


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")


def _call(gateway: str, path: str, method: str = "GET", body: Any = None) -> Any:
    from aib.cli.http import GatewayDown, request_json

    url = f"{gateway.rstrip('/')}/admin/cache{path}"
    try:
        status, data = request_json(url, method, body, timeout=30.0)
    except GatewayDown as exc:
        fail(str(exc))
    if status >= 400:
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else f"HTTP {status}"
        if status == 404 and isinstance(err, dict) and err.get("code") == "cache_entry_not_found":
            return None
        fail(f"{url}: {msg}" + (" Set AIB_ADMIN_KEY for this command." if status in (401, 403) else ""))
    return data


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _show_stats(gateway: str, s: dict[str, Any]) -> None:
    from rich.table import Table

    where = s.get("where") or ("worker " + str(s["worker"]["index"]) if s.get("worker") else "this gateway")
    lines = [f"[bold]{gateway}[/bold]  backend: {s.get('backend')} ({where})", f"entries: {s.get('entries')}"]
    if s.get("backend") == "memory":
        lines.append(
            f"bytes: {_size(s.get('bytes'))} of {_size(s.get('max_bytes'))}  evictions: {s.get('evictions')}  "
            f"expired: {s.get('expired')}"
        )
    else:
        r = s.get("redis") or {}
        lines.append(
            f"redis used_memory: {_size(r.get('used_memory'))}  maxmemory: {_size(r.get('maxmemory') or None)} "
            f"({r.get('maxmemory_policy', '-')})  evicted_keys: {r.get('evicted_keys', '-')}"
        )
    lines.append(f"stored by this process: {s.get('stored')} ({_size(s.get('stored_bytes'))})")
    console.print("\n".join(lines))
    routes = s.get("routes") or {}
    if routes:
        table = Table()
        table.add_column("route")
        table.add_column("entries", justify="right")
        table.add_column("bytes", justify="right")
        for name, r in sorted(routes.items()):
            table.add_row(name, str(r.get("entries", 0)), _size(r.get("bytes")) if "bytes" in r else "-")
        console.print(table)


@cache_app.command("stats")
def stats(
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
    watch: Annotated[
        float | None,
        typer.Option("--watch", "-w", help="Show them again every SECONDS until Ctrl-C.", show_default=False),
    ] = None,
    count: Annotated[int, typer.Option("--count", help="With --watch: stop after this many (0: never).")] = 0,
) -> None:
    """Entries, bytes, evictions, per route."""
    shown = 0
    while True:
        data = _call(gateway, "")
        if as_json:
            print_json(data)
        else:
            _show_stats(gateway, data)
        shown += 1
        if watch is None or (count and shown >= count):
            return
        time.sleep(max(watch, 0.2))


@cache_app.command("flush")
def flush(
    route: Annotated[
        str | None, typer.Option("--route", "-r", help="Only this route's entries.", show_default=False)
    ] = None,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Drop every cached answer (of one route)."""
    data = _call(gateway, "/flush", "POST", {"route": route} if route else {})
    if as_json:
        print_json(data)
    else:
        console.print(
            f"flushed {data['flushed']} entries{f' of route {route}' if route else ''} ({data['backend']})"
        )


@cache_app.command("inspect")
def inspect(
    key: Annotated[str, typer.Argument(help="The entry's key: an answer's x-aib-cache-key header.")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """One cached answer: its route, scope, age, time left, where it came from, and the answer."""
    data = _call(gateway, f"/entries/{key}")
    if data is None:
        fail(f"no cache entry {key} (expired, flushed, or never stored)")
    if as_json:
        print_json(data)
        return
    age = time.time() - data["stored_at"]
    console.print(
        f"[bold]{key}[/bold]  route {data['route']} ({data['endpoint']}), scope {data['scope']}\n"
        f"stored {age:.0f}s ago from {data.get('provider')}/{data.get('upstream')}, expires in {data['ttl_s']:.0f}s, "
        f"{_size(data['bytes'])}, tokens {data.get('prompt_tokens')}+{data.get('completion_tokens')}"
    )
    print_json(data["answer"])
