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
from dataclasses import dataclass, field

from aib.auth.keys import ClientKey
from aib.limits import gcra
from aib.limits.budgets import Budgets
from aib.limits.slots import Slots

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
    """A key's limit refused the request: 429 with ``Retry-After`` and the rate headers."""

    def __init__(self, code: str, message: str, retry_after_s: float, headers: Headers) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = headers


@dataclass(slots=True)
class Ticket:
    """What an admitted request holds until :meth:`Limiter.settle`."""

    key: ClientKey
    reserved: int  # tokens reserved against the token rate and the budgets
    headers: Headers = field(default_factory=list)
    open: bool = True


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


class Limiter:
    def __init__(self, slots: Slots, budgets: Budgets | None = None) -> None:
        self.slots = slots
        self.budgets = budgets or Budgets()

    def admit(
        self, key: ClientKey, reserve: int, mono: float | None = None, now: float | None = None
    ) -> Ticket:
        """Take the request's place, one request and ``reserve`` tokens, or raise :class:`LimitExceeded`.

        ``mono``: the monotonic clock (rates, shared by every process of the machine); ``now``: wall
        time (budget days and months)."""
        mono = time.monotonic() if mono is None else mono
        rpm, tpm, conc = key.rpm, key.tpm, key.concurrency
        state = self.slots.begin(key.num)
        refused: tuple[str, int, float] | None = None
        rpm_tat, tpm_tat = state[0], state[1]
        try:
            if conc is not None and state[2] >= conc:
                refused = ("concurrent_requests", conc, 1.0)
            if refused is None and rpm is not None:
                rpm_tat, wait = gcra.take(state[0], mono, 1, WINDOW_S / rpm, WINDOW_S)
                if wait:
                    refused = ("requests_per_minute", rpm, wait)
            if refused is None and tpm is not None:
                tpm_tat, wait = gcra.take(state[1], mono, reserve, WINDOW_S / tpm, WINDOW_S)
                if wait:
                    refused = ("tokens_per_minute", tpm, wait)
            if refused is None and (key.budget_day is not None or key.budget_month is not None):
                over = self.budgets.check(
                    key.num, key.budget_day, key.budget_month, reserve, time.time() if now is None else now
                )
                if over is not None:
                    limit = key.budget_day if over[0] == "tokens_per_day" else key.budget_month
                    refused = (over[0], limit or 0, over[1])
            if refused is None:
                state[0], state[1] = rpm_tat, tpm_tat
        finally:
            self.slots.commit(key.num, state, 0 if refused is not None else 1)
        headers = self._headers(key, state[0], state[1], mono)
        if refused is not None:
            code, n, wait = refused
            retry = max(int(wait + 0.999), 1)
            headers.append((b"retry-after", b"%d" % retry))
            message = MESSAGES[code].format(n=n, cost=reserve)
            raise LimitExceeded(code, f"Rate limit exceeded: {message}. Retry after {retry}s.", wait, headers)
        if key.budget_day is not None or key.budget_month is not None:
            self.budgets.reserve(key.num, reserve)
        return Ticket(key, reserve, headers)

    def settle(self, ticket: Ticket, used: int, mono: float | None = None) -> None:
        """The request is over and used ``used`` tokens (its reservation when it did not say)."""
        if not ticket.open:
            return
        ticket.open = False
        key = ticket.key
        state = self.slots.begin(key.num)
        try:
            if key.tpm is not None and used != ticket.reserved:
                state[1] = gcra.refund(state[1], ticket.reserved - used, WINDOW_S / key.tpm)
        finally:
            self.slots.commit(key.num, state, -1)
        if key.budget_day is not None or key.budget_month is not None:
            self.budgets.settle(key.num, ticket.reserved, used)

    def _headers(self, key: ClientKey, rpm_tat: float, tpm_tat: float, mono: float) -> Headers:
        out: Headers = []
        if key.rpm is not None:
            interval = WINDOW_S / key.rpm
            out += [
                (b"x-ratelimit-limit-requests", b"%d" % key.rpm),
                (
                    b"x-ratelimit-remaining-requests",
                    b"%d" % gcra.remaining(rpm_tat, mono, interval, WINDOW_S),
                ),
                (b"x-ratelimit-reset-requests", duration(gcra.reset_after(rpm_tat, mono)).encode()),
            ]
        if key.tpm is not None:
            interval = WINDOW_S / key.tpm
            out += [
                (b"x-ratelimit-limit-tokens", b"%d" % key.tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % gcra.remaining(tpm_tat, mono, interval, WINDOW_S)),
                (b"x-ratelimit-reset-tokens", duration(gcra.reset_after(tpm_tat, mono)).encode()),
            ]
        return out
