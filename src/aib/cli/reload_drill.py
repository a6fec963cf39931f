"""`aib rollback --drill` (scripts/test-rollback.sh): rehearse the reload safety nets on a running gateway.

1. write a config with a syntax error: the gateway must reject it and keep serving;
2. write a config adding a `critical: true` model on a provider where nothing listens: the gateway must
   apply it, see the provider dead, roll back by itself and restore the files;
3. restore the original files (always, also after a failure) and check the gateway serves them.

The config folder is the one the gateway reports (GET /admin/reloads); this command must run on the
gateway's machine. Exit 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from aib.cli.common import console, err_console, fail, print_json
from aib.cli.http import GatewayDown
from aib.cli.reload_cmds import admin_call, who
from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, sources_hash
from aib.reload.backups import write_config_file
from aib.reload.sources import read_sources

DRILL_PROVIDER = "aib-drill-dead"
DRILL_MODEL = "aib-drill-critical"
BROKEN = b"\n# written by `aib rollback --drill`: a deliberate syntax error\nmodels: [never closed\n"


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there


def _with_dead_critical(providers: bytes, mappings: bytes) -> tuple[bytes, bytes]:
    yaml = YAML(typ="rt")
    p, m = yaml.load(providers.decode()), yaml.load(mappings.decode())
    p["providers"][DRILL_PROVIDER] = {
        "type": "openai_compatible",
        "base_url": _dead_url(),
        "models": ["drill"],
        "health": {"timeout_s": 1},
    }
    if m.get("models") is None:
        m["models"] = {}
    m["models"][DRILL_MODEL] = {"provider": DRILL_PROVIDER, "upstream": "drill", "critical": True}
    out = []
    for doc in (p, m):
        buf = io.StringIO()
        yaml.dump(doc, buf)
        out.append(buf.getvalue().encode())
    return out[0], out[1]


class Drill:
    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.steps: list[dict[str, Any]] = []

    def step(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append({"step": name, "ok": ok, "detail": detail})
        return ok

    def state(self) -> dict[str, Any]:
        return dict(admin_call(self.gateway, "/admin/reloads?limit=100", expect="reloads")[1])

    def reload(self) -> dict[str, Any]:
        return dict(admin_call(self.gateway, "/admin/reload", "POST", {"by": who("rollback --drill")})[1])

    def outcome(self, version: str | None, since: int) -> dict[str, Any] | None:
        """The reload (by whichever trigger came first, the watcher or ours) that judged ``version``."""
        for r in self.state()["reloads"]:
            if r["id"] > since and r["to_version"] == version and r["result"] != "unchanged":
                return dict(r)
        return None

    def run(self) -> bool:
        start = self.state()
        cdir, serving = start.get("config_dir"), start["plan_version"]
        if cdir is None:
            fail(
                "the gateway runs on the configuration shipped in the package: there is no config folder to drill on"
            )
        folder = Path(cdir)
        original = read_sources(folder)
        if original.providers is None or original.mappings is None or original.version != serving:
            fail(
                f"the files in {folder} ({original.version or 'unreadable'}) are not what the gateway serves "
                f"({serving}); run `aib reload` (or fix the files) first"
            )
        last_id = max((r["id"] for r in start["reloads"]), default=0)
        try:
            write_config_file(folder / MAPPINGS_FILE, original.mappings + BROKEN)
            res = self.reload()
            now = self.state()["plan_version"]
            errors = res.get("errors") or []
            self.step(
                "a config with a syntax error is rejected, the old one keeps serving",
                res["result"] == "rejected" and now == serving,
                f"{res['result']}: {errors[0] if errors else res['message']}",
            )
            write_config_file(folder / MAPPINGS_FILE, original.mappings)
            self.reload()
            if not start.get("health_checks"):
                self.step(
                    "a dead provider of a critical model is rolled back",
                    False,
                    "health checks are off on this gateway (--no-health-checks): it cannot see a dead provider",
                )
            else:
                p, m = _with_dead_critical(original.providers, original.mappings)
                write_config_file(folder / PROVIDERS_FILE, p)
                write_config_file(folder / MAPPINGS_FILE, m)
                self.reload()
                judged = self.outcome(sources_hash(p, m), last_id)
                on_disk = read_sources(folder).version
                ok = judged is not None and judged["result"] == "rolled_back" and on_disk == serving
                self.step(
                    "a critical model on a dead provider is rolled back, files restored",
                    ok and self.state()["plan_version"] == serving,
                    f"{judged['result']}: {judged['message']}"
                    if judged
                    else "no reload of the drill config was seen",
                )
        finally:
            if read_sources(folder) != original:
                write_config_file(folder / PROVIDERS_FILE, original.providers)
                write_config_file(folder / MAPPINGS_FILE, original.mappings)
            deadline = time.monotonic() + 10
            res = self.reload()
            while self.state()["plan_version"] != serving and time.monotonic() < deadline:
                time.sleep(0.2)
                res = self.reload()
            now = self.state()["plan_version"]
            self.step(
                "the original files are restored and served",
                now == serving,
                f"serving {now} ({res['result']})",
            )
        return all(s["ok"] for s in self.steps)


def run_drill(gateway: str, as_json: bool) -> int:
    drill = Drill(gateway)
    try:
        ok = drill.run()
    except GatewayDown as exc:
        fail(f"{exc}; the drill needs a running gateway (`aib serve`)")
    if as_json:
        print_json({"ok": ok, "steps": drill.steps})
    else:
        for s in drill.steps:
            mark = "[green]PASS[/green]" if s["ok"] else "[red]FAIL[/red]"
            console.print(f"{mark} {s['step']}", soft_wrap=True)
            console.print(f"     {s['detail']}", soft_wrap=True, markup=False)
        if not ok:
            err_console.print("[red]the rollback drill failed[/red]")
    return 0 if ok else 1
