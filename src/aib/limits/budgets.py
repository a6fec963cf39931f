"""Token budgets per UTC day and month, checked against totals the key store sums across processes.

Each gateway process charges what its requests used to a local tally; once a second
(:meth:`Budgets.take_pending` / :meth:`Budgets.refreshed`, driven by :mod:`aib.auth.gate`) the tally
goes to the store and the totals come back. A check sees those totals plus this process's tally plus
what its requests in flight reserved, so in one process a budget is exact, and across workers or
replicas sharing the store it can be crossed by at most about one second of the others' traffic.
"""

from __future__ import annotations

import calendar
import time


def day_and_month(now: float) -> tuple[str, str]:
    t = time.gmtime(now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_year:04d}-{t.tm_mon:02d}"


def next_day(now: float) -> float:
    return (int(now) // 86400 + 1) * 86400.0


def next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


class Ledger:
    """One key's tokens as this process sees them: the store's totals (all processes, as last read)
    and what this process charged since, has on its way to the store, and holds for requests in
    flight. Kept for the process's life, so the limiter can hold on to it."""

    __slots__ = ("day", "flushing", "month", "reserved", "store_day", "store_month")

    def __init__(self) -> None:
        self.store_day = self.store_month = 0  # the store's totals (every process)
        self.day = self.month = 0  # charged here, not yet written to the store
        self.reserved = 0  # held by this process's requests in flight
        self.flushing = 0  # written, not yet in the totals read back

    def used(self) -> tuple[int, int]:
        extra = self.reserved + self.flushing
        return self.store_day + self.day + extra, self.store_month + self.month + extra


class Budgets:
    def __init__(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.day, self.month = day_and_month(now)
        self.day_ends = next_day(now)
        self.month_ends = next_month(now)
        self._ledgers: dict[int, Ledger] = {}

    def ledger(self, num: int) -> Ledger:
        led = self._ledgers.get(num)
        if led is None:
            led = self._ledgers[num] = Ledger()
        return led

    def roll(self, now: float) -> None:
        """Start a new UTC day (and month) once ``now`` is past midnight."""
        if now < self.day_ends:
            return
        new_day, new_month = day_and_month(now)
        month_changed = new_month != self.month
        self.day, self.month = new_day, new_month
        self.day_ends = next_day(now)
        self.month_ends = next_month(now)
        for led in self._ledgers.values():
            led.store_day = led.day = led.flushing = 0
            if month_changed:
                led.store_month = led.month = 0

    def today(self, now: float) -> str:
        """The UTC day of ``now`` (rolling the budgets over at midnight)."""
        if now >= self.day_ends:
            self.roll(now)
        return self.day

    def check(
        self, led: Ledger, day_limit: int | None, month_limit: int | None, cost: int, now: float
    ) -> tuple[str, float] | None:
        """None when ``cost`` more tokens fit both budgets, else (limit name, seconds until it resets)."""
        if now >= self.day_ends:
            self.roll(now)
        extra = led.reserved + led.flushing + cost
        if day_limit is not None and led.store_day + led.day + extra > day_limit:
            return "tokens_per_day", self.day_ends - now
        if month_limit is not None and led.store_month + led.month + extra > month_limit:
            return "tokens_per_month", self.month_ends - now
        return None

    def used(self, num: int) -> tuple[int, int]:
        """(today, this month) as this process sees it, reservations included."""
        led = self._ledgers.get(num)
        return led.used() if led is not None else (0, 0)

    def take_pending(self) -> None:
        """The tally is on its way to the store (as usage rows): it counts as ``flushing`` until
        the totals that include it come back (:meth:`refreshed`)."""
        for led in self._ledgers.values():
            led.flushing += led.day
            led.day = led.month = 0

    def refreshed(self, day: str, totals: dict[int, tuple[int, int]]) -> None:
        """The store's totals for ``day``, read after the tally was written."""
        current = day == self.day
        for num, led in self._ledgers.items():
            led.flushing = 0
            if current:
                led.store_day, led.store_month = totals.get(num, (0, 0))
        if current:
            for num in totals.keys() - self._ledgers.keys():  # keys this process has not used yet
                led = self.ledger(num)
                led.store_day, led.store_month = totals[num]

    def forget_flush(self) -> None:
        """Writing the tally failed: count it again as charged here (it is retried next time)."""
        for led in self._ledgers.values():
            led.day += led.flushing
            led.month += led.flushing
            led.flushing = 0
