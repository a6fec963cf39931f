"""The SQLite request log: migrations, batching, retention, and never blocking or failing a request."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aib.observe import migrations
from aib.observe.logs import Redactor
from aib.observe.records import Attempt, RequestRecord
from aib.observe.requestlog import RequestLog, connect, drop_reason
from aib.observe.requestquery import RequestLogMissing, RequestLogReader, parse_since, percentile
from aib.observe.wire import to_wire
from observe_support import make_record

pytestmark = pytest.mark.unit


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "requests.db"


@pytest.fixture
def rlog(db_path: Path) -> Iterator[RequestLog]:
    log = RequestLog(db_path, flush_interval_s=0.02)
    yield log
    log.close()


def rows(path: Path, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(sql, args).fetchall()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "aib.requestlog" and r.levelno == logging.WARNING
    ]


# ----------------------------------------------------------------------------- schema


def test_migrations_are_named_recorded_and_applied_once(db_path: Path, rlog: RequestLog) -> None:
    rlog.start()
    rlog.request_done(make_record())
    assert rlog.flush()
    names = [r[0] for r in rows(db_path, "SELECT name FROM _migrations ORDER BY name")]
    assert names == ["m001_initial", "m002_bodies", "m003_key_name", "m004_door", "m005_cache"]
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    db = connect(db_path)
    try:
        assert migrations.migrate(db) == []  # nothing new
    finally:
        db.close()


def test_a_new_migration_is_applied_to_an_existing_database(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path.parent.mkdir(parents=True)
    db = connect(db_path)
    migrations.migrate(db)

    def m003_add_tag(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE requests ADD COLUMN tag TEXT")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("m003_add_tag", m003_add_tag)])
    assert migrations.migrate(db) == ["m003_add_tag"]
    assert "tag" in [r[1] for r in db.execute("PRAGMA table_info(requests)")]

    def m004_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE x (a)")
        raise RuntimeError("half-way")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, ("m004_broken", m004_broken)])
    with pytest.raises(RuntimeError):
        migrations.migrate(db)
    # rolled back whole: no table, not recorded
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'x'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM _migrations WHERE name = 'm004_broken'").fetchone() == (0,)
    db.close()


# ----------------------------------------------------------------------------- writing


def test_rows_and_attempts_are_written(db_path: Path, rlog: RequestLog) -> None:
    attempts = [
        Attempt("vllm/big", "vllm", "big", "big", None, "cannot connect to vllm", None, 0.002, False),
        Attempt("ollama/llama3", "ollama", "llama3", "llama3", 200, None, 0.05, 0.2, True),
    ]
    rec = make_record(
        "big",
        route="big",
        upstream="llama3",
        attempts=attempts,
        stream=True,
        ttfb_s=0.051,
        total_s=0.3,
        upstream_s=0.202,
    )
    rlog.start()
    rlog.request_done(rec)
    assert rlog.flush()
    (row,) = rows(
        db_path,
        "SELECT request_id, model, route, matched_by, provider, upstream, status, stream, ttfb_ms, total_ms,"
        " overhead_ms, prompt_tokens, completion_tokens, fallbacks, error, plan_version FROM requests",
    )
    assert row == (
        rec.request_id,
        "big",
        "big",
        "exact",
        "ollama",
        "llama3",
        200,
        1,
        51.0,
        300.0,
        98.0,
        12,
        30,
        1,
        None,
        "v1",
    )
    got = rows(
        db_path,
        "SELECT n, target, provider, status, error, ttfb_ms, duration_ms, ok FROM attempts ORDER BY n",
    )
    assert got == [
        (1, "vllm/big", "vllm", None, "cannot connect to vllm", None, 2.0, 0),
        (2, "ollama/llama3", "ollama", 200, None, 50.0, 200.0, 1),
    ]


def test_entries_are_written_in_batches(db_path: Path) -> None:
    rlog = RequestLog(db_path, batch_size=3, flush_interval_s=0.02)
    for i in range(10):
        rlog.request_done(make_record(request_id=f"r{i}"))
    rlog.start()
    assert rlog.flush()
    rlog.close()
    assert rlog.written == 10 and rlog.batches == 4  # 3 + 3 + 3 + 1, one transaction each
    ids = [r[0] for r in rows(db_path, "SELECT request_id FROM requests ORDER BY id")]
    assert ids == [f"r{i}" for i in range(10)]


def test_many_rows_go_in_several_statements(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aib.observe import store

    monkeypatch.setattr(store, "ROWS_PER_INSERT", 2)
    rlog = RequestLog(db_path, flush_interval_s=0.02)
    for _ in range(7):
        rlog.request_done(make_record())
    rlog.start()
    assert rlog.flush()
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(7,)]
    assert rows(db_path, "SELECT count(*) FROM attempts") == [(7,)]


def test_odd_text_is_stored_and_a_bad_record_never_stops_the_writer(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    rlog = RequestLog(db_path, flush_interval_s=0.01).start()
    rlog.request_done(make_record(status=502, error="upstream sent \udcff bytes"))  # a lone surrogate
    assert rlog.flush()
    bad = make_record(request_id="bad", model="odd \udcff model")  # SQLite cannot bind this text...
    bad.plan_version = object()  # type: ignore[assignment]  # ...nor this: stored as text, not lost
    bad.prompt_tokens = 2**70  # too big for a SQLite integer: stored as a number anyway
    rlog.request_done(bad)
    assert rlog.flush()
    rlog.request_done(make_record(request_id="after"))
    assert rlog.flush()
    rlog.close()
    assert rlog.dropped_total == 0 and rlog.written == 3
    assert rows(db_path, "SELECT error FROM requests WHERE status = 502") == [("upstream sent ? bytes",)]
    [(model, version, tokens)] = rows(
        db_path, "SELECT model, plan_version, prompt_tokens FROM requests WHERE request_id = 'bad'"
    )
    assert model == "odd ? model" and version.startswith("<object object") and tokens == float(2**70)
    assert rows(db_path, "SELECT count(*) FROM requests WHERE request_id = 'after'") == [(1,)]
    assert warnings_of(caplog) == []


def test_close_writes_what_is_queued(db_path: Path) -> None:
    rlog = RequestLog(db_path, flush_interval_s=60).start()
    for _ in range(25):
        rlog.request_done(make_record())
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(25,)]
    RequestLog(db_path).close()  # never started: nothing to do


def test_secrets_are_redacted_and_bodies_only_when_enabled(db_path: Path, tmp_path: Path) -> None:
    redact = Redactor(lambda: ["hunter2-secret-key"])
    rec = make_record(
        status=401,
        error="bad key hunter2-secret-key",
        request_body=b'{"k": "hunter2-secret-key"}',
        response_body=b"{}",
    )
    rec.attempts[0].error = "vllm answered 401: key hunter2-secret-key"
    off = RequestLog(db_path, redact=redact, redact_bytes=redact.bytes, flush_interval_s=0.02).start()
    off.request_done(rec)
    off.close()
    assert rows(db_path, "SELECT count(*) FROM bodies") == [(0,)]
    on_path = tmp_path / "bodies.db"
    on = RequestLog(
        on_path, redact=redact, redact_bytes=redact.bytes, log_bodies=True, flush_interval_s=0.02
    ).start()
    on.request_done(rec)
    on.close()
    assert rows(on_path, "SELECT request, response FROM bodies") == [(b'{"k": "***"}', b"{}")]
    for path in (db_path, on_path):
        dump = "\n".join(sqlite3.connect(path).iterdump())
        assert "hunter2-secret-key" not in dump
        assert "bad key ***" in dump


# ----------------------------------------------------------------------------- never blocking


def test_full_queue_drops_counts_and_warns_once(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rlog = RequestLog(db_path, queue_size=5)  # writer not started: nothing drains the queue
    caplog.set_level(logging.WARNING, "aib.requestlog")
    t0 = time.perf_counter()
    for _ in range(1000):
        rlog.request_done(make_record())
    assert time.perf_counter() - t0 < 1.0
    counts, queued = rlog.drops()
    assert counts["queue_full"] == 995 and queued == 5 and rlog.dropped_total == 995
    assert len(warnings_of(caplog)) == 1
    assert "queue is full" in warnings_of(caplog)[0]
    rlog.start()
    assert rlog.flush()
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(5,)]


def test_full_disk_drops_counts_and_warns_once(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A size cap (PRAGMA max_page_count) makes SQLite answer SQLITE_FULL, as a full disk does."""
    caplog.set_level(logging.WARNING, "aib.requestlog")
    rlog = RequestLog(db_path, max_db_mb=0.06, batch_size=50, flush_interval_s=0.01).start()
    big_error = "x" * 2000
    t0 = time.perf_counter()
    for _ in range(400):
        rlog.request_done(make_record(status=502, error=big_error))
    assert time.perf_counter() - t0 < 1.0  # the request path never waited for the disk
    assert rlog.flush(10)
    rlog.close()
    counts, _ = rlog.drops()
    assert counts["disk_full"] > 0
    assert rlog.written + counts["disk_full"] == 400
    assert [w for w in warnings_of(caplog) if "disk" in w] and len(warnings_of(caplog)) == 1
    # what was written is intact
    (n,) = rows(db_path, "SELECT count(*) FROM requests")[0]
    assert n == rlog.written


def test_locked_database_drops_then_recovers(db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    rlog = RequestLog(db_path, busy_timeout_ms=50, flush_interval_s=0.01).start()
    rlog.request_done(make_record())
    assert rlog.flush()
    holder = sqlite3.connect(
        db_path, isolation_level=None, timeout=10
    )  # waits for the writer if it is mid-write
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        for _ in range(3):
            for _ in range(10):
                rlog.request_done(make_record())
            assert rlog.flush()
        counts, _ = rlog.drops()
        assert counts["locked"] == 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    rlog.request_done(make_record())
    assert rlog.flush()
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(2,)]
    assert len(warnings_of(caplog)) == 1 and "lock" in warnings_of(caplog)[0]


def test_unwritable_path_drops_and_retries_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the folder should be")
    rlog = RequestLog(blocker / "requests.db", flush_interval_s=0.01, reopen_after_s=0.05).start()
    for _ in range(5):
        rlog.request_done(make_record())
    assert rlog.flush()
    assert rlog.drops()[0]["unwritable"] == 5
    blocker.unlink()  # the folder can be made now
    time.sleep(0.06)
    rlog.request_done(make_record())
    assert rlog.flush()
    rlog.close()
    assert rlog.written == 1
    assert len(warnings_of(caplog)) == 1


def test_drop_reasons() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert drop_reason(full) == "disk_full"
    assert drop_reason(sqlite3.OperationalError("database is locked")) == "locked"
    assert drop_reason(OSError("read-only file system")) == "unwritable"
    assert drop_reason(sqlite3.OperationalError("no such table: requests")) == "error"


# ----------------------------------------------------------------------------- retention


def write_all(path: Path, records: list[RequestRecord]) -> None:
    rlog = RequestLog(path, retention_days=3650, flush_interval_s=0.01).start()
    for r in records:
        rlog.request_done(r)
    rlog.close()


def test_retention_by_age_removes_rows_and_their_attempts(db_path: Path) -> None:
    now = time.time()
    write_all(db_path, [make_record(started_at=now - age_days * 86400) for age_days in (3, 2, 0.5, 0)])
    rlog = RequestLog(db_path, retention_days=1)
    assert rlog.apply_retention(now) == 2
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(2,)]
    assert rows(db_path, "SELECT count(*) FROM attempts") == [(2,)]
    assert rows(db_path, "SELECT min(ts) >= ? FROM requests", (now - 86400,)) == [(1,)]


def test_retention_by_row_count_keeps_the_newest(db_path: Path) -> None:
    write_all(db_path, [make_record(request_id=f"r{i:02d}") for i in range(12)])
    rlog = RequestLog(db_path, retention_rows=5)
    assert rlog.apply_retention() == 7
    rlog.close()
    assert [r[0] for r in rows(db_path, "SELECT request_id FROM requests ORDER BY id")] == [
        f"r{i:02d}" for i in range(7, 12)
    ]
    assert rows(db_path, "SELECT count(*) FROM attempts") == [(5,)]


def test_retention_runs_when_the_writer_opens_the_database(db_path: Path) -> None:
    now = time.time()
    write_all(db_path, [make_record(started_at=now - 10 * 86400), make_record(started_at=now)])
    rlog = RequestLog(db_path, retention_days=1, flush_interval_s=0.01).start()
    rlog.request_done(make_record())
    assert rlog.flush()
    rlog.close()
    assert rows(db_path, "SELECT count(*) FROM requests") == [(2,)]


def test_retention_runs_periodically_in_the_writer(db_path: Path, tmp_path: Path) -> None:
    rlog = RequestLog(db_path, retention_rows=3, flush_interval_s=0.01, retention_interval_s=0.05).start()
    try:
        for _ in range(10):
            rlog.request_done(make_record())
        assert rlog.flush()
        deadline = time.monotonic() + 5
        while rows(db_path, "SELECT count(*) FROM requests") != [(3,)]:
            assert time.monotonic() < deadline, "retention did not run"
            time.sleep(0.02)
    finally:
        rlog.close()
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert RequestLog(blocked / "x.db").apply_retention() == 0  # cannot open: nothing to do


# ----------------------------------------------------------------------------- reading


@pytest.fixture
def filled(db_path: Path) -> Path:
    rlog = RequestLog(db_path, flush_interval_s=0.01).start()
    now = time.time()
    for i in range(10):  # llama3: 100..1000 ms, one stream, 10 completion tokens each
        rlog.request_done(
            make_record(
                "llama3", request_id=f"ok-{i}", total_s=(i + 1) / 10, upstream_s=(i + 1) / 10 - 0.001,
                completion_tokens=10, prompt_tokens=5, stream=i == 0, ttfb_s=0.05, started_at=now - 60 + i,
            )
        )  # fmt: skip
    rlog.request_done(
        make_record(
            "big",
            route="big",
            provider="vllm",
            status=502,
            error="vllm answered 500",
            error_code="upstream_error",
            request_id="bad-1",
            started_at=now - 30,
        )
    )
    rlog.request_done(
        make_record(
            "nope",
            route=None,
            matched_by=None,
            provider=None,
            status=404,
            error="unknown model",
            error_code="model_not_found",
            request_id="abcdef123456",
            started_at=now - 7200,
        )
    )
    rlog.close()
    return db_path


def test_query_filters_and_order(filled: Path) -> None:
    with RequestLogReader(filled) as rl:
        latest = rl.query(limit=3)
        assert [r["request_id"] for r in latest] == ["abcdef123456", "bad-1", "ok-9"]  # newest written first
        assert len(rl.query(model="llama3", limit=100)) == 10
        assert [r["request_id"] for r in rl.query(status="5xx")] == ["bad-1"]
        assert [r["request_id"] for r in rl.query(status="404")] == ["abcdef123456"]
        assert {r["request_id"] for r in rl.query(status="error")} == {"bad-1", "abcdef123456"}
        assert len(rl.query(status="ok", limit=100)) == 10
        assert "abcdef123456" not in {r["request_id"] for r in rl.query(since=parse_since("1h"), limit=100)}
        assert [r["request_id"] for r in rl.query(provider="vllm")] == ["bad-1"]
        assert [r["request_id"] for r in rl.query(route="big")] == ["bad-1"]
        first = rl.query(limit=100)[-1]["id"]
        tail = rl.query(after_id=first, limit=2)
        assert [r["id"] for r in tail] == [first + 1, first + 2]  # oldest first when tailing
        with pytest.raises(ValueError, match="status"):
            rl.query(status="weird")


def test_trace_by_id_or_prefix(filled: Path) -> None:
    with RequestLogReader(filled) as rl:
        t = rl.trace("bad-1")
        assert t is not None and t["status"] == 502 and t["error_code"] == "upstream_error"
        assert [a["target"] for a in t["attempts"]] == ["vllm/big"]
        assert "request_body" not in t
        p = rl.trace("abcdef")
        assert p is not None and p["request_id"] == "abcdef123456"
        assert rl.trace("ok-") is None  # too short to be a prefix
        assert rl.trace("missing-request") is None


def test_trace_shows_bodies_when_stored(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    rlog = RequestLog(path, log_bodies=True, flush_interval_s=0.01).start()
    rlog.request_done(
        make_record(request_id="with-body", request_body=b'{"model": "llama3"}', response_body=b'{"id": 1}')
    )
    rlog.close()
    with RequestLogReader(path) as rl:
        t = rl.trace("with-body")
    assert t is not None and t["request_body"] == '{"model": "llama3"}' and t["response_body"] == '{"id": 1}'


def test_stats_per_model(filled: Path) -> None:
    with RequestLogReader(filled) as rl:
        stats = {s["model"]: s for s in rl.stats()}
        llama = stats["llama3"]
        assert llama["requests"] == 10 and llama["errors"] == 0 and llama["error_rate"] == 0
        assert llama["p50_ms"] == 500.0 and llama["p95_ms"] == 1000.0 and llama["p99_ms"] == 1000.0
        assert llama["ttft_p50_ms"] == 50.0
        assert llama["completion_tokens"] == 100 and llama["prompt_tokens"] == 50
        assert llama["tokens_per_s"] == pytest.approx(100 / 5.5)
        assert stats["big"]["error_rate"] == 1.0 and stats["big"]["ttft_p50_ms"] is None
        recent = rl.stats(since=parse_since("1h"))
        assert "nope" not in {s["model"] for s in recent}
        assert [s["model"] for s in rl.stats(model="big")] == ["big"]


def test_stats_tell_unreported_tokens_and_unknown_names_and_the_keys_seen(tmp_path: Path) -> None:
    rlog = RequestLog(tmp_path / "r.db", flush_interval_s=0.01).start()
    try:
        rlog.request_done(make_record("quiet", prompt_tokens=None, completion_tokens=None, key_name="bob"))
        rlog.request_done(make_record("typo", status=404, route=None, provider=None, error="unknown model",
                                      error_code="model_not_found", key_name="alice"))  # fmt: skip
        rlog.request_done(make_record("llama3"))
        assert rlog.flush(5)
    finally:
        rlog.close()
    with RequestLogReader(tmp_path / "r.db") as rl:
        stats = {s["model"]: s for s in rl.stats()}
        assert stats["quiet"]["tokens_reported"] is False and stats["quiet"]["prompt_tokens"] == 0
        assert stats["llama3"]["tokens_reported"] is True and stats["llama3"]["not_found"] == 0
        assert stats["typo"]["not_found"] == 1 == stats["typo"]["requests"]
        assert rl.key_names() == ["alice", "bob"]
        assert rl.key_names(since=time.time() + 60) == []


def test_reader_helpers(tmp_path: Path) -> None:
    with pytest.raises(RequestLogMissing, match="AIB_REQUEST_LOG"):
        RequestLogReader(tmp_path / "none.db")
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("10m", now=1000.0) == 400.0
    assert parse_since("2", now=1000.0) == 880.0
    assert parse_since("1d", now=100000.0) == 100000.0 - 86400
    assert parse_since("1.5h", now=10000.0) == 10000.0 - 5400
    with pytest.raises(ValueError, match="duration"):
        parse_since("yesterday")
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0


def test_reader_never_blocks_the_writer(filled: Path) -> None:
    """Read-only connection: a long read does not stop the writer from committing (WAL)."""
    with RequestLogReader(filled) as rl:
        rl.db.execute("BEGIN")
        rl.db.execute("SELECT count(*) FROM requests").fetchone()
        done = threading.Event()
        rlog = RequestLog(filled, busy_timeout_ms=50, flush_interval_s=0.01).start()
        rlog.request_done(make_record())
        assert rlog.flush()
        rlog.close()
        done.set()
        assert rlog.written == 1 and rlog.dropped_total == 0
        rl.db.execute("COMMIT")


def test_a_file_that_is_not_a_database_is_dropped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    path = tmp_path / "requests.db"
    path.write_bytes(b"this is not SQLite" * 100)
    rlog = RequestLog(path, flush_interval_s=0.01).start()
    rlog.request_done(make_record())
    assert rlog.flush()
    rlog.close()
    assert rlog.drops()[0]["error"] == 1 and rlog.written == 0
    assert len(warnings_of(caplog)) == 1


def test_a_database_that_turns_read_only_is_reopened_later(db_path: Path) -> None:
    write_all(db_path, [make_record()])
    rlog = RequestLog(db_path, reopen_after_s=60)
    rlog.store._db = sqlite3.connect(
        f"file:{db_path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    rlog.store.write([to_wire(make_record())])
    assert rlog.drops()[0]["unwritable"] == 1
    assert rlog.store._db is None and rlog.store.open() is None  # waits before trying again
    rlog.close()


def test_a_failing_redactor_loses_the_batch_not_the_writer(db_path: Path) -> None:
    def broken(text: str | None) -> str | None:
        raise ValueError("redactor bug")

    rlog = RequestLog(db_path, redact=broken, flush_interval_s=0.01).start()
    rlog.request_done(make_record(status=500, error="boom"))
    assert rlog.flush()
    rlog.request_done(make_record())
    assert rlog.flush()
    rlog.close()
    assert rlog.drops()[0]["error"] == 1 and rlog.written == 1
