"""``/admin/cache``: the response cache over HTTP, for `aib cache` (admin key required:
``Gateway.http`` guards every ``/admin`` path).

| request | answer |
|---|---|
| ``GET /admin/cache`` | entries, bytes, evictions, per route (memory: this process; Redis: every replica's) |
| ``POST /admin/cache/flush`` ``{"route": "NAME"}`` (optional) | ``{"flushed": N}``: entries dropped |
| ``GET /admin/cache/entries/KEY`` | one entry (the ``x-aib-cache-key`` of an answer): where it came from, the answer |

Under ``aib serve --workers N`` with the memory backend each worker has its own cache: stats are the
answering worker's, and a flush is passed to every worker through the run folder (within a second).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import orjson

from aib.cache.entry import CacheUnavailable
from aib.gateway.errors import GatewayError, bad_request
from aib.gateway.respond import Receive, Scope, Send, read_body, send_error, send_json
from aib.gateway.stores import redis_errors

if TYPE_CHECKING:
    from aib.gateway.app import Gateway

KEY_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_BODY = 16 * 1024


def install_cache_admin(gateway: Gateway) -> None:
    admin = CacheAdmin(gateway)
    gateway.add_route("/admin/cache", "GET", admin.stats)
    gateway.add_route("/admin/cache/flush", "POST", admin.flush)
    gateway.add_prefix_route("/admin/cache/entries/", admin.entry)


def _unavailable(exc: BaseException) -> GatewayError:
    return GatewayError(
        503,
        f"The cache's Redis cannot be reached: {exc}. GET /health shows its state.",
        "service_unavailable",
        "cache_unavailable",
    )


class CacheAdmin:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _call(self, send: Send, coro: Any) -> tuple[bool, Any]:
        """(True, the cache's answer), or (False, None) after answering 503 (Redis down)."""
        errors: tuple[type[BaseException], ...] = (CacheUnavailable, *redis_errors(self.gateway))
        try:
            return True, await coro
        except errors as exc:
            await send_error(send, _unavailable(exc))
            return False, None

    async def stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok, stats = await self._call(send, self.gateway.cache.stats())
        if not ok:
            return
        if self.gateway.worker is not None:
            stats["worker"] = self.gateway.worker
        await send_json(send, 200, orjson.dumps(stats))

    async def flush(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(scope, receive, MAX_BODY)
        route = None
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                await send_error(send, bad_request(f"The body is not valid JSON: {exc}", code="invalid_json"))
                return
            if not isinstance(body, dict) or not isinstance(body.get("route", ""), str | None):
                await send_error(
                    send, bad_request('Send {"route": "NAME"} or nothing (everything).', "route")
                )
                return
            route = body.get("route") or None
        ok, n = await self._call(send, self.gateway.cache.flush(route))
        if not ok:
            return
        for hook in self.gateway.on_cache_flush:  # the other workers (memory backend)
            hook(route)
        await send_json(
            send, 200, orjson.dumps({"flushed": n, "route": route, "backend": self.gateway.cache.backend})
        )

    async def entry(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = scope["path"].rsplit("/", 1)[-1]
        if scope["method"] != "GET":
            err = GatewayError(
                405, "Use GET /admin/cache/entries/KEY.", "invalid_request_error", "method_not_allowed"
            )
            err.headers["allow"] = "GET"
            await send_error(send, err)
            return
        if not KEY_RE.match(key):
            await send_error(
                send, bad_request(f"{key!r} is not a cache key (32 hex digits: x-aib-cache-key).", "key")
            )
            return
        ok, entry = await self._call(send, self.gateway.cache.inspect(key))
        if not ok:
            return
        if entry is None:
            await send_error(
                send,
                GatewayError(404, f"No cache entry {key} (expired, flushed, or never stored).",
                             "invalid_request_error", "cache_entry_not_found"),
            )  # fmt: skip
            return
        try:
            answer: Any = orjson.loads(entry.body)
        except orjson.JSONDecodeError:
            answer = entry.body.decode("utf-8", "replace")
        out = {
            **entry.meta(),
            "key": key,
            "ttl_s": round(entry.expires_at - time.time(), 1),
            "answer": answer,
        }
        await send_json(send, 200, orjson.dumps(out))
