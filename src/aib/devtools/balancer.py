"""Run the shipped load balancer configurations (``deploy/haproxy/haproxy.cfg``,
``deploy/nginx/nginx.conf``) against replicas on free loopback ports: for the e2e tests, the scale-out
benchmark and drills.

:func:`render_haproxy` and :func:`render_nginx` change only addresses and paths in the shipped text
(the listening port, one ``server`` line per replica, the admin socket, pid and log files), so what
runs is what ships. :class:`Balancer` runs either as a child process in the foreground, stopped by PID.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def shipped(kind: str) -> str:
    """The text of ``deploy/haproxy/haproxy.cfg`` (``haproxy``) or ``deploy/nginx/nginx.conf`` (``nginx``)."""
    path = DEPLOY / "haproxy" / "haproxy.cfg" if kind == "haproxy" else DEPLOY / "nginx" / "nginx.conf"
    return path.read_text()


def _servers(text: str, pattern: str, make: str, ports: Sequence[int]) -> str:
    lines = text.splitlines(keepends=True)
    at = [i for i, ln in enumerate(lines) if re.match(pattern, ln)]
    if not at:
        raise ValueError(f"no server line matches {pattern!r}")
    first = lines[at[0]]
    indent = first[: len(first) - len(first.lstrip())]
    m = re.match(pattern, first)
    assert m is not None
    rest = first[m.end() :]
    new = [indent + make.format(n=i + 1, port=p) + rest for i, p in enumerate(ports)]
    keep = [ln for i, ln in enumerate(lines) if i not in at]
    keep[at[0] : at[0]] = new
    return "".join(keep)


def render_haproxy(text: str, listen: int, ports: Sequence[int], run_dir: Path) -> str:
    text = re.sub(r"bind 127\.0\.0\.1:\d+", f"bind {HOST}:{listen}", text, count=1)
    text = re.sub(r"stats socket \S+", f"stats socket {run_dir / 'admin.sock'}", text, count=1)
    return _servers(text, r"\s*server gw\d+ 127\.0\.0\.1:\d+", "server gw{n} 127.0.0.1:{port}", ports)


def render_nginx(text: str, listen: int, ports: Sequence[int], run_dir: Path) -> str:
    text = re.sub(r"listen 127\.0\.0\.1:\d+;", f"listen {HOST}:{listen};", text, count=1)
    text = re.sub(r"^pid \S+;", f"pid {run_dir / 'nginx.pid'};", text, count=1, flags=re.M)
    text = re.sub(r"^error_log \S+", f"error_log {run_dir / 'error.log'}", text, count=1, flags=re.M)
    text = text.replace("worker_processes auto;", "worker_processes 1;")  # tests: one core is plenty
    return _servers(text, r"\s*server 127\.0\.0\.1:\d+", "server 127.0.0.1:{port}", ports)


class Balancer:
    """HAProxy (``kind="haproxy"``) or nginx in the foreground on ``listen``, in front of ``ports``."""

    def __init__(self, kind: str, listen: int, ports: Sequence[int], text: str | None = None) -> None:
        self.kind = kind
        self.listen = listen
        self.ports = list(ports)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"aib-{kind}-"))
        render = render_haproxy if kind == "haproxy" else render_nginx
        self.config = self.run_dir / ("haproxy.cfg" if kind == "haproxy" else "nginx.conf")
        self.config.write_text(
            render(text if text is not None else shipped(kind), listen, self.ports, self.run_dir)
        )
        self.log_path = self.run_dir / "out.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.listen}"

    def argv(self) -> list[str]:
        if self.kind == "haproxy":
            return ["haproxy", "-db", "-f", str(self.config)]
        return ["nginx", "-c", str(self.config), "-p", str(self.run_dir), "-g", "daemon off;"]

    def check(self) -> subprocess.CompletedProcess[str]:
        """``haproxy -c`` / ``nginx -t`` on the rendered file."""
        argv = (
            ["haproxy", "-c", "-f", str(self.config)]
            if self.kind == "haproxy"
            else ["nginx", "-t", "-c", str(self.config), "-p", str(self.run_dir)]
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    def start(self, timeout: float = 10.0) -> Balancer:
        if shutil.which(self.argv()[0]) is None:
            raise RuntimeError(f"{self.argv()[0]} is not installed (make sysdeps)")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, self.listen), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.log_path.read_text()[-2000:]
                    self.stop()
                    raise RuntimeError(f"{self.kind} did not start: {out}") from None
                time.sleep(0.05)

    def admin(self, command: str) -> str:
        """One HAProxy runtime API command (``show servers state``, ``set server aib/gw1 state drain``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.run_dir / "admin.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM if self.kind == "haproxy" else signal.SIGQUIT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
