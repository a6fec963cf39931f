"""Cached answers in Redis, shared by every replica and worker: one string per entry under
``<prefix>cache:<route>:<key>``, expiring on its own (``PX``). Redis bounds its memory itself
(``maxmemory`` with an ``allkeys-lru`` or ``volatile-lru`` policy: every entry has a TTL).

Reads and writes on the request path use the link's client (its short timeout); a failure is the
caller's to report (:meth:`aib.shared.link.RedisLink.failed`). ``flush``, ``stats`` and ``inspect``
walk the keys with ``SCAN`` (never ``KEYS``), bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aib.cache.entry import CacheUnavailable, Entry, decode, encode
from aib.shared.link import ERRORS, RedisLink

SCAN_COUNT = 1000
SCAN_MAX = 1_000_000  # keys looked at by one stats or inspect


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisCacheStore:
    kind = "redis"

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.prefix = link.settings.key_prefix + "cache:"

    def name(self, route: str, key: str) -> str:
        return f"{self.prefix}{route}:{key}"

    async def get(self, route: str, key: str) -> Entry | None:
        """The entry, or None; :class:`CacheUnavailable` while Redis is down (without waiting for it)
        or when this read fails (reported to the link)."""
        link = self.link
        if not link.ok:
            link.errors["cache"] = link.errors.get("cache", 0) + 1
            raise CacheUnavailable(link.last_error or "redis is down")
        try:
            async with asyncio.timeout(link.timeout_s):
                raw = await link.client.get(self.name(route, key))
        except ERRORS as exc:
            link.failed("cache", exc)
            raise CacheUnavailable(str(exc)) from None
        if raw is None:
            return None
        try:
            return decode(raw)
        except ValueError:  # not ours (another program's key under our prefix): a miss
            return None

    async def put(self, key: str, entry: Entry, ttl_s: float) -> None:
        """Store ``entry`` (off the request path); a failure is reported to the link, never raised."""
        if not self.link.ok:
            return
        try:
            async with asyncio.timeout(self.link.timeout_s):
                await self.link.client.set(
                    self.name(entry.route, key), encode(entry), px=max(int(ttl_s * 1000), 1)
                )
        except ERRORS as exc:
            self.link.failed("cache_store", exc)

    async def _scan(self, match: str) -> list[bytes]:
        found: list[bytes] = []
        seen = 0
        async for name in self.link.admin.scan_iter(match=match, count=SCAN_COUNT):
            found.append(name)
            seen += 1
            if seen >= SCAN_MAX:
                break
        return found

    async def flush(self, route: str | None = None) -> int:
        match = self.prefix + ("*" if route is None else _glob_escape(route) + ":*")
        names = await self._scan(match)
        gone = 0
        for i in range(0, len(names), 500):
            batch = names[i : i + 500]
            if self.link.settings.cluster:  # keys of one UNLINK must share a slot: one at a time
                for n in batch:
                    gone += int(await self.link.admin.unlink(n))
            else:
                gone += int(await self.link.admin.unlink(*batch))
        return gone

    async def inspect(self, key: str) -> Entry | None:
        for name in await self._scan(self.prefix + "*:" + _glob_escape(key)):
            raw = await self.link.admin.get(name)
            if raw is not None:
                try:
                    return decode(raw)
                except ValueError:
                    continue
        return None

    async def stats(self) -> dict[str, Any]:
        names = await self._scan(self.prefix + "*")
        routes: dict[str, dict[str, int]] = {}
        plen = len(self.prefix)
        for n in names:
            route = n.decode("utf-8", "replace")[plen:].rsplit(":", 1)[0]
            r = routes.setdefault(route, {"entries": 0})
            r["entries"] += 1
        mem = await self.link.admin.info("memory")
        st = await self.link.admin.info("stats")
        info: dict[str, Any] = {}
        if "used_memory" in mem:  # one server (a cluster answers per node: left out)
            info = {
                "used_memory": mem.get("used_memory"),
                "maxmemory": mem.get("maxmemory"),
                "maxmemory_policy": mem.get("maxmemory_policy"),
                "evicted_keys": st.get("evicted_keys"),
                "expired_keys": st.get("expired_keys"),
            }
        return {
            "backend": self.kind,
            "where": self.link.where,
            "entries": len(names),
            "entries_counted_up_to": SCAN_MAX,
            "routes": routes,
            "redis": info,
            "at": time.time(),
        }
