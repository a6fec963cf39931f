"""How `aib monitor` draws a :class:`~aib.ops.monitor.View` (rich), live or once, and reads the q key."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from aib.cli.common import print_json
from aib.ops.monitor import Scrape, View, scrape, summarize

STATUS_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "unhealthy": "red",
    "unknown": "dim",
    "disabled": "dim",
}


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def render(view: View, interval: float | None = None) -> RenderableType:
    """One frame: a header line, the providers, the routes and a footer."""
    parts: list[RenderableType] = []
    head = Text.assemble(("aib monitor ", "bold"), view.gateway)
    if view.status:
        head.append("  ")
        head.append(view.status, style=STATUS_STYLE.get(view.status, ""))
    if view.plan_version:
        head.append(f"  config {view.plan_version[:8]}")
    if view.uptime_s is not None:
        head.append(f"  up {_age(view.uptime_s)}")
    if view.inflight is not None:
        head.append(f"  in flight {_num(view.inflight, 0)}  {_num(view.rate)} req/s")
    if view.overhead_p50_s is not None:
        head.append(f"  overhead p50 {_ms(view.overhead_p50_s)}")
    parts.append(head)
    if not view.up:
        seen = f" (last answered {_age(view.last_ok_age_s)} ago)" if view.last_ok_age_s is not None else ""
        retry = f"; retrying every {interval:g}s" if interval else ""
        parts.append(
            Panel(
                Text(f"gateway down: {view.error}{retry}{seen}", style="bold red"),
                border_style="red",
            )
        )
    if view.up or view.providers or view.routes:  # when down: the last numbers seen, dimmed
        dim = "" if view.up else "dim"
        parts.append(_providers(view, dim))
        parts.append(_routes(view, dim))
    else:
        return Group(*parts)
    over = f"the last {view.window_s:.1f} s" if view.window_s > 0 else "one scrape"
    keys = "q or Ctrl-C quits · " if interval else ""
    every = f"refresh {interval:g}s · " if interval else ""
    parts.append(
        Text(
            f"{keys}{every}req/s, (+new) and p50/p95 over {over}; totals since the gateway started; "
            "dim latency: no request in that time, so since start",
            style="dim",
        )
    )
    return Group(*parts)


def _table(title: str, style: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", style=style, expand=False)
    for i, col in enumerate(columns):
        left = i == 0 or col in ("type", "status", "last error", "load (server)")
        t.add_column(col, justify="left" if left else "right", no_wrap=col != "last error", overflow="fold")
    return t


def _providers(view: View, style: str) -> Table:
    t = _table(
        "Providers", style, "provider", "type", "status", "probe", "att/s", "failed", "breakers", "load (server)",
        "last error",
    )  # fmt: skip
    for p in view.providers:
        color = STATUS_STYLE.get(p.status, "")
        t.add_row(
            escape(p.name), p.type, f"[{color}]{p.status}[/{color}]" if color else p.status,
            _ms(p.probe_ms / 1000 if p.probe_ms is not None else None), _num(p.attempts_rate),
            _num(p.failed_attempts, 0), f"[red]{p.open_breakers} open[/red]" if p.open_breakers else "",
            escape(p.signals), escape(p.last_error or ""),
        )  # fmt: skip
    if not view.providers:
        t.add_row("(none)", *[""] * 8)
    return t


def _routes(view: View, style: str) -> Table:
    t = _table("Models", style, "route", "req/s", "requests", "errors", "fallbacks", "p50", "p95")
    for r in view.routes:
        err = _num(r.errors, 0) + (
            f" [red](+{r.new_errors:.0f})[/red]" if r.new_errors and r.rate is not None else ""
        )
        fb = _num(r.fallbacks, 0) + (
            f" [yellow](+{r.new_fallbacks:.0f})[/yellow]" if r.new_fallbacks and r.rate is not None else ""
        )
        lat = "" if r.latency_in_window else "[dim]"
        end = "" if r.latency_in_window else "[/dim]"
        t.add_row(
            escape(r.route), _num(r.rate), _num(r.requests, 0), err, fb,
            f"{lat}{_ms(r.p50_s)}{end}", f"{lat}{_ms(r.p95_s)}{end}",
        )  # fmt: skip
    if not view.routes:
        t.add_row("(no requests yet)", *[""] * 6)
    return t


# --------------------------------------------------------------------------- running


def run_once(gateway: str, interval: float, console: Console, as_json: bool = False) -> int:
    """Two scrapes ``interval`` apart (one when the gateway is down), one frame; 0 when it answered."""
    first = scrape(gateway, timeout=min(max(interval, 1.0), 5.0))
    scrapes = [first]
    if first.ok:
        time.sleep(interval)
        scrapes.append(scrape(gateway, timeout=min(max(interval, 1.0), 5.0)))
    view = summarize(gateway, scrapes, window_s=math.inf)
    if as_json:
        print_json(dataclasses.asdict(view))
    else:
        console.print(render(view))
    return 0 if view.up else 1


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """A function waiting up to N seconds for one key press (None on timeout or without a terminal)."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:

        def sleep(timeout: float) -> str | None:
            time.sleep(timeout)
            return None

        yield sleep
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys arrive one at a time, Ctrl-C still interrupts

        def read(timeout: float) -> str | None:
            ready, _, _ = select.select([fd], [], [], timeout)
            return os.read(fd, 1).decode(errors="replace") if ready else None

        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(
    gateway: str,
    interval: float,
    window: float,
    console: Console,
    *,
    frames: int | None = None,
) -> None:
    """Refresh every ``interval`` s until q or Ctrl-C (or after ``frames`` frames, for tests)."""
    history: deque[Scrape] = deque()
    timeout = min(max(interval, 1.0), 5.0)
    shown = 0
    try:
        with _keys() as key, Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or shown < frames:
                history.append(scrape(gateway, timeout=timeout))
                while len(history) > 2 and history[-1].at - history[0].at > window + interval:
                    history.popleft()
                live.update(render(summarize(gateway, history, window), interval), refresh=True)
                shown += 1
                if frames is not None and shown >= frames:
                    break
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if (key(left) or "").lower() == "q":
                        return
    except KeyboardInterrupt:
        return
