"""Where keys and their usage live: :class:`KeyStore` (the interface the gateway and the CLI use) and
:class:`SqliteKeyStore`, the default, a SQLite file beside the request log.

The store holds each key's hash (never its secret), a ``generation`` that every change of a key
bumps (gateways poll it to pick up new and revoked keys within a second, see :mod:`aib.auth.gate`),
and usage per key and UTC day (requests, tokens, refusals): what ``aib keys usage`` reports and
what daily and monthly budgets are checked against. Every gateway process adds its own usage
(``UPDATE ... + ?``), so processes and workers sharing the file sum up.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import orjson

from aib import migrations as steps
from aib.auth.keys import ClientKey, check_name, hash_secret, new_id, new_secret

DEFAULT_PATH = Path("var/keys.db")
PREFIX_CHARS = 12  # "sk-aib-" and 5 random characters, shown in lists

MIGRATIONS: list[tuple[str, steps.Migration]] = []
migration = steps.registry(MIGRATIONS)


@migration
def m001_keys(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE keys (
            num INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,          -- public id, e.g. key_1a2b3c4d
            name TEXT NOT NULL,               -- the person or project it belongs to
            hash TEXT NOT NULL UNIQUE,        -- sha256 of the secret; the secret is never stored
            prefix TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            models TEXT NOT NULL DEFAULT '[]',   -- JSON list of names and globs; [] = every model
            rpm INTEGER, tpm INTEGER, concurrency INTEGER, budget_day INTEGER, budget_month INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}', -- JSON object
            rotated_from TEXT
        )
        """
    )
    db.execute("CREATE INDEX keys_name ON keys (name)")
    db.execute(
        """
        CREATE TABLE usage (
            key_num INTEGER NOT NULL,
            day TEXT NOT NULL,                -- UTC, YYYY-MM-DD
            requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            charged_tokens INTEGER NOT NULL DEFAULT 0,  -- counted against budgets
            limited INTEGER NOT NULL DEFAULT 0,         -- refused by a limit (429)
            errors INTEGER NOT NULL DEFAULT 0,          -- other answers >= 400
            PRIMARY KEY (key_num, day)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO meta (name, value) VALUES ('generation', 1)")


@dataclass(slots=True)
class Usage:
    """Usage of one key on one UTC day (a delta to add, or a total read back)."""

    key_num: int
    day: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    charged_tokens: int = 0
    limited: int = 0
    errors: int = 0

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.charged_tokens += other.charged_tokens
        self.limited += other.limited
        self.errors += other.errors


class KeyStore(Protocol):
    """What the gateway and `aib keys` need of a key store (SQLite here; a Redis store shares it
    between replicas)."""

    def generation(self) -> int: ...
    def load(self) -> list[ClientKey]: ...
    def get(self, key_id: str) -> ClientKey | None: ...
    def find(self, id_or_name: str) -> list[ClientKey]: ...
    def create(self, name: str, **limits: Any) -> tuple[ClientKey, str]: ...
    def revoke(self, id_or_name: str, at: float | None = None) -> list[ClientKey]: ...
    def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[ClientKey, str, ClientKey]: ...
    def add_usage(self, deltas: Iterable[Usage]) -> None: ...
    def charged(self, day: str, month: str) -> dict[int, tuple[int, int]]: ...
    def usage(self, since_day: str | None = None) -> list[Usage]: ...
    def close(self) -> None: ...


_COLUMNS = (
    "num, id, name, prefix, hash, created_at, expires_at, revoked_at, models, rpm, tpm, concurrency, "
    "budget_day, budget_month, metadata, rotated_from"
)


def _key(row: Sequence[Any]) -> ClientKey:
    (
        num,
        kid,
        name,
        prefix,
        h,
        created,
        expires,
        revoked,
        models,
        rpm,
        tpm,
        conc,
        bday,
        bmonth,
        meta,
        rot,
    ) = row
    return ClientKey(
        id=kid,
        num=num,
        name=name,
        prefix=prefix,
        hash=h,
        created_at=created,
        expires_at=expires,
        revoked_at=revoked,
        models=tuple(orjson.loads(models)),
        rpm=rpm,
        tpm=tpm,
        concurrency=conc,
        budget_day=bday,
        budget_month=bmonth,
        metadata=orjson.loads(meta),
        rotated_from=rot,
    )


class SqliteKeyStore:
    """Keys and usage in one SQLite file (WAL; safe for several processes). Thread-safe: one
    connection behind a lock (calls are short; the gateway makes them off its event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
        if new:
            os.chmod(path, 0o600)  # hashes only, but nobody else's business
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        with self._lock:
            steps.apply(self._db, MIGRATIONS)

    # ------------------------------------------------------------------ keys

    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0])

    def load(self) -> list[ClientKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY num").fetchall()
        return [_key(r) for r in rows]

    def get(self, key_id: str) -> ClientKey | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()
        return _key(row) if row else None

    def find(self, id_or_name: str) -> list[ClientKey]:
        """The key with this id, else every key of this name."""
        key = self.get(id_or_name)
        if key is not None:
            return [key]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE name = ? ORDER BY num", (id_or_name,)
            ).fetchall()
        return [_key(r) for r in rows]

    def create(self, name: str, **limits: Any) -> tuple[ClientKey, str]:
        """A new key for ``name``; returns it and its secret (shown once, never stored).

        ``limits``: models, rpm, tpm, concurrency, budget_day, budget_month, expires_at, metadata,
        rotated_from."""
        check_name(name)
        fields = check_settings(limits)
        secret = new_secret()
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "INSERT INTO keys (id, name, hash, prefix, created_at, expires_at, models, rpm, tpm, "
                    "concurrency, budget_day, budget_month, metadata, rotated_from) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        new_id(),
                        name,
                        hash_secret(secret),
                        secret[:PREFIX_CHARS],
                        now,
                        fields["expires_at"],
                        orjson.dumps(list(fields["models"])).decode(),
                        fields["rpm"],
                        fields["tpm"],
                        fields["concurrency"],
                        fields["budget_day"],
                        fields["budget_month"],
                        orjson.dumps(fields["metadata"]).decode(),
                        fields["rotated_from"],
                    ),
                )
                self._bump()
                row = self._db.execute(
                    f"SELECT {_COLUMNS} FROM keys WHERE num = ?", (cur.lastrowid,)
                ).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return _key(row), secret

    def revoke(self, id_or_name: str, at: float | None = None) -> list[ClientKey]:
        """Revoke the key with this id, or every active key of this name (at ``at``, default now);
        returns the keys revoked."""
        when = time.time() if at is None else at
        keys = [k for k in self.find(id_or_name) if k.revoked_at is None or k.revoked_at > when]
        if not keys:
            return []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE keys SET revoked_at = ? WHERE num = ?", [(when, k.num) for k in keys]
                )
                self._bump()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [replace(k, revoked_at=when) for k in keys]

    def rotate(self, key_id: str, grace_s: float = 0.0) -> tuple[ClientKey, str, ClientKey]:
        return rotate_key(self, key_id, grace_s)

    def _bump(self) -> None:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")

    # ------------------------------------------------------------------ usage

    def add_usage(self, deltas: Iterable[Usage]) -> None:
        rows = [
            (
                u.key_num,
                u.day,
                u.requests,
                u.prompt_tokens,
                u.completion_tokens,
                u.charged_tokens,
                u.limited,
                u.errors,
            )
            for u in deltas
        ]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO usage (key_num, day, requests, prompt_tokens, completion_tokens, "
                    "charged_tokens, limited, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key_num, day) DO UPDATE SET requests = requests + excluded.requests, "
                    "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
                    "completion_tokens = completion_tokens + excluded.completion_tokens, "
                    "charged_tokens = charged_tokens + excluded.charged_tokens, "
                    "limited = limited + excluded.limited, errors = errors + excluded.errors",
                    rows,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def charged(self, day: str, month: str) -> dict[int, tuple[int, int]]:
        """Tokens charged per key: (on ``day``, in ``month`` (YYYY-MM))."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_num, SUM(CASE WHEN day = ? THEN charged_tokens ELSE 0 END), SUM(charged_tokens) "
                "FROM usage WHERE day >= ? AND day < ? GROUP BY key_num",
                (day, f"{month}-01", f"{month}-99"),
            ).fetchall()
        return {num: (int(d), int(m)) for num, d, m in rows}

    def usage(self, since_day: str | None = None) -> list[Usage]:
        """Usage rows per key and day, oldest first (from ``since_day`` on)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_num, day, requests, prompt_tokens, completion_tokens, charged_tokens, limited, "
                "errors FROM usage WHERE day >= ? ORDER BY day, key_num",
                (since_day or "",),
            ).fetchall()
        return [Usage(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def rotate_key(store: KeyStore, key_id: str, grace_s: float = 0.0) -> tuple[ClientKey, str, ClientKey]:
    """A new key with the same name, models, limits and metadata; the old one is revoked now, or
    after ``grace_s`` seconds so clients can switch. Returns (new key, its secret, old key)."""
    old = store.get(key_id)
    if old is None:
        raise KeyError(key_id)
    if old.state() != "active":
        raise ValueError(f"key {key_id} is {old.state()}; only an active key can be rotated")
    new, secret = store.create(
        old.name,
        models=old.models,
        rpm=old.rpm,
        tpm=old.tpm,
        concurrency=old.concurrency,
        budget_day=old.budget_day,
        budget_month=old.budget_month,
        expires_at=old.expires_at,
        metadata=old.metadata,
        rotated_from=old.id,
    )
    revoked = store.revoke(old.id, at=time.time() + max(grace_s, 0.0))
    return new, secret, revoked[0] if revoked else old


def check_settings(given: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a new key (``KeyStore.create``'s keyword arguments), checked, with defaults."""
    allowed = {
        "models",
        "rpm",
        "tpm",
        "concurrency",
        "budget_day",
        "budget_month",
        "expires_at",
        "metadata",
        "rotated_from",
    }
    unknown = set(given) - allowed
    if unknown:
        raise TypeError(f"unknown key settings: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {k: given.get(k) for k in allowed}
    models = tuple(out["models"] or ())
    for m in models:
        if not isinstance(m, str) or not m.strip() or len(m) > 200:
            raise ValueError(f"model entry {m!r}: a model name or glob of 1-200 characters")
    out["models"] = models
    for f in ("rpm", "tpm", "concurrency", "budget_day", "budget_month"):
        v = out[f]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{f} must be a whole number >= 1 (or unset for no limit), not {v!r}")
    meta = out["metadata"] or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise ValueError("metadata must be an object with string keys")
    if len(orjson.dumps(meta)) > 16_384:
        raise ValueError("metadata is larger than 16 KiB")
    out["metadata"] = meta
    return out


def default_path(request_log: Path | None) -> Path:
    """``$AIB_KEYS_DB``, else ``keys.db`` beside the request log, else ``var/keys.db``."""
    raw = os.environ.get("AIB_KEYS_DB")
    if raw:
        return Path(raw)
    return request_log.parent / "keys.db" if request_log is not None else DEFAULT_PATH
