"""Redis faults never fail a request that can be served: Redis down at start, killed under load and
restarted, slow (``DEBUG SLEEP``), with ``on_redis_error: allow`` and ``deny``. A real redis-server (with
an append-only file, as a Redis holding keys needs), a scripted upstream, the real gateway.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aib.auth.redis_store import RedisKeyStore
from aib.config.schema import RedisSettings
from aib.devtools.redisserver import RedisServer
from aib.shared import link as link_mod
from gateway_harness import ScriptedUpstream, gateway_settings, plan_from_yaml, running_gateway, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """This module's own Redis (killed and restarted by its tests), persisted like a key store's."""
    srv = RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log", persist=True)
    try:
        yield srv.start()
    finally:
        srv.close()


@pytest.fixture
def running_redis(redis: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, up at the start of the test and again after it, whatever the test did."""
    redis.start()
    try:
        yield redis
    finally:
        redis.start()


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["m"]).serve_in_thread() as u:
        yield u


def providers(up: ScriptedUpstream) -> str:
    return f"""
    providers:
      up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m]}}
    """


def mappings(url: str, prefix: str, *, keys: bool, on_error: str = "allow") -> str:
    auth = "auth: {mode: keys, store: redis}" if keys else "auth: {mode: none}"
    return f"""
    {auth}
    redis: {{url: "{url}", key_prefix: "{prefix}", timeout_s: 0.25, on_redis_error: {on_error}}}
    cache: {{backend: redis}}
    models:
      m: {{provider: up, cache: {{enabled: true}}}}
    """


def chat(base: str, secret: str | None = None, content: str = "Say hello.") -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "temperature": 0}
    return httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=10)


def redis_warnings(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "aib.redis" and what in r.getMessage()]


def test_redis_down_at_start_then_back(
    running_redis: RedisServer, up: ScriptedUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aib.redis")
    running_redis.stop()
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings(running_redis.url, "down1:", keys=False))
    with running_gateway(plan, gateway_settings()) as g:
        answers = [chat(g.base_url) for _ in range(5)]
        assert [r.status_code for r in answers] == [200] * 5
        assert {r.headers["x-aib-cache"] for r in answers} == {"error"}
        health = httpx.get(f"{g.base_url}/health", timeout=5).json()
        assert health["redis"]["status"] == "down" and "Connect" in (health["redis"]["last_error"] or "")
        assert health["redis"]["errors"]["cache"] >= 5
        assert httpx.get(f"{g.base_url}/health/ready", timeout=5).status_code == 200  # the cache is optional
        assert len(redis_warnings(caplog, "is unreachable")) == 1  # one warning, not one per request
        running_redis.start()
        wait_until(lambda: g.gateway.link.ok, 3.0, 0.02, "the reconnection")
        assert [chat(g.base_url).headers["x-aib-cache"] for _ in range(2)] == ["miss", "hit"]
        assert len(redis_warnings(caplog, "is back after")) == 1


def test_keys_in_redis_down_at_start_the_replica_is_not_ready_until_it_has_read_them(
    running_redis: RedisServer, up: ScriptedUpstream, tmp_path: Path
) -> None:
    running_redis.stop()
    prefix = "down2:"
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings(running_redis.url, prefix, keys=True))
    with running_gateway(plan, gateway_settings()) as g:
        ready = httpx.get(f"{g.base_url}/health/ready", timeout=5)
        assert ready.status_code == 503  # a load balancer sends it nothing yet
        running_redis.start()
        store = RedisKeyStore(RedisSettings(url=running_redis.url, key_prefix=prefix))
        _, secret = store.create("gina")
        wait_until(
            lambda: httpx.get(f"{g.base_url}/health/ready", timeout=5).status_code == 200, 3.0, 0.05, "ready"
        )
        assert chat(g.base_url, secret).status_code == 200
        store.close()


def test_redis_killed_under_load_and_restarted_fails_no_request(
    running_redis: RedisServer, up: ScriptedUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aib.redis")
    prefix = "kill:"
    store = RedisKeyStore(RedisSettings(url=running_redis.url, key_prefix=prefix))
    _, secret = store.create("hank", rpm=100_000, concurrency=1000)
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings(running_redis.url, prefix, keys=True))
    with running_gateway(plan, gateway_settings()) as g:
        stop = threading.Event()
        results: list[tuple[float, int, str]] = []  # (started at, status, x-aib-cache)

        def load(n: int) -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                t = time.monotonic()
                r = chat(g.base_url, secret, content=f"{n}-{i % 3}")
                results.append((t, r.status_code, r.headers.get("x-aib-cache", "")))
                i += 1

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(load, n) for n in range(3)]
            wait_until(lambda: len(results) >= 6, 10.0, 0.02, "load before the kill")
            killed_at = time.monotonic()
            running_redis.kill()
            wait_until(
                lambda: any(t > killed_at and k == "error" for t, _, k in results), 10.0, 0.02, "bypass"
            )
            running_redis.start()
            wait_until(lambda: g.gateway.link.ok, 5.0, 0.02, "the reconnection")
            back_at = time.monotonic()
            wait_until(
                lambda: sum(t > back_at and k == "hit" for t, _, k in results) >= 3, 15.0, 0.02, "hits"
            )
            stop.set()
            for w in workers:
                w.result()
        codes = [c for _, c, _ in results]
        assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}  # not one request failed
        assert len(redis_warnings(caplog, "is unreachable")) == 1
        assert len(redis_warnings(caplog, "is back after")) == 1
        # the key still works: Redis kept it (append-only file), and the replica kept its snapshot meanwhile
        assert chat(g.base_url, secret).status_code == 200
    store.close()


def test_a_slow_redis_is_not_waited_for(
    running_redis: RedisServer, up: ScriptedUpstream, tmp_path: Path
) -> None:
    """DEBUG SLEEP 2 blocks Redis: the first request waits its 0.25 s timeout, the rest not at all."""
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings(running_redis.url, "slow:", keys=False))
    with running_gateway(plan, gateway_settings()) as g:
        assert chat(g.base_url).headers["x-aib-cache"] == "miss"
        sleeper = threading.Thread(
            target=running_redis.command_line, args=("DEBUG", "SLEEP", "2"), daemon=True
        )
        sleeper.start()
        time.sleep(0.1)
        lookups = []
        for _ in range(6):
            r = chat(g.base_url)
            assert r.status_code == 200 and r.headers["x-aib-cache"] == "error"
            rec = g.observer.wait_for(r.headers["x-request-id"])
            assert rec.cache_lookup_s is not None
            lookups.append(rec.cache_lookup_s)
        assert 0.25 <= lookups[0] < 1.0, lookups  # the first waited its timeout, not the 2 s sleep
        assert all(t < 0.25 for t in lookups[1:]), lookups  # then Redis is marked down: no waiting
        sleeper.join(5)
        wait_until(lambda: g.gateway.link.ok, 3.0, 0.02, "Redis answering again")
        assert chat(g.base_url).headers["x-aib-cache"] in ("hit", "miss")


def test_on_redis_error_deny_refuses_limited_keys_only(
    running_redis: RedisServer, up: ScriptedUpstream, tmp_path: Path
) -> None:
    prefix = "deny:"
    store = RedisKeyStore(RedisSettings(url=running_redis.url, key_prefix=prefix))
    _, limited = store.create("ivy", rpm=1000)
    _, free = store.create("jack")
    plan = plan_from_yaml(
        tmp_path / "cfg", providers(up), mappings(running_redis.url, prefix, keys=True, on_error="deny")
    )
    with running_gateway(plan, gateway_settings()) as g:
        assert chat(g.base_url, limited).status_code == 200
        running_redis.kill()
        refused = chat(g.base_url, limited)
        assert refused.status_code == 503, refused.text
        assert (
            refused.json()["error"]["code"] == "limits_unavailable" and refused.headers["retry-after"] == "1"
        )
        assert chat(g.base_url, free).status_code == 200  # no limit to check
        running_redis.start()
        wait_until(lambda: chat(g.base_url, limited).status_code == 200, 5.0, 0.05, "limits checked again")
    store.close()


def test_the_probe_interval_is_short() -> None:
    assert link_mod.PROBE_S <= 0.5  # "hits resume when it is back" within a second


def test_a_password_protected_redis_and_the_password_never_shows(
    up: ScriptedUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The password comes from redis.password_env; with it the cache works; with a wrong one Redis is
    down (a clear reason in /health) and the value is in no answer, /health or log line."""
    secret = "redis-pass-" + "9" * 20
    caplog.set_level(logging.INFO)
    with RedisServer(extra=("--requirepass", secret)) as locked:
        cfg = f"""
        redis: {{url: "{locked.url}", password_env: AIB_TEST_REDIS_PW, key_prefix: "pw:"}}
        cache: {{backend: redis}}
        models:
          m: {{provider: up, cache: {{enabled: true}}}}
        """
        monkeypatch.setenv("AIB_TEST_REDIS_PW", secret)
        plan = plan_from_yaml(tmp_path / "ok", providers(up), cfg)
        with running_gateway(plan, gateway_settings()) as g:
            assert [chat(g.base_url).headers["x-aib-cache"] for _ in range(2)] == ["miss", "hit"]
            assert secret in g.gateway.scrubber.values
        monkeypatch.setenv("AIB_TEST_REDIS_PW", secret + "-wrong")
        plan = plan_from_yaml(tmp_path / "wrong", providers(up), cfg)
        with running_gateway(plan, gateway_settings()) as g:
            assert chat(g.base_url).headers["x-aib-cache"] == "error"
            health = httpx.get(f"{g.base_url}/health", timeout=5).text
            assert '"status":"down"' in health and "password" in health.lower()
            assert secret not in health
    assert not any(secret in r.getMessage() for r in caplog.records)
