"""Run a real Redis server (Debian's ``redis-server``) for tests, benchmarks and drills.

>>> with RedisServer() as r:   # doctest: +SKIP
...     r.url   # redis://127.0.0.1:PORT/0

One child process bound to 127.0.0.1 on a free port (kept across :meth:`stop` / :meth:`start`, so a
restarted server comes back at the same address), no persistence unless asked (``persist``: an
append-only file, as a Redis that holds client keys needs), logging to a file; ``DEBUG``
allowed from loopback (``DEBUG SLEEP`` makes it slow on purpose). :meth:`kill` is ``kill -9``.
Sentinel mode (``redis-server --sentinel``) is :class:`RedisSentinel`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from aib.devtools.llamacpp import free_port

HOST = "127.0.0.1"
BINARY = "redis-server"


class RedisError(RuntimeError):
    """The server could not be started."""


def redis_available() -> bool:
    return shutil.which(BINARY) is not None


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port (NOAUTH counts: it answers)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))  # (a server with a password)
    except OSError:
        return False


class RedisServer:
    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        extra: tuple[str, ...] = (),
        ready_timeout_s: float = 10.0,
        persist: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.persist = persist  # an append-only file fsynced every second (what kill -9 can lose)
        self.ready_timeout_s = ready_timeout_s
        self._dir = Path(tempfile.mkdtemp(prefix="aib-redis-"))
        self.log_path = log_path or self._dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        return [
            BINARY,
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            "--dir", str(self._dir),
            "--enable-debug-command", "local",
            "--logfile", str(self.log_path),
            *self.extra,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        if not redis_available():
            raise RedisError(f"{BINARY} is not installed (make sysdeps: Debian's redis-server)")
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while not ping(self.port):
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
                raise RedisError(f"redis-server exited with {self.proc.returncode}: {tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server not ready on port {self.port} after {self.ready_timeout_s}s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; waits for the process (by PID)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """``kill -9``: the server dies at once, its connections reset."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5.0)

    def command_line(self, *args: str, timeout: float = 5.0) -> bytes:
        """One command over a fresh connection (RESP inline form), its raw reply."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            return s.recv(65536)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisSentinel(RedisServer):
    """``redis-server --sentinel`` watching ``master`` (a :class:`RedisServer`) as ``name``."""

    def __init__(self, master: RedisServer, name: str = "aibmaster", port: int | None = None) -> None:
        super().__init__(port)
        self.master = master
        self.name = name

    def command(self) -> list[str]:
        conf = self._dir / "sentinel.conf"
        conf.write_text(
            f"bind {HOST}\nport {self.port}\ndir {self._dir}\nlogfile {self.log_path}\n"
            f"sentinel monitor {self.name} {HOST} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
        )
        return [BINARY, str(conf), "--sentinel"]


def wait_gone(port: int, timeout: float = 5.0) -> None:
    """Until nothing answers on ``port`` (a stopped server's socket closed)."""
    deadline = time.monotonic() + timeout
    while ping(port, 0.2) and time.monotonic() < deadline:
        time.sleep(0.02)
