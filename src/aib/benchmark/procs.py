"""Processes of a benchmark (each stopped by PID), their memory and CPU, and the machine they run on."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers 200 (raises RuntimeError after ``timeout`` seconds)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def running(
    cmd: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group for the ``with`` block, output to ``log`` (or discarded);
    stopped by PID at the end: SIGTERM to the group, SIGKILL after 15 s."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class Proc:
    """A child process we started, with its log file. ``exclude_root``: memory and CPU figures leave the
    root out (a supervisor, e.g. ``aib serve --engine litellm``) and count only what it runs."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float = 0.0
    exclude_root: bool = False

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.popen.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        return procs[1:] if self.exclude_root else procs

    def rss_mb(self) -> float:
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total / 2**20

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process we started, SIGKILL after ``timeout``; then any descendant it left
        behind, each by its PID."""
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.popen.pid).children(recursive=True)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
                child.wait(3)
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str],
    logdir: Path,
    *,
    cwd: Path | None = None,
    exclude_root: bool = False,
) -> Proc:
    log = logdir / f"{name}.log"
    with log.open("wb") as fh:
        popen = subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd
        )
    return Proc(name, popen, log, time.monotonic(), exclude_root)


def wait_ready(proc: Proc, ready: Callable[[], bool], seconds: float, interval: float = 0.01) -> float:
    """Poll ``ready`` until it holds; seconds since the process started. Raises with its log tail when it
    exits or is not ready in time."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}")
        if ready():
            return time.monotonic() - proc.started
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not ready in {seconds:.0f} s:\n{proc.tail()}")
        time.sleep(interval)


def wait_idle(proc: Proc, max_s: float = 10.0, busy_pct: float = 10.0, step_s: float = 0.2) -> float:
    """Wait (at most ``max_s``) until ``proc`` uses < ``busy_pct`` of a core: requests a load generator
    left in flight are done. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        c0 = proc.cpu_s()
        time.sleep(step_s)
        if (proc.cpu_s() - c0) / step_s * 100 < busy_pct:
            break
    return time.monotonic() - t0


# --------------------------------------------------------------------------- the machine


def cpu_busy_s() -> float:
    """Machine-wide user+nice+system CPU seconds (all cores) from /proc/stat.

    irq/softirq (loopback work our own traffic causes) and steal are left out, so that
    ``cpu_busy_s() - own_cpu_s()`` estimates what processes outside the benchmark used."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]
    except OSError:
        return float("nan")
    user, nice, system = (int(x) for x in fields)
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def own_cpu_s(procs: Sequence[Proc]) -> float:
    """CPU of everything a benchmark runs: its processes, reaped children (wrk) and this process."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(p.cpu_s() for p in procs) + ru.ru_utime + ru.ru_stime + time.process_time()


def wait_quiet(max_wait_s: float, busy_pct: float = 15.0, procs: Sequence[Proc] = ()) -> float:
    """Wait (at most ``max_wait_s``) until other processes use < ``busy_pct`` of the machine; returns the
    last measured share, in %."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, c0 = cpu_busy_s(), own_cpu_s(procs)
        time.sleep(0.25)
        foreign = (cpu_busy_s() - b0) - (own_cpu_s(procs) - c0)
        busy = max(0.0, foreign / (0.25 * (os.cpu_count() or 1)) * 100)
        if busy < busy_pct or time.monotonic() > deadline:
            return busy


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
        "versions": versions,
    }
