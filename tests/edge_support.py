"""Helpers of the HTTP edge abuse tests (not a test module).

* :func:`served_gateway` - ``aib serve`` as a child process on a free 127.0.0.1 port (one process,
  no health checks, request log off), stopped by PID; its memory is read from ``/proc``.
* :func:`peak_rss` / :func:`rss` - VmHWM / VmRSS of a process, in bytes.
* :func:`push` - send bytes on a non-blocking socket until they are all sent, the peer stops taking
  them, or an answer arrives (bounded in time).
* :func:`get_once` - one GET on a fresh connection, the whole answer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from aib.devtools.llamacpp import free_port
from aib.ops.procs import aib_command
from gateway_harness import HOST, stop_process, wait_until
from workers_support import serve_env


class ServedGateway(NamedTuple):
    pid: int
    port: int
    log: Path


def _live(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def served_gateway(tmp_path: Path, **env: str) -> Iterator[ServedGateway]:
    """``aib serve`` (native, one process) over a config with one provider that is never called."""
    cfg = tmp_path / "config"
    cfg.mkdir(exist_ok=True)
    (cfg / "providers.yaml").write_text(
        f"providers:\n  up:\n    type: openai_compatible\n    base_url: http://{HOST}:{free_port()}\n"
        "    models: [m]\n"
    )
    (cfg / "model-mappings.yaml").write_text("models:\n  m: {provider: up}\n")
    port = free_port()
    log = tmp_path / "gateway.log"
    argv = [*aib_command(), "serve", "-c", str(cfg), "--host", HOST, "--port", str(port)]
    argv += ["--no-health-checks", "--log-level", "warning"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**serve_env(), "AIB_ACCESS_LOG": "off", "AIB_METRICS": "off", **env},
        )
    try:
        wait_until(lambda: proc.poll() is None and _live(port), 30, 0.05, "aib serve to answer")
        yield ServedGateway(proc.pid, port, log)
    finally:
        stop_process(proc, timeout=10)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_rss(pid: int) -> int:
    """The most resident memory the process ever had (VmHWM), bytes."""
    return _status_kb(pid, "VmHWM")


def rss(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def push(sock: socket.socket, data: bytes, max_s: float, stall_s: float = 1.0) -> tuple[int, bytes]:
    """Send ``data`` without reading: stop when all is sent, when nothing more was taken for
    ``stall_s`` (the peer stopped reading), when an answer is readable, or after ``max_s``.
    Returns (bytes sent, the first bytes of the answer when one came)."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + max_s
    last = time.monotonic()
    while sent < len(data) and time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.05)
        if readable:
            try:
                return sent, sock.recv(65536)
            except OSError:
                return sent, b""
        if writable:
            try:
                n = sock.send(view[sent : sent + 1024 * 1024])
            except BlockingIOError:
                n = 0
            except OSError:  # the peer closed: nothing more goes
                break
            sent += n
            if n:
                last = time.monotonic()
        if time.monotonic() - last > stall_s:
            break
    return sent, b""


def read_answer(sock: socket.socket, first: bytes = b"", max_s: float = 10.0) -> bytes:
    """What the peer sends until it closes (or ``max_s``)."""
    sock.setblocking(True)
    sock.settimeout(max_s)
    out = first
    deadline = time.monotonic() + max_s
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def get_once(port: int, path: str = "/health/live", timeout: float = 10.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path.encode())
        return read_answer(s, max_s=timeout)
