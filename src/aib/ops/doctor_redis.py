"""`aib doctor` for Redis (``auth.store: redis``, ``cache.backend: redis``): does it answer, how fast,
is it set up for what the gateway keeps there, and does the running gateway reach it.

* keys and limits need persistence (``appendonly yes``): a Redis restarted without it has forgotten
  every key (the gateways keep the keys in force meanwhile, but new replicas know none);
* a cache needs a memory bound with an eviction policy (``maxmemory`` with ``allkeys-lru`` or
  ``volatile-lru``: every entry has a TTL), else it grows until Redis refuses writes; one Redis that
  holds keys too needs ``volatile-lru`` (keys have no TTL, so they are never evicted).
"""

from __future__ import annotations

import time
from typing import Any

from aib.config.plan import RoutingPlan
from aib.ops.doctor import Check

EVICTING = ("allkeys-lru", "allkeys-lfu", "volatile-lru", "volatile-lfu", "volatile-ttl", "allkeys-random")


def redis_checks(plan: RoutingPlan, health: dict[str, Any] | None) -> list[Check]:
    """One ``redis`` check (nothing when no ``redis`` section is configured). ``health``: the running
    gateway's ``/health`` body, None when none answers."""
    settings = plan.redis
    if settings is None:
        return []
    from aib.shared.link import ERRORS, close_all, describe_url, sync_client

    uses = [
        u
        for u, on in (("keys", plan.auth.store == "redis"), ("cache", plan.cache_store.backend == "redis"))
        if on
    ]
    where = describe_url(settings)
    client = sync_client(settings, timeout_s=2.0)
    try:
        t0 = time.perf_counter()
        client.ping()
        rtt_ms = (time.perf_counter() - t0) * 1000
        info = client.info("server")
        version = info.get("redis_version", "?") if isinstance(info, dict) else "?"
        problems = _setup(client, uses)
    except ERRORS as exc:
        return [Check("redis", "fail", f"{where}: {exc}", data={"where": where})]
    finally:
        close_all(client)
    data = {"where": where, "version": version, "ping_ms": round(rtt_ms, 2), "used_for": uses}
    msg = f"{where}: Redis {version}, PING {rtt_ms:.1f} ms, holds {', '.join(uses) or 'nothing'}"
    seen = (health or {}).get("redis")
    if isinstance(seen, dict) and seen.get("status") == "down":
        return [
            Check(
                "redis",
                "fail",
                msg + f"; the gateway cannot reach it: {seen.get('last_error')}",
                problems,
                data,
            )
        ]
    if problems:
        return [Check("redis", "warn", msg, problems, data)]
    return [Check("redis", "ok", msg, data=data)]


def _setup(client: Any, uses: list[str]) -> list[str]:
    """What is wrong with this server for what it holds (CONFIG GET may be forbidden: then unknown)."""
    import redis

    out = []
    try:
        conf = client.config_get("appendonly")
        conf.update(client.config_get("maxmemory*"))
    except redis.exceptions.ResponseError:  # CONFIG is renamed or not allowed to this user
        return ["CONFIG GET is not allowed: persistence and the memory bound were not checked"]
    policy = str(conf.get("maxmemory-policy", ""))
    if "keys" in uses and conf.get("appendonly") != "yes":
        out.append("appendonly is off: a restart forgets every key (set appendonly yes)")
    if "keys" in uses and policy.startswith("allkeys-"):
        out.append(
            f"maxmemory-policy {policy} can evict client keys: use volatile-lru (cache entries expire)"
        )
    if "cache" in uses:
        if str(conf.get("maxmemory", "0")) == "0":
            out.append("maxmemory is 0: the cache grows without bound (set maxmemory and allkeys-lru)")
        elif policy not in EVICTING:
            out.append(
                f"maxmemory-policy {policy}: a full Redis refuses new cache entries "
                "(use allkeys-lru, or volatile-lru when it also holds keys)"
            )
    return out
