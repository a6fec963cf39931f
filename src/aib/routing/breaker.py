"""A circuit breaker per deployment.

closed -> (N consecutive failures) -> open -> (cool-down, or the upstream's Retry-After) ->
half_open: one trial request; success closes it, failure opens it again.

An active health probe that finds the upstream up ends the cool-down early (:meth:`probe_ok`): a
server restarted after a crash takes a trial request within one probe interval instead of waiting
out the cool-down, unless the upstream itself asked for the pause (Retry-After).
"""

from __future__ import annotations

import time
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    __slots__ = (
        "_asked",
        "_trial_in_flight",
        "consecutive_failures",
        "cooldown_s",
        "last_error",
        "opened_until",
        "state",
        "threshold",
    )

    def __init__(self, threshold: int = 5, cooldown_s: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.opened_until = 0.0
        self.last_error: str | None = None
        self._trial_in_flight = False
        self._asked = False  # opened because the upstream said when to come back (Retry-After)

    def configure(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s

    def current(self, now: float | None = None) -> BreakerState:
        if self.state == "open" and (time.monotonic() if now is None else now) >= self.opened_until:
            return "half_open"
        return self.state

    def allows(self, now: float | None = None) -> bool:
        """May a request go to this deployment now? (Does not reserve the half-open trial.)"""
        if self.state == "closed":  # the common case, first
            return True
        st = self.current(now)
        return st == "closed" or (st == "half_open" and not self._trial_in_flight)

    def acquire(self, now: float | None = None) -> bool:
        """Reserve the right to send: always in closed, once per cool-down in half-open."""
        if self.state == "closed":
            return True
        st = self.current(now)
        if st == "closed":
            return True
        if st == "half_open" and not self._trial_in_flight:
            self.state = "half_open"
            self._trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self._trial_in_flight = False

    def failure(self, error: str, retry_after_s: float | None = None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.last_error = error
        self.consecutive_failures += 1
        was_trial = self._trial_in_flight
        self._trial_in_flight = False
        if retry_after_s is not None and retry_after_s > 0:
            # the upstream told us when to come back: believe it, even below the threshold
            self._open(now, max(retry_after_s, 0.0))
            self._asked = True
        elif was_trial or self.consecutive_failures >= self.threshold:
            self._open(now, self.cooldown_s)
            self._asked = False

    def probe_ok(self, now: float | None = None) -> bool:
        """An active probe found the upstream up: end an open breaker's cool-down now (it goes
        half-open: one trial request decides), unless the upstream asked for the pause itself.
        True when it did."""
        if self.state != "open" or self._asked:
            return False
        now = time.monotonic() if now is None else now
        if self.opened_until <= now:
            return False  # already half-open
        self.opened_until = now
        return True

    def release(self) -> None:
        """The attempt ended without a verdict (the client went away): free the trial slot."""
        self._trial_in_flight = False

    def _open(self, now: float, seconds: float) -> None:
        self.state = "open"
        self.opened_until = now + seconds

    def snapshot(self, now: float | None = None) -> dict[str, object]:
        now = time.monotonic() if now is None else now
        st = self.current(now)
        return {
            "state": st,
            "consecutive_failures": self.consecutive_failures,
            "retry_in_s": round(max(self.opened_until - now, 0.0), 3) if st == "open" else 0.0,
            "last_error": self.last_error,
        }
