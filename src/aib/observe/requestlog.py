"""The SQLite request log written by a thread of the gateway process (``AIB_OBSERVE_WRITER=thread``).

:meth:`RequestLog.request_done` turns the record into a wire tuple and appends it to a bounded queue
(or counts a drop when the queue is full). One background thread drains the queue in batches into a
:class:`~aib.observe.store.RequestStore` (one transaction per batch, WAL mode) and applies retention
now and then. The request path never waits for the disk: when the queue is full, the disk is full, the
file cannot be written or another process holds the lock, entries are dropped, counted by reason and
warned about once per reason.

``aib serve`` uses the writer process instead (:mod:`aib.observe.client`), which takes this work, and
the access log's, out of the gateway process. Reading (the CLI, a UI) goes through
:class:`aib.observe.requestquery.RequestLogReader`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from aib.observe.records import RequestRecord
from aib.observe.store import DROP_REASONS, RequestStore, connect, drop_reason
from aib.observe.wire import Wire, to_wire

__all__ = ["DROP_REASONS", "RequestLog", "connect", "drop_reason"]

log = logging.getLogger("aib.requestlog")


class RequestLog:
    """Observer that persists records to SQLite from a background thread. Call :meth:`close` at exit."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: float = 14.0,
        retention_rows: int = 1_000_000,
        retention_interval_s: float = 300.0,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        log_bodies: bool = False,
        max_db_mb: float | None = None,
        redact: Callable[[str | None], str | None] | None = None,
        redact_bytes: Callable[[bytes | None], bytes | None] | None = None,
        busy_timeout_ms: int = 200,
        reopen_after_s: float = 30.0,
    ) -> None:
        self.store = RequestStore(
            path,
            retention_days=retention_days,
            retention_rows=retention_rows,
            retention_interval_s=retention_interval_s,
            batch_size=batch_size,
            log_bodies=log_bodies,
            max_db_mb=max_db_mb,
            redact=redact,
            redact_bytes=redact_bytes,
            busy_timeout_ms=busy_timeout_ms,
            reopen_after_s=reopen_after_s,
            warn=self._warn,
        )
        self.path = self.store.path
        self.queue_size = queue_size
        self.batch_size = self.store.batch_size
        self.flush_interval_s = flush_interval_s
        self._q: deque[Wire] = deque()
        self._queue_full = 0  # counted by the request path's thread only
        self._enqueued = 0
        self._handled = 0
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path (event loop)

    def request_done(self, record: RequestRecord) -> None:
        if len(self._q) >= self.queue_size:
            self._queue_full += 1
            self.store.warn_once("queue_full")
            return
        self._q.append(to_wire(record))
        self._enqueued += 1

    # ------------------------------------------------------------------ control

    def start(self) -> RequestLog:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="aib-requestlog", daemon=True)
            self._thread.start()
        return self

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written or dropped; False on timeout."""
        target = self._enqueued
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._handled >= target, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), stop the thread, close the database."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self.store.close()

    def drops(self) -> tuple[dict[str, int], int]:
        """({reason: entries dropped}, entries queued now) for metrics."""
        counts = dict(self.store.dropped)
        counts["queue_full"] = self._queue_full
        return counts, len(self._q)

    @property
    def dropped_total(self) -> int:
        return sum(self.drops()[0].values())

    @property
    def written(self) -> int:
        return self.store.written

    @property
    def batches(self) -> int:
        return self.store.batches

    def apply_retention(self, now: float | None = None) -> int:
        """Retention now (the thread also runs it every ``retention_interval_s``); only while the thread
        is not running (e.g. from a maintenance command)."""
        return self.store.apply_retention(now)

    # ------------------------------------------------------------------ writer thread

    def _warn(self, reason: str, message: str) -> None:
        log.warning("%s", message)

    def _run(self) -> None:
        store = self.store
        try:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                stopping = self._stop
                self._drain()
                if store.retention_due():
                    store.apply_retention()
                if stopping:
                    break
        finally:
            store.close()

    def _drain(self) -> None:
        q = self._q
        while q:
            n = min(len(q), self.batch_size)
            batch = [q.popleft() for _ in range(n)]
            try:
                self.store.write(batch)
            finally:
                with self._done:
                    self._handled += n
                    self._done.notify_all()
