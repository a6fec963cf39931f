"""`aib cache` (stats, flush, inspect), `scripts/monitor-redis-cache.sh`, `aib keys` on a Redis key store,
`aib health` and `aib doctor` on Redis: the commands as a user runs them, against a real gateway and a
real redis-server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from aib.cache.broadcast import FlushBroadcast
from aib.cache.entry import Entry
from aib.cache.stage import ResponseCache
from aib.cli.main import app
from aib.config.schema import CacheStore
from aib.devtools.llamacpp import free_port
from aib.devtools.redisserver import RedisServer
from gateway_harness import Reply, ScriptedUpstream, dead_url, gateway_settings, running_gateway, write_config
from openai_support import PROMPT

pytestmark = pytest.mark.integration
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["m"]).serve_in_thread() as u:
        yield u


def config(
    tmp_path: Path, up: ScriptedUpstream, redis: RedisServer, backend: str = "redis", keys: str = "sqlite"
) -> Path:
    return write_config(
        tmp_path / "cfg",
        f"""
        providers:
          up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m]}}
        """,
        f"""
        auth: {{store: {keys}}}
        redis: {{url: "{redis.url}", key_prefix: "cli{abs(hash(str(tmp_path))) % 10**6}:"}}
        cache: {{backend: {backend}}}
        models:
          m: {{provider: up, cache: {{enabled: true}}}}
        """,
    )


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def test_stats_inspect_and_flush(redis_server: RedisServer, up: ScriptedUpstream, tmp_path: Path) -> None:
    cdir = config(tmp_path, up, redis_server)
    with running_gateway(cdir, gateway_settings()) as g:
        up.enqueue(Reply.chat("from the cli test"))
        body = {"model": "m", "messages": PROMPT, "temperature": 0}
        key = httpx.post(f"{g.base_url}/v1/chat/completions", json=body, timeout=10).headers[
            "x-aib-cache-key"
        ]
        stats = cli("cache", "stats", "--gateway", g.base_url, "--json")
        assert stats.exit_code == 0, stats.output
        data = orjson.loads(stats.output)
        assert data["backend"] == "redis" and data["entries"] == 1 and "used_memory" in data["redis"]
        shown = cli("cache", "stats", "--gateway", g.base_url)
        assert shown.exit_code == 0 and "backend: redis" in shown.output and "m " in shown.output
        seen = cli("cache", "inspect", key, "--gateway", g.base_url)
        assert seen.exit_code == 0, seen.output
        assert "route m (chat/completions), scope *" in seen.output and "from the cli test" in seen.output
        missing = cli("cache", "inspect", "f" * 32, "--gateway", g.base_url)
        assert missing.exit_code == 1 and "no cache entry" in missing.output
        bad = cli("cache", "inspect", "nope", "--gateway", g.base_url)
        assert bad.exit_code == 1 and "not a cache key" in bad.output
        other = cli("cache", "flush", "--route", "other", "--gateway", g.base_url)
        assert other.exit_code == 0 and "flushed 0 entries of route other" in other.output
        flushed = cli("cache", "flush", "--gateway", g.base_url, "--json")
        assert orjson.loads(flushed.output)["flushed"] == 1
        script = subprocess.run(
            [str(SCRIPTS / "monitor-redis-cache.sh"), "--gateway", g.base_url, "--count", "2", "--json"],
            env={**os.environ, "INTERVAL": "0.2"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert script.returncode == 0, script.stderr
        assert script.stdout.count('"backend": "redis"') == 2
        health = cli("health", "--gateway", g.base_url)
        assert f"redis {redis_server.url} (cache): up" in health.output
    down = cli("cache", "stats", "--gateway", dead_url())
    assert down.exit_code == 1 and "nothing answers" in down.output


def test_the_cache_admin_says_when_redis_is_down(up: ScriptedUpstream, tmp_path: Path) -> None:
    gone = RedisServer(port=free_port())  # never started
    cdir = config(tmp_path, up, gone)
    with running_gateway(cdir, gateway_settings()) as g:
        r = cli("cache", "stats", "--gateway", g.base_url)
        assert r.exit_code == 1 and "cannot be reached" in r.output
        health = cli("health", "--gateway", g.base_url)
        assert "(cache): down" in health.output and "Connection refused" in health.output


def test_aib_keys_uses_the_redis_store_the_config_names(
    redis_server: RedisServer, up: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdir = config(tmp_path, up, redis_server, keys="redis")
    monkeypatch.delenv("AIB_KEYS_DB", raising=False)
    env = {"AIB_CONFIG_DIR": str(cdir)}
    made = cli("keys", "create", "kim", "--rpm", "5", "--json", env=env)
    assert made.exit_code == 0, made.output
    secret = orjson.loads(made.output)["key"]
    listed = orjson.loads(cli("keys", "list", "--json", env=env).output)
    assert [k["name"] for k in listed] == ["kim"] and listed[0]["rpm"] == 5
    assert not (tmp_path / "var").exists()  # nothing went to a SQLite file
    with running_gateway(cdir, gateway_settings()) as g:
        body = {"model": "m", "messages": PROMPT, "temperature": 0}
        # auth.mode is none in this config: the key is only stored; the gateway reads the same store
        assert g.gateway.gate.remote is not None
        assert httpx.post(f"{g.base_url}/v1/chat/completions", json=body, timeout=10).status_code == 200
    revoked = cli("keys", "revoke", "kim", "--json", env=env)
    assert revoked.exit_code == 0 and orjson.loads(revoked.output)[0]["state"] == "revoked"
    assert secret.startswith("sk-aib-")
    (cdir / "model-mappings.yaml").write_text("auth: {store: mysql}\n")
    broken = cli("keys", "list", env=env)
    assert broken.exit_code == 1 and "the configuration does not load" in broken.output


def test_doctor_checks_redis(redis_server: RedisServer, up: ScriptedUpstream, tmp_path: Path) -> None:
    cdir = config(tmp_path, up, redis_server, keys="redis")
    report = orjson.loads(
        cli("doctor", "--json", "-c", str(cdir), "-g", dead_url(), "--ui-port", str(free_port())).output
    )
    check = next(c for c in report["checks"] if c["name"] == "redis")
    assert check["status"] == "warn" and check["used_for"] == ["keys", "cache"] and check["ping_ms"] >= 0
    assert any("appendonly is off" in d for d in check["detail"])
    assert any("maxmemory is 0" in d for d in check["detail"])
    redis_server.command_line("CONFIG", "SET", "maxmemory", "100mb")
    redis_server.command_line("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
    redis_server.command_line("CONFIG", "SET", "appendonly", "yes")
    try:
        report = orjson.loads(
            cli("doctor", "--json", "-c", str(cdir), "-g", dead_url(), "--ui-port", str(free_port())).output
        )
        check = next(c for c in report["checks"] if c["name"] == "redis")
        assert check["status"] == "warn" and any("can evict client keys" in d for d in check["detail"])
        redis_server.command_line("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        report = orjson.loads(
            cli("doctor", "--json", "-c", str(cdir), "-g", dead_url(), "--ui-port", str(free_port())).output
        )
        check = next(c for c in report["checks"] if c["name"] == "redis")
        assert check["status"] == "ok", check
    finally:
        redis_server.command_line("CONFIG", "SET", "appendonly", "no")
        redis_server.command_line("CONFIG", "SET", "maxmemory", "0")
        redis_server.command_line("CONFIG", "SET", "maxmemory-policy", "noeviction")
    gone = RedisServer(port=free_port())
    cdir2 = config(tmp_path / "2", up, gone)
    report = orjson.loads(
        cli("doctor", "--json", "-c", str(cdir2), "-g", dead_url(), "--ui-port", str(free_port())).output
    )
    check = next(c for c in report["checks"] if c["name"] == "redis")
    assert check["status"] == "fail" and "Connection refused" in check["message"]


def test_a_flush_reaches_every_worker(tmp_path: Path) -> None:
    """Under --workers N each worker has its own memory cache; a flush on one reaches the others."""
    caches = [ResponseCache(CacheStore()) for _ in range(3)]
    for i, c in enumerate(caches):
        assert c.memory is not None
        c.memory.put("k", Entry(b"{}", "r1", "chat/completions", "*", 0.0, 1e12))
        c.memory.put("j", Entry(b"{}", "r2", "chat/completions", "*", 0.0, 1e12))
        c.memory.put(f"own{i}", Entry(b"{}", "r2", "chat/completions", "*", 0.0, 1e12))
    folder = tmp_path / "cache-flush"
    casts = [FlushBroadcast(c, folder) for c in caches]
    assert casts[1].poll() == 0  # nothing announced yet
    assert caches[0].memory is not None
    caches[0].memory.flush("r1")
    casts[0].announce("r1")
    assert [b.poll() for b in casts] == [0, 1, 1]  # the announcer already flushed
    assert all(c.memory is not None and c.memory.peek("k") is None and c.memory.peek("j") for c in caches)
    casts[2].announce(None)
    assert [b.poll() for b in casts] == [1, 1, 0]
    assert all(c.memory is not None and len(c.memory) == (2 if i == 2 else 0) for i, c in enumerate(caches))
    late = FlushBroadcast(ResponseCache(CacheStore()), folder)  # a worker started after the flushes
    assert late.poll() == 0
