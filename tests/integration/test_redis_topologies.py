"""Redis found through Sentinel, and a Redis Cluster, with real redis-server processes: the cache, the
key store and the limits (one Lua script per request, every key of it under one hash tag) work the same
as on one server."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aib.auth.redis_store import RedisKeyStore
from aib.config.schema import RedisSettings, Sentinel
from aib.devtools.llamacpp import free_port
from aib.devtools.redisserver import RedisSentinel, RedisServer
from gateway_harness import ScriptedUpstream, gateway_settings, plan_from_yaml, running_gateway, wait_until
from openai_support import PROMPT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["m"]).serve_in_thread() as u:
        yield u


def providers(up: ScriptedUpstream) -> str:
    return f"""
    providers:
      up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m]}}
    """


def chat(base: str, secret: str) -> httpx.Response:
    body = {"model": "m", "messages": PROMPT, "temperature": 0}
    return httpx.post(
        f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )


def exercise(g: Any, store: RedisKeyStore) -> None:
    """A key works, a cached answer is a hit, a rate of 3 per minute lets exactly 3 through."""
    _, secret = store.create("topo")
    assert chat(g.base_url, secret).headers["x-aib-cache"] == "miss"
    wait_until(lambda: chat(g.base_url, secret).headers["x-aib-cache"] == "hit", 3.0, 0.05, "a hit")
    made, limited = store.create("three", rpm=3)
    wait_until(lambda: made.id in g.gateway.gate.by_id, 3.0, 0.02, "the gateway to read the new key")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: chat(g.base_url, limited).status_code, range(8)))
    assert codes.count(200) == 3 and codes.count(429) == 5, codes
    assert httpx.get(f"{g.base_url}/health", timeout=5).json()["redis"]["status"] == "up"


def test_sentinel(up: ScriptedUpstream, tmp_path: Path) -> None:
    with RedisServer(persist=True) as master, RedisSentinel(master, "aibmaster") as sentinel:
        mappings = f"""
        auth: {{mode: keys, store: redis}}
        cache: {{backend: redis}}
        redis:
          url: "redis://127.0.0.1/0"
          sentinel: {{master: aibmaster, nodes: ["127.0.0.1:{sentinel.port}"]}}
        models:
          m: {{provider: up, cache: {{enabled: true}}}}
        """
        plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings)
        settings = RedisSettings(
            url="redis://127.0.0.1/0",
            sentinel=Sentinel(master="aibmaster", nodes=(f"127.0.0.1:{sentinel.port}",)),
        )
        store = RedisKeyStore(settings)
        with running_gateway(plan, gateway_settings()) as g:
            assert g.gateway.link is not None and g.gateway.link.where.startswith("sentinel aibmaster@")
            exercise(g, store)
        # what the gateway wrote is on the master Sentinel named
        assert b"keys" in master.command_line("KEYS", "*{keys}*")
        store.close()


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (both below 65536)."""
    import socket

    for _ in range(200):
        port = free_port()
        if port > 55_000:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three redis-server processes in cluster mode, their 16384 slots assigned with redis-cli."""
    nodes = []
    try:
        for _ in range(3):
            port = cluster_port()
            node = RedisServer(
                port=port,
                log_path=tmp_path_factory.mktemp("cluster") / f"{port}.log",
                extra=("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            )
            nodes.append(node.start())
        made = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stdout + made.stderr
        deadline = time.monotonic() + 20
        while b"cluster_state:ok" not in nodes[0].command_line("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, nodes[0].command_line("CLUSTER", "INFO")
            time.sleep(0.1)
        yield nodes
    finally:
        for n in nodes:
            n.close()


def test_cluster(cluster: list[RedisServer], up: ScriptedUpstream, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{cluster[1].port}"
    mappings = f"""
    auth: {{mode: keys, store: redis}}
    cache: {{backend: redis}}
    redis: {{url: "{url}", cluster: true}}
    models:
      m: {{provider: up, cache: {{enabled: true}}}}
    """
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings)
    store = RedisKeyStore(RedisSettings(url=url, cluster=True))
    with running_gateway(plan, gateway_settings()) as g:
        exercise(g, store)
        stats = httpx.get(f"{g.base_url}/admin/cache", timeout=10).json()
        # one entry per client key's name (scope key): "topo" and "three", spread over the nodes
        assert stats["entries"] == 2 and stats["routes"] == {"m": {"entries": 2}}
        assert httpx.post(f"{g.base_url}/admin/cache/flush", json={}, timeout=10).json()["flushed"] == 2
    store.close()
