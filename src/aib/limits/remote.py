"""Limits in Redis (``auth.store: redis``): one key's rates, requests in flight and budgets held
across every replica, in one round trip per request.

:meth:`RedisLimits.admit` is one Lua script (``EVALSHA``) on the key's own keys, all under one hash
tag (one Cluster slot): the GCRA states of the request and token rates (the arithmetic of
:mod:`aib.limits.gcra`, on Redis's clock, so replicas on machines whose clocks differ agree), the
requests in flight and the day and month budgets. It takes all of them or none, like the local
limiter, and answers what the ``x-ratelimit-*`` headers need.

Requests in flight are leases, not counters: a sorted set of ``replica:seq`` members scored by when
they lapse (``LEASE_S``); the replica renews the leases of its open requests every ``LEASE_S / 3``
(one pipelined round trip for all of them). A replica that is killed leaks nothing for longer than a
lease.

:meth:`RedisLimits.settle` costs no round trip of its own: a request's end (its place freed, the tokens
it reserved and did not use given back) waits, summed with the key's other ends, for the key's next
admission on this replica, which applies it in the same script before it checks anything. Ends that
no admission takes within ``SETTLE_WITHIN_S`` go as one pipeline; the ones Redis did not take are sent
again when it is back (bounded).

Budgets here are exact across replicas: a request reserves its tokens on the day and month counters
at admission and settles the difference (the SQLite store's budgets lag by up to a second).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from typing import Any

import redis

from aib.auth.keys import ClientKey
from aib.limits.budgets import day_and_month, next_day, next_month
from aib.limits.limiter import WINDOW_S, LimitExceeded, Ticket, _Rule, rate_headers, refusal
from aib.shared.link import ERRORS, RedisLink

log = logging.getLogger("aib.limits")
LEASE_S = 30.0
SETTLE_WITHIN_S = 0.05  # a request's end waits at most this long for the key's next admission
RETRY_MAX = 10_000  # settles kept while Redis is down

# Numbers travel in one space-separated argument (each argument costs redis-py ~2.5 us to encode).
# The ends of earlier requests of a key, on their own (no admission took them): ARGV[1] = refund, tpm
# interval, day flag, month flag; ARGV[2..] the leases to free.
_SETTLE_PART = """
local function numbers(s)
  local out = {}
  for v in string.gmatch(s, '%S+') do out[#out + 1] = tonumber(v) end
  return out
end
local function settle(n, at, first)
  local refund, tpm_i = n[at], n[at + 1]
  for i = first, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
  if refund ~= 0 then
    if tpm_i > 0 then
      local tt = tonumber(redis.call('HGET', KEYS[1], 't'))
      if tt then redis.call('HSET', KEYS[1], 't', string.format('%.6f', tt - refund * tpm_i)) end
    end
    if n[at + 2] == 1 and redis.call('EXISTS', KEYS[3]) == 1 then redis.call('DECRBY', KEYS[3], refund) end
    if n[at + 3] == 1 and redis.call('EXISTS', KEYS[4]) == 1 then redis.call('DECRBY', KEYS[4], refund) end
  end
end
"""

# One script per admission, with the key's earlier ends folded in. ARGV[1]: rpm interval, tpm interval,
# concurrency, cost, day budget, month budget, lease, window, then the ends: refund, their tpm
# interval, day flag, month flag; ARGV[2]: this request's lease member ('' without concurrency);
# ARGV[3..]: the leases the ends free. About 4 Redis calls for a key with rates only, 11 with all.
ADMIT = """
local n = {}
for v in string.gmatch(ARGV[1], '%S+') do n[#n + 1] = tonumber(v) end
local rpm_i, tpm_i, conc, cost, bday, bmonth, lease, window = n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8]
local refund, r_tpm_i = n[9], n[10]
local r_day, r_month = (n[11] == 1) and refund or 0, (n[12] == 1) and refund or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 3, #ARGV do redis.call('ZREM', KEYS[2], ARGV[i]) end
local st = redis.call('HMGET', KEYS[1], 'r', 't')
local rtat, ttat = tonumber(st[1]), tonumber(st[2])
local dirty = false
if ttat and refund ~= 0 and r_tpm_i > 0 then ttat = ttat - refund * r_tpm_i; dirty = true end
rtat, ttat = rtat or 0, ttat or 0
local refused, wait = '', 0
local held = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  held = redis.call('ZCARD', KEYS[2])
  if held >= conc then refused, wait = 'concurrent_requests', 1 end
end
local nr, nt = rtat, ttat
if refused == '' and rpm_i > 0 then
  local new = math.max(rtat, now) + math.min(rpm_i, window)
  if new - now > window + 1e-9 then refused, wait = 'requests_per_minute', new - now - window else nr = new end
end
if refused == '' and tpm_i > 0 then
  local new = math.max(ttat, now) + math.min(cost * tpm_i, window)
  if new - now > window + 1e-9 then refused, wait = 'tokens_per_minute', new - now - window else nt = new end
end
local dv, mv
if bday > 0 or r_day ~= 0 then dv = redis.call('GET', KEYS[3]) end
if bmonth > 0 or r_month ~= 0 then mv = redis.call('GET', KEYS[4]) end
if refused == '' and bday > 0 and (tonumber(dv) or 0) - r_day + cost > bday then refused = 'tokens_per_day' end
if refused == '' and bmonth > 0 and (tonumber(mv) or 0) - r_month + cost > bmonth then refused = 'tokens_per_month' end
local ok = refused == ''
if ok and (rpm_i > 0 or tpm_i > 0) then
  redis.call('HSET', KEYS[1], 'r', string.format('%.6f', nr), 't', string.format('%.6f', nt))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(nr, nt) - now + window) * 1000))
elseif dirty then
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', ttat))
end
if ok and conc > 0 then
  redis.call('ZADD', KEYS[2], now + lease, ARGV[2])
  if held == 0 then redis.call('PEXPIRE', KEYS[2], math.ceil(lease * 2000)) end
end
local function budget(key, value, delta, ttl)
  if delta ~= 0 and (value or ok) then
    if redis.call('INCRBY', key, delta) == delta and not value then redis.call('EXPIRE', key, ttl) end
  end
end
budget(KEYS[3], dv, (ok and bday > 0 and cost or 0) - r_day, 172800)
budget(KEYS[4], mv, (ok and bmonth > 0 and cost or 0) - r_month, 2764800)
return {refused, string.format('%.6f', wait), string.format('%.6f', math.max(nr - now, 0)),
        string.format('%.6f', math.max(nt - now, 0))}
"""

SETTLE = (
    _SETTLE_PART
    + """
settle(numbers(ARGV[1]), 1, 2)
return 1
"""
)

RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


SCRIPTS = {
    name: (text, _sha(text)) for name, text in (("admit", ADMIT), ("settle", SETTLE), ("renew", RENEW))
}


class RemoteTicket(Ticket):
    """A ticket of the Redis limits: where its key's state lives (for the settle)."""

    __slots__ = ("keys",)

    def __init__(
        self, key: ClientKey, reserved: int, headers: Any, lease: str | None, keys: list[str]
    ) -> None:
        super().__init__(key, reserved, headers, lease)
        self.keys = keys


class _Ends:
    """Ends of requests of one key (and day), not yet in Redis: summed, applied together."""

    __slots__ = ("budget_day", "budget_month", "keys", "members", "refund", "tpm_i")

    def __init__(self, keys: list[str], tpm_i: float, budget_day: bool, budget_month: bool) -> None:
        self.keys = keys
        self.tpm_i = tpm_i
        self.budget_day = budget_day
        self.budget_month = budget_month
        self.refund = 0
        self.members: list[str] = []

    def numbers(self) -> str:
        """refund, tpm interval, day flag, month flag (the settle part of a script's first argument)."""
        return f"{self.refund} {self.tpm_i!r} {int(self.budget_day)} {int(self.budget_month)}"

    def merge(self, other: _Ends) -> None:
        self.refund += other.refund
        self.members += other.members


NO_ENDS = "0 0 0 0"


class RedisLimits:
    """The limits of every key, in Redis (see the module doc)."""

    def __init__(self, link: RedisLink, replica: str | None = None) -> None:
        self.link = link
        self.prefix = link.settings.key_prefix + "{lim:"
        self.replica = replica or f"{os.uname().nodename}-{os.getpid()}-{os.urandom(3).hex()}"
        self._seq = itertools.count(1)
        self._rules: dict[int, _Rule] = {}
        self._day: tuple[int, str, str] = (-1, "", "")  # (second, UTC day, month) of the last admission
        self._key_names: dict[int, tuple[str, list[str]]] = {}  # key num -> (day, its Redis keys)
        self._open: dict[str, str] = {}  # lease member -> its sorted set (renewed until settled)
        self._pending: dict[str, _Ends] = {}  # the key's day budget key (unique per key and day) -> ends
        self._retry: list[_Ends] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        link.on_up.append(self._resend)

    def _rule(self, key: ClientKey) -> _Rule:
        rule = self._rules.get(key.num)
        if rule is None or rule.key is not key:
            rule = self._rules[key.num] = _Rule(key)
        return rule

    def _keys(self, num: int, now: float) -> list[str]:
        """The key's state, leases, and day and month budget keys (one hash tag: one Cluster slot)."""
        day = self._day
        if int(now) != day[0]:
            day = self._day = (int(now), *day_and_month(now))
        have = self._key_names.get(num)
        if have is None or have[0] != day[1]:
            base = f"{self.prefix}{num}}}"
            names = [base, base + ":inflight", f"{base}:day:{day[1]}", f"{base}:month:{day[2]}"]
            have = self._key_names[num] = (day[1], names)
        return have[1]

    async def _eval(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        sha = SCRIPTS[name][1]
        async with asyncio.timeout(self.link.timeout_s):
            try:
                return await client.evalsha(sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # a new or restarted Redis: it has not seen them
                await self.load_scripts()
                return await client.evalsha(sha, len(keys), *keys, *args)

    async def load_scripts(self) -> None:
        """SCRIPT LOAD every script (on every primary of a Cluster)."""
        for text, _ in SCRIPTS.values():
            await self.link.admin.script_load(text)

    # ------------------------------------------------------------------ the request path

    async def admit_or_fallback(self, key: ClientKey, reserve: int) -> Ticket | None:
        """:meth:`admit`; while Redis cannot be reached: None (no limit) under ``on_redis_error:
        allow``, else :class:`LimitExceeded` with status 503 (``limits_unavailable``)."""
        link = self.link
        if link.ok:
            try:
                return await self.admit(key, reserve)
            except ERRORS as exc:
                link.failed("limits", exc)
        else:
            link.errors["limits"] = link.errors.get("limits", 0) + 1
        if link.settings.on_redis_error == "allow":
            return None
        raise LimitExceeded(
            "limits_unavailable",
            "This key's limits cannot be checked now (the gateway's Redis is unreachable); retry shortly.",
            1.0,
            [(b"retry-after", b"1")],
            status=503,
        )

    async def admit(self, key: ClientKey, reserve: int, now: float | None = None) -> Ticket:
        """Take the request's place or raise :class:`LimitExceeded`; a Redis failure raises one of
        :data:`aib.shared.link.ERRORS` (the gate decides what that means)."""
        rule = self._rule(key)
        now = time.time() if now is None else now
        keys = self._keys(key.num, now)
        member = f"{self.replica}:{next(self._seq)}" if rule.conc else ""
        ends = self._pending.pop(keys[2], None)  # earlier requests of this key that ended: same trip
        numbers = (
            f"{rule.rpm_i!r} {rule.tpm_i!r} {rule.conc or 0} {reserve} {rule.budget_day or 0} "
            f"{rule.budget_month or 0} {LEASE_S!r} {WINDOW_S!r} {ends.numbers() if ends is not None else NO_ENDS}"
        )
        args = [numbers, member, *(ends.members if ends is not None else ())]
        # only the keys the script touches (fewer arguments to encode): state, leases, budgets
        if rule.budgets or (ends is not None and (ends.budget_day or ends.budget_month)):
            touched = keys
        elif rule.conc or (ends is not None and ends.members):
            touched = keys[:2]
        else:
            touched = keys[:1]
        try:
            res = await self._eval(self.link.client, "admit", touched, args)
        except BaseException:
            if ends is not None:  # not applied: keep them for the next trip
                self._add_ends(ends)
            raise
        code = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
        headers = rate_headers(rule, max(float(res[2]), 0.0), max(float(res[3]), 0.0))
        if code:
            wait = float(res[1])
            if code == "tokens_per_day":
                n, wait = rule.budget_day or 0, next_day(now) - now
            elif code == "tokens_per_month":
                n, wait = rule.budget_month or 0, next_month(now) - now
            else:
                n = {"concurrent_requests": rule.conc, "requests_per_minute": rule.rpm}.get(
                    code, rule.tpm
                ) or 0
            raise refusal(code, n, wait, reserve, headers)
        ticket = RemoteTicket(key, reserve, headers, member or None, keys)
        if member:
            self._open[member] = keys[1]
            self._start_renewer()
        return ticket

    def settle(self, ticket: Ticket, used: int) -> None:
        """The request is over: its place is freed and the tokens it reserved and did not use are
        given back with the key's next admission (or within ``SETTLE_WITHIN_S``)."""
        if not ticket.open or not isinstance(ticket, RemoteTicket):
            return
        ticket.open = False
        rule = self._rule(ticket.key)
        member = ticket.lease or ""
        if member:
            self._open.pop(member, None)
        refund = ticket.reserved - used
        if not member and (refund == 0 or not (rule.tpm_i or rule.budgets)):
            return  # nothing to give back
        ends = _Ends(ticket.keys, rule.tpm_i, rule.budget_day is not None, rule.budget_month is not None)
        ends.refund = refund
        if member:
            ends.members.append(member)
        self._add_ends(ends)

    def _add_ends(self, ends: _Ends) -> None:
        have = self._pending.get(ends.keys[2])
        if have is None:
            self._pending[ends.keys[2]] = ends
        else:
            have.merge(ends)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SETTLE_WITHIN_S, self._flush)

    def _flush(self) -> None:
        self._timer = None
        batch, self._pending = list(self._pending.values()), {}
        if batch:
            self._spawn(self._send(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Ends]) -> None:
        if not self.link.ok:
            self._keep(batch)
            return
        sha = SCRIPTS["settle"][1]
        try:
            for attempt in (0, 1):
                pipe = self.link.client.pipeline(transaction=False)
                for ends in batch:
                    pipe.evalsha(sha, len(ends.keys), *ends.keys, ends.numbers(), *ends.members)
                try:
                    async with asyncio.timeout(self.link.timeout_s):
                        results = await pipe.execute(raise_on_error=False)
                    missing = [
                        b
                        for b, r in zip(batch, results, strict=True)
                        if isinstance(r, redis.exceptions.NoScriptError)
                    ]
                except redis.exceptions.NoScriptError:  # a Cluster pipeline raises it whole
                    missing = batch
                if not missing:
                    return
                if attempt:
                    raise redis.exceptions.NoScriptError(
                        "the settle script is still unknown after SCRIPT LOAD"
                    )
                await self.load_scripts()
                batch = missing
        except ERRORS as exc:
            self.link.failed("settle", exc)
            self._keep(batch)

    def _keep(self, batch: list[_Ends]) -> None:
        room = RETRY_MAX - len(self._retry)
        if room > 0:
            self._retry.extend(batch[:room])

    async def _resend(self) -> None:
        """Redis is back: send the settles it missed, and load the scripts."""
        await self.load_scripts()
        batch, self._retry = self._retry, []
        if batch:
            self._spawn(self._send(batch))

    # ------------------------------------------------------------------ leases

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_loop())

    async def _renew_loop(self) -> None:
        while self._open:
            await asyncio.sleep(LEASE_S / 3)
            if not self._open or not self.link.ok:
                continue
            _, sha = SCRIPTS["renew"]
            pipe = self.link.client.pipeline(transaction=False)
            for member, zset in list(self._open.items()):
                pipe.evalsha(sha, 1, zset, member, LEASE_S)
            try:
                async with asyncio.timeout(self.link.timeout_s):
                    results = await pipe.execute(raise_on_error=False)
                if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                    await self.load_scripts()  # renewed at the next turn, well within the lease
            except ERRORS as exc:
                self.link.failed("renew", exc)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)


__all__ = ["LEASE_S", "LimitExceeded", "RedisLimits", "RemoteTicket"]
