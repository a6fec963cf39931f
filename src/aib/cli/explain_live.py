"""`aib explain MODEL --gateway URL`: the live ranking of a running gateway (``GET /admin/route``).

Where plain `aib explain` reads the config only, this asks the gateway, which adds what it knows now:
each deployment's health, breaker, discovered models, backend signals, load estimate and rank, and for
prefix_affinity the hash ring's decision for ``--session``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlencode

from rich.table import Table

from aib.cli.common import console, fail, print_json
from aib.cli.http import GatewayDown, request_json

ADMIN_KEY_ENV = "AIB_ADMIN_KEY"


def fetch(gateway: str, model: str, session: str | None = None) -> dict[str, Any]:
    query = {"model": model, **({"session": session} if session else {})}
    key = os.environ.get(ADMIN_KEY_ENV)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        status, data = request_json(f"{gateway.rstrip('/')}/admin/route?{urlencode(query)}", headers=headers)
    except GatewayDown as exc:
        fail(f"gateway down: {exc}")
    if status != 200 or not isinstance(data, dict):
        err = data.get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else f"answered {status}"
        fail(f"{gateway}/admin/route: {msg}")
    return data


def _signals(d: dict[str, Any]) -> str:
    s = d.get("signals")
    if not s:
        return "-"
    if s.get("state") == "unsupported":
        return "none (server has no endpoint)"
    if s.get("state") == "none":
        return f"no reading ({s.get('last_error') or 'not polled yet'})"
    parts = [f"{s.get('state')} {s.get('age_s')}s"]
    if "running" in s:
        parts.append(f"run {s['running']:g} wait {s.get('waiting', 0):g}")
    if "kv_cache" in s:
        parts.append(f"kv {100 * s['kv_cache']:.0f}%")
    if "loaded_models" in s:
        parts.append(f"loaded: {', '.join(s['loaded_models']) or 'none'}")
    return "; ".join(parts)


def _health(d: dict[str, Any]) -> str:
    out = str(d.get("health"))
    if d.get("discovered") is False:
        out += " (model not listed)"
    return out


def show(data: dict[str, Any], as_json: bool = False) -> None:
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{data['requested']}[/bold] -> route [bold]{data['route']}[/bold]", soft_wrap=True)
    console.print(f"matched by {data['matched_by']}: {data['rule']}", soft_wrap=True)
    for route in data.get("live", {}).get("routes", []):
        table = Table(title=f"{route['route']}: {route['strategy']} ({route['rule']})", title_justify="left")
        for col in ("rank", "deployment", "health", "breaker", "load", "from", "signals", "tier / why not"):
            table.add_column(col, overflow="fold")
        for d in route["deployments"]:
            breaker = d.get("breaker", {})
            why = d.get("excluded") or d.get("tier", "")
            table.add_row(
                str(d["rank"]) if d.get("rank") else "-",
                d["id"],
                _health(d),
                f"{breaker.get('state')}"
                + (f" ({breaker.get('retry_in_s')}s)" if breaker.get("state") == "open" else ""),
                f"{d.get('load', 0):g}",
                str(d.get("from", "")),
                _signals(d),
                str(why),
            )
        console.print(table)
        aff = route.get("affinity")
        if aff:
            if "ring_order" in aff:
                console.print(
                    f"affinity key from {aff['key_from']}: home {aff['home']}, chosen {aff['chosen']} "
                    f"(capacity {aff['capacity']}, loads {aff['loads']}{', spilled over' if aff['spilled'] else ''})",
                    soft_wrap=True,
                )
            else:
                console.print(f"affinity: {aff.get('note')}", soft_wrap=True)
