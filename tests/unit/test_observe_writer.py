"""The writer's work, run in this process: access lines, request-log rows, reports, retention.

The same :class:`aib.observe.writer.Writer` runs in the writer process (``python -m aib.observe.writer``,
tested end to end in ``tests/integration/test_observe_writer_process.py``); here it gets pipes and files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from aib.observe import writer as writer_mod
from aib.observe.logs import (
    ACCESS_LOGGER,
    HUMAN_FORMAT,
    AccessLines,
    AccessLogObserver,
    JsonFormatter,
    LineHandler,
    Redactor,
)
from aib.observe.records import Attempt, RequestRecord
from aib.observe.wire import BATCH, CONFIG, SECRETS, FrameReader, frame, to_wire
from aib.observe.writer import Writer, write_all
from observe_support import make_record

pytestmark = pytest.mark.unit

KEY = "sk-test-0123456789abcdef"


def variety() -> list[RequestRecord]:
    """Records of every shape a line can take."""
    fallback = make_record("big", route="big", stream=True, ttfb_s=0.0123, total_s=0.5)
    fallback.attempts.insert(0, Attempt("vllm/big", "vllm", "big", "big", None, "down", None, 0.001, False))
    return [
        make_record(),
        fallback,
        make_record("nope", route=None, matched_by=None, provider=None, status=404, error="no such model",
                    error_code="model_not_found", prompt_tokens=None, completion_tokens=None),
        make_record(status=502, error=f"upstream said Bearer {KEY} is bad", error_code="upstream_error"),
        make_record(status=0, client_disconnected=True, started_at=1_700_000_000.9996),
        make_record("odd \udcff model", error="lone \udcff surrogate", status=500),
    ]  # fmt: skip


@pytest.fixture
def pipes() -> Iterator[tuple[int, int]]:
    """(read end, write end) of a pipe for the writer's reports; both closed afterwards."""
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def reports(fd: int) -> list[dict[str, Any]]:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return [orjson.loads(line) for line in data.splitlines()]


def logging_lines(records: list[RequestRecord], fmt: str) -> str:
    """What the thread writer puts on a handler made by ``configure_logging``."""
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(HUMAN_FORMAT))
    logger = logging.getLogger("aib.test.writer-equivalence")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    obs = AccessLogObserver(Redactor(lambda: [KEY]), logger)
    obs.log = logger
    try:
        for r in records:
            obs.request_done(r)
        handler.flush()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().replace(logger.name, ACCESS_LOGGER)


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_lines_are_the_ones_the_logging_path_writes(fmt: str) -> None:
    records = variety()
    lines = AccessLines(fmt, Redactor(lambda: [KEY]))
    mine = b"".join(lines.line(to_wire(r)) for r in records)
    assert KEY.encode() not in mine and len(mine.splitlines()) == len(records)
    if fmt == "human":  # stderr writes odd characters as backslash escapes, as the writer does
        assert mine == logging_lines(records, fmt).encode("utf-8", "backslashreplace")
    else:  # the logging path loses a JSON line with a lone surrogate; the writer replaces the character
        assert mine.splitlines(keepends=True)[:-1] == logging_lines(records[:-1], fmt).encode().splitlines(
            True
        )
        assert orjson.loads(mine.splitlines()[-1])["error"] == "lone ? surrogate"


def test_lines_below_the_level_are_not_written() -> None:
    quiet = AccessLines("human", level=logging.WARNING)
    assert quiet.line(to_wire(make_record())) == b""
    assert b"WARNING aib.access: 503" in quiet.line(to_wire(make_record(status=503)))


def test_writer_writes_lines_rows_and_reports(tmp_path: Path, pipes: tuple[int, int]) -> None:
    db = tmp_path / "var" / "requests.db"
    out = tmp_path / "access.log"
    with out.open("wb") as fh:
        w = Writer(report_fd=pipes[1], lines_fd=fh.fileno())
        records = variety()
        data = (
            frame(CONFIG, {"access": True, "log_format": "json", "request_log": str(db), "log_bodies": True})
            + frame(BATCH, [to_wire(r) for r in records[:2]])
            + frame(SECRETS, (KEY, "ab"))
            + frame(BATCH, [to_wire(r) for r in records[2:]])
        )
        w.handle(FrameReader().feed(data))
        assert w.line_writer is not None
        w.line_writer.close()  # lines are written by a thread of the writer: wait for it
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [x["request_id"] for x in lines] == [r.request_id for r in records]
    assert "***" in lines[3]["error"] and KEY not in out.read_text()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (len(records),)
        assert con.execute("SELECT count(*) FROM attempts").fetchone()[0] == 6
        errors = [e for (e,) in con.execute("SELECT error FROM requests WHERE error IS NOT NULL")]
    assert not any(KEY in e for e in errors) and "lone ? surrogate" in errors
    got = reports(pipes[0])
    assert got[0] == {
        "info": f"request log {db}: applied m001_initial, m002_bodies, m003_key_name, m004_door, m005_cache"
    }
    done = [r for r in got if "h" in r]
    assert [r["h"] for r in done] == [2, len(records)]  # one report per batch between secrets
    assert done[-1] == {
        "h": 6,
        "w": 6,
        "b": 2,
        "d": {"disk_full": 0, "locked": 0, "unwritable": 0, "error": 0},
    }


def test_a_line_that_fails_costs_that_line_only(tmp_path: Path, pipes: tuple[int, int]) -> None:
    def broken(text: str | None) -> str | None:
        raise ValueError("redactor bug")

    out = tmp_path / "access.log"
    with out.open("wb") as fh:
        w = Writer(report_fd=pipes[1], lines_fd=fh.fileno())
        w.configure({"access": True})
        assert w.lines is not None and w.store is None
        w.lines.redact = broken
        w.write(
            [to_wire(make_record()), to_wire(make_record(status=502, error="boom")), to_wire(make_record())]
        )
        assert w.line_writer is not None
        w.line_writer.close()  # lines are written by a thread of the writer: wait for it
    assert len(out.read_bytes().splitlines()) == 2
    got = reports(pipes[0])
    assert "access log line failed" in got[0]["error"] and "redactor bug" in got[0]["error"]
    assert got[1] == {"h": 3, "w": 0, "b": 0, "d": {}}


def test_run_writes_until_its_input_closes_and_applies_retention(
    tmp_path: Path, pipes: tuple[int, int]
) -> None:
    db = tmp_path / "requests.db"
    old = make_record(request_id="old", started_at=time.time() - 30 * 86400)
    r_in, w_in = os.pipe()
    with os.fdopen(w_in, "wb") as feed:
        feed.write(frame(CONFIG, {"request_log": str(db), "retention_days": 7}))
        feed.write(frame(BATCH, [to_wire(old), to_wire(make_record(request_id="new"))]))
    try:
        assert Writer(report_fd=pipes[1], lines_fd=2).run(r_in) == 0
    finally:
        os.close(r_in)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT request_id FROM requests").fetchall() == [("new",)]
    assert {"info": f"request log {db}: retention removed 1 rows"} in reports(pipes[0])


def test_main_ignores_stop_signals_and_reads_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    ignored: list[int] = []
    monkeypatch.setattr(writer_mod.signal, "signal", lambda sig, handler: ignored.append(sig))
    r_in, w_in = os.pipe()
    with os.fdopen(w_in, "wb") as feed:
        feed.write(
            frame(CONFIG, {"access": True}) + frame(BATCH, [to_wire(make_record(request_id="via-main"))])
        )

    class Stdin:
        def fileno(self) -> int:
            return r_in

    monkeypatch.setattr(sys, "stdin", Stdin())
    try:
        assert writer_mod.main() == 0
    finally:
        os.close(r_in)
    out, err = capfd.readouterr()
    assert sorted(ignored) == sorted([writer_mod.signal.SIGINT, writer_mod.signal.SIGTERM])
    assert orjson.loads(out.splitlines()[-1])["h"] == 1
    assert "INFO aib.access: 200" in err and "rid=via-main" in err


def test_write_all_keeps_lines_whole_on_a_pipe_and_waits_when_it_is_full() -> None:
    sizes: list[int] = []
    calls = {"n": 0}

    def write(fd: int, data: memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise BlockingIOError  # the reader is behind: wait, then go on
        sizes.append(len(data))
        assert bytes(data).endswith(b"\n")
        return len(data)

    lines = b"".join(b"x" * 99 + b"\n" for _ in range(100))  # 10 000 bytes
    r, w = os.pipe()
    try:
        assert write_all(w, lines, 4096, write)
    finally:
        os.close(r)
        os.close(w)
    assert sum(sizes) == len(lines) and max(sizes) <= 4096 and len(sizes) == 3
    r, w = os.pipe()
    os.close(r)
    try:
        assert write_all(w, b"gone\n") is False  # EPIPE: the reader went away
    finally:
        os.close(w)


def test_a_stalled_stderr_costs_access_lines_not_rows(tmp_path: Path, pipes: tuple[int, int]) -> None:
    r, w = os.pipe()  # nobody reads it: the line thread blocks once the pipe is full
    db = tmp_path / "requests.db"
    writer = Writer(report_fd=pipes[1], lines_fd=w)
    writer.configure({"access": True, "request_log": str(db)})
    assert writer.line_writer is not None
    writer.line_writer.max_bytes = 200_000
    batch = [to_wire(make_record(error="x" * 1000)) for _ in range(100)]  # ~110 kB of lines
    for _ in range(10):
        writer.write(batch)
    assert writer.handled == 1000 and writer.store is not None and writer.store.written == 1000
    assert writer.line_writer.dropped >= 100  # lines gave way; rows did not
    warns = [m for m in reports(pipes[0]) if "warn" in m]
    assert warns == [{"warn": "access_lines", "msg": warns[0]["msg"]}] and "stderr" in warns[0]["msg"]
    drained = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(r, 1 << 20), b"")])
    drained.start()  # the reader comes back: what was queued goes out, the thread ends
    writer.line_writer.close()
    os.close(w)
    drained.join(10)
    os.close(r)
    assert not drained.is_alive()
