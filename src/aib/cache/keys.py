"""Which requests the cache may answer, and the key of each.

The key is a hash of everything that changes the answer: the route's name and its ``params``
(compiled into :attr:`~aib.config.plan.RouteCache.salt`), the endpoint, the scope (the client key's
name, or ``*`` when the route shares its entries or keys are off) and the whole request body with its
keys sorted, except what only changes how the answer travels (``stream``, ``stream_options``) or who
asked (``user``), and ``model``, which the route stands for: aliases of one route share entries, and
the deployment that answered never matters. Unknown fields count (a field we do not know may change
the answer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from aib.config.plan import RouteCache

NOT_IN_KEY = frozenset({"model", "stream", "stream_options", "user"})
SHARED = "*"  # the scope of a shared entry (never a key name: names start with a letter or digit)
KEY_HEX = 32  # 128 bits of SHA-256


def deterministic(endpoint: str, payload: Mapping[str, Any], params: Mapping[str, object]) -> bool:
    """Whether repeating the request gives the same answer: embeddings always; chat and completions
    with temperature 0 or a seed (from the request, else from the route's ``params``)."""
    if endpoint == "embeddings":
        return True
    seed = payload.get("seed", params.get("seed"))
    if seed is not None:
        return True
    temp = payload.get("temperature", params.get("temperature"))
    return (type(temp) is int or type(temp) is float) and temp == 0


def cache_key(endpoint: str, payload: Mapping[str, Any], rule: RouteCache, scope: str) -> str:
    """The entry's key (32 hex digits)."""
    body = {k: v for k, v in payload.items() if k not in NOT_IN_KEY}
    h = hashlib.sha256(rule.salt)
    h.update(b"\x00%s\x00%s\x00" % (endpoint.encode(), scope.encode()))
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:KEY_HEX]


def cache_control(value: bytes | None) -> tuple[bool, bool]:
    """(read, write) for a request's ``Cache-Control``: ``no-store`` neither reads nor writes,
    ``no-cache`` skips the lookup and stores the fresh answer (a refresh)."""
    if not value:
        return True, True
    low = value.lower()
    if b"no-store" in low:
        return False, False
    if b"no-cache" in low:
        return False, True
    return True, True
