"""The SQLite request log: every request and each of its upstream attempts, written off the request path.

:meth:`RequestLog.request_done` only appends the record to a bounded queue (or counts a drop when the
queue is full). One background thread drains the queue in batches, one transaction per batch, into a
WAL-mode database, and applies retention (age, row count) now and then. The request path never waits
for the disk: when the queue is full, the disk is full, the file cannot be written or another
process holds the lock, entries are dropped, counted by reason and warned about once per reason.

Reading (the CLI, a UI) goes through :class:`aib.observe.requestquery.RequestLogReader`.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from aib.observe.migrations import migrate
from aib.observe.records import RequestRecord

log = logging.getLogger("aib.requestlog")

DROP_REASONS = ("queue_full", "disk_full", "locked", "unwritable", "error")
_REASON_TEXT = {
    "queue_full": "the writer queue is full (the disk is slower than the request rate)",
    "disk_full": "the disk (or the size cap AIB_REQUEST_LOG_MAX_MB) is full",
    "locked": "another process holds the database lock",
    "unwritable": "the database file cannot be opened or written",
    "error": "SQLite reported an error",
}
REQUEST_COLUMNS = (
    "id", "request_id", "ts", "endpoint", "model", "route", "matched_by", "rule", "provider", "upstream", "status",
    "stream", "ttfb_ms", "total_ms", "overhead_ms", "prompt_tokens", "completion_tokens", "fallbacks", "error",
    "error_code", "plan_version", "client_disconnected",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "req_id",
    "request_id",
    "n",
    "target",
    "provider",
    "route",
    "status",
    "error",
    "ttfb_ms",
    "duration_ms",
    "ok",
)
BODY_COLUMNS = ("req_id", "request", "response")
ROWS_PER_INSERT = 100  # x 22 columns: far below SQLite's 32766 variables per statement
DELETE_CHUNK = 5000


def connect(path: Path, busy_timeout_ms: int = 200) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, foreign keys on."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def _insert_many(
    db: sqlite3.Connection, table: str, columns: tuple[str, ...], rows: list[tuple[object, ...]]
) -> None:
    """Multi-row INSERTs of up to ``ROWS_PER_INSERT`` rows: one SQLite call (one GIL release) per chunk,
    and the full-size statement is compiled once (sqlite3 caches statements by their text)."""
    if not rows:
        return
    one = "(" + ",".join("?" * len(columns)) + ")"
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    for i in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[i : i + ROWS_PER_INSERT]
        db.execute(insert + ",".join([one] * len(chunk)), [v for row in chunk for v in row])


def drop_reason(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "disk_full"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "locked"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM")) or isinstance(
        exc, OSError
    ):
        return "unwritable"
    return "error"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _text(s: str | None) -> str | None:
    """Text SQLite and JSON can store (lone surrogates from odd upstream bytes replaced)."""
    return s if s is None or s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


def _int(v: object) -> int | None:
    return v if type(v) is int else None


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
        flush_interval_s: float = 0.25,
        log_bodies: bool = False,
        max_db_mb: float | None = None,
        redact: Callable[[str | None], str | None] | None = None,
        redact_bytes: Callable[[bytes | None], bytes | None] | None = None,
        busy_timeout_ms: int = 200,
        reopen_after_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.retention_interval_s = retention_interval_s
        self.queue_size = queue_size
        self.batch_size = max(batch_size, 1)
        self.flush_interval_s = flush_interval_s
        self.log_bodies = log_bodies
        self.max_db_mb = max_db_mb
        self.busy_timeout_ms = busy_timeout_ms
        self.reopen_after_s = reopen_after_s
        self._redact = redact or (lambda s: s)
        self._redact_bytes = redact_bytes or (lambda b: b)
        self._q: deque[RequestRecord] = deque()
        self._queue_full = 0  # counted by the request path's thread only
        self._dropped = dict.fromkeys(DROP_REASONS[1:], 0)  # counted by the writer thread only
        self._warned: set[str] = set()
        self.written = 0  # rows committed
        self.batches = 0  # transactions committed
        self._enqueued = 0
        self._handled = 0
        self._done = threading.Condition()
        self._wake = threading.Event()
        self._stop = False
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._open_failure = "unwritable"  # why the database could not be opened, last time
        self._next_retention = 0.0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ request path (event loop)

    def request_done(self, record: RequestRecord) -> None:
        if len(self._q) >= self.queue_size:
            self._queue_full += 1
            self._warn_once("queue_full")
            return
        self._q.append(record)
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
            self._close_db()

    def drops(self) -> tuple[dict[str, int], int]:
        """({reason: entries dropped}, entries queued now) for metrics."""
        counts = dict(self._dropped)
        counts["queue_full"] = self._queue_full
        return counts, len(self._q)

    @property
    def dropped_total(self) -> int:
        return sum(self.drops()[0].values())

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                stopping = self._stop
                self._drain()
                if self._db is not None and time.monotonic() >= self._next_retention:
                    self.apply_retention()
                if stopping:
                    break
        finally:
            self._close_db()

    def _drain(self) -> None:
        q = self._q
        while q:
            n = min(len(q), self.batch_size)
            batch = [q.popleft() for _ in range(n)]
            try:
                self._write(batch)
            finally:
                with self._done:
                    self._handled += n
                    self._done.notify_all()

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if time.monotonic() < self._next_open:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = connect(self.path, self.busy_timeout_ms)
            try:
                applied = migrate(db)
                if self.max_db_mb is not None:
                    page = db.execute("PRAGMA page_size").fetchone()[0]
                    db.execute(f"PRAGMA max_page_count = {max(int(self.max_db_mb * 1024 * 1024 / page), 8)}")
            except BaseException:
                db.close()
                raise
        except (sqlite3.Error, OSError) as exc:
            self._next_open = time.monotonic() + self.reopen_after_s
            self._open_failure = drop_reason(exc)
            self._warn_once(self._open_failure, exc)
            return None
        if applied:
            log.info("request log %s: applied %s", self.path, ", ".join(applied))
        self._db = db
        self._next_retention = 0.0
        return db

    def _write(self, batch: list[RequestRecord]) -> None:
        db = self._open()
        if db is None:
            self._drop(self._open_failure, len(batch))
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                # ids are given here (the write lock is held) so each table is one statement
                first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM requests").fetchone()[0]
                requests, attempts, bodies = self._rows(batch, first)
                _insert_many(db, "requests", REQUEST_COLUMNS, requests)
                _insert_many(db, "attempts", ATTEMPT_COLUMNS, attempts)
                _insert_many(db, "bodies", BODY_COLUMNS, bodies)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            reason = drop_reason(exc)
            self._drop(reason, len(batch), exc)
            if reason == "unwritable":  # the file went away or became read-only: open it again later
                self._close_db()
                self._next_open = time.monotonic() + self.reopen_after_s
            return
        except Exception as exc:  # a record SQLite cannot take (a bug): lose the batch, never the writer
            log.debug("request log batch failed", exc_info=True)
            self._drop("error", len(batch), exc)
            return
        self.written += len(batch)
        self.batches += 1

    def _rows(self, batch: list[RequestRecord], first_id: int) -> tuple[list[tuple[object, ...]], ...]:
        redact, bodies_on = self._redact, self.log_bodies
        requests: list[tuple[object, ...]] = []
        attempts: list[tuple[object, ...]] = []
        bodies: list[tuple[object, ...]] = []
        for row_id, r in enumerate(batch, first_id):
            rid = r.request_id
            requests.append(
                (
                    row_id, rid, r.started_at, r.endpoint, r.model, r.route, r.matched_by, r.rule, r.provider,
                    r.upstream, r.status, int(r.stream), _ms(r.ttfb_s), _ms(r.total_s), _ms(r.overhead_s),
                    _int(r.prompt_tokens), _int(r.completion_tokens), r.fallbacks,
                    _text(redact(r.error)) if r.error else None, r.error_code, r.plan_version, int(r.client_disconnected),
                )
            )  # fmt: skip
            for n, a in enumerate(r.attempts, 1):
                attempts.append(
                    (
                        row_id, rid, n, a.target, a.provider, a.route, a.status,
                        _text(redact(a.error)) if a.error else None, _ms(a.ttfb_s), _ms(a.duration_s), int(a.ok),
                    )
                )  # fmt: skip
            if bodies_on and (r.request_body or r.response_body):
                bodies.append(
                    (row_id, self._redact_bytes(r.request_body), self._redact_bytes(r.response_body))
                )
        return requests, attempts, bodies

    def apply_retention(self, now: float | None = None) -> int:
        """Delete rows older than ``retention_days`` and beyond the newest ``retention_rows``.

        The writer thread runs this every ``retention_interval_s``; call it directly only while the
        writer is not running (e.g. from a maintenance command).
        """
        db = self._open()
        if db is None:
            return 0
        self._next_retention = time.monotonic() + self.retention_interval_s
        cutoff = (now or time.time()) - self.retention_days * 86400.0
        deleted = 0
        try:
            while True:
                n = db.execute(
                    "DELETE FROM requests WHERE id IN (SELECT id FROM requests WHERE ts < ? LIMIT ?)",
                    (cutoff, DELETE_CHUNK),
                ).rowcount
                deleted += n
                if n < DELETE_CHUNK:
                    break
            row = db.execute(
                "SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?", (self.retention_rows,)
            ).fetchone()
            if row is not None:
                deleted += db.execute("DELETE FROM requests WHERE id <= ?", (row[0],)).rowcount
        except sqlite3.Error as exc:  # locked or full: try again next time
            log.debug("request log retention skipped: %s", exc)
        if deleted:
            log.info("request log %s: retention removed %d rows", self.path, deleted)
        return deleted

    def _drop(self, reason: str, n: int, exc: BaseException | None = None) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + n
        self._warn_once(reason, exc)

    def _warn_once(self, reason: str, exc: BaseException | None = None) -> None:
        if reason in self._warned:
            return
        self._warned.add(reason)
        detail = f" ({exc})" if exc is not None else ""
        log.warning(
            "request log %s: dropping entries because %s%s. Requests are not affected; drops are counted in "
            "aib_request_log_dropped_total{reason=%r}. This is said once.",
            self.path, _REASON_TEXT.get(reason, reason), detail, reason,
        )  # fmt: skip

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
