"""Probe providers from the outside, the way the gateway does: free endpoints only, never a completion.

Each provider's health endpoint is read with its kind's verdict (:mod:`aib.providers`), then its model
list (from the same answer when the health endpoint is the discovery endpoint). All providers are
probed at once; each probe is bounded by its configured ``health.timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from aib.config.plan import ProviderInfo
from aib.providers import kind_for
from aib.secrets import Scrubber, env_values

# Kinds whose servers answer only for the names they list (a missing model is a 404 there).
# llama.cpp serves its one model under any name, so its list is shown but not compared.
STRICT_NAMES = frozenset({"ollama", "vllm", "openai", "anthropic", "openai_compatible"})


@dataclass
class ProbeResult:
    name: str
    type: str
    base_url: str
    healthy: bool
    latency_ms: float
    reason: str | None = None  # why not healthy
    models: tuple[str, ...] | None = None  # what it serves; None when the list could not be read
    missing: list[str] = field(default_factory=list)  # configured, not served (strict kinds only)
    key_missing: str | None = None  # the api_key_env variable, when it is unset


def connect_error(exc: aiohttp.ClientConnectorError) -> str:
    err = exc.os_error
    if isinstance(err, ConnectionRefusedError):
        return f"nothing listens on {exc.host}:{exc.port} (connection refused)"
    return f"cannot connect to {exc.host}:{exc.port}: {err.strerror or err}"


def _served(name: str, served: set[str], provider_type: str) -> bool:
    if name in served:
        return True
    return provider_type == "ollama" and ":" not in name and f"{name}:latest" in served


async def probe_one(
    session: aiohttp.ClientSession, info: ProviderInfo, scrubber: Scrubber | None = None
) -> ProbeResult:
    """One provider; answers pass ``scrubber`` first (a provider may echo the key it was sent)."""
    scrub = (scrubber or Scrubber(env_values([info.api_key_env]))).bytes
    kind = kind_for(info.type)
    headers = kind.auth_headers(info)
    timeout = aiohttp.ClientTimeout(total=info.health.timeout_s)
    res = ProbeResult(info.name, info.type, info.base_url, False, 0.0)
    if info.api_key_env and not os.environ.get(info.api_key_env):
        res.key_missing = info.api_key_env
    started = time.perf_counter()
    payload: Any = None
    try:
        async with session.get(info.health_url, headers=headers, timeout=timeout) as resp:
            raw = scrub(await resp.read())
            status = resp.status
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(raw) if raw else None
        res.healthy, res.reason = kind.healthy(status, payload)
    except TimeoutError:
        res.reason = f"no answer within {info.health.timeout_s:g}s"
    except aiohttp.ClientConnectorError as exc:
        res.reason = connect_error(exc)
    except (aiohttp.ClientError, OSError) as exc:
        res.reason = f"{type(exc).__name__}: {exc}"
    res.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    if not res.healthy:
        return res
    try:
        if not info.health_url.endswith(kind.discovery_path):
            async with session.get(
                info.base_url + kind.discovery_path, headers=headers, timeout=timeout
            ) as resp:
                payload = orjson.loads(scrub(await resp.read()))
        res.models = kind.parse_models(payload)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return res  # healthy, but the list is unreadable: say nothing about models
    if info.type in STRICT_NAMES:
        served = set(res.models)
        res.missing = [m for m in info.models if not _served(m, served, info.type)]
    return res


async def probe_all(providers: list[ProviderInfo]) -> list[ProbeResult]:
    """One probe of each provider, concurrently, in the given order."""
    scrubber = Scrubber(env_values([p.api_key_env for p in providers]))  # every key, in every answer
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(probe_one(session, p, scrubber) for p in providers)))
