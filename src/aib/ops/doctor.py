"""`aib doctor`: every check of a setup in one screen, one line each, then a verdict.

Checks, in order: the config (files, cross-references), the generated LiteLLM file, the gateway's and
UI's ports, each provider (probed like the gateway probes it, with the models it serves), Redis when
configured (:mod:`aib.ops.doctor_redis`), the running gateway and its ``/health``, the request log, and
Prometheus when ``AIB_PROMETHEUS_URL`` is set.
A check is ``ok`` (✓), ``warn`` (!, worth a look), ``fail`` (✗, broken) or ``skip`` (-, not run).
Nothing here changes anything.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape

from aib.cli import ports as portscan
from aib.cli.http import GatewayDown, request_json
from aib.config.check import check_config
from aib.config.compile import compile_plan
from aib.config.errors import ConfigError
from aib.config.export_litellm import export_litellm, generated_state
from aib.config.load import DEFAULTS_DIR, GENERATED_FILE, PROVIDERS_FILE, LoadedConfig, load_config
from aib.config.plan import RoutingPlan
from aib.observe.settings import ObserveSettings
from aib.ops.probe import ProbeResult, probe_all

Status = Literal["ok", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "skip")
MARKS: dict[str, tuple[str, str]] = {
    "ok": ("✓", "green"),
    "warn": ("!", "yellow"),
    "fail": ("✗", "red"),
    "skip": ("-", "dim"),
}
SHOW_MODELS = 6  # models named per provider line; the rest are counted


@dataclass
class Check:
    name: str
    status: Status
    message: str
    detail: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "detail": self.detail,
            **self.data,
        }


@dataclass
class Report:
    config_dir: Path
    gateway: str
    checks: list[Check] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for c in self.checks if c.status == status)

    def failed(self, strict: bool = False) -> bool:
        return bool(self.count("fail") or (strict and self.count("warn")))

    def verdict(self) -> str:
        fails = [c.name for c in self.checks if c.status == "fail"]
        warns = [c.name for c in self.checks if c.status == "warn"]
        if fails:
            more = f", {len(warns)} warning{'s' * (len(warns) != 1)}" if warns else ""
            return f"{len(fails)} problem{'s' * (len(fails) != 1)}{more}: {', '.join(fails)}"
        if warns:
            return f"no problems, {len(warns)} warning{'s' * (len(warns) != 1)}: {', '.join(warns)}"
        ran = len(self.checks) - self.count("skip")
        return f"all {ran} checks passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed(),
            "config_dir": str(self.config_dir),
            "gateway": self.gateway,
            "verdict": self.verdict(),
            "summary": {s: self.count(s) for s in STATUSES},
            "checks": [c.as_dict() for c in self.checks],
        }


# --------------------------------------------------------------------------- config


def doctor_config_dir(config_dir: Path | None) -> Path:
    """The folder `aib serve` would read: --config-dir, $AIB_CONFIG_DIR, ./config, else the package defaults."""
    if config_dir is not None:
        return Path(config_dir)
    env = os.environ.get("AIB_CONFIG_DIR")
    if env:
        return Path(env)
    local = Path("config")
    return local if (local / PROVIDERS_FILE).exists() else DEFAULTS_DIR


def check_configuration(cdir: Path) -> tuple[Check, LoadedConfig | None, RoutingPlan | None]:
    where = "the defaults shipped in the package" if cdir == DEFAULTS_DIR else str(cdir)
    try:
        cfg = load_config(cdir)
        issues = check_config(cfg)
        errors = [i for i in issues if i.severity == "error"]
        if errors:
            raise ConfigError(issues)
        plan = compile_plan(cfg, check=False)
    except ConfigError as exc:
        n = len(exc.errors)
        detail = [str(i) for i in exc.issues]
        msg = f"{where}: {n} error{'s' * (n != 1)}; the gateway will not start on it (aib validate)"
        return Check("config", "fail", msg, detail), None, None
    summary = f"{where}: {len(plan.providers)} providers, {len(plan.groups)} routes, version {plan.version}"
    if issues:
        summary += f"; {len(issues)} warning{'s' * (len(issues) != 1)}"
        return Check("config", "warn", summary, [str(i) for i in issues]), cfg, plan
    return Check("config", "ok", summary), cfg, plan


def check_generated(cdir: Path, cfg: LoadedConfig, plan: RoutingPlan) -> Check:
    path = cdir / GENERATED_FILE
    state, reason = generated_state(path, export_litellm(cfg, plan).text)
    if state == "fresh":
        return Check("generated file", "ok", reason, data={"state": state})
    if state == "missing":
        reason = f"{path} does not exist (only the LiteLLM engine needs it): aib generate -c {cdir}"
        return Check("generated file", "warn", reason, data={"state": state})
    return Check("generated file", "fail", reason, data={"state": state})


# --------------------------------------------------------------------------- ports


def check_ports(
    cfg: LoadedConfig | None, gateway_url: str, ui_port: int, gateway_answers: bool
) -> list[Check]:
    parts = urlsplit(gateway_url)
    host, gw_port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    gw_local = portscan.is_local(host)
    if cfg is None:  # still check the two ports of our own processes
        reports = [portscan.PortReport("localhost", gw_port, ["gateway"], ["gateway"])]
        reports.append(portscan.PortReport("localhost", ui_port, ["ui"], ["ui"]))
        reports = portscan.scan(reports)
    else:
        reports = portscan.scan(portscan.configured(cfg, gw_port, ui_port))
    checks: list[Check] = []
    for rep in reports:
        name = f"port {rep.port}"
        if rep.status == "conflict":
            checks.append(Check(name, "fail", rep.note + "; give each its own port", data={"port": rep.port}))
            continue
        if "provider" in rep.kinds or (rep.kinds == ["gateway"] and not gw_local):
            continue  # providers: the provider checks say whether they answer
        role = rep.kinds[0]
        holder = f"{rep.process or 'a process'} (pid {rep.pid})" if rep.pid else "a process"
        data = {"port": rep.port, "role": role, "pid": rep.pid, "process": rep.process}
        status: Status
        if not rep.listening:
            status, msg = "ok", f"{role}: free"
        elif rep.status == "ok":
            status, msg = "ok", f"{role}: held by aib" + (f" (pid {rep.pid})" if rep.pid else "")
        elif role == "gateway" and gateway_answers:  # psutil cannot tell, or a proxy in front: it answers
            status, msg = "ok", f"gateway: held by {holder}, which answers /health"
        elif role == "gateway":
            status, msg = (
                "fail",
                f"gateway: in use by {holder}, which is not the gateway; stop it or use --port",
            )
        else:
            status, msg = "warn", f"ui: in use by {holder}; the web UI cannot listen here (aib ui --port N)"
        checks.append(Check(name, status, msg, data=data))
    return checks


# --------------------------------------------------------------------------- providers


def provider_check(res: ProbeResult) -> Check:
    name = f"provider {res.name}"
    where = f"{res.type} {res.base_url}"
    data: dict[str, Any] = {"provider": res.name, "healthy": res.healthy, "latency_ms": res.latency_ms}
    key = f"; {res.key_missing} is not set" if res.key_missing else ""
    if not res.healthy:
        return Check(name, "fail", f"{where}: down: {res.reason}{key}", data=data)
    data["models"] = list(res.models) if res.models is not None else None
    msg = f"{where}: up ({res.latency_ms:g} ms)"
    if res.models is not None:
        shown = ", ".join(res.models[:SHOW_MODELS])
        more = f" and {len(res.models) - SHOW_MODELS} more" if len(res.models) > SHOW_MODELS else ""
        msg += f"; serves {len(res.models)}: {shown}{more}" if res.models else "; serves no models"
    if res.missing:
        data["missing"] = res.missing
        hint = "ollama pull NAME" if res.type == "ollama" else "check the names in providers.yaml"
        msg += f"; configured but not served: {', '.join(res.missing)} ({hint})"
        return Check(name, "warn", msg + key, data=data)
    return Check(name, "warn" if key else "ok", msg + key, data=data)


def check_providers(plan: RoutingPlan) -> list[Check]:
    enabled = [p for p in plan.providers.values() if p.enabled and p.sdk is None]  # litellm_sdk: doctor_sdk
    checks = [
        Check(f"provider {p.name}", "skip", "disabled in providers.yaml; not probed")
        for p in plan.providers.values()
        if not p.enabled
    ]
    if enabled:
        checks[:0] = [provider_check(r) for r in asyncio.run(probe_all(enabled))]
    return checks


# --------------------------------------------------------------------------- gateway


def check_gateway(url: str, plan: RoutingPlan | None, timeout: float = 3.0) -> Check:
    base = url.rstrip("/")
    try:
        status, body = request_json(base + "/health", timeout=timeout)
    except GatewayDown as exc:
        return Check("gateway", "fail", f"{exc}; start it: make run (or aib serve)")
    if not isinstance(body, dict) or "providers" not in body:
        return Check(
            "gateway", "fail", f"{base}/health answered {status} without the gateway's JSON: not aib?"
        )
    providers: dict[str, Any] = body.get("providers") or {}
    down = [
        f"{n} ({p.get('last_error') or p.get('status')})"
        for n, p in providers.items()
        if p.get("status") not in ("healthy", "disabled")
    ]
    # degraded: answers its probes, a breaker shuts it out for now (it still takes trial requests)
    up = sum(1 for p in providers.values() if p.get("status") in ("healthy", "degraded"))
    total = sum(1 for p in providers.values() if p.get("status") != "disabled")
    msg = (
        f"{base}: {body.get('status')}, {up}/{total} providers up, config version {body.get('plan_version')}"
    )
    data = {"health": body}
    stale = plan is not None and body.get("plan_version") not in (None, plan.version)
    if stale and plan is not None:
        msg += f" (the files are at version {plan.version}: another config folder, or a reload is pending)"
    if up == 0 and total:
        return Check("gateway", "fail", msg + "; no provider answers", down, data)
    if down or stale:
        return Check("gateway", "warn", msg, down, data)
    return Check("gateway", "ok", msg, data=data)


# --------------------------------------------------------------------------- request log, Prometheus


def check_request_log() -> Check:
    try:
        settings = ObserveSettings.from_env()
    except ValueError as exc:
        return Check("request log", "fail", f"observe settings: {exc}")
    path = settings.request_log
    if path is None:
        return Check("request log", "ok", "off (AIB_REQUEST_LOG=off)")
    where = f"{path} (relative to the gateway's working folder)" if not path.is_absolute() else str(path)
    if path.exists():
        if not path.is_file() or not os.access(path, os.R_OK | os.W_OK):
            return Check("request log", "fail", f"{where}: not a writable file; fix its permissions")
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            return Check("request log", "fail", f"{where}: not a usable SQLite file ({exc}); move it away")
        size = path.stat().st_size / 1e6
        return Check("request log", "ok", f"{where}: writable, {size:.1f} MB", data={"path": str(path)})
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check(
            "request log", "ok", f"{where}: will be created (folder writable)", data={"path": str(path)}
        )
    return Check(
        "request log", "fail", f"{where}: cannot be created ({parent} is not writable); set AIB_REQUEST_LOG"
    )


def check_prometheus(url: str | None, gateway_url: str, timeout: float = 3.0) -> Check:
    if not url:
        return Check("prometheus", "skip", "AIB_PROMETHEUS_URL not set; not checked")
    base = url.rstrip("/")
    try:
        status, _ = request_json(base + "/-/ready", timeout=timeout)
        if status != 200:
            return Check("prometheus", "fail", f"{base}: not ready (/-/ready answered {status})")
        _, body = request_json(base + "/api/v1/targets?state=active", timeout=timeout)
    except GatewayDown as exc:
        return Check("prometheus", "fail", str(exc))
    targets = (body or {}).get("data", {}).get("activeTargets", []) if isinstance(body, dict) else []
    gw = urlsplit(gateway_url)
    for t in targets:
        scrape = urlsplit(str(t.get("scrapeUrl", "")))
        same_host = scrape.hostname == gw.hostname or (
            portscan.is_local(scrape.hostname or "") and portscan.is_local(gw.hostname or "")
        )
        if same_host and scrape.port == gw.port:
            job = t.get("labels", {}).get("job") or t.get("scrapePool")
            if t.get("health") == "up":
                return Check("prometheus", "ok", f"{base}: ready; scrapes the gateway (job {job}, up)")
            err = t.get("lastError") or t.get("health")
            return Check("prometheus", "fail", f"{base}: its scrape of the gateway (job {job}) fails: {err}")
    return Check(
        "prometheus",
        "warn",
        f"{base}: ready, but no target scrapes {gateway_url}/metrics (see monitoring/prometheus.yml)",
    )


# --------------------------------------------------------------------------- all together


def run_doctor(
    config_dir: Path | None,
    gateway_url: str,
    *,
    ui_port: int = 5001,
    prometheus_url: str | None = None,
) -> Report:
    cdir = doctor_config_dir(config_dir)
    report = Report(cdir, gateway_url)
    config, cfg, plan = check_configuration(cdir)
    report.checks.append(config)
    if cfg is not None and plan is not None:
        report.checks.append(check_generated(cdir, cfg, plan))
    gateway = check_gateway(gateway_url, plan)
    report.checks.extend(check_ports(cfg, gateway_url, ui_port, gateway_answers="health" in gateway.data))
    if plan is not None:
        from aib.ops.doctor_redis import redis_checks
        from aib.ops.doctor_sdk import sdk_checks

        report.checks.extend(check_providers(plan))
        report.checks.extend(sdk_checks(plan, gateway.data.get("health")))
        report.checks.extend(redis_checks(plan, gateway.data.get("health")))
    else:
        report.checks.append(Check("providers", "skip", "config invalid; not probed"))
    report.checks.append(gateway)
    report.checks.append(check_request_log())
    report.checks.append(check_prometheus(prometheus_url, gateway_url))
    return report


def render(report: Report, console: Console) -> None:
    width = max((len(c.name) for c in report.checks), default=10)
    for c in report.checks:
        mark, color = MARKS[c.status]
        console.print(
            f"[{color}]{mark}[/{color}] {escape(c.name):<{width}}  {escape(c.message)}", soft_wrap=True
        )
        for line in c.detail:
            console.print(f"  {' ' * width}  [dim]{escape(line)}[/dim]", soft_wrap=True)
    providers = [c for c in report.checks if c.name.startswith("provider ")]
    if providers and all(c.status == "fail" for c in providers):
        console.print("[yellow]no provider answers: `make demo` starts a working local setup[/yellow]")
    status: Status = "fail" if report.failed() else "warn" if report.count("warn") else "ok"
    mark, color = MARKS[status]
    console.print(f"[bold {color}]{mark} {escape(report.verdict())}[/bold {color}]", soft_wrap=True)
