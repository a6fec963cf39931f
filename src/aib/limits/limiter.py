"""The limits stage of the request path: :meth:`Limiter.admit` before routing, :meth:`Limiter.settle`
after the answer.

``admit`` checks, in one step on the key's slot, the requests in flight, the request rate and the
token rate (reserving what the request may use: its prompt estimate plus ``max_tokens``), then the
day and month budgets; it either takes all of them or none and raises :class:`LimitExceeded`
naming the first limit hit. ``settle`` gives the token rate and the budgets the real usage instead of
the reservation and frees the request's place. Every answer carries OpenAI's ``x-ratelimit-*``
headers for the rates the key has.
"""

from __future__ import annotations

import time

from aib.auth.keys import ClientKey
from aib.limits import gcra
from aib.limits.budgets import Budgets
from aib.limits.slots import LocalSlots, Slots

WINDOW_S = 60.0  # rpm and tpm are per minute
Headers = list[tuple[bytes, bytes]]

MESSAGES = {
    "concurrent_requests": "{n} requests of this key are already in flight (its limit)",
    "requests_per_minute": "this key's limit of {n} requests per minute is reached",
    "tokens_per_minute": "this key's limit of {n} tokens per minute is reached (this request reserves "
    "{cost}: its prompt estimate plus max_tokens)",
    "tokens_per_day": "this key's budget of {n} tokens per day (UTC) is spent",
    "tokens_per_month": "this key's budget of {n} tokens per month (UTC) is spent",
}


class LimitExceeded(Exception):
    """A key's limit refused the request: 429 with ``Retry-After`` and the rate headers (503 when the
    limits could not be checked: Redis down with ``on_redis_error: deny``)."""

    def __init__(
        self, code: str, message: str, retry_after_s: float, headers: Headers, status: int = 429
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.status = status


class Ticket:
    """What an admitted request holds until :meth:`Limiter.settle`."""

    __slots__ = ("headers", "key", "lease", "open", "reserved", "rule")

    def __init__(
        self,
        key: ClientKey,
        reserved: int,
        headers: Headers,
        lease: str | None = None,
        rule: _Rule | None = None,
    ) -> None:
        self.key = key
        self.rule = rule  # local limits: the rule it was admitted under (no lookup at settle)
        self.reserved = reserved  # tokens reserved against the token rate and the budgets
        self.headers = headers
        self.open = True
        self.lease = lease  # Redis limits: this request's place among the key's requests in flight


class _Rule:
    """A key's limits as the admission arithmetic wants them, built once per key (and per change)."""

    __slots__ = (
        "budget_day",
        "budget_month",
        "budgets",
        "conc",
        "key",
        "rpm",
        "rpm_b",
        "rpm_i",
        "state",
        "tpm",
        "tpm_b",
        "tpm_i",
    )

    def __init__(self, key: ClientKey, local: LocalSlots | None = None) -> None:
        self.key = key
        # one process's counters: the key's own list (no lookup and no lock per request)
        self.state = local.begin(key.num) if local is not None else None
        self.rpm, self.tpm, self.conc = key.rpm, key.tpm, key.concurrency
        self.rpm_i = WINDOW_S / key.rpm if key.rpm else 0.0
        self.tpm_i = WINDOW_S / key.tpm if key.tpm else 0.0
        self.rpm_b = b"%d" % key.rpm if key.rpm else b""
        self.tpm_b = b"%d" % key.tpm if key.tpm else b""
        self.budget_day, self.budget_month = key.budget_day, key.budget_month
        self.budgets = key.budget_day is not None or key.budget_month is not None


def duration(seconds: float) -> str:
    """OpenAI's form of a reset time: ``20ms``, ``1s``, ``6m0s``, ``1h2m3s`` (Go durations)."""
    if seconds < 1.0:
        return f"{max(int(seconds * 1000 + 0.5), 0)}ms"
    s = int(seconds + 0.999)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"


# the reset headers of every answer: within a minute (GCRA never runs further ahead), from a table
_SECONDS = [duration(float(n)).encode() for n in range(61)]
_MILLIS = [b"%dms" % n for n in range(1001)]


def _reset(seconds: float) -> bytes:
    if seconds < 1.0:
        return _MILLIS[max(int(seconds * 1000 + 0.5), 0)]
    if seconds <= 60.0:
        return _SECONDS[int(seconds + 0.999)]
    return duration(seconds).encode()


class Limiter:
    def __init__(self, slots: Slots, budgets: Budgets | None = None) -> None:
        self.slots = slots
        self.budgets = budgets or Budgets()
        self._rules: dict[int, _Rule] = {}
        self._local = slots if isinstance(slots, LocalSlots) else None

    def _rule(self, key: ClientKey) -> _Rule:
        rule = self._rules.get(key.num)
        if rule is None or rule.key is not key:
            rule = self._rules[key.num] = _Rule(key, self._local)
        return rule

    def admit(
        self, key: ClientKey, reserve: int, mono: float | None = None, now: float | None = None
    ) -> Ticket:
        """Take the request's place, one request and ``reserve`` tokens, or raise :class:`LimitExceeded`.

        ``mono``: the monotonic clock (rates, shared by every process of the machine); ``now``: wall
        time (budget days and months)."""
        if mono is None:
            mono = time.monotonic()
        rule = self._rules.get(key.num)
        if rule is None or rule.key is not key:
            rule = self._rules[key.num] = _Rule(key, self._local)
        num = key.num
        state = rule.state
        if state is None:  # counters shared by the workers: read and written under the slot's lock
            state = self.slots.begin(num)
        refused: tuple[str, int, float] | None = None
        rpm_tat, tpm_tat = state[0], state[1]
        try:
            if rule.conc is not None and state[2] >= rule.conc:
                refused = ("concurrent_requests", rule.conc, 1.0)
            elif rule.rpm_i:
                rpm_tat, wait = gcra.take(rpm_tat, mono, 1, rule.rpm_i, WINDOW_S)
                if wait:
                    refused = ("requests_per_minute", rule.rpm or 0, wait)
            if refused is None and rule.tpm_i:
                tpm_tat, wait = gcra.take(tpm_tat, mono, reserve, rule.tpm_i, WINDOW_S)
                if wait:
                    refused = ("tokens_per_minute", rule.tpm or 0, wait)
            if refused is None and rule.budgets:
                over = self.budgets.check(
                    num, rule.budget_day, rule.budget_month, reserve, time.time() if now is None else now
                )
                if over is not None:
                    limit = rule.budget_day if over[0] == "tokens_per_day" else rule.budget_month
                    refused = (over[0], limit or 0, over[1])
            if refused is None:
                state[0], state[1] = rpm_tat, tpm_tat
        finally:
            if rule.state is None:
                self.slots.commit(num, state, 0 if refused is not None else 1)
        if refused is None and rule.state is not None:
            state[2] += 1
        headers = (
            rate_headers(
                rule,
                state[0] - mono if state[0] > mono else 0.0,
                state[1] - mono if state[1] > mono else 0.0,
            )
            if rule.rpm_i or rule.tpm_i
            else []
        )
        if refused is not None:
            raise refusal(refused[0], refused[1], refused[2], reserve, headers)
        if rule.budgets:
            self.budgets.reserve(num, reserve)
        return Ticket(key, reserve, headers, None, rule)

    def settle(self, ticket: Ticket, used: int, mono: float | None = None) -> None:
        """The request is over and used ``used`` tokens (its reservation when it did not say)."""
        if not ticket.open:
            return
        ticket.open = False
        rule = ticket.rule or self._rule(ticket.key)
        num = ticket.key.num
        state = rule.state
        if state is not None:  # one process's counters
            if rule.tpm_i and used != ticket.reserved:
                state[1] = gcra.refund(state[1], ticket.reserved - used, rule.tpm_i)
            state[2] -= 1
        else:
            state = self.slots.begin(num)
            try:
                if rule.tpm_i and used != ticket.reserved:
                    state[1] = gcra.refund(state[1], ticket.reserved - used, rule.tpm_i)
            finally:
                self.slots.commit(num, state, -1)
        if rule.budgets:
            self.budgets.settle(num, ticket.reserved, used)


def refusal(code: str, n: int, wait: float, cost: int, headers: Headers) -> LimitExceeded:
    """The 429 of limit ``code`` (of ``n``), with ``Retry-After`` added to ``headers``."""
    retry = max(int(wait + 0.999), 1)
    headers.append((b"retry-after", b"%d" % retry))
    message = MESSAGES[code].format(n=n, cost=cost)
    return LimitExceeded(code, f"Rate limit exceeded: {message}. Retry after {retry}s.", wait, headers)


def rate_headers(rule: _Rule, rpm_ahead: float, tpm_ahead: float) -> Headers:
    """OpenAI's x-ratelimit-* for the rates ``rule`` has; ``*_ahead``: how far each GCRA state runs
    ahead of now (0 when the bucket is full)."""
    out: Headers = []
    if rule.rpm_i:
        rem = int((WINDOW_S - rpm_ahead) / rule.rpm_i + 1e-9)
        out += (
            (b"x-ratelimit-limit-requests", rule.rpm_b),
            (b"x-ratelimit-remaining-requests", b"%d" % rem if rem > 0 else b"0"),
            (
                b"x-ratelimit-reset-requests",
                _MILLIS[int(rpm_ahead * 1000 + 0.5)]
                if rpm_ahead < 1.0
                else _SECONDS[int(rpm_ahead + 0.999)]
                if rpm_ahead <= 60.0
                else duration(rpm_ahead).encode(),
            ),
        )
    if rule.tpm_i:
        rem = int((WINDOW_S - tpm_ahead) / rule.tpm_i + 1e-9)
        out += (
            (b"x-ratelimit-limit-tokens", rule.tpm_b),
            (b"x-ratelimit-remaining-tokens", b"%d" % rem if rem > 0 else b"0"),
            (
                b"x-ratelimit-reset-tokens",
                _MILLIS[int(tpm_ahead * 1000 + 0.5)]
                if tpm_ahead < 1.0
                else _SECONDS[int(tpm_ahead + 0.999)]
                if tpm_ahead <= 60.0
                else duration(tpm_ahead).encode(),
            ),
        )
    return out
