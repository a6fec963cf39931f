"""``store.insert_many``: every row lands, in order, with a handful of distinct statements per table
(sqlite3 caches one compiled statement per SQL text; one per row count held ~14 MB in the writer)."""

from __future__ import annotations

import sqlite3

import pytest

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
