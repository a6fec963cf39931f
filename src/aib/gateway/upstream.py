"""Pooled keep-alive connections to the providers: one aiohttp session per provider.

Sessions are created on first use and kept across reloads while the provider's address is the same;
a provider that disappears from the config is drained (its in-flight requests finish) and closed.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from aib import __version__
from aib.config.plan import ProviderInfo
from aib.gateway.httpclient import Pool
from aib.providers import kind_for

USER_AGENT = f"ai-backend-unified/{__version__}"


class UpstreamPool:
    """Per provider: a fast :class:`~aib.gateway.httpclient.Pool` for requests, an aiohttp session for probes."""

    def __init__(self) -> None:
        self._pools: dict[str, tuple[str, int, Pool]] = {}
        self._heads: dict[tuple[str, str], bytes] = {}
        self._sessions: dict[str, tuple[str, aiohttp.ClientSession]] = {}
        self._headers: dict[str, dict[str, str]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def http(self, info: ProviderInfo) -> Pool:
        """The request-path pool of a provider (created on first use, replaced when its address changes)."""
        entry = self._pools.get(info.name)
        if entry is not None and entry[0] == info.api_base and entry[1] == info.max_connections:
            return entry[2]
        if entry is not None:
            self._retire_pool(entry[2])
        pool = Pool(info.api_base, limit=info.max_connections)
        self._pools[info.name] = (info.api_base, info.max_connections, pool)
        return pool

    def pool_of(self, name: str) -> Pool | None:
        """The request-path pool a provider uses now, if one was created."""
        entry = self._pools.get(name)
        return entry[2] if entry is not None else None

    def head(self, info: ProviderInfo, endpoint: str) -> bytes:
        """Request line and fixed headers for ``POST <api_base>/<endpoint>``, built once."""
        key = (info.name, endpoint)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = self.http(info).request_head("POST", f"/{endpoint}", self.headers(info))
        return head

    def session(self, info: ProviderInfo) -> aiohttp.ClientSession:
        entry = self._sessions.get(info.name)
        if entry is not None and entry[0] == info.base_url:
            return entry[1]
        if entry is not None:  # same name, new address: drain the old pool in the background
            self._retire(entry[1])
        connector = aiohttp.TCPConnector(
            limit=info.max_connections,
            limit_per_host=info.max_connections,
            ttl_dns_cache=300,
            keepalive_timeout=30,
        )
        sess = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            headers={"user-agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._sessions[info.name] = (info.base_url, sess)
        return sess

    def headers(self, info: ProviderInfo) -> dict[str, str]:
        """Static request headers of a provider (auth included), computed once per provider."""
        h = self._headers.get(info.name)
        if h is None:
            h = {"content-type": "application/json", **kind_for(info.type).auth_headers(info)}
            self._headers[info.name] = h
        return h

    def forget_headers(self) -> None:
        """Keys may have changed (a reload re-reads the environment)."""
        self._headers.clear()
        self._heads.clear()

    def retain(self, names: set[str], drain_s: float = 30.0) -> None:
        """Close, after a grace period, the sessions of providers no longer configured."""
        for name in [n for n in self._sessions if n not in names]:
            _, sess = self._sessions.pop(name)
            self._retire(sess, drain_s)
        for name in [n for n in self._pools if n not in names]:
            self._retire_pool(self._pools.pop(name)[2])

    def _retire_pool(self, pool: Pool) -> None:
        """Stop handing out connections now; idle ones close at once, busy ones when their request ends."""
        pool.close()

    def _retire(self, sess: aiohttp.ClientSession, drain_s: float = 30.0) -> None:
        async def close_later() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(drain_s)  # in-flight requests hold their own reference
            await sess.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        for _, sess in self._sessions.values():
            await sess.close()
        self._sessions.clear()
        for _, _, pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
