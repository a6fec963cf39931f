"""The generic cell rate algorithm (GCRA), the arithmetic of a token bucket in one number.

A limit of ``limit`` units per ``window`` seconds gives each unit an ``interval = window / limit``.
The state is the *theoretical arrival time* ``tat``: when the bucket would be full again. A request
costing ``cost`` units is admitted when, after it, ``tat`` runs at most one ``window`` ahead of now:
so up to ``limit`` units at once from a full bucket, then ``limit`` per ``window`` as they refill.
Over any span of ``t`` seconds at most ``limit + limit * t / window`` units are admitted.

Pure functions of numbers (no clock, no I/O): the same arithmetic serves memory, shared memory and a
Redis script, and property tests drive it with any interleaving.
"""

from __future__ import annotations

import math


def take(tat: float, now: float, cost: float, interval: float, window: float) -> tuple[float, float]:
    """Try to take ``cost`` units. Returns ``(new tat, 0.0)`` when admitted, else ``(tat, wait)``
    with ``wait`` the seconds until it would be. A cost above the whole window's worth is charged as
    the whole window: such a request waits for a full bucket, then passes."""
    base = tat if tat > now else now
    new = base + min(cost * interval, window)
    ahead = new - now
    if ahead > window + 1e-9:
        return tat, ahead - window
    return new, 0.0


def refund(tat: float, units: float, interval: float) -> float:
    """Give back (``units`` > 0) or charge more (``units`` < 0) after the fact: settle a reservation."""
    return tat - units * interval


def remaining(tat: float, now: float, interval: float, window: float) -> int:
    """Units that could be taken now."""
    ahead = tat - now if tat > now else 0.0
    return max(math.floor((window - ahead) / interval + 1e-9), 0)


def reset_after(tat: float, now: float) -> float:
    """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
    return tat - now if tat > now else 0.0
