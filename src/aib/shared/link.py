"""The connection to Redis, and whether Redis can be used right now.

:class:`RedisLink` builds the clients (asyncio for the request path, blocking for the key store's
background reads and the CLI) from the ``redis`` section: a plain server (``redis://``, ``rediss://``,
``unix://``), a master found through Sentinel, or a Cluster. It keeps one fact the request path reads
without I/O, :attr:`RedisLink.ok`, and turns failures into that fact:

* a command that fails to connect or times out calls :meth:`RedisLink.failed`: ``ok`` becomes False,
  one warning is logged (not one per request), ``aib_redis_errors_total{op}`` counts it, and a probe
  task PINGs every ``PROBE_S`` until Redis answers, then ``ok`` is True again ("back after ...");
* while ``ok`` is False nothing on the request path waits for Redis: the cache is bypassed and the
  limits follow ``on_redis_error``. So a dead or slow Redis costs each request nothing after the first
  failure, and reconnection needs no request to try it.

Errors that are answers (a script error, OOM on a write) are counted but do not mark Redis down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from aib.config.schema import RedisSettings

log = logging.getLogger("aib.redis")
PROBE_S = 0.5  # while Redis is down: how often it is tried again
BACKGROUND_TIMEOUT_S = 2.0  # commands off the request path (key store reads, usage writes, admin)

# a failure of the connection itself: Redis is down, unreachable or too slow
DOWN_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,  # a master turned replica (failover in progress)
    redis.exceptions.ClusterDownError,
    TimeoutError,
    OSError,
)
# anything a Redis call can raise that is Redis's fault, not ours
ERRORS: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, *DOWN_ERRORS)


def describe_url(settings: RedisSettings) -> str:
    """Where Redis is, for logs and /health (the URL never holds a password: the schema refuses one)."""
    if settings.sentinel is not None:
        return f"sentinel {settings.sentinel.master}@{','.join(settings.sentinel.nodes)}"
    return ("cluster " if settings.cluster else "") + settings.url


def _password(settings: RedisSettings) -> str | None:
    return os.environ.get(settings.password_env) if settings.password_env else None


def _url_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """db, username, TLS and query options of the URL, for Sentinel (which takes no URL)."""
    parts = urlsplit(settings.url)
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = parts.username
    if parts.scheme == "rediss":
        out["ssl"] = True
    db = parts.path.strip("/")
    if db.isdigit():
        out["db"] = int(db)
    return out


def async_client(settings: RedisSettings, *, timeout_s: float | None = None) -> Any:
    """The asyncio client of ``settings`` (redis-py; no retries: :class:`RedisLink` owns failures).

    ``timeout_s``: redis-py's own per-command timeout; None for the request path's client, whose
    callers bound each call with ``asyncio.timeout`` instead (redis-py's costs a task per command)."""
    common: dict[str, Any] = {
        "password": _password(settings),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": AsyncRetry(NoBackoff(), 0),
        "client_name": "aib",
    }
    if settings.cluster:
        return aredis.RedisCluster.from_url(settings.url, max_connections=settings.max_connections, **common)
    if settings.sentinel is not None:
        from redis.asyncio.sentinel import Sentinel

        nodes = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in settings.sentinel.nodes)]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            sentinel_kwargs={
                "socket_timeout": settings.timeout_s,
                "socket_connect_timeout": settings.connect_timeout_s,
            },
            **common,
            **_url_kwargs(settings),
        )
        client = sentinel.master_for(settings.sentinel.master, max_connections=settings.max_connections)
        client.aib_sentinels = sentinel.sentinels  # closed with it (aclose_all)
        return client
    # a plain pool: ~40 us less per command than the blocking one; when every connection is busy a
    # command fails at once with MaxConnectionsError (counted, never taken for Redis being down)
    pool = aredis.ConnectionPool.from_url(settings.url, max_connections=settings.max_connections, **common)
    return aredis.Redis.from_pool(pool)


def sync_client(settings: RedisSettings, *, timeout_s: float = BACKGROUND_TIMEOUT_S) -> Any:
    """A blocking client of ``settings`` (thread-safe): the key store and the CLI."""
    common: dict[str, Any] = {
        "password": _password(settings),
        "socket_timeout": max(timeout_s, settings.timeout_s),
        "socket_connect_timeout": max(settings.connect_timeout_s, 0.1),
        "retry": Retry(NoBackoff(), 0),
        "client_name": "aib",
    }
    if settings.cluster:
        return redis.RedisCluster.from_url(settings.url, **common)
    if settings.sentinel is not None:
        from redis.sentinel import Sentinel

        nodes = [(h, int(p)) for h, p in (n.rsplit(":", 1) for n in settings.sentinel.nodes)]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            sentinel_kwargs={"socket_timeout": common["socket_timeout"]},
            **common,
            **_url_kwargs(settings),
        )
        client = sentinel.master_for(settings.sentinel.master)  # type: ignore[no-untyped-call]
        client.aib_sentinels = sentinel.sentinels  # closed with it (close_all)
        return client
    return redis.Redis.from_url(settings.url, **common)


async def aclose_all(client: Any) -> None:
    """Close an asyncio client, and the sentinel connections behind it."""
    await client.aclose()
    for s in getattr(client, "aib_sentinels", ()):
        await s.aclose()


def close_all(client: Any) -> None:
    """Close a blocking client, and the sentinel connections behind it."""
    client.close()
    for s in getattr(client, "aib_sentinels", ()):
        s.close()


class RedisLink:
    """One gateway process's view of Redis: the asyncio client, up or down, errors by operation."""

    def __init__(self, settings: RedisSettings, uses: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.where = describe_url(settings)
        self.uses = uses  # what this gateway keeps there: "keys", "limits", "cache"
        self.client: Any = async_client(settings)  # the request path's: bound each call by timeout_s
        self.timeout_s = settings.timeout_s
        self._admin: Any = None
        self.ok = True  # the request path's one question: may it call Redis now?
        self.checked = False  # False until the first PING (or command) answered or failed
        self.last_error: str | None = None
        self.down_since: float | None = None  # wall time of the current outage's first failure
        self.outages = 0
        self.errors: dict[str, int] = {}  # op -> failures (aib_redis_errors_total)
        self.on_up: list[Callable[[], Awaitable[None] | None]] = []  # after an outage (scripts, ...)
        self._probe: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ the request path's side

    def failed(self, op: str, exc: BaseException) -> None:
        """A Redis call of ``op`` (cache, limits, settle, keys, usage, ...) failed with ``exc``."""
        self.errors[op] = self.errors.get(op, 0) + 1
        text = _error_text(exc)
        self.last_error = text
        if not isinstance(exc, DOWN_ERRORS) or isinstance(exc, redis.exceptions.MaxConnectionsError):
            # Redis answered (an error about this command only), or this process has every
            # connection busy (redis.max_connections): not an outage
            log.warning("redis %s: %s failed: %s", self.where, op, text)
            return
        if not self.ok:
            return
        self.ok = False
        self.checked = True
        self.outages += 1
        self.down_since = time.time()
        log.warning(
            "redis %s is unreachable (%s: %s): %s; reconnecting every %gs. Said once per outage; "
            "failures are counted in aib_redis_errors_total.",
            self.where,
            op,
            text,
            self._consequence(),
            PROBE_S,
        )
        self._start_probe()

    def _consequence(self) -> str:
        what = []
        if "cache" in self.uses:
            what.append("the cache is bypassed")
        if "limits" in self.uses:
            what.append(
                "requests are served without checking keys' limits"
                if self.settings.on_redis_error == "allow"
                else "requests of keys with limits are refused (on_redis_error: deny)"
            )
        if "keys" in self.uses:
            what.append("the keys in force stay as last read")
        return "; ".join(what) or "nothing depends on it"

    # ------------------------------------------------------------------ lifecycle

    @property
    def admin(self) -> Any:
        """A client for what is not on the request path (``aib cache``: scans, stats), with redis-py's
        own per-command timeout (``BACKGROUND_TIMEOUT_S``)."""
        if self._admin is None:
            self._admin = async_client(self.settings, timeout_s=max(BACKGROUND_TIMEOUT_S, self.timeout_s))
        return self._admin

    async def ping(self) -> None:
        """PING, bounded by the connect and command timeouts (a Cluster client first learns its
        nodes, within a few connect timeouts, so that requests never pay for that)."""
        if self.settings.cluster:
            async with asyncio.timeout(self.settings.connect_timeout_s * 4 + self.timeout_s):
                await self.client.initialize()
        async with asyncio.timeout(self.settings.connect_timeout_s + self.timeout_s):
            await self.client.ping()

    async def start(self) -> None:
        """Check Redis once (bounded by the connect timeout); a failure starts the probe."""
        try:
            await self.ping()
        except ERRORS as exc:
            self.failed("connect", exc)
            return
        self.checked = True
        log.info("redis %s: connected (%s)", self.where, ", ".join(self.uses) or "unused")

    def _start_probe(self) -> None:
        if self._closed or (self._probe is not None and not self._probe.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the event loop (a thread): the next request path failure starts it
            return
        self._probe = loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_S)
            try:
                await self.ping()
                await self._drop_connections()  # the pool's others died with the outage
                await self.ping()  # (a Cluster client learns its nodes again)
            except ERRORS as exc:
                self.last_error = _error_text(exc)
                continue
            for hook in self.on_up:
                try:
                    result = hook()
                    if result is not None:
                        await result
                except ERRORS as exc:
                    self.last_error = _error_text(exc)
                    break
            else:
                down_s = time.time() - (self.down_since or time.time())
                self.ok = True
                self.down_since = None
                log.warning("redis %s is back after %.1fs", self.where, down_s)
                return

    async def _drop_connections(self) -> None:
        """Close every pooled connection (new ones are made on use): after an outage they are dead,
        and each would fail one more command."""
        pool = getattr(self.client, "connection_pool", None)
        if pool is not None:
            await pool.disconnect()
        else:  # a Cluster client: it reconnects to the nodes on its next command
            await self.client.aclose()

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        with contextlib.suppress(*ERRORS):
            await aclose_all(self.client)
        if self._admin is not None:
            with contextlib.suppress(*ERRORS):
                await aclose_all(self._admin)

    # ------------------------------------------------------------------ reports

    def describe(self) -> dict[str, Any]:
        """What /health says about Redis."""
        return {
            "where": self.where,
            "used_for": list(self.uses),
            "status": "up" if self.ok and self.checked else "down" if not self.ok else "unknown",
            "down_since": self.down_since,
            "last_error": self.last_error,
            "outages": self.outages,
            "errors": dict(self.errors),
            "on_redis_error": self.settings.on_redis_error,
        }


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."
