"""The Redis limits (aib.limits.remote) against a real redis-server: the GCRA bound with any
interleaving of two replicas, token refunds, requests in flight as leases that lapse when a replica
dies, settles that Redis missed sent again when it is back, budgets, scripts reloaded after a restart.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop

from aib.auth.keys import ClientKey
from aib.config.schema import RedisSettings
from aib.devtools.redisserver import RedisServer
from aib.limits import remote
from aib.limits.limiter import LimitExceeded, Ticket
from aib.limits.remote import RedisLimits
from aib.shared.link import RedisLink

pytestmark = pytest.mark.integration
T = TypeVar("T")


def key(num: int, **limits: Any) -> ClientKey:
    return ClientKey(
        id=f"key_{num}", num=num, name=f"k{num}", prefix="", hash=str(num), created_at=0.0, **limits
    )


def run(
    redis: RedisServer, body: Callable[[RedisLink, RedisLimits, RedisLimits], Awaitable[T]], prefix: str
) -> T:
    """``body(link, replica_a, replica_b)`` on a fresh event loop; two limiters as two replicas."""

    async def main() -> T:
        link = RedisLink(RedisSettings(url=redis.url, key_prefix=prefix), ("limits",))
        await link.start()
        a, b = RedisLimits(link, "a"), RedisLimits(link, "b")
        try:
            return await body(link, a, b)
        finally:
            await a.close()
            await b.close()
            await link.close()

    return uvloop.run(main())


async def admitted(limits: RedisLimits, k: ClientKey, cost: int = 0) -> Ticket | None:
    try:
        return await limits.admit(k, cost)
    except LimitExceeded:
        return None


def test_a_full_bucket_then_the_refill_rate_across_two_replicas(redis_server: RedisServer) -> None:
    """rpm 30 (one every 2 s): any interleaving of the two replicas admits the bucket of 30 at once and
    then, over t seconds, at most 30 + 30 t / 60 in all; a refusal names the limit and the wait."""

    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(1, rpm=30)
        rng = random.Random(7)
        t0 = time.monotonic()
        got = 0
        last: LimitExceeded | None = None
        for _ in range(80):
            try:
                await rng.choice((a, b)).admit(k, 0)
                got += 1
            except LimitExceeded as exc:
                last = exc
        elapsed = time.monotonic() - t0
        assert 30 <= got <= 30 + 30 * elapsed / 60 + 1e-9, (got, elapsed)
        assert last is not None and last.code == "requests_per_minute" and 0 < last.retry_after_s <= 2.0
        headers = dict(last.headers)
        assert headers[b"x-ratelimit-limit-requests"] == b"30"
        assert headers[b"x-ratelimit-remaining-requests"] == b"0"
        assert headers[b"retry-after"] in (b"1", b"2")

    run(redis_server, body, "gcra:")


def test_tokens_reserved_and_given_back(redis_server: RedisServer) -> None:
    """tpm 600: a request reserving 500 leaves 100; settled at 50 used, 550 are free again."""

    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(2, tpm=600)  # 10 tokens a second come back
        t0 = time.monotonic()
        t = await a.admit(k, 500)
        remaining = int(dict(t.headers)[b"x-ratelimit-remaining-tokens"])
        assert 99 <= remaining <= 100
        with pytest.raises(LimitExceeded) as refused:
            await b.admit(k, 200)
        assert refused.value.code == "tokens_per_minute"
        a.settle(t, 50)
        await asyncio.sleep(0.2)  # settles go out after the request (next loop turn, one pipeline)
        t2 = await b.admit(k, 500)  # 450 given back: 550 free, and what refilled meanwhile
        refilled = 10 * (time.monotonic() - t0)
        assert 49 <= int(dict(t2.headers)[b"x-ratelimit-remaining-tokens"]) <= 51 + refilled

    run(redis_server, body, "tpm:")


def test_requests_in_flight_are_leases_that_lapse_when_a_replica_dies(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "LEASE_S", 1.0)

    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(3, concurrency=1)
        held = await a.admit(k, 0)
        assert held.lease is not None and held.lease.startswith("a:")
        assert await admitted(b, k) is None
        await asyncio.sleep(1.5)  # a renews its open lease (every LEASE_S / 3): still held
        assert await admitted(b, k) is None
        if a._renewer is not None:  # replica a dies: nobody renews, nobody settles
            a._renewer.cancel()
        a._open.clear()
        await asyncio.sleep(1.2)
        t = await admitted(b, k)
        assert t is not None  # the dead replica's place lapsed
        b.settle(t, 0)
        await asyncio.sleep(0.2)
        assert await admitted(b, k) is not None

    run(redis_server, body, "lease:")


def test_settles_redis_missed_are_sent_when_it_is_back(redis_server: RedisServer) -> None:
    """A settle during DEBUG SLEEP times out; the place is given back once Redis answers again."""

    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(4, concurrency=1)
        t = await a.admit(k, 0)
        sleeper = threading.Thread(
            target=redis_server.command_line, args=("DEBUG", "SLEEP", "1"), daemon=True
        )
        sleeper.start()
        await asyncio.sleep(0.1)
        a.settle(t, 0)
        for _ in range(100):  # the settle fails (timeout): Redis is marked down, the settle kept
            await asyncio.sleep(0.02)
            if not link.ok:
                break
        assert not link.ok and a._retry
        assert await a.admit_or_fallback(k, 0) is None  # on_redis_error: allow
        for _ in range(200):
            await asyncio.sleep(0.02)
            if link.ok and not a._retry and not a._tasks:
                break
        assert link.ok
        assert await admitted(b, k) is not None  # the missed settle freed the place
        assert link.errors["settle"] >= 1 and link.errors["limits"] >= 1
        await asyncio.to_thread(sleeper.join, 5)

    run(redis_server, body, "retry:")


def test_budgets_are_exact_and_scripts_come_back_after_a_script_flush(redis_server: RedisServer) -> None:
    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(5, budget_day=100)
        t1 = await a.admit(k, 60)
        with pytest.raises(LimitExceeded) as over:
            await b.admit(k, 50)
        assert over.value.code == "tokens_per_day" and over.value.retry_after_s > 0
        a.settle(t1, 10)
        await asyncio.sleep(0.2)
        await link.client.script_flush()  # as after a restart: EVALSHA answers NOSCRIPT
        t2 = await b.admit(k, 80)  # 10 + 80 <= 100
        with pytest.raises(LimitExceeded):
            await a.admit(k, 20)
        await link.client.script_flush()
        b.settle(t2, 0)
        await asyncio.sleep(0.2)
        assert await admitted(a, k, 85) is not None  # 10 + 0 + 85

    run(redis_server, body, "budget:")


def test_a_requests_end_rides_with_the_keys_next_admission(redis_server: RedisServer) -> None:
    """concurrency 1, tpm 600: request 2 is admitted at once after request 1 ended, in the same round
    trip that frees request 1's place and gives back its unused tokens (no settle of its own)."""

    async def body(link: RedisLink, a: RedisLimits, b: RedisLimits) -> None:
        k = key(6, concurrency=1, tpm=600)
        stats0 = await link.client.info("commandstats")
        t1 = await a.admit(k, 500)
        a.settle(t1, 100)  # 400 back
        assert a._pending  # waiting for the next admission
        t2 = await a.admit(k, 500)  # would be refused (place taken, 100 tokens left) without the end
        assert not a._pending
        remaining = int(dict(t2.headers)[b"x-ratelimit-remaining-tokens"])
        assert 0 <= remaining <= 5  # 600 - 100 used - 500 reserved, plus what refilled meanwhile
        stats1 = await link.client.info("commandstats")
        calls = stats1["cmdstat_evalsha"]["calls"] - stats0.get("cmdstat_evalsha", {"calls": 0})["calls"]
        assert calls == 2  # two admissions, no settle
        a.settle(t2, 0)
        await asyncio.sleep(remote.SETTLE_WITHIN_S + 0.2)  # no next admission: sent on its own
        assert not a._pending and await admitted(b, k, 100) is not None

    run(redis_server, body, "ride:")
