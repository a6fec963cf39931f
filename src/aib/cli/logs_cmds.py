"""`aib logs`: read the request log the gateway writes (SQLite, var/requests.db by default).

    aib logs                         the last 20 requests
    aib logs --model smollm2 --status 5xx --since 1h
    aib logs --follow                new requests as they come (Ctrl-C stops)
    aib logs trace REQUEST_ID        route decision, every attempt, timings
    aib logs stats --since 1d        p50/p95/p99 per model, error rate, tokens/s

Reads only: the database is opened read-only, so it never slows the gateway down.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from aib.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_PROBLEM,
    JsonOpt,
    UnusedConfigDirOpt,
    console,
    fail,
    print_json,
)
from aib.observe.requestquery import RequestLogMissing, RequestLogReader, parse_since

DbOpt = Annotated[
    Path,
    typer.Option("--db", envvar="AIB_REQUEST_LOG", help="The request log file.", show_default=True),
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Only requests newer than this: 90s, 10m, 2h, 1d, 1w.", show_default=False),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Only this model (as clients asked).", show_default=False)
]
DEFAULT_DB = Path("var/requests.db")

logs_app = typer.Typer(
    name="logs",
    help="Recent requests from the request log; `trace` one request; `stats` per model.",
    no_args_is_help=False,
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app)


def _open(db: Path) -> RequestLogReader:
    try:
        return RequestLogReader(db)
    except RequestLogMissing as exc:
        fail(str(exc))


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def _clock(ts: float | None, with_date: bool = False) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(ts))


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def _status(row: dict[str, Any]) -> str:
    st = row["status"]
    style = "green" if 200 <= st < 400 and not row["error"] else "yellow" if 400 <= st < 500 else "red"
    return f"[{style}]{st or '-'}[/{style}]"


def _short_id(rid: str) -> str:
    """The end of a long id: the gateway's ids share a per-process prefix and differ in their last digits."""
    return rid if len(rid) <= 13 else "…" + rid[-12:]


def _requests_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    """Times in ms; `served by` is provider/upstream, the error code when nothing answered."""
    table = Table(
        title=title, caption="times in ms; `aib logs trace ID` shows one request" if title else None
    )
    table.add_column("time", no_wrap=True)
    table.add_column("status", justify="right", no_wrap=True)
    table.add_column("model", overflow="fold", ratio=1)
    table.add_column("served by", overflow="fold", ratio=2)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("ttfb", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("request id", no_wrap=True)
    for r in rows:
        served = f"{r['provider']}/{r['upstream']}" if r["provider"] else r["error_code"] or "-"
        if r["fallbacks"]:
            served += f" (+{r['fallbacks']} failed)"
        if r["provider"] and r["error_code"]:
            served += f" {r['error_code']}"
        pt, ct = r["prompt_tokens"], r["completion_tokens"]
        tokens = "-" if pt is None and ct is None else f"{pt or 0}+{ct or 0}"
        table.add_row(
            _clock(r["ts"]), _status(r), r["model"] or "-", served, _num(r["total_ms"]),
            _num(r["ttfb_ms"]) if r["stream"] else "", tokens, _short_id(r["request_id"]),
        )  # fmt: skip
    return table


@logs_app.callback()
def tail(
    ctx: typer.Context,
    db: DbOpt = DEFAULT_DB,
    model: ModelOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="A code (404), a class (5xx), 'error' or 'ok'.", show_default=False
        ),
    ] = None,
    since: SinceOpt = None,
    route: Annotated[str | None, typer.Option("--route", help="Only this route.", show_default=False)] = None,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this provider.", show_default=False)
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Only this client key (its name).", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=10_000, help="How many requests.")] = 20,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new requests (Ctrl-C stops).")
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between polls with --follow.", min=0.05)
    ] = 1.0,
    follow_for: Annotated[
        float | None, typer.Option("--for", hidden=True, help="Stop following after N seconds.")
    ] = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """The last requests, oldest first, filtered by model, status, age, route or provider."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = db
        return
    try:
        filters = {
            "model": model,
            "status": status,
            "since": _since(since),
            "route": route,
            "provider": provider,
            "key": key,
        }
        with _open(db) as reader:
            rows = list(reversed(reader.query(**filters, limit=limit)))  # type: ignore[arg-type]
            if as_json and not follow:
                print_json(rows)
            elif as_json:
                _json_lines(rows)
            elif rows or not follow:
                console.print(
                    _requests_table(rows, f"{len(rows)} request{'s' if len(rows) != 1 else ''} ({db.name})")
                )
            if follow:
                last = (
                    rows[-1]["id"] if rows else reader.query(limit=1)[0]["id"] if reader.query(limit=1) else 0
                )
                _follow(reader, filters, last, interval, follow_for, as_json)
    except ValueError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


def _json_lines(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        sys.stdout.write(orjson.dumps(r).decode() + "\n")
    sys.stdout.flush()


def _follow(
    reader: RequestLogReader,
    filters: dict[str, Any],
    last_id: int,
    interval: float,
    seconds: float | None,
    as_json: bool,
) -> None:
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(interval if deadline is None else max(min(interval, deadline - time.monotonic()), 0))
            rows = reader.query(**filters, after_id=last_id, limit=1000)
            if not rows:
                continue
            last_id = rows[-1]["id"]
            if as_json:
                _json_lines(rows)
            else:
                console.print(_requests_table(rows))
    except KeyboardInterrupt:
        pass


@logs_app.command("trace")
def trace(
    ctx: typer.Context,
    request_id: Annotated[
        str,
        typer.Argument(
            help="The x-request-id of the request, or 6+ of its first or last characters (as `aib logs` shows)."
        ),
    ],
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """One request: how its model was routed, every upstream attempt, and where the time went."""
    db: Path = ctx.obj or DEFAULT_DB
    with _open(db) as reader:
        t = reader.trace(request_id)
    if t is None:
        fail(f"no request {request_id!r} in {db} (it may be older than the retention, or not written yet)")
    if as_json:
        print_json(t)
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    route = f"{t['route']} ({t['matched_by']}: {t['rule']})" if t["route"] else "not resolved"
    answered = f"{t['provider']} as {t['upstream']!r}" if t["provider"] else "no upstream answered"
    for k, v in (
        ("request id", t["request_id"]),
        ("time", _clock(t["ts"], with_date=True)),
        ("request", f"{t['endpoint']}  model {t['model']!r}{'  stream' if t['stream'] else ''}"),
        ("route", route),
        ("answered by", answered),
        ("status", _status(t) + (f"  {t['error_code']}: {t['error']}" if t["error"] else "")),
        ("timings", f"total {_num(t['total_ms'], 2)} ms, first byte {_num(t['ttfb_ms'], 2)} ms, "
                    f"gateway overhead {_num(t['overhead_ms'], 3)} ms"),
        ("tokens", f"prompt {t['prompt_tokens'] if t['prompt_tokens'] is not None else '-'}, "
                   f"completion {t['completion_tokens'] if t['completion_tokens'] is not None else '-'}"),
        ("fallbacks", str(t["fallbacks"])),
        ("config", t["plan_version"] or "-"),
    ):  # fmt: skip
        head.add_row(k, v)
    if t["client_disconnected"]:
        head.add_row("client", "[yellow]disconnected before the end[/yellow]")
    console.print(head)
    attempts = Table(title=f"{len(t['attempts'])} upstream attempt{'s' if len(t['attempts']) != 1 else ''}")
    for col in ("#", "deployment", "route", "status", "ok", "first byte ms", "duration ms", "error"):
        attempts.add_column(col, overflow="fold")
    for a in t["attempts"]:
        ok = "[green]yes[/green]" if a["ok"] else "[red]no[/red]"
        attempts.add_row(
            str(a["n"]), a["target"], a["route"] or "-", str(a["status"] or "-"), ok, _num(a["ttfb_ms"], 2),
            _num(a["duration_ms"], 2), a["error"] or "",
        )  # fmt: skip
    console.print(attempts)
    for key in ("request_body", "response_body"):
        if t.get(key):
            console.print(
                f"[bold]{key.replace('_', ' ')}[/bold]: {t[key][:2000]}", markup=True, soft_wrap=True
            )


@logs_app.command("stats")
def stats(
    ctx: typer.Context,
    since: SinceOpt = "1d",
    model: ModelOpt = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Only this client key (its name).", show_default=False)
    ] = None,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Per model: requests, error rate, latency p50/p95/p99, stream TTFT, tokens and tokens/s."""
    db: Path = ctx.obj or DEFAULT_DB
    start = _since(since)
    with _open(db) as reader:
        rows = reader.stats(since=start, model=model, key=key)
    if as_json:
        print_json({"since": start, "models": rows})
        return
    if not rows:
        console.print(f"no requests in {db}{f' since {since}' if since else ''}")
        raise typer.Exit(EXIT_PROBLEM if model else 0)
    when = _clock(start, with_date=True) if start else "the start"
    table = Table(
        title=f"requests since {when} ({db.name})",
        caption="p50/p95/p99 latency and ttft (p50 time to first token of streams) in ms; tok/s: completion tokens per second of request time",
    )
    table.add_column("model", overflow="fold", min_width=8, ratio=1)
    for col in ("req", "err %", "p50", "p95", "p99", "ttft", "tok in", "tok out", "tok/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        err_style = "red" if r["error_rate"] > 0.05 else "yellow" if r["error_rate"] > 0 else "green"
        table.add_row(
            r["model"], f"{r['requests']:,}", f"[{err_style}]{r['error_rate'] * 100:.1f}[/{err_style}]",
            _num(r["p50_ms"]), _num(r["p95_ms"]), _num(r["p99_ms"]), _num(r["ttft_p50_ms"]), f"{r['prompt_tokens']:,}",
            f"{r['completion_tokens']:,}", _num(r["tokens_per_s"], 0),
        )  # fmt: skip
    console.print(table)
