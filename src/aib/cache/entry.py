"""One cached answer: the whole OpenAI-shaped answer (JSON bytes, as first sent) and what it came from.

A streamed answer is stored whole too (:mod:`aib.cache.assemble`), so one entry serves both kinds of
client (:mod:`aib.cache.replay`). In Redis an entry is one string: a line of JSON metadata, then the
answer's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

OVERHEAD = 256  # bytes counted per entry beyond its answer (the memory cache's bound)


class CacheUnavailable(Exception):
    """The cache cannot be read now (Redis down or slow); the request goes upstream."""


@dataclass(slots=True)
class Entry:
    body: bytes  # the whole answer (chat.completion, text_completion or embeddings list), JSON
    route: str
    endpoint: str
    scope: str  # the client key's name, or "*" (shared)
    stored_at: float  # wall time
    expires_at: float
    provider: str | None = None  # who answered first (x-aib-provider of a hit)
    upstream: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # made on a hit (memory entries keep them): the answer's fixed response headers, and its SSE replays
    head: list[tuple[bytes, bytes]] | None = None
    stream_plain: bytes | None = None  # replayed without usage
    stream_usage: bytes | None = None  # with the usage chunk (stream_options.include_usage)

    @property
    def size(self) -> int:
        return len(self.body) + OVERHEAD

    def meta(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "endpoint": self.endpoint,
            "scope": self.scope,
            "stored_at": self.stored_at,
            "expires_at": self.expires_at,
            "provider": self.provider,
            "upstream": self.upstream,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "bytes": len(self.body),
        }


def encode(entry: Entry) -> bytes:
    """One Redis value: metadata (JSON, no raw newline) + newline + the answer."""
    return orjson.dumps(entry.meta()) + b"\n" + entry.body


def decode(raw: bytes) -> Entry:
    """An entry back from :func:`encode`; ValueError for anything else."""
    cut = raw.find(b"\n")
    if cut < 0:
        raise ValueError("not a cache entry: no metadata line")
    try:
        meta = orjson.loads(raw[:cut])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a cache entry: {exc}") from None
    if not isinstance(meta, dict):
        raise ValueError("not a cache entry: metadata is not an object")
    try:
        return Entry(
            body=raw[cut + 1 :],
            route=str(meta["route"]),
            endpoint=str(meta["endpoint"]),
            scope=str(meta["scope"]),
            stored_at=float(meta["stored_at"]),
            expires_at=float(meta["expires_at"]),
            provider=meta.get("provider"),
            upstream=meta.get("upstream"),
            prompt_tokens=meta.get("prompt_tokens"),
            completion_tokens=meta.get("completion_tokens"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a cache entry: {exc!r}") from None
