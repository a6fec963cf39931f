"""A flush of the memory cache, passed to every worker of ``aib serve --workers N``.

Each worker has its own memory cache; a flush asked of one (``POST /admin/cache/flush``) writes a small
file in the run folder, and every worker looks at that folder once a second (off the request path)
and flushes what the others asked. Files older than a minute are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import orjson

from aib.cache.stage import ResponseCache

EVERY_S = 1.0
KEEP_S = 60.0


class FlushBroadcast:
    def __init__(self, cache: ResponseCache, folder: Path, every_s: float = EVERY_S) -> None:
        self.cache = cache
        self.folder = folder
        self.every_s = every_s
        self.pid = os.getpid()
        self.since = time.time_ns()
        self._seen: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None

    def announce(self, route: str | None) -> None:
        """This worker flushed (``route``, or everything): tell the others."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{self.pid}.json"
        self._seen.add(name)
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(orjson.dumps({"route": route}))
        os.replace(tmp, self.folder / name)

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _tick(self) -> None:
        self.poll()
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._tick)

    def poll(self) -> int:
        """Apply the flushes other workers announced since this one started; returns how many."""
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:  # no flush yet (or the run folder is gone at shutdown)
            return 0
        done = 0
        now = time.time_ns()
        for name in names:
            if name.startswith(".") or name in self._seen:
                continue
            stamp = name.split("-", 1)[0]
            if not stamp.isdigit():
                continue
            self._seen.add(name)
            if (now - int(stamp)) / 1e9 > KEEP_S:
                with contextlib.suppress(OSError):
                    (self.folder / name).unlink()
                continue
            if int(stamp) < self.since:
                continue
            try:
                route = orjson.loads((self.folder / name).read_bytes()).get("route")
            except (OSError, orjson.JSONDecodeError, AttributeError):
                continue
            if self.cache.memory is not None:
                self.cache.memory.flush(route if isinstance(route, str) else None)
                done += 1
        return done
