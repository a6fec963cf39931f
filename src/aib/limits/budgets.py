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
from dataclasses import dataclass


def day_and_month(now: float) -> tuple[str, str]:
    t = time.gmtime(now)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_year:04d}-{t.tm_mon:02d}"


def next_day(now: float) -> float:
    return (int(now) // 86400 + 1) * 86400.0


def next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


@dataclass(slots=True)
class _Tally:
    day: int = 0  # charged today by this process, not yet in the store's totals
    month: int = 0
    reserved: int = 0  # held by this process's requests in flight
    flushing: int = 0  # on its way to the store: counted until the totals that include it arrive


class Budgets:
    def __init__(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.day, self.month = day_and_month(now)
        self._day_ends = next_day(now)
        self._month_ends = next_month(now)
        self._totals: dict[int, tuple[int, int]] = {}  # key num -> the store's (day, month) totals
        self._tally: dict[int, _Tally] = {}

    def _roll(self, now: float) -> None:
        if now < self._day_ends:
            return
        new_day, new_month = day_and_month(now)
        month_changed = new_month != self.month
        self.day, self.month = new_day, new_month
        self._day_ends = next_day(now)
        self._month_ends = next_month(now)
        self._totals = {n: (0, 0 if month_changed else m) for n, (_, m) in self._totals.items()}
        for t in self._tally.values():
            t.day = t.flushing = 0
            if month_changed:
                t.month = 0

    def today(self, now: float) -> str:
        """The UTC day of ``now`` (rolling the budgets over at midnight)."""
        self._roll(now)
        return self.day

    def check(
        self, num: int, day_limit: int | None, month_limit: int | None, cost: int, now: float
    ) -> tuple[str, float] | None:
        """None when ``cost`` more tokens fit both budgets, else (limit name, seconds until it resets)."""
        self._roll(now)
        day, month = self._totals.get(num, (0, 0))
        t = self._tally.get(num)
        if t is not None:
            day += t.day + t.reserved + t.flushing
            month += t.month + t.reserved + t.flushing
        if day_limit is not None and day + cost > day_limit:
            return "tokens_per_day", self._day_ends - now
        if month_limit is not None and month + cost > month_limit:
            return "tokens_per_month", self._month_ends - now
        return None

    def used(self, num: int) -> tuple[int, int]:
        """(today, this month) as this process sees it, reservations included."""
        day, month = self._totals.get(num, (0, 0))
        t = self._tally.get(num)
        if t is not None:
            extra = t.reserved + t.flushing
            return day + t.day + extra, month + t.month + extra
        return day, month

    def reserve(self, num: int, tokens: int) -> None:
        t = self._tally.get(num)
        if t is None:
            t = self._tally[num] = _Tally()
        t.reserved += tokens

    def settle(self, num: int, reserved: int, charged: int) -> None:
        t = self._tally.get(num)
        if t is None:
            t = self._tally[num] = _Tally()
        t.reserved -= reserved
        t.day += charged
        t.month += charged

    def take_pending(self) -> None:
        """The tally is on its way to the store (as usage rows): it counts as ``flushing`` until
        the totals that include it come back (:meth:`refreshed`)."""
        for t in self._tally.values():
            t.flushing += t.day
            t.day = t.month = 0

    def refreshed(self, day: str, totals: dict[int, tuple[int, int]]) -> None:
        """The store's totals for ``day``, read after the tally was written."""
        for t in self._tally.values():
            t.flushing = 0
        if day == self.day:
            self._totals = totals

    def forget_flush(self) -> None:
        """Writing the tally failed: count it again as charged here (it is retried next time)."""
        for t in self._tally.values():
            t.day += t.flushing
            t.month += t.flushing
            t.flushing = 0
