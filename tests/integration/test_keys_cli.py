"""`aib keys` end to end: on the store itself (no gateway), and through a running gateway's
``/admin/keys`` (``--gateway``); `aib serve` refusing an exposed address without keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from aib.auth.keys import hash_secret
from aib.auth.store import SqliteKeyStore
from aib.cli.main import app
from gateway_harness import Reply, ScriptedUpstream, gateway_settings, plan_from_yaml, running_gateway

pytestmark = pytest.mark.integration

ADMIN = "adm-cli-" + "3" * 24


def aib(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def test_keys_on_the_store(tmp_path: Path) -> None:
    db = str(tmp_path / "keys.db")
    made = aib("keys", "create", "alice", "--models", "llama3, ollama/*", "--rpm", "60", "--tpm", "9000",
               "--budget-day", "100000", "--expires", "30d", "--meta", "team=vision", "--db", db, "--json")  # fmt: skip
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)
    secret = key["key"]
    assert secret.startswith("sk-aib-") and key["models"] == ["llama3", "ollama/*"] and key["rpm"] == 60
    assert key["metadata"] == {"team": "vision"}
    human = aib("keys", "create", "bob", "--db", db)
    assert human.exit_code == 0 and human.stdout.strip().startswith("sk-aib-")  # the key alone on stdout
    assert "only time the key is shown" in human.stderr
    listed = aib("keys", "list", "--db", db)
    assert "alice" in listed.stdout and "bob" in listed.stdout and secret not in listed.stdout
    shown = json.loads(aib("keys", "show", "alice", "--db", db, "--json").stdout)
    assert shown["tpm"] == 9000 and shown["tokens_today"] == 0
    rotated = aib("keys", "rotate", "alice", "--grace", "1h", "--db", db, "--json")
    assert rotated.exit_code == 0, rotated.output
    new = json.loads(rotated.stdout)
    assert new["name"] == "alice" and new["rotated_from"] == key["id"] and new["replaces"]["revoked_at"]
    assert aib("keys", "show", "alice", "--db", db).exit_code == 2  # two keys now: give an id
    revoked = aib("keys", "revoke", "bob", "--db", db)
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    assert aib("keys", "revoke", "bob", "--db", db).exit_code == 1  # nothing left to revoke
    assert "bob" not in aib("keys", "list", "--db", db).stdout
    assert "bob" in aib("keys", "list", "--all", "--db", db).stdout
    usage = json.loads(aib("keys", "usage", "--since", "7d", "--db", db, "--json").stdout)
    assert {r["name"] for r in usage} == {"alice"}  # both of alice's keys are still active
    bad = aib("keys", "create", "x y", "--db", db)
    assert bad.exit_code == 2 and "key name" in bad.stderr
    assert aib("keys", "create", "c", "--meta", "novalue", "--db", db).exit_code == 2
    store = SqliteKeyStore(Path(db))
    assert {k.hash for k in store.load()} >= {hash_secret(secret), hash_secret(new["key"])}
    store.close()
    assert secret.encode() not in Path(db).read_bytes()


def test_keys_through_a_running_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_TEST_CLI_ADMIN", ADMIN)
    with ScriptedUpstream(models=["m"]) as up:
        plan = plan_from_yaml(
            tmp_path / "config",
            f'providers:\n  up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m]}}',
            "auth: {mode: keys}\nmodels:\n  m: {provider: up}",
        )
        settings = gateway_settings(keys_db=tmp_path / "gw-keys.db", admin_key_env="AIB_TEST_CLI_ADMIN")
        with running_gateway(plan, settings) as rg:
            env = {"AIB_ADMIN_KEY": ADMIN}
            made = aib("keys", "create", "carol", "--rpm", "5", "-g", rg.base_url, "--json", env=env)
            assert made.exit_code == 0, made.output
            secret = json.loads(made.stdout)["key"]
            up.enqueue(Reply.chat())
            r = httpx.post(rg.base_url + "/v1/chat/completions", json={"model": "m", "messages": []},
                           headers={"authorization": f"Bearer {secret}"})  # fmt: skip
            assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "4"
            listed = json.loads(aib("keys", "list", "-g", rg.base_url, "--json", env=env).stdout)
            assert [k["name"] for k in listed] == ["carol"]
            usage = aib("keys", "usage", "-g", rg.base_url, "--json", env=env)
            assert usage.exit_code == 0, usage.output
            kid = listed[0]["id"]
            assert aib("keys", "revoke", kid, "-g", rg.base_url, env=env).exit_code == 0
            r = httpx.post(rg.base_url + "/v1/chat/completions", json={"model": "m", "messages": []},
                           headers={"authorization": f"Bearer {secret}"})  # fmt: skip
            assert r.status_code == 401
            no_admin = aib("keys", "list", "-g", rg.base_url, env={"AIB_ADMIN_KEY": "wrong"})
            assert no_admin.exit_code == 1 and "Set AIB_ADMIN_KEY" in no_admin.stderr
            assert aib("keys", "show", "key_nope", "-g", rg.base_url, env=env).exit_code == 1


def test_serve_refuses_an_exposed_address_without_keys(tmp_path: Path) -> None:
    """It refuses before binding anything: nothing listens on 0.0.0.0 in this test."""
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "providers.yaml").write_text(
        'providers:\n  p: {type: llamacpp, base_url: "http://127.0.0.1:9", models: [m]}\n'
    )
    (cfg / "model-mappings.yaml").write_text("models:\n  m: {provider: p}\n")
    env = {"PATH": "/usr/bin:/bin", "AIB_REQUEST_LOG": "off"}
    cmd = [str(Path(sys.executable).parent / "aib")]
    out = subprocess.run([*cmd, "serve", "-c", str(cfg), "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert (
        out.returncode == 2
        and "refusing to listen on 0.0.0.0" in out.stderr
        and "auth: {mode: keys}" in out.stderr
    )
    (cfg / "model-mappings.yaml").write_text("auth: {mode: keys}\nmodels:\n  m: {provider: p}\n")
    out = subprocess.run([*cmd, "serve", "-c", str(cfg), "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert out.returncode == 2 and "without an admin key" in out.stderr
