"""Logs: one access line per request on the ``aib.access`` logger, as JSON (orjson) or for humans.

``configure_logging("json" | "human", level)`` sets the root handler once at start-up (the CLI does it);
:class:`AccessLogObserver` writes the per-request line. Error texts pass through a :class:`Redactor`
first, so an upstream that echoes an API key back never puts it in a log. Nothing here logs headers.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO, Any

import orjson

from aib.observe.records import RequestRecord
from aib.observe.wire import (
    A_OK,
    CACHE,
    STARTED_AT,
    STATUS,
    TOTAL_S,
    Wire,
    to_wire,
)

ACCESS_LOGGER = "aib.access"
HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# generic shapes of credentials, for texts no configured secret covers
_CREDENTIAL = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+|\b(sk-(?:ant-)?)[A-Za-z0-9_\-]{8,}")
MASK = "***"
_START = time.time()  # what logging.LogRecord.relativeCreated counts from (close enough)
_SKIP_EXTRAS = frozenset({"aib", "aib_batched", "color_message"})  # color_message: uvicorn's ANSI copy of msg


class Redactor:
    """Removes secrets from texts: the exact values ``secrets()`` returns, and bearer/sk- tokens."""

    def __init__(self, secrets: Callable[[], Iterable[str]] = tuple) -> None:
        self._secrets = secrets

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return text
        for s in self._secrets():
            if len(s) >= 4 and s in text:
                text = text.replace(s, MASK)
        return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2) or "") + MASK, text)

    def bytes(self, data: bytes | None) -> bytes | None:
        if not data:
            return data
        for s in self._secrets():
            if len(s) >= 4:
                data = data.replace(s.encode(), MASK.encode())
        return data


def wire_fields(w: Wire, redact: Callable[[str | None], str | None]) -> dict[str, Any]:
    """The fields of one access line (the same names as the request log's columns).

    Milliseconds to the microsecond are ``int(s * 1e6 + 0.5) / 1000``: for durations (never negative)
    the same value as ``round(s * 1000, 3)``, at a quarter of the cost (``round`` goes through text)."""
    (
        rid, endpoint, model, _, stream, route, matched_by, _, provider, upstream, status, err, code, ttfb,
        total, ups, pt, ct, gone, _, atts, _, _, key, door, cut, *_,
    ) = w  # fmt: skip
    if not atts:
        failed = 0
    elif len(atts) == 1:
        failed = 0 if atts[0][A_OK] else 1
    else:
        failed = sum(1 for a in atts if not a[A_OK])
    return {
        "event": "request",
        "request_id": rid,
        "endpoint": endpoint,
        "model": model,
        "route": route,
        "matched_by": matched_by,
        "provider": provider,
        "upstream": upstream,
        "status": status,
        "stream": stream,
        "ttfb_ms": None if ttfb is None else int(ttfb * 1e6 + 0.5) / 1000.0,
        "total_ms": int(total * 1e6 + 0.5) / 1000.0,
        "upstream_ms": int(ups * 1e6 + 0.5) / 1000.0,
        "overhead_ms": int((total - ups) * 1e6 + 0.5) / 1000.0 if total > ups else 0.0,
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "attempts": len(atts),
        "fallbacks": failed,
        "error": redact(err) if err else None,
        "error_code": code,
        "client_disconnected": gone,
        "key": key,
        "door": door,
        "prompt_truncated": cut,
        "cache": w[CACHE] if len(w) > CACHE else None,
    }


def access_fields(record: RequestRecord, redact: Callable[[str | None], str | None]) -> dict[str, Any]:
    """:func:`wire_fields` of a record."""
    return wire_fields(to_wire(record), redact)


def human_line(f: dict[str, Any]) -> str:
    """``200 chat/completions smollm2 -> local:llama-1/smollm2 41.2ms ttfb=12.0ms tokens=12+30 rid=...``"""
    return _human(
        f["status"], f["endpoint"], f["model"], f["route"], f["provider"], f["upstream"], f["total_ms"],
        f["stream"], f["ttfb_ms"], f["prompt_tokens"], f["completion_tokens"], f["fallbacks"],
        f["client_disconnected"], f["request_id"], f["error"], f["error_code"], f.get("key"), f.get("cache"),
    )  # fmt: skip


def _human(
    status: int, endpoint: str, model: str, route: str | None, provider: str | None, upstream: str | None,
    total_ms: float, stream: bool, ttfb_ms: float | None, pt: object, ct: object, fallbacks: int, gone: bool,
    rid: str, error: str | None, code: str | None, key: str | None = None, cache: str | None = None,
) -> str:  # fmt: skip
    where = f"{route}:{provider}/{upstream}" if provider else (route or "unresolved")
    text = f"{status or '-'} {endpoint} {repr(model) if model else '-'} -> {where} {total_ms:.1f}ms"
    if stream and ttfb_ms is not None:
        text += f" ttfb={ttfb_ms:.1f}ms"
    if pt is not None or ct is not None:
        text += f" tokens={pt or 0}+{ct or 0}"
    if fallbacks:
        text += f" fallbacks={fallbacks}"
    if gone:
        text += " client-gone"
    if key:
        text += f" key={key}"
    if cache:
        text += f" cache={cache}"
    text += f" rid={rid}"
    if error:
        text += f" error={code or ''}: {error}"
    return text


class AccessLogObserver:
    """Writes one line per finished request to ``aib.access`` (INFO; 5xx as WARNING).

    With ``background=True`` (the gateway's choice) the request path only appends the record to a
    bounded queue; a thread formats and writes the lines every ``interval_s``, so a slow terminal or
    disk never slows requests. Lines keep the time the request ended. A full queue drops lines
    (counted in :attr:`dropped`).
    """

    def __init__(
        self,
        redact: Callable[[str | None], str | None] | None = None,
        logger: logging.Logger | None = None,
        *,
        background: bool = False,
        interval_s: float = 0.1,
        max_queue: int = 10_000,
    ) -> None:
        self.log = logger or logging.getLogger(ACCESS_LOGGER)
        self.redact = redact or Redactor()
        self.interval_s = interval_s
        self.max_queue = max_queue
        self.dropped = 0
        self._templates: dict[int, dict[str, Any]] = {}
        self._q: deque[RequestRecord] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="aib-access-log", daemon=True)
            self._thread.start()

    def request_done(self, record: RequestRecord) -> None:
        if self._thread is None:
            self.emit(record)
        elif len(self._q) < self.max_queue:
            self._q.append(record)
        else:
            self.dropped += 1

    def emit(self, record: RequestRecord) -> None:
        level = logging.WARNING if record.status >= 500 else logging.INFO
        log = self.log
        if not log.isEnabledFor(level):
            return
        fields = access_fields(record, self.redact)
        log.handle(self._log_record(level, fields, record.started_at + record.total_s))

    def _log_record(self, level: int, fields: dict[str, Any], created: float) -> logging.LogRecord:
        """A LogRecord for one access line, copied from a template (LogRecord() itself costs microseconds:
        it looks up the thread, the process and the source file each time)."""
        template = self._templates.get(level)
        if template is None:
            proto = self.log.makeRecord(self.log.name, level, "aib/observe/logs.py", 0, "%s", (), None)
            template = self._templates[level] = dict(proto.__dict__)
        rv = logging.LogRecord.__new__(logging.LogRecord)
        d = rv.__dict__
        d.update(template)
        d["args"] = (_Lazy(fields),)
        d["aib"] = fields
        d["aib_batched"] = self._thread is not None
        d["created"] = created
        d["msecs"] = (created - int(created)) * 1000.0
        d["relativeCreated"] = (created - _START) * 1000.0
        return rv

    def _run(self) -> None:
        q = self._q
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stopping = self._stop
            if q:
                while q:
                    try:
                        self.emit(q.popleft())
                    except Exception:  # a broken handler must not kill the thread; logging reports it
                        logging.getLogger("aib.observe").exception("access log line failed")
                _flush_handlers(self.log)
            if stopping:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Write the queued lines and stop the thread."""
        if self._thread is not None:
            self._stop = True
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None


def _flush_handlers(logger: logging.Logger) -> None:
    """Flush every handler a record of ``logger`` reaches (writes lines held by :class:`LineHandler`)."""
    c: logging.Logger | None = logger
    while c is not None:
        for h in c.handlers:
            h.flush()
        c = c.parent if c.propagate else None


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that holds batched access lines until :meth:`flush`: one write per batch.

    Other records are written at once (after any held lines, so the order is kept).
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if getattr(record, "aib_batched", False):
                self._held.append(line)
                if len(self._held) >= 512:
                    self._write_held()
            else:
                self._held.append(line)
                self._write_held()
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write_held(self) -> None:
        if self._held:
            data = "".join(self._held)
            self._held.clear()
            self.stream.write(data)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_held()
            super().flush()


class _Lazy:
    """Renders the human line only if a handler formats the message."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return human_line(self.fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's structured fields."""

    def __init__(self) -> None:
        super().__init__()
        self._second: list[tuple[int, str]] = [(-1, "")]

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "aib", None)
        out: dict[str, Any] = {
            "ts": _iso(record.created, self._second),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if fields is not None:
            out.update(fields)
        else:
            out["msg"] = record.getMessage()
            for k, v in record.__dict__.items():
                if k not in _STD_ATTRS and k not in _SKIP_EXTRAS:
                    out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class AccessLines:
    """Complete access lines as bytes, for a writer that bypasses :mod:`logging` (the writer process).

    The lines are exactly what the ``aib.access`` logger writes through :func:`configure_logging`'s
    handler: ``HUMAN_FORMAT`` with the local time, or :class:`JsonFormatter`'s JSON (UTC).
    """

    def __init__(
        self, format: str = "human", redact: Callable[[str | None], str | None] | None = None, level: int = 20
    ) -> None:
        self.json = format == "json"
        self.redact = redact or Redactor()
        self.level = level  # the lowest level written (INFO = every line, WARNING = 5xx only)
        self._second: list[tuple[int, str]] = [(-1, "")]

    def line(self, w: Wire) -> bytes:
        """The line of one request (with its newline), or ``b""`` when its level is not written."""
        warning = w[STATUS] >= 500
        if (logging.WARNING if warning else logging.INFO) < self.level:
            return b""
        created = w[STARTED_AT] + w[TOTAL_S]
        if self.json:
            out = {"ts": _iso(created, self._second), "level": "warning" if warning else "info"}
            out["logger"] = ACCESS_LOGGER
            out.update(wire_fields(w, self.redact))
            try:
                return orjson.dumps(out, option=orjson.OPT_APPEND_NEWLINE)
            except TypeError:  # a lone surrogate in a text: keep the line, replace the bad character
                return orjson.dumps(_clean(out), option=orjson.OPT_APPEND_NEWLINE)
        (
            rid, endpoint, model, _, stream, route, _, _, provider, upstream, status, err, code, ttfb, total, _,
            pt, ct, gone, _, atts, _, _, key, *_,
        ) = w  # fmt: skip
        failed = (0 if atts[0][A_OK] else 1) if len(atts) == 1 else sum(1 for a in atts if not a[A_OK])
        text = _human(
            status, endpoint, model, route, provider, upstream, int(total * 1e6 + 0.5) / 1000.0, stream,
            None if ttfb is None else int(ttfb * 1e6 + 0.5) / 1000.0, pt, ct, failed, gone, rid,
            self.redact(err) if err else None, code, key, w[CACHE] if len(w) > CACHE else None,
        )  # fmt: skip
        sec = int(created)
        last = self._second[0]
        if last[0] != sec:
            last = self._second[0] = (sec, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec)))
        line = f"{last[1]},{int((created - sec) * 1000):03d} {'WARNING' if warning else 'INFO'} {ACCESS_LOGGER}: {text}\n"
        return line.encode("utf-8", "backslashreplace")


def _clean(out: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.encode("utf-8", "replace").decode("utf-8") if isinstance(v, str) else v for k, v in out.items()
    }


def _iso(t: float, cache: list[tuple[int, str]]) -> str:
    """ISO 8601 UTC with milliseconds; ``cache`` keeps the last second formatted (lines share it)."""
    sec = int(t)
    last = cache[0]
    if last[0] != sec:
        last = cache[0] = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{last[1]}.{int((t - sec) * 1000):03d}Z"


def configure_logging(
    format: str = "human", level: str | int = "info", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in one format; returns the handler installed.

    Replaces plain stream handlers on the root logger (``logging.basicConfig``'s, or ours from an
    earlier call) and leaves other handlers (files, test capture) alone.
    """
    if format not in ("json", "human"):
        raise ValueError(f"log format {format!r}: use 'json' or 'human'")
    root = logging.getLogger()
    for h in list(root.handlers):
        if type(h) in (logging.StreamHandler, LineHandler):
            root.removeHandler(h)
            if isinstance(h, LineHandler):
                h.flush()
    handler = LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(HUMAN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
