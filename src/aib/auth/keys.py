"""A client key: its secret (made once, never stored), its hash, and what it may do."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

SECRET_PREFIX = "sk-aib-"  # an "sk-" shape: generic credential scrubbers and secret scanners know it
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
ADMIN_NAME = "admin"  # the identity of the admin key used as a client key
LIMIT_FIELDS = ("rpm", "tpm", "concurrency", "budget_day", "budget_month")


def new_secret() -> str:
    """A new key: the prefix and 32 random url-safe characters (190 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(24)


def hash_secret(secret: str | bytes) -> str:
    """What the store keeps and lookups use. A plain SHA-256 is enough: keys are random, not chosen by
    people, so there is nothing for a slow hash to protect against guessing."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def new_id() -> str:
    return "key_" + secrets.token_hex(4)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(
            f"key name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', starting with a letter "
            "or digit (it becomes a metric label)"
        )
    return name


@dataclass(frozen=True, slots=True)
class ClientKey:
    """One key as stored (never its secret). ``num`` is the store's row number: it places the key's
    limit counters in shared memory (:mod:`aib.limits.slots`)."""

    id: str
    num: int
    name: str
    prefix: str  # the first characters of the secret, to recognise it in lists
    hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    models: tuple[str, ...] = ()  # names and globs; empty: every model
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion)
    concurrency: int | None = None  # requests in flight at once
    budget_day: int | None = None  # tokens per UTC day
    budget_month: int | None = None  # tokens per UTC month
    metadata: dict[str, Any] = field(default_factory=dict)
    rotated_from: str | None = None

    @property
    def limited(self) -> bool:
        return any(getattr(self, f) is not None for f in LIMIT_FIELDS)

    def state(self, now: float | None = None) -> str:
        """active, revoked or expired."""
        now = time.time() if now is None else now
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        """What `aib keys show` and ``GET /admin/keys/ID`` say about a key (never the hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "state": self.state(now),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "concurrency": self.concurrency,
            "budget_day": self.budget_day,
            "budget_month": self.budget_month,
            "metadata": self.metadata,
            "rotated_from": self.rotated_from,
        }


ADMIN = ClientKey(id="admin", num=0, name=ADMIN_NAME, prefix="", hash="", created_at=0.0)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w`` (or plain seconds) as seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration: use a number with s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]
