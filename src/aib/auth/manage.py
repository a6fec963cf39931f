"""Managing keys, shared by `aib keys` and ``/admin/keys``: settings from user input, reports.

Both speak plain dicts: what a key is (:meth:`ClientKey.public`), the settings a new key takes
(:func:`settings_from`), usage per key over a period (:func:`usage_report`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aib.auth.keys import ClientKey, parse_duration
from aib.auth.store import KeyStore
from aib.limits.budgets import day_and_month

INT_SETTINGS = ("rpm", "tpm", "concurrency", "budget_day", "budget_month")
SETTINGS = (*INT_SETTINGS, "models", "metadata", "expires_in", "expires_at")


def settings_from(given: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """The keyword arguments of :meth:`KeyStore.create` from user input (a JSON body or CLI options).
    Raises ValueError naming the field that is wrong."""
    unknown = set(given) - set(SETTINGS) - {"name"}
    if unknown:
        raise ValueError(
            f"unknown field(s): {', '.join(sorted(unknown))} (known: name, {', '.join(SETTINGS)})"
        )
    out: dict[str, Any] = {}
    for f in INT_SETTINGS:
        v = given.get(f)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{f}: a whole number >= 1 (leave it out for no limit), not {v!r}")
        out[f] = v
    models = given.get("models")
    if models is not None:
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise ValueError("models: a list of model names or globs")
        out["models"] = tuple(models)
    meta = given.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise ValueError("metadata: an object")
        out["metadata"] = meta
    now = time.time() if now is None else now
    if given.get("expires_in") is not None and given.get("expires_at") is not None:
        raise ValueError("give expires_in or expires_at, not both")
    if given.get("expires_in") is not None:
        raw = given["expires_in"]
        seconds = parse_duration(raw) if isinstance(raw, str) else float(raw)
        if seconds <= 0:
            raise ValueError("expires_in: a duration > 0 (e.g. 30d)")
        out["expires_at"] = now + seconds
    elif given.get("expires_at") is not None:
        at = given["expires_at"]
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at <= now:
            raise ValueError("expires_at: a unix time in the future")
        out["expires_at"] = float(at)
    return out


def since_day(text: str | None, now: float | None = None) -> str | None:
    """``7d``, ``24h`` ... as the first UTC day it covers (None: from the start)."""
    if not text:
        return None
    now = time.time() if now is None else now
    return day_and_month(now - parse_duration(text))[0]


def usage_report(store: KeyStore, since: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Per key (every key that has usage in the period, or is active): requests, tokens, refusals,
    errors over the period, and its budget use today and this month."""
    now = time.time() if now is None else now
    day, month = day_and_month(now)
    keys = {k.num: k for k in store.load()}
    totals: dict[int, dict[str, int]] = {}
    for u in store.usage(since):
        t = totals.setdefault(
            u.key_num,
            {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "limited": 0, "errors": 0},
        )
        t["requests"] += u.requests
        t["prompt_tokens"] += u.prompt_tokens
        t["completion_tokens"] += u.completion_tokens
        t["limited"] += u.limited
        t["errors"] += u.errors
    charged = store.charged(day, month)
    out: list[dict[str, Any]] = []
    for num, key in keys.items():
        found = totals.get(num)
        if found is None and key.state(now) != "active":
            continue
        t = found or {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "limited": 0, "errors": 0}
        d, m = charged.get(num, (0, 0))
        out.append(
            {
                "id": key.id,
                "name": key.name,
                "state": key.state(now),
                **t,
                "tokens_today": d,
                "budget_day": key.budget_day,
                "tokens_this_month": m,
                "budget_month": key.budget_month,
            }
        )
    out.sort(key=lambda r: (-int(r["requests"]), str(r["name"]), str(r["id"])))
    return out


def created(key: ClientKey, secret: str) -> dict[str, Any]:
    """The answer to a create or rotate: the only time the secret is shown."""
    return {
        "key": secret,
        **key.public(),
        "note": "This is the only time the key is shown: store it now. Only its hash is kept.",
    }
