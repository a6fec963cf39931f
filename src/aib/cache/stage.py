"""The cache stage of the request path: :meth:`ResponseCache.lookup` after the limits admitted a
request, then either :meth:`ResponseCache.replay` (a hit: the stored answer, no upstream) or the
upstream call through :meth:`Lookup.wrap`'s ``send`` and :meth:`ResponseCache.store` after it.

Every answer of a route that caches says what the cache did in ``x-aib-cache``:

* ``hit``: served from the cache (``Age``: seconds since it was stored; ``x-aib-cache-key``);
* ``miss``: not in the cache (or ``Cache-Control: no-cache``): served by an upstream, and stored if it
  is a complete, successful answer of at most ``cache.max_entry_bytes``;
* ``bypass``: the request may not use the cache (``Cache-Control: no-store``; not deterministic under
  ``when: deterministic``);
* ``error``: the cache could not be read (Redis down or slow): served by an upstream, not stored.

A route that does not cache gets no header and costs nothing here (``plan.caches`` is False, or its
group has no ``cache``). The request log and the metrics say the same (``RequestRecord.cache``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from aib.auth.keys import ClientKey
from aib.cache.assemble import StreamAssembler, check_answer
from aib.cache.entry import CacheUnavailable, Entry
from aib.cache.keys import SHARED, cache_control, cache_key, deterministic
from aib.cache.memory import MemoryStore
from aib.cache.replay import stream_of
from aib.config.plan import Resolution, RoutingPlan
from aib.config.schema import CacheStore
from aib.observe.records import RequestRecord

if TYPE_CHECKING:  # redis-py is imported only when Redis is configured
    from aib.cache.redis_store import RedisCacheStore
    from aib.shared.link import RedisLink

log = logging.getLogger("aib.cache")
Send = Callable[[dict[str, Any]], Awaitable[None]]

HIT, MISS, BYPASS, ERROR = "hit", "miss", "bypass", "error"
_RESULT = {r: r.encode() for r in (HIT, MISS, BYPASS, ERROR)}


class Lookup:
    """What the cache decided for one request, and (on a miss) the copy of the answer to store."""

    __slots__ = ("_capture", "endpoint", "entry", "key", "payload", "res", "result", "scope", "write")

    def __init__(self, res: Resolution, endpoint: str, payload: dict[str, Any]) -> None:
        self.res = res
        self.endpoint = endpoint
        self.payload = payload
        self.result = BYPASS
        self.key = ""
        self.scope = SHARED
        self.entry: Entry | None = None
        self.write = False
        self._capture: _Capture | None = None

    def wrap(self, send: Send, limit: int) -> Send:
        """``send`` for the upstream's answer: adds ``x-aib-cache``, and keeps a copy to store."""
        headers = [(b"x-aib-cache", _RESULT[self.result])]
        if self.key:
            headers.append((b"x-aib-cache-key", self.key.encode()))
        if not self.write:
            return _with_headers(send, headers)
        self._capture = _Capture(send, headers, self.endpoint, limit)
        return self._capture.send


class ResponseCache:
    """The cache of one gateway process: its backend (memory or Redis) and what it counted."""

    def __init__(self, settings: CacheStore, link: RedisLink | None = None) -> None:
        self.settings = settings
        self.max_entry = settings.max_entry_bytes
        self.memory: MemoryStore | None = None
        self.remote: RedisCacheStore | None = None
        if settings.backend == "redis":
            if link is None:
                raise ValueError("cache.backend redis needs a `redis:` section")
            from aib.cache.redis_store import RedisCacheStore

            self.remote = RedisCacheStore(link)
        else:
            self.memory = MemoryStore(settings.max_bytes)
        self.link = link
        self.stored = 0
        self.stored_bytes = 0
        self._writes: set[asyncio.Task[None]] = set()

    @property
    def backend(self) -> str:
        return "redis" if self.remote is not None else "memory"

    # ------------------------------------------------------------------ the request path

    async def lookup(
        self,
        plan: RoutingPlan,
        endpoint: str,
        payload: dict[str, Any],
        record: RequestRecord,
        key: ClientKey | None,
        control: bytes | None,
    ) -> Lookup | None:
        """None when the request's route does not cache (or the model resolves to nothing)."""
        res = plan.resolve(record.model)
        rule = res.group.cache if res is not None else None
        if rule is None or res is None:
            return None
        look = Lookup(res, endpoint, payload)
        read, write = cache_control(control)
        if (read or write) and (rule.always or deterministic(endpoint, payload, res.group.params)):
            look.scope = SHARED if rule.shared or key is None else key.name
            look.key = cache_key(endpoint, payload, rule, look.scope)
            look.result, look.write = MISS, write
            if read:
                t0 = time.perf_counter()
                try:
                    look.entry = await self._get(res.group.name, look.key)
                except CacheUnavailable:
                    look.result, look.write = ERROR, False
                record.cache_lookup_s = time.perf_counter() - t0
                if look.entry is not None:
                    look.result = HIT
        record.cache = look.result
        return look

    async def _get(self, route: str, key: str) -> Entry | None:
        if self.memory is not None:
            return self.memory.get(key, time.time())
        assert self.remote is not None
        return await self.remote.get(route, key)

    async def replay(self, look: Lookup, record: RequestRecord, send: Send) -> None:
        """Answer with the stored entry (JSON, or a stream when the client asked for one)."""
        entry = look.entry
        assert entry is not None
        res = look.res
        record.route, record.matched_by, record.rule = res.group.name, res.matched_by, res.rule
        head = entry.head
        if head is None:
            head = entry.head = [
                (b"x-aib-provider", (entry.provider or "").encode()),
                (b"x-aib-model", (entry.upstream or "").encode()),
                (b"x-aib-fallbacks", b"0"),
                (b"x-aib-cache", b"hit"),
                (b"x-aib-cache-key", look.key.encode()),
            ]
        if record.stream:
            opts = look.payload.get("stream_options")
            if isinstance(opts, dict) and opts.get("include_usage"):
                body = entry.stream_usage
                if body is None:
                    body = entry.stream_usage = stream_of(entry.body, look.endpoint, True)
            else:
                body = entry.stream_plain
                if body is None:
                    body = entry.stream_plain = stream_of(entry.body, look.endpoint, False)
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        else:
            body = entry.body
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers.append((b"x-request-id", record.request_id.encode()))
        headers += head
        headers.append((b"age", b"%d" % max(int(time.time() - entry.stored_at), 0)))
        record.status = 200
        record.prompt_tokens = record.completion_tokens = 0  # a hit costs the key no tokens
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            record.ttfb_s = time.time() - record.started_at
            await send({"type": "http.response.body", "body": body})
        except OSError:
            record.client_disconnected = True

    def store(self, look: Lookup, record: RequestRecord) -> None:
        """After the upstream's answer went out: keep it if it is complete, successful and small enough."""
        cap = look._capture
        if cap is None or not look.write:
            return
        if record.status != 200 or record.error is not None or record.client_disconnected:
            return
        native = getattr(look.payload, "native", None)  # a front door's own answer passed through
        if native is not None and getattr(native, "raw", False):
            return
        body = cap.answer(record)
        if body is None or len(body) > self.max_entry:
            return
        now = time.time()
        rule = look.res.group.cache
        assert rule is not None
        entry = Entry(
            body=body,
            route=look.res.group.name,
            endpoint=look.endpoint,
            scope=look.scope,
            stored_at=now,
            expires_at=now + rule.ttl_s,
            provider=record.provider,
            upstream=record.upstream,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )
        self.stored += 1
        self.stored_bytes += len(body)
        if self.memory is not None:
            self.memory.put(look.key, entry)
            return
        assert self.remote is not None
        if not self.remote.link.ok:
            return
        task = asyncio.ensure_future(self.remote.put(look.key, entry, rule.ttl_s))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    # ------------------------------------------------------------------ administration

    async def stats(self) -> dict[str, Any]:
        base = {"max_entry_bytes": self.max_entry, "stored": self.stored, "stored_bytes": self.stored_bytes}
        if self.memory is not None:
            return {**self.memory.stats(), **base}
        assert self.remote is not None
        return {**(await self.remote.stats()), **base}

    async def flush(self, route: str | None = None) -> int:
        if self.memory is not None:
            return self.memory.flush(route)
        assert self.remote is not None
        return await self.remote.flush(route)

    async def inspect(self, key: str) -> Entry | None:
        if self.memory is not None:
            return self.memory.peek(key)
        assert self.remote is not None
        return await self.remote.inspect(key)

    def counters(self) -> dict[str, int]:
        """Counters of this process for the metrics (summed over workers)."""
        out = {"stored": self.stored, "stored_bytes": self.stored_bytes}
        if self.memory is not None:
            out.update(
                entries=len(self.memory),
                bytes=self.memory.bytes,
                evictions=self.memory.evictions,
                expired=self.memory.expired,
            )
        return out

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


class _Capture:
    """The ``send`` of a miss: adds the cache headers, keeps a copy of a 200 answer."""

    __slots__ = ("assembler", "endpoint", "extra", "inner", "limit", "parts", "size", "status", "streaming")

    def __init__(self, inner: Send, extra: list[tuple[bytes, bytes]], endpoint: str, limit: int) -> None:
        self.inner = inner
        self.extra = extra
        self.endpoint = endpoint
        self.limit = limit
        self.status = 0
        self.streaming = False
        self.parts: list[bytes] = []
        self.size = 0
        # events are several times the size of the answer they carry
        self.assembler: StreamAssembler | None = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers")
            for k, v in headers or ():
                if k == b"content-type":
                    self.streaming = b"event-stream" in v
                    break
            if self.streaming and self.status == 200:
                self.assembler = StreamAssembler(self.endpoint, self.limit * 8)
            if type(headers) is list:
                headers.extend(self.extra)
            else:
                message = {**message, "headers": [*(headers or ()), *self.extra]}
        elif kind == "http.response.body" and self.status == 200:
            body = message.get("body", b"")
            if self.assembler is not None:
                self.assembler.feed(body)
            elif self.size <= self.limit:
                self.parts.append(body)
                self.size += len(body)
        await self.inner(message)

    def answer(self, record: RequestRecord) -> bytes | None:
        if self.assembler is not None:
            usage = None
            if record.prompt_tokens is not None or record.completion_tokens is not None:
                p, c = record.prompt_tokens or 0, record.completion_tokens or 0
                usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            return self.assembler.answer(usage)
        if self.streaming or self.size > self.limit:
            return None
        body = b"".join(self.parts)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        return body if check_answer(self.endpoint, parsed) is None else None


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    def wrapped(message: dict[str, Any]) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            headers = message.get("headers")
            if type(headers) is list:
                headers.extend(extra)
            else:
                message = {**message, "headers": [*(headers or ()), *extra]}
        return send(message)

    return wrapped
