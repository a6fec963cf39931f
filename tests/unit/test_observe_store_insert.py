"""``store.insert_many``: every row lands, in order, with a handful of distinct statements per table
(sqlite3 caches one compiled statement per SQL text; one per row count held ~14 MB in the writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from aib.observe.migrations import MIGRATIONS
from aib.observe.store import ROWS_PER_INSERT, insert_many

pytestmark = pytest.mark.unit


def test_any_row_count_is_inserted_whole_with_few_distinct_statements() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    sizes: set[int] = set()  # rows per INSERT statement, i.e. the distinct statement texts compiled
    db.set_trace_callback(lambda sql: sizes.add(sql.count("),(") + 1) if sql.startswith("INSERT") else None)
    total = 0
    for rows in (0, 1, 2, 3, 73, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 2 * ROWS_PER_INSERT + 99, 513):
        values: list[object] = []
        for k in range(rows):
            values += [total + k, f"row {total + k}"]
        insert_many(db, "t", ("a", "b"), values)
        total += rows
    got = db.execute("SELECT a, b FROM t ORDER BY rowid").fetchall()
    assert got == [(k, f"row {k}") for k in range(total)]
    # ROWS_PER_INSERT and the powers of two below it: never one statement per row count
    assert sizes <= {ROWS_PER_INSERT} | {1 << k for k in range(ROWS_PER_INSERT.bit_length())}
    assert ROWS_PER_INSERT in sizes and 1 in sizes


def test_door_and_cut_prompts_reach_the_request_log(tmp_path: Path) -> None:
    """m004_door: the API a request came in on and whether Ollama cut its prompt, one column each; a
    database written before the migration gets the defaults."""
    from aib.observe.store import RequestStore
    from aib.observe.wire import to_wire
    from observe_support import make_record

    db = tmp_path / "requests.db"
    old = sqlite3.connect(db, isolation_level=None)
    for name, fn in MIGRATIONS[:2]:  # a log from before the doors, with one row in it
        fn(old)
        old.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        old.execute("INSERT INTO _migrations VALUES (?, 0)", (name,))
    old.execute("INSERT INTO requests (request_id, ts, endpoint, model, status, stream, total_ms, overhead_ms, fallbacks) VALUES ('old', 0, 'e', 'm', 200, 0, 1, 0, 0)")  # fmt: skip
    old.close()
    store = RequestStore(db)
    rec = make_record(request_id="new")
    rec.door, rec.prompt_truncated = "ollama", True
    store.write([to_wire(rec), to_wire(make_record(request_id="plain"))])
    store.close()
    rows = (
        sqlite3.connect(db)
        .execute("SELECT request_id, door, prompt_truncated FROM requests ORDER BY id")
        .fetchall()
    )
    assert rows == [("old", "openai", 0), ("new", "ollama", 1), ("plain", "openai", 0)]
