"""Cached answers in this process: bounded by bytes, least recently used first out, entries expire.

Under ``aib serve --workers N`` each worker has its own (use ``cache.backend: redis`` to share one).
Every method runs on the event loop thread: no locks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aib.cache.entry import Entry


class MemoryStore:
    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self.stored = 0  # entries written (a counter: aib_cache_stored_total)
        self.stored_bytes = 0
        self.evictions = 0  # entries pushed out to make room (not expiries)
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(key, entry)
            self.expired += 1
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        entries = self._entries
        while self.bytes + size > self.max_bytes and entries:
            _, e = entries.popitem(last=False)
            self.bytes -= e.size
            self.evictions += 1
        entries[key] = entry
        self.bytes += size
        self.stored += 1
        self.stored_bytes += len(entry.body)

    def _drop(self, key: str, entry: Entry) -> None:
        del self._entries[key]
        self.bytes -= entry.size

    def peek(self, key: str) -> Entry | None:
        """An entry without touching its place (``aib cache inspect``)."""
        entry = self._entries.get(key)
        return entry if entry is not None and entry.expires_at > time.time() else None

    def flush(self, route: str | None = None) -> int:
        """Drop every entry (of ``route``); returns how many."""
        if route is None:
            n = len(self._entries)
            self._entries.clear()
            self.bytes = 0
            return n
        gone = [k for k, e in self._entries.items() if e.route == route]
        for k in gone:
            self._drop(k, self._entries[k])
        return len(gone)

    def stats(self) -> dict[str, Any]:
        now = time.time()
        routes: dict[str, dict[str, int]] = {}
        for e in self._entries.values():
            if e.expires_at <= now:
                continue
            r = routes.setdefault(e.route, {"entries": 0, "bytes": 0})
            r["entries"] += 1
            r["bytes"] += len(e.body)
        return {
            "backend": self.kind,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "evictions": self.evictions,
            "expired": self.expired,
            "routes": routes,
        }
