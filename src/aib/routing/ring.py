"""A consistent-hash ring: keys to members, so that adding or removing a member moves only its share.

Each member gets ``points`` positions on a 64-bit circle (more for a larger weight); a key goes to the
first member clockwise from its own position. Positions come from BLAKE2b, not Python's ``hash``, so
every worker process (and every restart) puts a key on the same member. Pure: no state, no I/O.

:meth:`Ring.walk` yields the members in the order a key meets them, which the bounded-load rule
(:mod:`aib.routing.affinity`) walks until a member has room; a member that is unavailable is skipped,
which moves exactly its keys (to the members that follow it), as if it had been removed.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterator, Sequence

POINTS_PER_MEMBER = 64  # positions per unit of weight: ~±13 % spread of shares for a few members


def position(data: bytes) -> int:
    """A stable 64-bit position on the ring."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """Members by name, with weights (a weight of 0 still gets one point: it is then a last resort)."""

    __slots__ = ("_owners", "_points", "members")

    def __init__(self, members: Sequence[str], weights: Sequence[float] | None = None) -> None:
        if weights is not None and len(weights) != len(members):
            raise ValueError("one weight per member")
        self.members = tuple(members)
        pairs: list[tuple[int, int]] = []
        for i, name in enumerate(self.members):
            w = 1.0 if weights is None else weights[i]
            n = max(round(POINTS_PER_MEMBER * w), 1)
            base = name.encode()
            pairs.extend((position(base + b"#%d" % k), i) for k in range(n))
        pairs.sort()
        self._points = [p for p, _ in pairs]
        self._owners = [i for _, i in pairs]

    def walk(self, key: bytes) -> Iterator[int]:
        """Member indexes in the order ``key`` meets them going clockwise, each once."""
        n = len(self._points)
        if n == 0:
            return
        start = bisect_right(self._points, position(key))
        seen: set[int] = set()
        total = len(self.members)
        for k in range(n):
            owner = self._owners[(start + k) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == total:
                    return

    def owner(self, key: bytes, allowed: set[int] | None = None) -> int | None:
        """The first member ``key`` meets (among ``allowed``); None when there is none."""
        for i in self.walk(key):
            if allowed is None or i in allowed:
                return i
        return None
