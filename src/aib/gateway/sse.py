"""Server-sent events as the proxy forwards them: whole events, the ``[DONE]`` event, the usage event.

Pure functions on bytes (no I/O): where the last complete event ends (a chunk may end mid-event),
where the ``[DONE]`` event ends, and reading (and maybe hiding) the token usage a stream reports.
"""

from __future__ import annotations

import orjson

from aib.observe.records import RequestRecord

SSE_DONE = b"data: [DONE]"


def done_end(data: bytes) -> int:
    """Index just past the ``data: [DONE]`` event in ``data`` (whole events), 0 when there is none.

    Only a line that starts with it counts: inside a JSON ``data:`` line a newline is escaped, so
    content that merely mentions ``data: [DONE]`` never matches."""
    at = 0 if data.startswith(SSE_DONE) else -1
    if at < 0:
        i = data.find(b"\n" + SSE_DONE)
        at = i + 1 if i >= 0 else -1
    if at < 0:
        return 0
    end = data.find(b"\n\n", at)
    end_crlf = data.find(b"\r\n\r\n", at)
    if end_crlf >= 0 and (end < 0 or end_crlf < end):
        return end_crlf + 4
    return end + 2 if end >= 0 else len(data)


def last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in ``data`` (0 when there is none)."""
    a = data.rfind(b"\n\n")
    b = data.rfind(b"\r\n\r\n")
    return max(a + 2 if a >= 0 else 0, b + 4 if b >= 0 else 0)


def take_usage(out: bytes, record: RequestRecord, strip: bool) -> bytes:
    """Read token usage from the stream's usage event; drop that event when the client did not ask."""
    kept = []
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: {") and (b'"usage":{' in event or b'"usage": {' in event):
            try:
                obj = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                record.prompt_tokens = usage.get("prompt_tokens")
                record.completion_tokens = usage.get("completion_tokens")
                if strip and not obj.get("choices"):
                    continue
                if strip:  # usage riding on a content chunk: keep the chunk, hide the usage
                    obj["usage"] = None
                    event = b"data: " + orjson.dumps(obj)
        kept.append(event)
    return b"\n\n".join(kept)
