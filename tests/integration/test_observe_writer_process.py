"""The writer process (``python -m aib.observe.writer``) fed by :class:`aib.observe.client.WriterClient`.

Real child processes, each stopped by PID (``client.close()`` waits, then kills); files under tmp_path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aib.observe import client as client_mod
from aib.observe.client import WriterClient
from aib.observe.metrics import MetricsObserver
from observe_support import FakeGateway, make_record, small_plan

pytestmark = pytest.mark.integration

KEY = "sk-writer-test-0123456789"
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # a writer that never reads


def config(db: Path | None, **extra: Any) -> dict[str, Any]:
    return {"access": True, "log_format": "human", "request_log": str(db) if db else None, **extra}


def rows(db: Path, sql: str = "SELECT count(*) FROM requests") -> Any:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def clients() -> Iterator[list[WriterClient]]:
    """Every client a test makes is closed (its writer stopped by PID) even when the test fails."""
    made: list[WriterClient] = []
    yield made
    for c in made:
        c.close(timeout=2)


def test_records_reach_the_log_and_the_database(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], clients: list[WriterClient]
) -> None:
    db = tmp_path / "requests.db"
    c = WriterClient(config(db), secrets=lambda: (KEY,))
    clients.append(c)
    for i in range(20):  # no event loop here: each record is handed over at once
        c.request_done(make_record(request_id=f"r{i}", status=502 if i == 3 else 200, error=f"bad key {KEY}"))
    pid = c.pid
    assert pid is not None and c.flush(10)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert any(e.startswith(b"MALLOC_TRIM_THRESHOLD_=") for e in environ)  # it keeps its heap
    assert c.written == 20 and c.dropped_total == 0 and c.drops() == ({"queue_full": 0, "writer_down": 0, "disk_full": 0, "locked": 0, "unwritable": 0, "error": 0}, 0)  # fmt: skip
    c.close()
    assert gone(pid) and c.pid is None
    assert rows(db) == [(20,)]
    assert rows(db, "SELECT count(*) FROM requests WHERE error LIKE '%***%'") == [(20,)]
    err = capfd.readouterr().err
    assert (
        [line for line in err.splitlines() if "aib.access" in line][3]
        .split(" ", 2)[2]
        .startswith("WARNING aib.access: 502")
    )
    assert err.count("aib.access") == 20 and KEY not in err
    c.request_done(make_record())  # after close: counted, never an error
    assert c.drops()[0]["writer_down"] == 1


def test_on_an_event_loop_records_go_in_timed_batches(tmp_path: Path, clients: list[WriterClient]) -> None:
    db = tmp_path / "requests.db"
    metrics = MetricsObserver(FakeGateway(small_plan(tmp_path)), process_metrics=False)
    c = WriterClient(config(db, access=False), metrics=metrics, flush_interval_s=0.2)
    clients.append(c)
    labels = {"route": "llama3", "provider": "ollama", "endpoint": "chat/completions", "status": "200"}

    def scrape() -> float | None:  # what Prometheus sees, from another thread than the loop's
        return metrics.registry.get_sample_value("aib_requests_total", labels)

    async def serve() -> tuple[int, int, float | None, float | None, bool]:
        c.start()  # the gateway's startup hook
        for i in range(60):
            c.request_done(make_record(request_id=f"r{i}"))
        first = await asyncio.to_thread(scrape)  # counted at the scrape, before the timer fired
        for i in range(60, 100):
            c.request_done(make_record(request_id=f"r{i}"))
        queued = c.drops()[1]
        before = c._assigned  # nothing handed to the writer yet: the timer does it
        ok = await asyncio.to_thread(c.flush, 10)  # from another thread, while the loop runs
        return queued, before, first, await asyncio.to_thread(scrape), ok

    queued, before, first, second, ok = asyncio.run(serve())
    assert (queued, before, first, second, ok) == (100, 0, 60, 100, True)  # each request counted once
    assert c.batches == 1 and rows(db) == [(100,)]


def test_a_writer_that_falls_behind_costs_drops_never_waiting(
    tmp_path: Path, clients: list[WriterClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    c = WriterClient(config(tmp_path / "r.db"), queue_size=50, command=SLEEPER)
    clients.append(c)
    t0 = time.perf_counter()
    for _ in range(200):  # 50 of 40 kB fill the pipe: written in part, the rest kept for later
        c.request_done(make_record(error="x" * 40_000))
    assert time.perf_counter() - t0 < 5  # never blocked on the full pipe
    counts, queued = c.drops()
    assert counts["queue_full"] == 150 and queued == 50
    assert not c.flush(0.2)  # nothing is written: a flush says so after its timeout
    pid = c.pid
    assert pid is not None
    c.close(timeout=0.5)  # it does not stop when its input closes: killed by PID
    assert gone(pid)
    assert c.drops()[0]["writer_down"] == 50  # what it held is counted as lost
    messages = [r.getMessage() for r in caplog.records if r.name == "aib.requestlog"]
    assert sum("writer queue is full" in m for m in messages) == 1  # warned once


def test_a_writer_that_dies_is_restarted_and_the_loss_counted(
    tmp_path: Path,
    clients: list[WriterClient],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    monkeypatch.setattr(client_mod, "QUICK_EXIT_S", 0.0)  # as if it had run for a while: restart at once
    db = tmp_path / "requests.db"
    c = WriterClient(config(db, access=False))
    clients.append(c)
    c.request_done(make_record(request_id="first"))
    assert c.flush(10)
    first = c.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while c._proc is not None and c._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    c.request_done(make_record(request_id="second"))  # finds it dead, starts another
    assert c.flush(10)
    assert c.pid not in (None, first) and c.generation == 2
    assert c.written == 2 and c.drops()[0]["writer_down"] == 0  # it had written everything it got
    assert rows(db, "SELECT request_id FROM requests ORDER BY id") == [("first",), ("second",)]
    assert any("exited with code -9" in r.getMessage() for r in caplog.records)


def test_a_writer_that_keeps_dying_is_restarted_after_a_pause(
    tmp_path: Path, clients: list[WriterClient]
) -> None:
    c = WriterClient(config(tmp_path / "r.db"), command=[sys.executable, "-c", "pass"])
    clients.append(c)
    c.start()
    assert c._proc is not None
    c._proc.wait(10)
    c.request_done(make_record())  # the framed record was lost with it; the next start waits
    assert c.generation == 1 and c._next_start > time.monotonic()
    c.request_done(make_record())
    assert c.drops()[0]["writer_down"] >= 1


def test_stop_signals_reach_the_gateway_not_the_writer(tmp_path: Path, clients: list[WriterClient]) -> None:
    db = tmp_path / "requests.db"
    c = WriterClient(config(db, access=False))
    clients.append(c)
    c.start()
    pid = c.pid
    assert pid is not None
    # a first row written means its main() ran, and main() ignores the signals first (a fixed sleep
    # here was a race on a busy machine: the signal came before the writer had started)
    c.request_done(make_record(request_id="r-first"))
    assert c.flush(30.0)
    for sig in (signal.SIGINT, signal.SIGTERM):  # what Ctrl-C or a service stop sends the whole group
        os.kill(pid, sig)
    time.sleep(0.2)
    assert not gone(pid)
    for i in range(10):
        c.request_done(make_record(request_id=f"r{i}"))
    c.close()  # the gateway's shutdown: everything written, then the writer exits
    assert gone(pid) and rows(db) == [(11,)] and c.dropped_total == 0


def test_a_writer_that_cannot_start_never_fails_a_request(
    tmp_path: Path, clients: list[WriterClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "aib.requestlog")
    c = WriterClient(config(tmp_path / "r.db"), command=[str(tmp_path / "no-such-python")])
    clients.append(c)
    for _ in range(3):
        c.request_done(make_record())
    assert c.drops()[0]["writer_down"] == 3 and c.pid is None
    assert any("cannot start the observe writer" in r.getMessage() for r in caplog.records)
    assert c.flush(0.1)  # nothing is waiting: what was dropped is counted, not pending
