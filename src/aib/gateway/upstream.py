"""Pooled keep-alive connections to the providers (:mod:`aib.gateway.httpclient`).

Per provider, two pools: one for requests (``http``, at the API base) and a small one for health
probes and model discovery (``probes``, at the server's origin: Ollama's ``/api/tags`` lies outside
its ``/v1`` API base). Pools are created on first use and kept across reloads while the provider's
address is the same; a provider that disappears from the config stops taking new requests and its
connections close as their requests end. (The probes used aiohttp until it turned out to be the
largest import of the gateway process: ~25 MB of its RSS.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aib import __version__
from aib.config.plan import ProviderInfo
from aib.gateway.egress import MAX_HEAD_BYTES, MAX_HEADERS, Egress
from aib.gateway.httpclient import Pool
from aib.providers import kind_for

USER_AGENT = f"ai-backend-unified/{__version__}"
PROBE_CONNECTIONS = 2  # probes and discovery of one provider, one after the other


class UpstreamPool:
    """Per provider: a :class:`~aib.gateway.httpclient.Pool` for requests and a small one for probes."""

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES, max_headers: int = MAX_HEADERS) -> None:
        """``max_head_bytes``, ``max_headers``: what an upstream answer's head may hold (502 past it)."""
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        # name -> (the ProviderInfo last seen, (api_base, max_connections, egress), egress, pool)
        self._pools: dict[str, tuple[ProviderInfo, tuple[str, int, Egress], Egress, Pool]] = {}
        self._heads: dict[tuple[str, str], bytes] = {}
        self._probes: dict[str, tuple[str, Egress, Pool]] = {}
        self._headers: dict[str, dict[str, str]] = {}

    def http(self, info: ProviderInfo) -> Pool:
        """The request-path pool of a provider (created on first use, replaced when its address changes)."""
        entry = self._pools.get(info.name)
        if entry is not None and entry[0] is info:  # the request path: the same provider object
            return entry[3]
        key = (info.api_base, info.max_connections, self.egress(info))
        if entry is not None and entry[1] == key:  # a new plan, the same way there
            self._pools[info.name] = (info, key, entry[2], entry[3])
            return entry[3]
        if entry is not None:
            self._retire_pool(entry[3])
            self._heads = {k: v for k, v in self._heads.items() if k[0] != info.name}
        pool = Pool(info.api_base, limit=info.max_connections, egress=key[2])
        self._pools[info.name] = (info, key, key[2], pool)
        return pool

    def egress(self, info: ProviderInfo) -> Egress:
        """How to reach a provider: its proxy and TLS settings, and the answer-head limits."""
        return Egress(info.proxy, info.ca_file, info.tls_verify, self.max_head_bytes, self.max_headers)

    def pool_of(self, name: str) -> Pool | None:
        """The request-path pool a provider uses now, if one was created."""
        entry = self._pools.get(name)
        return entry[3] if entry is not None else None

    def head(self, info: ProviderInfo, endpoint: str) -> bytes:
        """Request line and fixed headers for ``POST <api_base>/<endpoint>``, built once."""
        key = (info.name, endpoint)
        head = self._heads.get(key)
        if head is None:
            head = self._heads[key] = self.http(info).request_head("POST", f"/{endpoint}", self.headers(info))
        return head

    def probes(self, info: ProviderInfo, url: str) -> tuple[Pool, str]:
        """The probe pool of a provider and the request target of ``url`` (path and query)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        egress = self.egress(info)
        entry = self._probes.get(info.name)
        if entry is None or entry[0] != origin or entry[1] != egress:
            if entry is not None:  # same name, new address or way there
                entry[2].close()
            pool = Pool(origin, limit=PROBE_CONNECTIONS, egress=egress)
            entry = self._probes[info.name] = (origin, egress, pool)
        return entry[2], (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def probe_get(self, info: ProviderInfo, url: str, timeout_s: float) -> tuple[int, bytes]:
        """``GET url`` with the provider's headers: status and body (raises like the request pool)."""
        pool, target = self.probes(info, url)
        return await pool.get(target, {"user-agent": USER_AGENT, **self.headers(info)}, timeout_s)

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
        """Retire the pools of providers no longer configured (requests in flight finish)."""
        for name in [n for n in self._probes if n not in names]:
            self._probes.pop(name)[2].close()
        for name in [n for n in self._pools if n not in names]:
            self._retire_pool(self._pools.pop(name)[3])

    def _retire_pool(self, pool: Pool) -> None:
        """Stop handing out connections now; idle ones close at once, busy ones when their request ends."""
        pool.close()

    async def close(self) -> None:
        for _, _, pool in self._probes.values():
            pool.close()
        self._probes.clear()
        for _, _, _, pool in self._pools.values():
            pool.close()
        self._pools.clear()
