"""Where a gateway keeps what is not routing: client keys and limits (SQLite and this process's
memory, or Redis shared by replicas), the response cache (memory or Redis), and the Redis link they
share. Chosen once, from the plan the gateway starts with (``auth.store``, ``cache.backend``,
``redis``); a reload that changes these is refused (they take effect at a restart).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aib.auth.gate import Gate
from aib.cache.stage import ResponseCache
from aib.config.plan import RoutingPlan
from aib.limits.slots import Slots

if TYPE_CHECKING:
    from aib.shared.link import RedisLink


def build_stores(
    plan: RoutingPlan, keys_db: Path, slots: Slots | None, admin_key: Callable[[], str | None]
) -> tuple[RedisLink | None, Gate, ResponseCache]:
    link = None
    uses = tuple(
        u
        for u, on in (
            ("keys", plan.auth.store == "redis"),
            ("limits", plan.auth.store == "redis"),
            ("cache", plan.cache_store.backend == "redis"),
        )
        if on
    )
    if plan.redis is not None and uses:  # a `redis:` section nothing uses opens no connection
        from aib.shared.link import RedisLink

        link = RedisLink(plan.redis, uses)
    if plan.auth.store == "redis" and link is not None:
        from aib.auth.redis_store import RedisKeyStore
        from aib.limits.remote import RedisLimits

        settings = plan.redis
        assert settings is not None
        gate = Gate(
            lambda: RedisKeyStore(settings),
            slots,
            admin_key=admin_key,
            remote=RedisLimits(link),
            store_name=f"redis {link.where}",
        )
    else:
        gate = Gate(keys_db, slots, admin_key=admin_key)
    return link, gate, ResponseCache(plan.cache_store, link)


def redis_errors(gateway: Any) -> tuple[type[BaseException], ...]:
    """What a Redis call of ``gateway`` can raise (nothing without Redis: redis-py stays unimported)."""
    if getattr(gateway, "link", None) is None:
        return ()
    from aib.shared.link import ERRORS

    return ERRORS


def restart_needed(old: RoutingPlan, new: RoutingPlan) -> str | None:
    """What a reload from ``old`` to ``new`` changes that only a restart applies (None: nothing)."""
    changed = [
        name
        for name, a, b in (
            ("redis", old.redis, new.redis),
            ("auth.store", old.auth.store, new.auth.store),
            ("cache", old.cache_store, new.cache_store),
        )
        if a != b
    ]
    if not changed:
        return None
    return (
        f"{', '.join(changed)} changed, which takes effect only when the gateway restarts: restart it "
        "to apply this configuration (the one in force is kept)"
    )
