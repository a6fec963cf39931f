"""``aib serve`` as a user runs it: a child process on a free 127.0.0.1 port (not a test module).

* :func:`aib_serve` - start ``aib serve -c CONFIG --port P ARGS``, wait until ``/health/live`` answers,
  yield a :class:`Served`, stop it by PID (SIGTERM, which flushes the request log; SIGKILL if stuck).
* :func:`served_trace` - one request's row in the request log (route, attempts), waiting for the
  background writer to store it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from aib.devtools.llamacpp import free_port
from aib.observe.requestquery import RequestLogMissing, RequestLogReader
from aib.ops.procs import aib_command


class Served(NamedTuple):
    port: int
    base_url: str  # http://127.0.0.1:PORT (no /v1)
    proc: subprocess.Popen[bytes]
    log_path: Path
    request_log: Path | None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve_env(request_log: Path | None, **extra: str) -> dict[str, str]:
    """This environment without AIB_* settings; the request log at ``request_log`` (None: off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    env["AIB_REQUEST_LOG"] = str(request_log) if request_log is not None else "off"
    env.update(extra)
    return env


def _live(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def aib_serve(
    config_dir: Path,
    log_path: Path,
    *args: str,
    request_log: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Iterator[Served]:
    port = free_port()
    argv = [*aib_command(), "serve", "-c", str(config_dir), "--host", "127.0.0.1", "--port", str(port), *args]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**serve_env(request_log), **(env or {})},
        )
    served = Served(port, f"http://127.0.0.1:{port}", proc, log_path, request_log)
    try:
        deadline = time.monotonic() + timeout
        while not _live(served.base_url):
            if proc.poll() is not None:
                raise AssertionError(f"aib serve exited ({proc.returncode}):\n{served.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"aib serve not live within {timeout:g}s:\n{served.log()}")
            time.sleep(0.05)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def served_trace(served: Served, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The request log's record of ``request_id`` (with its attempts), once the writer stored it."""
    assert served.request_log is not None, "start aib_serve with request_log=PATH"
    deadline = time.monotonic() + timeout
    while True:
        # missing, or created but not migrated yet (no tables): the writer is not there yet
        with contextlib.suppress(RequestLogMissing, sqlite3.OperationalError):
            with RequestLogReader(served.request_log) as reader:
                row = reader.trace(request_id)
            if row is not None:
                return row
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} not in the request log after {timeout:g}s")
        time.sleep(0.05)
