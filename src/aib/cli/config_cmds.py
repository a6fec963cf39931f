"""`aib validate`, `aib explain`, `aib models`, `aib ports`: read the config, never call a server
(except `aib explain --gateway`, which asks a running gateway for its live ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypedDict

import typer
from rich.table import Table

from aib.cli import ports as portscan
from aib.cli.common import ConfigDirOpt, JsonOpt, config_errors, console, fail, print_issues, print_json
from aib.config.check import check_config
from aib.config.compile import build_plan, compile_plan
from aib.config.errors import ConfigError
from aib.config.load import load_config, resolve_config_dir
from aib.config.plan import Group, Resolution, RoutingPlan
from aib.config.schema import CAPABILITY_PREFIX

StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat warnings as failures (exit 1).")]
ModelArg = Annotated[str, typer.Argument(help="A model name as a client would send it.", show_default=False)]
GatewayPortOpt = Annotated[int, typer.Option("--gateway-port", help="Port the gateway listens on.")]
UiPortOpt = Annotated[int, typer.Option("--ui-port", help="Port the web UI listens on.")]
SINGULAR = {
    "providers": "provider",
    "routes": "route",
    "aliases": "alias",
    "patterns": "pattern",
    "warnings": "warning",
}


class ModelRow(TypedDict):
    name: str
    route: str  # for capability/<x>: the routes, in order, joined by ", "
    providers: list[str]
    upstreams: list[str]
    deployments: list[str]
    capabilities: list[str]
    matched_by: str


def validate(config_dir: ConfigDirOpt = None, as_json: JsonOpt = False, strict: StrictOpt = False) -> None:
    """Check both config files: YAML syntax, keys and types, cross-file references; print every problem.

    Exit 0 when the config can be used, 2 when it cannot, 1 with --strict when there are warnings.
    """
    cdir = resolve_config_dir(config_dir)
    with config_errors(as_json):
        cfg = load_config(cdir)
        issues = check_config(cfg)
        if any(i.severity == "error" for i in issues):
            raise ConfigError(issues)
        plan = compile_plan(cfg, check=False)
    summary = {
        "providers": len(plan.providers),
        "routes": len(plan.groups),
        "aliases": len(plan.aliases),
        "patterns": len(plan.patterns),
        "warnings": len(issues),
    }
    failed = strict and bool(issues)
    if as_json:
        print_json(
            {
                "ok": not failed,
                "config_dir": str(cdir),
                "issues": [i.as_dict() for i in issues],
                "summary": summary,
            }
        )
    else:
        print_issues(issues)
        counts = ", ".join(
            f"{n} {k if n != 1 else SINGULAR[k]}" for k, n in summary.items() if k != "warnings" or n
        )
        verdict = "[red]FAILED (--strict)[/red]" if failed else "[green]OK[/green]"
        console.print(f"{verdict} {cdir}: {counts}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


LiveOpt = Annotated[
    str | None,
    typer.Option(
        "--gateway",
        "-g",
        help="Ask this running gateway instead (GET /admin/route): the live order of the deployments and why "
        "(health, breakers, discovered models, backend signals, load, affinity). Admin key from $AIB_ADMIN_KEY.",
        show_default=False,
    ),
]
SessionOpt = Annotated[
    str | None,
    typer.Option(
        "--session", help="With --gateway: where prefix_affinity sends this x-session-id.", show_default=False
    ),
]


def explain(
    model: ModelArg,
    config_dir: ConfigDirOpt = None,
    as_json: JsonOpt = False,
    gateway: LiveOpt = None,
    session: SessionOpt = None,
) -> None:
    """Show where a model name goes: the rule that matches it and every candidate, in order.

    With --gateway, a running gateway answers, with the order it would use now and why."""
    if gateway:
        from aib.cli import explain_live

        explain_live.show(explain_live.fetch(gateway, model, session), as_json)
        return
    plan = _plan(config_dir, as_json)
    res = plan.resolve(model)
    if res is None:
        close = plan.suggestions(model)
        msg = f"model {model!r} is not configured; closest: {', '.join(close) or 'none (see `aib models`)'}"
        if as_json:
            print_json({"ok": False, "requested": model, "error": msg, "suggestions": close})
            raise typer.Exit(1)
        fail(msg)
    if as_json:
        print_json(res.explain())
        return
    _print_resolution(res)


def models(config_dir: ConfigDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the model names clients can ask for, where each goes, and how it is matched."""
    plan = _plan(config_dir, as_json)
    rows = model_rows(plan)
    discovery = [p.name for p in plan.providers.values() if p.discovery and p.enabled]
    if as_json:
        print_json({"models": rows, "discovery": discovery})
        return
    table = _table("Models", "name", "route", "provider: upstream", "capabilities", "matched by")
    for r in rows:
        route = "" if r["route"] == r["name"] else r["route"].replace(", ", "\n")
        deps = "" if r["matched_by"] == "capability" else "\n".join(r["deployments"])
        table.add_row(r["name"], route, deps, ", ".join(r["capabilities"]), r["matched_by"])
    console.print(table)
    for name in discovery:
        console.print(f"{name}: discovery on; the models it reports are also routable by their own names")


def ports(
    config_dir: ConfigDirOpt = None,
    as_json: JsonOpt = False,
    gateway_port: GatewayPortOpt = 4000,
    ui_port: UiPortOpt = 5001,
) -> None:
    """Check the configured ports against each other and against what already listens on this machine.

    Exit 1 when two configured users share a port. A provider's port in use is expected (its server);
    the gateway's or UI's port in use by another program is a warning.
    """
    with config_errors(as_json):
        cfg = load_config(config_dir)
    reports = portscan.scan(portscan.configured(cfg, gateway_port, ui_port))
    conflicts = [r for r in reports if r.status == "conflict"]
    if as_json:
        print_json({"ok": not conflicts, "ports": [r.as_dict() for r in reports]})
    else:
        colors = {"ok": "green", "free": "dim", "conflict": "red", "warning": "yellow", "remote": "dim"}
        table = _table("Ports", "port", "host", "used by", "listening", "status", "note")
        for r in reports:
            listening = "-" if r.listening is None else "yes" if r.listening else "no"
            if r.pid:
                listening += f": {r.process or '?'} (pid {r.pid})"
            color = colors[r.status]
            status = f"[{color}]{r.status}[/{color}]"
            table.add_row(str(r.port), r.host, "\n".join(r.users), listening, status, r.note)
        console.print(table)
        if conflicts:
            console.print(f"[red]{len(conflicts)} port conflict(s)[/red] in the configuration")
    if conflicts:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- helpers


def _plan(config_dir: Path | None, as_json: bool) -> RoutingPlan:
    with config_errors(as_json):
        plan, _cfg, _warnings = build_plan(config_dir)
    return plan


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i == 0)  # never cut a model name short
    return table


def _deployments(g: Group) -> str:
    many = len(g.targets) > 1
    return "\n".join(
        f"{t.provider} -> {t.upstream}" + (f"  (weight {t.weight:g})" if many else "") for t in g.targets
    )


def _print_resolution(res: Resolution) -> None:
    g = res.group
    t = g.timeouts
    console.print(f"[bold]{res.requested}[/bold] -> route [bold]{g.name}[/bold]", soft_wrap=True)
    console.print(f"matched by {res.matched_by}: {res.rule}", soft_wrap=True)
    console.print(
        f"up to {g.max_attempts} attempts; timeouts: connect {t.connect_s:g}s, first byte {t.first_byte_s:g}s, "
        f"total {t.total_s:g}s",
        soft_wrap=True,
    )
    table = _table("Candidates", "order", "route", "role", "strategy", "deployments (provider -> upstream)")
    for i, cand in enumerate(res.chain):
        table.add_row(
            str(i + 1), cand.name, "primary" if i == 0 else "fallback", cand.strategy, _deployments(cand)
        )
    console.print(table)


def model_rows(plan: RoutingPlan) -> list[ModelRow]:
    """One row per name a client can send: routes, aliases, patterns and capability names."""

    def row(name: str, route: str, groups: list[Group], matched_by: str) -> ModelRow:
        targets = [t for g in groups for t in g.targets]
        return {
            "name": name,
            "route": route,
            "providers": list(dict.fromkeys(t.provider for t in targets)),
            "upstreams": list(dict.fromkeys(t.upstream for t in targets)),
            "deployments": [f"{t.provider}: {t.upstream}" for t in targets],
            "capabilities": list(dict.fromkeys(c for g in groups for c in g.capabilities)),
            "matched_by": matched_by,
        }

    rows = [row(n, n, [g], "exact" if g.origin == "models" else g.origin) for n, g in plan.groups.items()]
    rows += [row(a, t, [plan.groups[t]], "alias") for a, t in plan.aliases.items()]
    for p in plan.patterns:
        r = row(p.glob, "-", [], f"pattern #{p.index + 1}")
        r["providers"], r["upstreams"] = [p.provider], [p.upstream]
        r["deployments"] = [f"{p.provider}: {p.upstream}"]
        rows.append(r)
    for cap, names in plan.capabilities.items():
        r = row(CAPABILITY_PREFIX + cap, ", ".join(names), [plan.groups[n] for n in names], "capability")
        r["capabilities"] = [cap]
        rows.append(r)
    return rows


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("explain")(explain)
    app.command("models")(models)
    app.command("ports")(ports)
