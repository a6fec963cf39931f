"""Named SQLite migrations, recorded in a ``_migrations`` table (the request log's and the key store's).

Each database keeps its own ordered list of ``(name, function)``; :func:`apply` runs, in order and in
one transaction, those a database has not seen. Add a change as a new function; never edit one that
has shipped.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

Migration = Callable[[sqlite3.Connection], None]


def registry(steps: list[tuple[str, Migration]]) -> Callable[[Migration], Migration]:
    """A decorator that appends a migration, under its function's name, to ``steps``."""

    def migration(fn: Migration) -> Migration:
        steps.append((fn.__name__, fn))
        return fn

    return migration


def apply(db: sqlite3.Connection, steps: Sequence[tuple[str, Migration]]) -> list[str]:
    """Apply the migrations ``db`` lacks (``db`` in autocommit mode); returns their names."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    db.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
        applied = []
        for name, fn in steps:
            if name in done:
                continue
            fn(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
            applied.append(name)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return applied
