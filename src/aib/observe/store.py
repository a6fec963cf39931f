"""Writing the SQLite request log: rows from wire tuples, one transaction per batch, retention, drops.

:class:`RequestStore` knows nothing of threads, queues or processes: the thread writer
(:class:`aib.observe.requestlog.RequestLog`) and the writer process (:mod:`aib.observe.writer`) both
hand it batches of wire tuples (:mod:`aib.observe.wire`). It never raises for a batch it cannot write:
the entries are dropped, counted by reason, and ``warn(reason, message)`` is called once per reason.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from aib.observe.migrations import migrate
from aib.observe.wire import CACHE, Wire

log = logging.getLogger("aib.requestlog")

DROP_REASONS = ("queue_full", "disk_full", "locked", "unwritable", "error", "writer_down")
REASON_TEXT = {
    "queue_full": "the writer queue is full (the disk is slower than the request rate)",
    "disk_full": "the disk (or the size cap AIB_REQUEST_LOG_MAX_MB) is full",
    "locked": "another process holds the database lock",
    "unwritable": "the database file cannot be opened or written",
    "error": "SQLite reported an error",
    "writer_down": "the writer process exited (it is restarted; what it had not written is lost)",
}
REQUEST_COLUMNS = (
    "id", "request_id", "ts", "endpoint", "model", "route", "matched_by", "rule", "provider", "upstream", "status",
    "stream", "ttfb_ms", "total_ms", "overhead_ms", "prompt_tokens", "completion_tokens", "fallbacks", "error",
    "error_code", "plan_version", "client_disconnected", "key_name", "door", "prompt_truncated", "cache",
)  # fmt: skip
ATTEMPT_COLUMNS = (
    "req_id", "request_id", "n", "target", "provider", "route", "status", "error", "ttfb_ms", "duration_ms", "ok",
)  # fmt: skip
BODY_COLUMNS = ("req_id", "request", "response")
ROWS_PER_INSERT = 100  # x 27 columns: far below SQLite's 32766 variables per statement
DELETE_CHUNK = 5000

Warn = Callable[[str, str], None]


def connect(path: Path, busy_timeout_ms: int = 200) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, foreign keys on."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    return db


def insert_many(db: sqlite3.Connection, table: str, columns: tuple[str, ...], values: list[object]) -> None:
    """Multi-row INSERTs of up to ``ROWS_PER_INSERT`` rows from ``values`` (row after row, flat): one
    SQLite call per chunk; every statement is compiled once (sqlite3 caches statements)."""
    if not values:
        return
    width = len(columns)
    one = "(" + ",".join("?" * width) + ")"
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    rows, i = len(values) // width, 0
    while rows:
        # full chunks, then the rest in powers of two (73 rows: 64 + 8 + 1): a handful of distinct
        # statements per table, so sqlite3's statement cache stays small. One statement per row count
        # (up to ROWS_PER_INSERT of them, each large) held ~14 MB in the writer after a load test.
        n = ROWS_PER_INSERT if rows >= ROWS_PER_INSERT else 1 << (rows.bit_length() - 1)
        db.execute(insert + ",".join([one] * n), values[i : i + n * width])
        i += n * width
        rows -= n


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


def drop_message(path: Path | None, reason: str, exc: BaseException | str | None = None) -> str:
    detail = f" ({exc})" if exc is not None else ""
    what = f"request log {path}" if path is not None else "access log"
    return (
        f"{what}: dropping entries because {REASON_TEXT.get(reason, reason)}{detail}. Requests "
        f"are not affected; drops are counted in aib_request_log_dropped_total{{reason={reason!r}}}. "
        "This is said once."
    )


def _text(s: str | None) -> str | None:
    """Text SQLite and JSON can store (lone surrogates from odd upstream bytes replaced)."""
    return s if s is None or s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


_BAD_VALUE = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    UnicodeError,
    OverflowError,
    TypeError,
    ValueError,
)


def _clean(v: object) -> object:
    """A value SQLite can bind: text without lone surrogates, 64-bit integers, else its ``str``."""
    t = type(v)
    if v is None or t is float or t is bytes:
        return v
    if t is str:
        return _text(v)  # type: ignore[arg-type]
    if t is int:
        return v if -(2**63) <= v < 2**63 else str(v)  # type: ignore[operator]
    if t is bool:
        return int(v)  # type: ignore[call-overload]
    return str(v)


def _bytes(v: object) -> bytes | None:
    return v if v is None or type(v) is bytes else str(v).encode("utf-8", "replace")


class RequestStore:
    """The request log database of one writer. Not thread-safe: one writer calls it."""

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: float = 14.0,
        retention_rows: int = 1_000_000,
        retention_interval_s: float = 300.0,
        batch_size: int = 500,
        log_bodies: bool = False,
        max_db_mb: float | None = None,
        redact: Callable[[str | None], str | None] | None = None,
        redact_bytes: Callable[[bytes | None], bytes | None] | None = None,
        busy_timeout_ms: int = 200,
        reopen_after_s: float = 30.0,
        warn: Warn | None = None,
        info: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.retention_rows = retention_rows
        self.retention_interval_s = retention_interval_s
        self.batch_size = max(batch_size, 1)
        self.log_bodies = log_bodies
        self.max_db_mb = max_db_mb
        self.busy_timeout_ms = busy_timeout_ms
        self.reopen_after_s = reopen_after_s
        self.redact = redact or (lambda s: s)
        self.redact_bytes = redact_bytes or (lambda b: b)
        self._warn = warn or (lambda reason, msg: log.warning("%s", msg))
        self._info = info or (lambda msg: log.info("%s", msg))
        self.dropped = dict.fromkeys(DROP_REASONS[1:-1], 0)
        self.written = 0  # rows committed
        self.batches = 0  # transactions committed
        self._warned: set[str] = set()
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        self._open_failure = "unwritable"  # why the database could not be opened, last time
        self.next_retention = 0.0  # time.monotonic() of the next retention run

    # ------------------------------------------------------------------ writing

    def write(self, batch: list[Wire]) -> None:
        """Store ``batch``, in transactions of at most ``batch_size`` entries; never raises."""
        for i in range(0, len(batch), self.batch_size):
            self._write(batch[i : i + self.batch_size])

    def _write(self, batch: list[Wire]) -> None:
        db = self.open()
        if db is None:
            self.drop(self._open_failure, len(batch))
            return
        try:
            try:
                self._insert(db, batch, clean=False)
            except _BAD_VALUE:  # a value SQLite cannot take (a bug): store it as text, keep the batch
                log.debug("request log batch had odd values", exc_info=True)
                self._insert(db, batch, clean=True)
        except sqlite3.Error as exc:
            reason = drop_reason(exc)
            self.drop(reason, len(batch), exc)
            if reason == "unwritable":  # the file went away or became read-only: open it again later
                self.close()
                self._next_open = time.monotonic() + self.reopen_after_s
            return
        except Exception as exc:  # anything else (a bug): lose the batch, never the writer
            log.debug("request log batch failed", exc_info=True)
            self.drop("error", len(batch), exc)
            return
        self.written += len(batch)
        self.batches += 1

    def _insert(self, db: sqlite3.Connection, batch: list[Wire], clean: bool) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            # ids are given here (the write lock is held) so each table is one statement
            first = db.execute("SELECT coalesce(max(id), 0) + 1 FROM requests").fetchone()[0]
            requests, attempts, bodies = self.rows(batch, first)
            if clean:
                requests, attempts, bodies = ([_clean(v) for v in t] for t in (requests, attempts, bodies))
            insert_many(db, "requests", REQUEST_COLUMNS, requests)
            insert_many(db, "attempts", ATTEMPT_COLUMNS, attempts)
            insert_many(db, "bodies", BODY_COLUMNS, bodies)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def rows(self, batch: list[Wire], first_id: int) -> tuple[list[object], list[object], list[object]]:
        """The values of the rows of ``batch`` for the three tables, flat (row after row, in column
        order); secrets redacted in errors and bodies."""
        redact = self.redact
        requests: list[object] = []
        attempts: list[object] = []
        bodies: list[object] = []
        add_request, add_attempt = requests.extend, attempts.extend
        for row_id, w in enumerate(batch, first_id):
            (
                rid, endpoint, model, started, stream, route, matched_by, rule, provider, upstream, status, err,
                code, ttfb, total, ups, pt, ct, gone, version, atts, request_body, response_body, key, door, cut, *_,
            ) = w  # fmt: skip
            over = total - ups
            failed = 0
            for n, a in enumerate(atts, 1):
                ok = a[7]
                if not ok:
                    failed += 1
                add_attempt(
                    (
                        row_id, rid, n, a[0], a[1], a[2], a[3], _text(redact(a[4])) if a[4] else None,
                        None if a[5] is None else int(a[5] * 1e6 + 0.5) / 1000.0, int(a[6] * 1e6 + 0.5) / 1000.0, 1 if ok else 0,
                    )
                )  # fmt: skip
            add_request(
                (
                    row_id, rid, started, endpoint, model, route, matched_by, rule, provider, upstream, status,
                    1 if stream else 0, None if ttfb is None else int(ttfb * 1e6 + 0.5) / 1000.0, int(total * 1e6 + 0.5) / 1000.0,
                    int(over * 1e6 + 0.5) / 1000.0 if over > 0.0 else 0.0, pt if type(pt) is int else None,
                    ct if type(ct) is int else None, failed, _text(redact(err)) if err else None, code, version,
                    1 if gone else 0, key, door, 1 if cut else 0, w[CACHE] if len(w) > CACHE else None,
                )
            )  # fmt: skip
            if self.log_bodies and (request_body or response_body):
                bodies.extend(
                    (
                        row_id,
                        self.redact_bytes(_bytes(request_body)),
                        self.redact_bytes(_bytes(response_body)),
                    )
                )
        return requests, attempts, bodies

    # ------------------------------------------------------------------ the connection

    def open(self) -> sqlite3.Connection | None:
        """The connection (opened and migrated on first use); None while the file cannot be opened."""
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
            self.warn_once(self._open_failure, exc)
            return None
        if applied:
            self._info(f"request log {self.path}: applied {', '.join(applied)}")
        self._db = db
        self.next_retention = 0.0
        return db

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # ------------------------------------------------------------------ retention and drops

    def retention_due(self) -> bool:
        return self._db is not None and time.monotonic() >= self.next_retention

    def apply_retention(self, now: float | None = None) -> int:
        """Delete rows older than ``retention_days`` and beyond the newest ``retention_rows``."""
        db = self.open()
        if db is None:
            return 0
        self.next_retention = time.monotonic() + self.retention_interval_s
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
            self._info(f"request log {self.path}: retention removed {deleted} rows")
        return deleted

    def drop(self, reason: str, n: int, exc: BaseException | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        self.warn_once(reason, exc)

    def warn_once(self, reason: str, exc: BaseException | None = None) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            self._warn(reason, drop_message(self.path, reason, exc))
