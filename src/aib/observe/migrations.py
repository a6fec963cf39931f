"""Schema of the SQLite request log, as named migrations recorded in a ``_migrations`` table.

Add a change as a new function ``mNNN_what(db)`` decorated with ``@migration``; never edit one that has
shipped. :func:`migrate` applies, in order and in one transaction, those a database has not seen.
"""

from __future__ import annotations

import sqlite3

from aib import migrations as _steps

MIGRATIONS: list[tuple[str, _steps.Migration]] = []
migration = _steps.registry(MIGRATIONS)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            ts REAL NOT NULL,              -- request start, unix seconds
            endpoint TEXT NOT NULL,
            model TEXT NOT NULL,           -- as the client asked
            route TEXT,
            matched_by TEXT,
            rule TEXT,
            provider TEXT,
            upstream TEXT,
            status INTEGER NOT NULL,
            stream INTEGER NOT NULL,
            ttfb_ms REAL,
            total_ms REAL NOT NULL,
            overhead_ms REAL NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            fallbacks INTEGER NOT NULL,
            error TEXT,
            error_code TEXT,
            plan_version TEXT,
            client_disconnected INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE INDEX requests_ts ON requests (ts)")
    # no index on request_id: it would double the cost of every insert (random keys); `trace` scans
    # newest-first instead, which finds recent requests at once
    db.execute(
        """
        CREATE TABLE attempts (
            req_id INTEGER NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
            request_id TEXT NOT NULL,
            n INTEGER NOT NULL,            -- 1 = first attempt
            target TEXT NOT NULL,          -- deployment "provider/upstream"
            provider TEXT NOT NULL,
            route TEXT,                    -- the route of the chain this attempt belonged to
            status INTEGER,
            error TEXT,
            ttfb_ms REAL,
            duration_ms REAL NOT NULL,
            ok INTEGER NOT NULL,
            PRIMARY KEY (req_id, n)
        ) WITHOUT ROWID
        """
    )


@migration
def m002_bodies(db: sqlite3.Connection) -> None:
    """Prompt and response bodies, written only when body logging is on."""
    db.execute(
        """
        CREATE TABLE bodies (
            req_id INTEGER PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
            request BLOB,
            response BLOB
        )
        """
    )


@migration
def m003_key_name(db: sqlite3.Connection) -> None:
    """The client key's name (auth.mode keys): usage per key, filters in the UI and `aib logs`."""
    db.execute("ALTER TABLE requests ADD COLUMN key_name TEXT")


@migration
def m004_door(db: sqlite3.Connection) -> None:
    """The API a request came in on (openai, anthropic, ollama, responses) and whether an Ollama
    upstream cut its prompt to fit the context."""
    db.execute("ALTER TABLE requests ADD COLUMN door TEXT NOT NULL DEFAULT 'openai'")
    db.execute("ALTER TABLE requests ADD COLUMN prompt_truncated INTEGER NOT NULL DEFAULT 0")


@migration
def m005_cache(db: sqlite3.Connection) -> None:
    """What the response cache did: hit, miss, bypass, error (NULL: the route does not cache)."""
    db.execute("ALTER TABLE requests ADD COLUMN cache TEXT")


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations ``db`` lacks (``db`` in autocommit mode); returns their names."""
    return _steps.apply(db, MIGRATIONS)
