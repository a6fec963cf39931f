"""`aib reload`, `aib rollback`, `aib backups` and the /admin reload endpoints against a running gateway.

The gateway runs in-process with hot reload on a config folder in ``tmp_path`` (watcher off, so every
reload here is the one the test asked for); upstreams are ``ScriptedUpstream`` servers.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from aib.cli.main import app
from aib.config.load import MAPPINGS_FILE
from aib.reload import install_reload
from gateway_harness import ScriptedUpstream, assert_envelope, dead_url, gateway_settings, running_gateway
from reload_support import mappings_yaml, provider_yaml, reloading_gateway, version_of, write

pytestmark = pytest.mark.integration

runner = CliRunner()


def aib(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "250", "AIB_ADMIN_KEY": "", **(env or {})})


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m", "n", "slow"]) as fake:
        yield fake


@pytest.fixture
def cdir(tmp_path: Path, up: ScriptedUpstream) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    write(d, provider_yaml({"pa": up.base_url}, ("m", "n")), mappings_yaml({"m": "pa"}))
    return d


@pytest.fixture
def gw(cdir: Path) -> Iterator[Any]:
    with reloading_gateway(cdir, watch_config=False) as (rg, service):
        yield rg, service


def test_reload_command_outcomes(cdir: Path, gw: Any) -> None:
    rg, _ = gw
    url = rg.base_url
    first = version_of(cdir)
    r = aib("reload", "-g", url)
    assert r.exit_code == 0 and f"unchanged: the files are unchanged; serving {first}" in r.stdout
    second = write(cdir, mappings=mappings_yaml({"m": "pa", "n": "pa"}))
    r = aib("reload", "-g", url)
    assert r.exit_code == 0, r.output
    assert f"applied: applied {second} (was {first})" in r.stdout
    assert "+ model n" in r.stdout and "backup of the previous files: " in r.stdout
    assert f"regenerated {cdir.resolve() / 'litellm-unified.yaml'}" in r.stdout
    write(cdir, mappings="models:\n  m: {provider: pa}\n  n: {provider: nowhere}\n")
    r = aib("reload", "-g", url)
    assert r.exit_code == 2
    assert "rejected: 1 error in the new files; still serving" in r.stdout
    assert f"{cdir / MAPPINGS_FILE}:3: models.n.provider: unknown provider 'nowhere'" in r.stderr
    r = aib("reload", "-g", url, "--json")
    data = json.loads(r.stdout)
    assert r.exit_code == 2 and data["result"] == "rejected" and data["by"].startswith("aib reload (")
    r = aib("reload", "-g", url, "--history", "--limit", "2")
    assert r.exit_code == 0 and r.stdout.count("rejected") == 2 and "applied" not in r.stdout
    r = aib("reload", "-g", url, "--history", "--json")
    hist = json.loads(r.stdout)
    assert [x["result"] for x in hist["reloads"]] == ["rejected", "rejected", "applied", "unchanged"]
    assert hist["config_dir"] == str(cdir.resolve()) and hist["watching"] is False


def test_rollback_and_backups_commands(cdir: Path, gw: Any) -> None:
    rg, _ = gw
    url = rg.base_url
    v1 = version_of(cdir)
    r = aib("backups", "-c", str(cdir))
    assert r.exit_code == 0 and "no backups in" in r.stdout
    r = aib("rollback", "-g", url)
    assert r.exit_code == 1 and "no backup to roll back to" in r.stderr
    v2 = write(cdir, mappings=mappings_yaml({"m": "pa", "n": "pa"}))
    assert aib("reload", "-g", url).exit_code == 0
    r = aib("backups", "-c", str(cdir))
    assert r.exit_code == 0 and v1 in r.stdout and "applied" in r.stdout and "api: aib reload (" in r.stdout
    r = aib("rollback", "-g", url)
    assert r.exit_code == 0, r.output
    assert f"applied: applied {v1} (was {v2})" in r.stdout and "- model n" in r.stdout
    assert version_of(cdir) == v1 and rg.gateway.plan.version == v1
    r = aib("rollback", "-g", url, "--to", "no-such-backup")
    assert r.exit_code == 2 and "no backup 'no-such-backup'" in r.stderr
    listed = json.loads(aib("backups", "-c", str(cdir), "--json").stdout)
    assert listed["current"] == v1 and [b["hash"] for b in listed["backups"]] == [v2, v1]
    assert listed["backups"][0]["trigger"] == "rollback"
    r = aib("rollback", "-g", url, "--to", v2[:8], "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["version"] == v2


def test_rollback_offline(cdir: Path, gw: Any) -> None:
    rg, _ = gw
    v1 = version_of(cdir)
    v2 = write(cdir, mappings=mappings_yaml({"m": "pa", "n": "pa"}))
    assert aib("reload", "-g", rg.base_url).exit_code == 0
    nobody = dead_url()
    r = aib("rollback", "-g", nobody, "-c", str(cdir))
    assert r.exit_code == 0, r.output
    assert f"no gateway answers at {nobody}: restoring the files only" in r.stderr
    assert "restored backup " in r.stdout and f"({v1}) into {cdir}" in r.stdout
    assert version_of(cdir) == v1
    assert (cdir / "litellm-unified.yaml").read_text().count(v1) == 1  # regenerated for the restored files
    r = aib("rollback", "--offline", "-c", str(cdir), "--json")
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["version"] == v2 and out["backup"]  # the files it replaced were saved
    r = aib("rollback", "--offline", "-c", str(cdir), "--to", "zzzzzz")
    assert r.exit_code == 2 and "no backup 'zzzzzz'" in r.stderr
    # a backup that no longer validates is refused, the files stay
    store_root = cdir.resolve() / "backups"
    newest = sorted(store_root.iterdir())[-1]
    (newest / MAPPINGS_FILE).write_text("models: [\n")
    before = version_of(cdir)
    r = aib("rollback", "--offline", "-c", str(cdir), "--to", newest.name)
    assert r.exit_code == 2 and "YAML syntax error" in r.stderr and version_of(cdir) == before
    r = aib("backups", "-c", str(cdir), env={"AIB_BACKUPS_KEEP": "many"})
    assert r.exit_code == 2 and "AIB_BACKUPS_KEEP: expected a whole number >= 0, got 'many'" in r.stderr


def test_commands_without_a_gateway_or_with_a_wrong_key(cdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = dead_url()
    r = aib("reload", "-g", nobody)
    assert r.exit_code == 1 and "nothing answers at" in r.stderr and "aib validate" in r.stderr
    # the gateway runs in this process: give it its own variable so the command's AIB_ADMIN_KEY differs
    monkeypatch.setenv("AIB_TEST_GATEWAY_KEY", "s3cret-admin")
    with reloading_gateway(cdir, watch_config=False, admin_key_env="AIB_TEST_GATEWAY_KEY") as (rg, _):
        r = aib("reload", "-g", rg.base_url, env={"AIB_ADMIN_KEY": "wrong"})
        assert r.exit_code == 1 and "needs the admin key" in r.stderr and "Set AIB_ADMIN_KEY" in r.stderr
        r = aib("reload", "-g", rg.base_url, env={"AIB_ADMIN_KEY": "s3cret-admin"})
        assert r.exit_code == 0 and "s3cret" not in r.output
    with ScriptedUpstream() as other:  # something that answers, but not an aib gateway
        r = aib("reload", "-g", other.base_url)
        assert r.exit_code == 1 and "did not answer like an aib gateway" in r.stderr


def test_admin_endpoints(cdir: Path, gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rg, _ = gw
    url = rg.base_url
    with httpx.Client(base_url=url, timeout=30) as c:
        assert_envelope(c.post("/admin/reload", content=b"{nope"), 400, "invalid_body")
        assert_envelope(c.post("/admin/reload", json=[1]), 400, "invalid_body")
        assert_envelope(c.post("/admin/reload", json={"by": 5}), 400, "invalid_body", "by")
        assert_envelope(c.post("/admin/rollback", json={"to": "x\ny"}), 400, "invalid_body", "to")
        assert_envelope(c.get("/admin/reloads?limit=many"), 400, "invalid_body", "limit")
        assert_envelope(c.post("/admin/rollback", json={"to": "zzzz"}), 404, "backup_not_found", "to")
        assert_envelope(c.get("/admin/reload"), 405)
        r = c.post("/admin/reload", json={"by": "curl"})
        assert r.status_code == 200 and r.json()["by"] == "curl from 127.0.0.1"
        write(cdir, mappings="models: {m: {provider: pa, wieght: 1}}\n")
        r = c.post("/admin/reload")
        assert r.status_code == 422 and r.json()["errors"][0].endswith(
            "models.m.wieght: unknown key (check the spelling; see docs/configuration.md for the keys allowed here)"
        )
        assert c.get("/admin/reloads?limit=1").json()["reloads"][0]["result"] == "rejected"
        monkeypatch.setenv("AIB_ADMIN_KEY", "k1")
        for method, path in (
            ("POST", "/admin/reload"),
            ("POST", "/admin/rollback"),
            ("GET", "/admin/reloads"),
        ):
            assert_envelope(c.request(method, path), 401, "invalid_admin_key")
        assert c.get("/admin/reloads", headers={"authorization": "Bearer k1"}).status_code == 200


def test_gateway_on_the_package_defaults_has_nothing_to_reload(up: ScriptedUpstream, tmp_path: Path) -> None:
    cdir = tmp_path / "c"
    cdir.mkdir()
    write(cdir, provider_yaml({"pa": up.base_url}), mappings_yaml({"m": "pa"}))
    with running_gateway(cdir, gateway_settings(), setup=lambda g: install_reload(g, None)) as rg:
        with httpx.Client(base_url=rg.base_url) as c:
            assert_envelope(c.post("/admin/reload"), 409, "no_config_dir")
            assert_envelope(c.post("/admin/rollback"), 409, "no_config_dir")
            body = c.get("/admin/reloads").json()
            assert body["config_dir"] is None and body["reloads"] == [] and body["watching"] is False
        r = aib("reload", "-g", rg.base_url)
        assert r.exit_code == 1 and "no config folder to reload from" in r.stderr


# --------------------------------------------------------------------------- verification with probes


def test_verification_outcomes(tmp_path: Path, up: ScriptedUpstream) -> None:
    """A critical model already down before the reload is reported, not rolled back; a provider that
    does not answer its probe in time counts as down; a healthy critical model passes."""
    cdir = tmp_path / "config"
    cdir.mkdir()
    dead = dead_url()
    providers = textwrap.dedent(
        f"""
        providers:
          pa: {{type: openai_compatible, base_url: "{up.base_url}", models: [m, n, slow]}}
          pdead: {{type: openai_compatible, base_url: "{dead}", models: [d], health: {{timeout_s: 1}}}}
        """
    )
    write(
        cdir,
        providers,
        "models:\n  d: {provider: pdead, critical: true}\n  m: {provider: pa, critical: true}\n",
    )
    with reloading_gateway(cdir, watch_config=False, health_checks=True, reload_verify_timeout_s=0.5) as (
        rg,
        _svc,
    ):
        rg.wait_first_probe()
        with httpx.Client(base_url=rg.base_url, timeout=30) as c:
            write(
                cdir,
                mappings="models:\n  d: {provider: pdead, critical: true}\n  m: {provider: pa, critical: true}\n  n: {provider: pa}\n",
            )
            r = c.post("/admin/reload").json()
            assert r["result"] == "applied", r
            assert any(
                "critical model 'd' has no healthy deployment" in n and "had none before" in n
                for n in r["verify"]["notes"]
            )
            # a new provider whose probe hangs past the verify timeout, serving a critical model
            with ScriptedUpstream(models=["slow"]) as hung:
                hung.probe_delay_s = 3.0
                slow = providers + (
                    f'  pslow: {{type: openai_compatible, base_url: "{hung.base_url}", models: [slow]}}\n'
                )
                write(cdir, slow, "models:\n  m: {provider: pa}\n  slow: {provider: pslow, critical: true}\n")
                out = aib("reload", "-g", rg.base_url)
            assert out.exit_code == 1, out.output
            assert "rolled_back: rolled back to" in out.stdout
            assert (
                "critical model 'slow' has no healthy deployment (pslow/slow: no probe answer within 0.5s)"
                in (out.stdout)
            )
            assert "probe pslow: down: no probe answer within 0.5s" in out.stdout
            assert "note: provider pslow is down: no probe answer within 0.5s" in out.stdout
            assert "n" in rg.gateway.plan.groups and "slow" not in rg.gateway.plan.groups
            # a critical model whose only provider is disabled: a warning, then a rollback
            off = (
                providers
                + f'  poff: {{type: openai_compatible, base_url: "{dead_url()}", enabled: false, models: [o]}}\n'
            )
            write(cdir, off, "models:\n  m: {provider: pa}\n  o: {provider: poff, critical: true}\n")
            out = aib("reload", "-g", rg.base_url)
            assert (
                out.exit_code == 1
                and "critical model 'o' has no healthy deployment (poff/o: provider disabled)" in out.stdout
            )
            assert ":3: models.o.provider: warning: provider 'poff' is disabled" in out.stderr


# --------------------------------------------------------------------------- the drill


def test_rollback_drill(tmp_path: Path, up: ScriptedUpstream) -> None:
    cdir = tmp_path / "config"
    cdir.mkdir()
    original = write(cdir, provider_yaml({"pa": up.base_url}), mappings_yaml({"m": "pa"}, critical=True))
    with reloading_gateway(cdir, health_checks=True) as (rg, service):
        rg.wait_first_probe()
        r = aib("rollback", "--drill", "-g", rg.base_url)
        assert r.exit_code == 0, r.output
        assert r.stdout.count("PASS") == 3 and "FAIL" not in r.stdout
        assert "aib-drill-critical" in r.stdout and version_of(cdir) == original
        assert rg.gateway.plan.version == original
        results = [x.result for x in service.controller.history]
        assert "rejected" in results and "rolled_back" in results
        # the files on disk differ from what is served: the drill refuses to start
        write(cdir, mappings=mappings_yaml({"m": "pa"}))
        r = aib("rollback", "--drill", "-g", rg.base_url, "--json")
        assert r.exit_code == 1 and "are not what the gateway serves" in r.stderr
        write(cdir, mappings=mappings_yaml({"m": "pa"}, critical=True))
    with reloading_gateway(cdir, watch_config=False) as (
        rg,
        _,
    ):  # no health checks: cannot see dead providers
        r = aib("rollback", "--drill", "-g", rg.base_url, "--json")
        report = json.loads(r.stdout)
        assert r.exit_code == 1 and report["ok"] is False
        assert [s["ok"] for s in report["steps"]] == [True, False, True]
        assert "health checks are off" in report["steps"][1]["detail"]
        assert version_of(cdir) == original
    with running_gateway(cdir, gateway_settings(), setup=lambda g: install_reload(g, None)) as rg:
        r = aib("rollback", "--drill", "-g", rg.base_url)
        assert r.exit_code == 1 and "no config folder to drill on" in r.stderr
    r = aib("rollback", "--drill", "-g", dead_url())
    assert r.exit_code == 1 and "the drill needs a running gateway" in r.stderr


def test_config_dir_says_when_the_gateway_serves_other_files(cdir: Path, gw: Any, tmp_path: Path) -> None:
    """`-c DIR` on the commands that talk to a gateway: the files the user means, compared with the
    files the gateway serves (reload refuses another folder; health, monitor and ui say so)."""
    rg, _ = gw
    url = rg.base_url
    other = tmp_path / "other"
    other.mkdir()
    write(other, (cdir / "providers.yaml").read_text(), mappings_yaml({"m": "pa", "n": "pa"}))
    r = aib("reload", "-g", url, "-c", str(other))
    assert r.exit_code == 2 and f"serves the files in {cdir.resolve()}, not {other}" in r.stderr
    assert aib("reload", "-g", url, "-c", str(cdir)).exit_code == 0  # the same folder
    for cmd in (["health"], ["monitor", "--once", "--interval", "0.1"]):
        r = aib(*cmd, "-g", url, "-c", str(other))
        assert f"the files in {other} are version {version_of(other)}" in r.stderr, (cmd, r.output)
        r = aib(*cmd, "-g", url, "-c", str(cdir))
        assert "note:" not in r.stderr, (cmd, r.output)
