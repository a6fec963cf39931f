"""Metrics of ``aib serve --workers N``: every worker's counters, whichever worker Prometheus reaches.

Each worker writes a snapshot of its counters (:meth:`MetricsObserver.counters`, marshal) to
``<run dir>/metrics/<pid>.marshal`` once a second, replacing the file atomically, off the request
path. A scrape of ``/metrics`` on any worker adds its own live counters to the other workers'
snapshots, so the totals are at most one second behind for the others and never go down: the snapshot
of a worker that exited stays and keeps counting (a restarted worker writes a file of its own).
In-flight requests are summed over live workers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
from pathlib import Path
from typing import Any

from aib.observe.metrics import MetricsObserver
from aib.pids import alive

SNAPSHOT_EVERY_S = 1.0
SUFFIX = ".marshal"


class WorkerMetrics:
    """Share one worker's counters through ``folder`` and read its siblings' (see the module doc)."""

    def __init__(self, metrics: MetricsObserver, folder: Path, every_s: float = SNAPSHOT_EVERY_S) -> None:
        self.metrics = metrics
        self.folder = folder
        self.every_s = every_s
        self.pid = os.getpid()
        self.path = folder / f"{self.pid}{SUFFIX}"
        self._timer: asyncio.TimerHandle | None = None
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}  # file name -> (mtime_ns, counters)
        metrics.siblings = self.siblings

    def start(self) -> None:
        """Write now and then every ``every_s`` on the running event loop."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write()
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._tick)

    def _tick(self) -> None:
        self.write()
        self._timer = asyncio.get_running_loop().call_later(self.every_s, self._tick)

    def write(self) -> None:
        for hook in self.metrics.before_collect:  # what is batched counts too
            hook()
        data = marshal.dumps(self.metrics.counters())
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError:  # the run folder is gone (the supervisor is stopping): nothing to share
            pass

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.write()  # the last counts stay for the others

    def siblings(self) -> list[dict[str, Any]]:
        """The latest snapshot of every other worker, live or not (in-flight only from live ones)."""
        out: list[dict[str, Any]] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return out
        for entry in entries:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith(".") or name == self.path.name:
                continue
            with contextlib.suppress(OSError, EOFError, ValueError, TypeError):
                mtime = entry.stat().st_mtime_ns
                cached = self._cache.get(name)
                if cached is None or cached[0] != mtime:
                    cached = self._cache[name] = (mtime, marshal.loads(Path(entry.path).read_bytes()))
                counters = cached[1]
                if not alive(int(name.removesuffix(SUFFIX))):
                    counters = {**counters, "inflight": 0}
                out.append(counters)
        return out
