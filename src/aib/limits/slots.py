"""Per-key limit counters: the GCRA states of the request and token rates and the requests in flight.

:class:`LocalSlots` keeps them in this process (one gateway process). :class:`SharedSlots` keeps them
in a file mapped into every worker of ``aib serve --workers N`` (in the supervisor's run folder), one
fixed-size slot per key, so a key's limits hold across workers. A slot is read and written under a
POSIX record lock on its own bytes (``fcntl.lockf``): workers contend only on the same key. Requests
in flight are counted per worker, each worker writing only its own counter and summing all of them:
a worker that dies leaks nothing, because its restarted self zeroes its own counter of a slot the
first time it uses that slot.

A slot is found from the key's number in the store (``num % CAPACITY``) and tagged with it; a slot
holding another key's tag is taken over (that key was deleted long ago: numbers only grow). Two live
keys share a slot only if the store made more than ``CAPACITY`` keys in between (documented).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path
from typing import Protocol

CAPACITY = 65536
SLOT_SIZE = 256
MAX_WORKERS = 64
_HEAD = struct.Struct("<qdd")  # tag, rpm tat, tpm tat
_COUNTER = struct.Struct("<i")  # requests in flight of one worker
_COUNTERS_AT = _HEAD.size


class Slots(Protocol):
    def begin(self, num: int) -> list[float]:
        """``[rpm tat, tpm tat, requests in flight]`` of key ``num``, held until :meth:`commit`."""
        ...

    def commit(self, num: int, state: list[float], inflight_delta: int = 0) -> None:
        """Store the tats of ``state``, add ``inflight_delta`` to this process's in-flight count, release."""
        ...


class LocalSlots:
    """The counters of one process (no locks: the event loop runs one request step at a time)."""

    def __init__(self) -> None:
        self._slots: dict[int, list[float]] = {}

    def begin(self, num: int) -> list[float]:
        state = self._slots.get(num)
        if state is None:
            state = self._slots[num] = [0.0, 0.0, 0.0]
        return state

    def commit(self, num: int, state: list[float], inflight_delta: int = 0) -> None:
        if inflight_delta:
            state[2] += inflight_delta


class SharedSlots:
    """The counters of every worker, in a file mapped by each (see the module doc)."""

    def __init__(self, path: Path, worker: int, workers: int) -> None:
        if not 0 <= worker < workers <= MAX_WORKERS:
            raise ValueError(f"worker {worker} of {workers}: at most {MAX_WORKERS} workers share limits")
        self.path = path
        self.worker = worker
        self.workers = workers
        size = CAPACITY * SLOT_SIZE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)  # sparse: only slots in use take memory
        self._map = mmap.mmap(self._fd, size)
        self._own = _COUNTERS_AT + worker * _COUNTER.size
        self._counters = struct.Struct(f"<{workers}i")
        self._seen: set[int] = set()  # slots this process has used

    def begin(self, num: int) -> list[float]:
        off = (num % CAPACITY) * SLOT_SIZE
        fcntl.lockf(self._fd, fcntl.LOCK_EX, SLOT_SIZE, off)
        if off not in self._seen:  # this process's first use of the slot: nothing of ours in flight
            self._seen.add(off)  # (a restarted worker forgets what its previous life counted)
            _COUNTER.pack_into(self._map, off + self._own, 0)
        tag, rpm, tpm = _HEAD.unpack_from(self._map, off)
        if tag != num:  # first use of this slot by this key: start empty
            self._map[off : off + SLOT_SIZE] = bytes(SLOT_SIZE)
            _HEAD.pack_into(self._map, off, num, 0.0, 0.0)
            return [0.0, 0.0, 0.0]
        return [rpm, tpm, float(sum(self._counters.unpack_from(self._map, off + _COUNTERS_AT)))]

    def commit(self, num: int, state: list[float], inflight_delta: int = 0) -> None:
        off = (num % CAPACITY) * SLOT_SIZE
        try:
            _HEAD.pack_into(self._map, off, num, state[0], state[1])
            if inflight_delta:
                at = off + self._own
                (mine,) = _COUNTER.unpack_from(self._map, at)
                _COUNTER.pack_into(self._map, at, max(mine + inflight_delta, 0))
                state[2] += inflight_delta
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, SLOT_SIZE, off)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
