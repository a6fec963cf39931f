"""The compact form of a finished request that the writers consume, and how it crosses a pipe.

:func:`to_wire` turns a :class:`~aib.observe.records.RequestRecord` into one flat tuple of plain values
(the request path does this and nothing else for the access log and the request log). The access-log
formatter and the SQLite rows are built from that tuple, in a thread of the gateway (``thread`` mode)
or in the writer process (``process`` mode, the default of ``aib serve``).

Frames on the pipe to the writer process are ``kind (1 byte) | length (4 bytes, little endian) |
payload``, the payload in :mod:`marshal` format: the writer is started from the same interpreter
(``sys.executable``), marshal takes tuples, bytes (request bodies) and any ``str`` (even lone
surrogates from odd upstream bytes), and it is about twice as fast as JSON both ways.
"""

from __future__ import annotations

import marshal
import struct
from typing import Any

from aib.observe.records import RequestRecord

# positions in a wire tuple
(
    REQUEST_ID,
    ENDPOINT,
    MODEL,
    STARTED_AT,
    STREAM,
    ROUTE,
    MATCHED_BY,
    RULE,
    PROVIDER,
    UPSTREAM,
    STATUS,
    ERROR,
    ERROR_CODE,
    TTFB_S,
    TOTAL_S,
    UPSTREAM_S,
    PROMPT_TOKENS,
    COMPLETION_TOKENS,
    CLIENT_DISCONNECTED,
    PLAN_VERSION,
    ATTEMPTS,
    REQUEST_BODY,
    RESPONSE_BODY,
    KEY_NAME,
    DOOR,
    PROMPT_TRUNCATED,
    CACHE,
    CACHE_LOOKUP_S,
) = range(28)  # fmt: skip  (append new fields at the end: writers of another version read by position)
# positions in one attempt of ATTEMPTS
A_TARGET, A_PROVIDER, A_ROUTE, A_STATUS, A_ERROR, A_TTFB_S, A_DURATION_S, A_OK = range(8)

Wire = tuple[Any, ...]

CONFIG = 1  # the writer's settings (a dict), the first frame
BATCH = 2  # a list of wire tuples
SECRETS = 3  # the secret values to redact (a tuple of str), sent again when they change
_HEADER = struct.Struct("<BI")
HEADER_SIZE = _HEADER.size
_PLAIN = (str, bool, int, float, bytes, type(None))


def to_wire(r: RequestRecord) -> Wire:
    """One record as a flat tuple (see the position constants); attempts as tuples too."""
    atts = r.attempts
    if not atts:
        wa: tuple[Any, ...] = ()
    elif len(atts) == 1:
        a = atts[0]
        wa = ((a.target, a.provider, a.route, a.status, a.error, a.ttfb_s, a.duration_s, a.ok),)
    else:
        wa = tuple(
            (a.target, a.provider, a.route, a.status, a.error, a.ttfb_s, a.duration_s, a.ok) for a in atts
        )
    return (
        r.request_id, r.endpoint, r.model, r.started_at, r.stream, r.route, r.matched_by, r.rule, r.provider,
        r.upstream, r.status, r.error, r.error_code, r.ttfb_s, r.total_s, r.upstream_s, r.prompt_tokens,
        r.completion_tokens, r.client_disconnected, r.plan_version, wa, r.request_body, r.response_body,
        r.key_name, r.door, r.prompt_truncated, r.cache, r.cache_lookup_s,
    )  # fmt: skip


def fallbacks(w: Wire) -> int:
    """Attempts that failed before the one that answered (or all, when none did)."""
    return sum(1 for a in w[ATTEMPTS] if not a[A_OK])


def overhead_s(w: Wire) -> float:
    return max(float(w[TOTAL_S] - w[UPSTREAM_S]), 0.0)


def frame(kind: int, payload: Any) -> bytes:
    """One frame; values marshal cannot take (a bug upstream of here) are sent as their ``repr``."""
    return b"".join(frame_parts(kind, payload))


def frame_parts(kind: int, payload: Any) -> tuple[bytes, bytes]:
    """A frame as (header, payload) for a vectored write: the payload (a whole batch) is not copied."""
    try:
        data = marshal.dumps(payload)
    except ValueError:
        data = marshal.dumps(_plain(payload))
    return _HEADER.pack(kind, len(data)), data


def _plain(v: Any) -> Any:
    if type(v) in _PLAIN:
        return v
    for kind in (str, bool, int, float, bytes):  # subclasses (an IntEnum, a str subclass) as their base
        if isinstance(v, kind):
            return kind(v)  # type: ignore[arg-type]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return repr(v)


class FrameReader:
    """Splits a byte stream into ``(kind, payload)`` frames (a frame may arrive in pieces)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, Any]] = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER_SIZE:
            kind, size = _HEADER.unpack_from(buf, pos)
            if end - pos - HEADER_SIZE < size:
                break
            start = pos + HEADER_SIZE
            out.append((kind, marshal.loads(bytes(buf[start : start + size]))))
            pos = start + size
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
