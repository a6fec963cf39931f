"""The observe writer process: ``python -m aib.observe.writer``, started and fed by the gateway.

It takes the access log and the SQLite request log out of the gateway process
(:class:`aib.observe.client.WriterClient` is the gateway's side):

* stdin: frames (:mod:`aib.observe.wire`): the settings first, then batches of wire tuples and, when
  they change, the secret values to redact;
* stdout: one JSON object per line back to the gateway: ``{"h": handled, "w": written, "b": batches,
  "d": {reason: dropped}}`` after each batch, and ``{"warn"|"info"|"error": ...}`` messages, which the
  gateway logs through its own logging;
* stderr: the gateway's stderr (inherited), where the access lines go, one ``write`` per batch.

SIGINT and SIGTERM are ignored (a Ctrl-C or a service stop reaches the whole process group): the
writer stops when its stdin closes, after writing everything it received. That happens when the
gateway closes it at shutdown, or when the gateway dies.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from aib.observe.logs import AccessLines, Redactor
from aib.observe.store import RequestStore
from aib.observe.wire import BATCH, CONFIG, SECRETS, FrameReader, Wire

PIPE_BUF = 4096  # writes up to this size to a pipe are never interleaved with the gateway's own lines
READ_SIZE = 1 << 20
IDLE_WAKE_S = 1.0  # how often an idle writer checks whether retention is due


def write_all(
    fd: int, data: bytes, chunk: int | None = None, write: Callable[[int, memoryview], int] = os.write
) -> bool:
    """Write ``data`` to ``fd`` (in line-aligned chunks of at most ``chunk`` bytes); False if it is gone."""
    view = memoryview(data)
    while view:
        end = len(view)
        if chunk is not None and end > chunk:
            cut = bytes(view[:chunk]).rfind(b"\n")
            end = cut + 1 if cut >= 0 else chunk
        try:
            n = write(fd, view[:end])
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return False
        view = view[n:]
    return True


class LineWriter:
    """Writes access lines from a thread of the writer, so that a stalled stderr (a paused terminal, a
    log collector that stopped reading) costs access lines, never request-log rows. At most
    ``max_bytes`` wait; more are dropped (counted, reported once)."""

    def __init__(self, fd: int, chunk: int | None, report: Callable[[dict[str, Any]], None],
                 max_bytes: int = 16 << 20) -> None:  # fmt: skip
        self.fd, self.chunk, self.report, self.max_bytes = fd, chunk, report, max_bytes
        self.dropped = 0  # lines
        self._q: deque[bytes] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="aib-writer-lines", daemon=True)
        self._thread.start()

    def put(self, data: bytes, lines: int) -> None:
        with self._cond:
            if self._queued + len(data) > self.max_bytes:
                self.dropped += lines
                if self.dropped == lines:
                    self.report({"warn": "access_lines", "msg": "access log: stderr does not take lines as "
                                 "fast as they come; dropping lines (the request log is not affected)"})  # fmt: skip
                return
            self._q.append(data)
            self._queued += len(data)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._q or self._closing)
                if not self._q:
                    return
                data = b"".join(self._q)
                self._q.clear()
                self._queued = 0
            write_all(self.fd, data, self.chunk)


class Writer:
    """One writer: access lines to ``lines_fd``, rows to the request log, reports to ``report_fd``."""

    def __init__(self, report_fd: int = 1, lines_fd: int = 2) -> None:
        self.report_fd = report_fd
        self.lines_fd = lines_fd
        self.secrets: tuple[str, ...] = ()
        self.redactor = Redactor(lambda: self.secrets)
        self.lines: AccessLines | None = None
        self.line_writer: LineWriter | None = None
        self.store: RequestStore | None = None
        self.handled = 0
        try:
            self._chunk: int | None = PIPE_BUF if stat.S_ISFIFO(os.fstat(lines_fd).st_mode) else None
        except OSError:
            self._chunk = None

    def configure(self, cfg: dict[str, Any]) -> None:
        if cfg.get("access"):
            self.lines = AccessLines(
                cfg.get("log_format", "human"), self.redactor, cfg.get("access_level", 20)
            )
            self.line_writer = LineWriter(self.lines_fd, self._chunk, self.report)
        path = cfg.get("request_log")
        if path:
            self.store = RequestStore(
                path,
                retention_days=cfg.get("retention_days", 14.0),
                retention_rows=cfg.get("retention_rows", 1_000_000),
                retention_interval_s=cfg.get("retention_interval_s", 300.0),
                batch_size=cfg.get("batch_size", 500),
                log_bodies=cfg.get("log_bodies", False),
                max_db_mb=cfg.get("max_db_mb"),
                redact=self.redactor,
                redact_bytes=self.redactor.bytes,
                busy_timeout_ms=cfg.get("busy_timeout_ms", 200),
                reopen_after_s=cfg.get("reopen_after_s", 30.0),
                warn=lambda reason, msg: self.report({"warn": reason, "msg": msg}),
                info=lambda msg: self.report({"info": msg}),
            )
            self.store.open()  # the file and its schema exist from the start (`aib logs` works at once)

    def report(self, msg: dict[str, Any]) -> None:
        write_all(self.report_fd, orjson.dumps(msg, option=orjson.OPT_APPEND_NEWLINE))

    def handle(self, frames: list[tuple[int, Any]]) -> None:
        batch: list[Wire] = []
        for kind, payload in frames:
            if kind == BATCH:
                batch.extend(payload)
            elif kind == SECRETS:
                self.write(batch)  # what came before uses the secrets known then
                batch = []
                self.secrets = tuple(sorted(payload, key=len, reverse=True))
            elif kind == CONFIG:
                self.configure(payload)
        self.write(batch)

    def write(self, batch: list[Wire]) -> None:
        if not batch:
            return
        if self.lines is not None and self.line_writer is not None:
            self.line_writer.put(b"".join(self._lines(batch, self.lines.line)), len(batch))
        if self.store is not None:
            self.store.write(batch)
        self.handled += len(batch)
        store = self.store
        written, batches = (store.written, store.batches) if store is not None else (0, 0)
        self.report({"h": self.handled, "w": written, "b": batches, "d": store.dropped if store else {}})

    def _lines(self, batch: list[Wire], line: Callable[[Wire], bytes]) -> list[bytes]:
        try:
            return [line(w) for w in batch]
        except Exception:  # a line that cannot be made (a bug) costs that line, never the others
            out = []
            failed = ""
            for w in batch:
                try:
                    out.append(line(w))
                except Exception:
                    failed = failed or traceback.format_exc(limit=3)
            self.report({"error": f"access log line failed:\n{failed}"})
            return out

    def run(self, in_fd: int = 0) -> int:
        reader = FrameReader()
        while True:
            timeout = IDLE_WAKE_S if self.store is not None else None
            ready, _, _ = select.select([in_fd], [], [], timeout)
            if ready:
                data = os.read(in_fd, READ_SIZE)
                if not data:
                    break
                self.handle(reader.feed(data))
            if self.store is not None and self.store.retention_due():
                self.store.apply_retention()
        if self.line_writer is not None:
            self.line_writer.close()
        if self.store is not None:
            self.store.close()
        return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return Writer().run(sys.stdin.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
