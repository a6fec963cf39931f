"""The gateway's side of the writer process (:mod:`aib.observe.writer`): the cheap default of ``aib serve``.

:meth:`WriterClient.request_done` builds one wire tuple and appends it to a list. Every
``flush_interval_s`` (a timer on the event loop, armed by the first record of a batch) the list goes
to the writer as one marshal frame and one non-blocking ``write`` on a pipe. The writer formats the
access lines and writes the SQLite rows, so neither costs the gateway's CPU. Nothing here blocks a
request: when the writer falls behind by more than ``queue_size`` entries, or is not running, entries
are dropped and counted (``aib_request_log_dropped_total``), with one warning per reason.

The writer is started at the gateway's startup (or with the first batch), restarted when it exits
(at once, then with a growing pause if it keeps exiting), and stopped by :meth:`close` at shutdown:
the last batch is written, its stdin closed, and it is waited for (bounded), then killed by PID.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from aib.observe.metrics import MetricsObserver
from aib.observe.records import RequestRecord
from aib.observe.store import drop_message
from aib.observe.wire import BATCH, CONFIG, SECRETS, Wire, frame_parts, to_wire

log = logging.getLogger("aib.requestlog")
F_SETPIPE_SZ = 1031  # Linux: grow the pipe so a whole batch fits without a partial write
PIPE_SIZE = 1 << 20
IOV_MAX = 64  # pieces per writev: enough for any backlog the pipe can take at once
QUICK_EXIT_S = 10.0  # a writer that exits sooner than this after its start is restarted after a pause
MAX_PAUSE_S = 30.0
# glibc gives freed heap back to the kernel at once by default; the writer allocates and frees about
# the same few megabytes per batch, and re-faulting them costs more CPU than the work (measured: JSON
# lines 10 -> 4.5 us each). The writer is a process of its own, so it keeps its heap.
WRITER_ENV = {"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_TOP_PAD_": str(64 << 20)}


class WriterClient:
    """The one observer of ``aib serve``: batches wire tuples, folds them into ``metrics`` and feeds
    the writer process (when the access log or the request log is on: ``config``).

    Its methods run on the event loop thread, except :meth:`flush`, :meth:`close` and
    :meth:`fold_metrics`, which may be called from any thread."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        metrics: MetricsObserver | None = None,
        secrets: Callable[[], Iterable[str]] = tuple,
        queue_size: int = 10_000,
        flush_interval_s: float = 0.05,
        command: list[str] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.ship = bool(config.get("access") or config.get("request_log"))  # a writer process is needed
        if metrics is not None:
            metrics.before_collect.append(self.fold_metrics)
        self.path = Path(config["request_log"]) if config.get("request_log") else None
        self.queue_size = queue_size
        self.flush_interval_s = flush_interval_s
        self.command = command or [sys.executable, "-m", "aib.observe.writer"]
        self._secrets = secrets
        self._batch: list[Wire] = []
        self._folded = 0  # entries of the batch already counted in the metrics (a scrape came first)
        self._armed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._out: list[bytes | memoryview] = []  # frames not yet written to the pipe, in pieces
        self._sent_secrets: tuple[str, ...] | None = None
        self._reader: threading.Thread | None = None
        self._cond = threading.Condition()
        self.generation = 0  # one per writer process started
        self._eof = False  # the current writer closed its reports (it exited)
        self._assigned = 0  # entries framed for the current writer
        self._handled = 0  # entries the current writer reported done (set by the reader thread)
        self._child: dict[str, Any] = {"w": 0, "b": 0, "d": {}}  # what the current writer reported
        self._past: dict[str, Any] = {"w": 0, "b": 0, "d": {}}  # totals of the writers before it
        self._drops = {"queue_full": 0, "writer_down": 0}  # counted here
        self._warned: set[str] = set()
        self._next_start = 0.0
        self._started_at = 0.0
        self._pause_s = 0.0
        self.closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ------------------------------------------------------------------ request path (event loop)

    def request_done(self, record: RequestRecord) -> None:
        self._batch.append(to_wire(record))
        if not self._armed:
            self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop (a tool, a test): hand over at once
            self.send()
            return
        self._loop = loop
        self._armed = True
        loop.call_later(self.flush_interval_s, self._tick)

    def _tick(self) -> None:
        self._armed = False
        self.send()
        if self._out and self._proc is not None:  # the pipe was full: try again at the next tick
            self._arm()

    # ------------------------------------------------------------------ handing over

    def start(self) -> None:
        """Start the writer now (the gateway's startup hook), so its database is ready before traffic."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        if self.ship and self._proc is None and not self.closed:
            self._start()
            self._write_out()

    def fold_metrics(self) -> None:
        """Count what is batched in the metrics now (before a scrape), on the event loop thread."""
        if self.metrics is not None:
            try:
                self._on_loop(self._count, 5.0)
            except (concurrent.futures.TimeoutError, RuntimeError):  # a stuck loop: scrape what is counted
                log.debug("metrics scraped without the last batch", exc_info=True)

    def _count(self) -> None:
        batch = self._batch
        if self.metrics is not None and len(batch) > self._folded:
            try:
                self.metrics.fold(batch[self._folded :] if self._folded else batch)
            except Exception:  # a bug: lose these counts, never the batch or the requests
                if "metrics" not in self._warned:
                    self._warned.add("metrics")
                    logging.getLogger("aib.observe").exception("metrics could not count a batch")
        self._folded = len(batch)

    def send(self, block_until: float | None = None) -> tuple[int, int]:
        """Count the batch in the metrics, frame it and write what the pipe takes; returns
        (generation, entries to wait for)."""
        self._count()
        batch = self._batch
        self._batch, self._folded = [], 0
        if not self.ship:
            return self.generation, self._assigned
        self._check_writer()
        if batch:
            if self._proc is None:
                self._drop("writer_down", len(batch))
            else:
                room = self.queue_size - (self._assigned - self._handled)
                if room < len(batch):
                    self._drop("queue_full", len(batch) - max(room, 0))
                    batch = batch[: max(room, 0)]
                if batch:
                    secrets = tuple(self._secrets())
                    if secrets != self._sent_secrets:
                        self._out += frame_parts(SECRETS, secrets)
                        self._sent_secrets = secrets
                    self._out += frame_parts(BATCH, batch)
                    self._assigned += len(batch)
        self._write_out(block_until)
        return self.generation, self._assigned

    def _write_out(self, block_until: float | None = None) -> None:
        out = self._out
        while out and self._proc is not None:
            try:
                n = os.writev(self._fd, out[:IOV_MAX])
            except BlockingIOError:
                left = (block_until or 0.0) - time.monotonic()
                if left <= 0:
                    return
                select.select([], [self._fd], [], left)
                continue
            except OSError:  # the writer is gone (EPIPE)
                self._writer_exited()
                return
            while n:  # drop what was written; keep the rest of a piece written in part
                size = len(out[0])
                if n >= size:
                    del out[0]
                    n -= size
                else:
                    out[0] = memoryview(out[0])[n:]
                    n = 0

    # ------------------------------------------------------------------ the writer process

    def _check_writer(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._writer_exited()
        if self._proc is None and not self.closed and time.monotonic() >= self._next_start:
            self._start()

    def _start(self) -> None:
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                env={**WRITER_ENV, **os.environ},
            )
        except OSError as exc:
            self._next_start = time.monotonic() + MAX_PAUSE_S
            self._warn(
                "writer_down", f"cannot start the observe writer ({exc}); trying again in {MAX_PAUSE_S:.0f}s"
            )
            return
        assert proc.stdin is not None and proc.stdout is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        with self._cond:
            self.generation += 1
            self._eof = False
            self._assigned = self._handled = 0
            self._child = {"w": 0, "b": 0, "d": {}}
        self._proc, self._fd, self._started_at = proc, fd, time.monotonic()
        self._sent_secrets = None
        self._out = list(frame_parts(CONFIG, self.config))
        self._reader = threading.Thread(
            target=self._read_reports, args=(proc.stdout,), name="aib-observe-reports", daemon=True
        )
        self._reader.start()
        log.debug("observe writer started (pid %d)", proc.pid)

    def _read_reports(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if "h" in msg:
                with self._cond:
                    self._handled = msg["h"]
                    self._child = msg
                    self._cond.notify_all()
            elif "warn" in msg:
                self._warn(msg["warn"], msg.get("msg", ""))
            elif "info" in msg:
                log.info("%s", msg["info"])
            elif "error" in msg:
                logging.getLogger("aib.observe").error("%s", msg["error"])
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _writer_exited(self, timeout: float = 2.0) -> None:
        """Reap the writer, count what it had not written, and plan its restart."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        code = _stop(proc, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        _close_streams(proc)
        self._out.clear()
        lost = self._retire()
        lived = time.monotonic() - self._started_at
        self._pause_s = 0.0 if lived > QUICK_EXIT_S else min(max(1.0, 2 * self._pause_s), MAX_PAUSE_S)
        self._next_start = time.monotonic() + self._pause_s
        if lost:
            self._drop("writer_down", lost)
        if not self.closed:
            log.warning(
                "observe writer (pid %d) exited with code %s; %d entries lost; restarting%s",
                proc.pid, code, lost, f" in {self._pause_s:.0f}s" if self._pause_s else "",
            )  # fmt: skip

    def _retire(self) -> int:
        """Add the current writer's counts to the totals; returns the entries it did not handle."""
        with self._cond:
            lost = self._assigned - self._handled
            past, child = self._past, self._child
            past["w"] += child.get("w", 0)
            past["b"] += child.get("b", 0)
            for reason, n in child.get("d", {}).items():
                past["d"][reason] = past["d"].get(reason, 0) + n
            self._child = {"w": 0, "b": 0, "d": {}}
            self._assigned = self._handled = 0
            self._cond.notify_all()
        return lost

    # ------------------------------------------------------------------ control (any thread)

    def flush(self, timeout: float = 5.0) -> bool:
        """Hand over what is queued and wait until the writer has written it; False on timeout or loss."""
        deadline = time.monotonic() + timeout
        try:
            gen, target = self._on_loop(lambda: self.send(deadline), timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            return False
        with self._cond:
            self._cond.wait_for(
                lambda: self._handled >= target or self.generation != gen or self._eof,
                max(deadline - time.monotonic(), 0.0),
            )
            return bool(self.generation == gen and self._handled >= target)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer (bounded wait, then kill by PID), keep the counts."""
        if self.closed:
            return
        deadline = time.monotonic() + timeout
        try:
            self._on_loop(lambda: self._finish(deadline), timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            self._finish(deadline)

    def _finish(self, deadline: float) -> None:
        if self.closed:
            return
        self.send(deadline)
        self.closed = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # the writer writes what it got, then exits
        _stop(proc, max(deadline - time.monotonic(), 0.1))
        if self._reader is not None:
            self._reader.join(max(deadline - time.monotonic(), 0.1))
        _close_streams(proc)
        lost = self._retire()
        if lost:
            self._drop("writer_down", lost)

    def _on_loop(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the event loop thread when the loop runs in another thread; else here."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running():
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the caller
                fut.set_exception(exc)

        loop.call_soon_threadsafe(call)
        return fut.result(timeout)

    # ------------------------------------------------------------------ counts

    def drops(self) -> tuple[dict[str, int], int]:
        """({reason: entries dropped}, entries queued now) for metrics."""
        with self._cond:
            counts = dict(self._drops)
            for d in (self._past["d"], self._child.get("d", {})):
                for reason, n in d.items():
                    counts[reason] = counts.get(reason, 0) + n
            return counts, len(self._batch) + self._assigned - self._handled

    @property
    def dropped_total(self) -> int:
        return sum(self.drops()[0].values())

    @property
    def written(self) -> int:
        """Request-log rows committed by the writers."""
        return int(self._past["w"] + self._child.get("w", 0))

    @property
    def batches(self) -> int:
        return int(self._past["b"] + self._child.get("b", 0))

    def _drop(self, reason: str, n: int) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + n
        self._warn(reason, drop_message(self.path, reason))

    def _warn(self, reason: str, message: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("%s", message)


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` up to ``timeout``, then kill it by PID; returns its exit code."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _close_streams(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
