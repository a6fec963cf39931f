"""Helpers for the tests of ``aib serve --workers N`` (not a test module).

* :func:`fake_worker_script` - an executable stand-in for ``python -m aib.gateway.workers`` so that
  :class:`aib.gateway.workers.Supervisor` can run in the test process (it notes what it sees in a file).
* :func:`run_supervisor` - ``Supervisor.run()`` in the main thread while a driver thread acts on it
  (signals to this process); always ends it, never leaves a signal handler changed.
* :class:`ServedGateway` - a real ``aib serve --workers N`` process tree: started, waited for, its log
  read, stopped by PID (the supervisor, then whatever is left of its tree).
* :func:`request` / :func:`chat` / :func:`fan_out` - plain HTTP on a fresh connection per request, so the
  kernel hands each to whichever worker accepts first; :func:`worker_of` tells the workers apart by
  the ``x-request-id`` the gateway makes (a random prefix per process).
* :func:`metric_total` - a Prometheus sample summed over the series matching some labels.

Everything listens on 127.0.0.1 and every process started here is stopped here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, TypeVar

import psutil
from prometheus_client.parser import text_string_to_metric_families

from aib.gateway.workers import SPEC_ENV, Supervisor
from aib.ops.procs import aib_command
from gateway_harness import HOST, wait_until

T = TypeVar("T")
RID_PREFIX = 20  # hex digits of the per-process part of a gateway-made request id (aib.gateway.app)


# --------------------------------------------------------------------------- a fake worker (unit tests)

FAKE_DIR_ENV = "AIB_TEST_FAKE_WORKER_DIR"
FAKE_MODE_ENV = "AIB_TEST_FAKE_WORKER_MODE"

_FAKE_WORKER = """
import json, os, signal, socket, sys, time

spec = json.loads(os.environ[{spec_env!r}])
out = os.environ[{dir_env!r}]
mode = os.environ.get({mode_env!r}, "serve")
index = spec["index"]


def note(msg):
    with open(os.path.join(out, "w%d.log" % index), "a") as f:
        f.write("%d %s\\n" % (os.getpid(), msg))


terms = []


def on_term(signum, frame):
    terms.append(signum)
    note("TERM")


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGHUP, lambda signum, frame: note("HUP"))
note("start")
if mode == "bad-config":
    sys.exit(2)
sock = socket.socket(fileno=spec["listen_fd"])
listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
port = sock.getsockname()[1]
sock.detach()
if mode == "slow-ready":
    time.sleep(1.0)
if mode == "never-ready":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)
# noted before the supervisor hears of it: once it does, it may signal at once (a reload asked for
# while starting), and the HUP note must come after this one
note("ready listening=%d port=%d count=%d sup=%d run_dir=%s" % (
    listening, port, spec["count"], spec["supervisor_pid"], os.path.isdir(spec["run_dir"])))
try:
    os.write(spec["ready_fd"], b"r")
    os.close(spec["ready_fd"])
except OSError:
    pass
need = 2 if mode == "stubborn" else 1
deadline = time.monotonic() + 60  # never outlive a broken test
while len(terms) < need and time.monotonic() < deadline and os.getppid() == spec["supervisor_pid"]:
    time.sleep(0.01)
note("stop")
"""


def fake_worker_script(folder: Path) -> Path:
    """An executable file that acts as a worker (ignores its ``-m aib.gateway.workers`` arguments).

    It reads ``$AIB_WORKER_SPEC`` like a real worker, reports ready on the ready pipe, notes
    ``start`` (signal handlers set), ``ready``, ``HUP``, ``TERM``, ``stop`` lines in ``$AIB_TEST_FAKE_WORKER_DIR/w<index>.log`` and stops on
    SIGTERM. ``$AIB_TEST_FAKE_WORKER_MODE``: ``serve`` (default), ``bad-config`` (exits 2 at once, as a
    worker does on an invalid config), ``slow-ready`` (ready after 1 s), ``never-ready`` (hangs, ignoring SIGTERM), ``stubborn`` (stops on the
    second SIGTERM only).
    """
    path = folder / "fake_worker.py"
    body = _FAKE_WORKER.format(spec_env=SPEC_ENV, dir_env=FAKE_DIR_ENV, mode_env=FAKE_MODE_ENV)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def fake_notes(folder: Path, index: int) -> list[tuple[int, str]]:
    """The ``(pid, note)`` lines fake worker ``index`` wrote so far."""
    try:
        text = (folder / f"w{index}.log").read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        pid, _, note = line.partition(" ")
        out.append((int(pid), note))
    return out


def run_supervisor(sup: Supervisor, driver: Callable[[Supervisor], None], timeout: float = 30.0) -> int:
    """``sup.run()`` here (signal handlers need the main thread) while ``driver(sup)`` runs in a thread.

    The driver talks to the supervisor the way an operator does, with signals to this process. When it
    returns or fails and ``run()`` is still going, SIGTERM is sent until it returns (bounded). A SIGTERM
    that arrives after ``run()`` restored the handlers hits a no-op handler installed here, never the
    default one (which would end the test process). The driver's exception is raised after.
    """
    done = threading.Event()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            driver(sup)
        except BaseException as exc:
            errors.append(exc)
        deadline = time.monotonic() + timeout
        while not done.is_set() and time.monotonic() < deadline:
            if not done.wait(0.5 if errors else timeout):
                os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    thread = threading.Thread(target=drive, name="supervisor-driver", daemon=True)
    try:
        thread.start()
        code = sup.run()
    finally:
        done.set()
        thread.join(timeout=10)
        signal.signal(signal.SIGTERM, old)
    assert not thread.is_alive(), "the driver thread did not stop"
    if errors:
        raise errors[0]
    return code


def all_ready(sup: Supervisor, count: int) -> bool:
    ws = list(sup.workers.values())
    return len(ws) == count and all(w.ready for w in ws)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One request on a connection of its own (closed after)."""
    conn = HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"connection": "close", **({"content-type": "application/json"} if data else {})}
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def chat(port: int, model: str, timeout: float = 10.0) -> Reply:
    """A chat completion (no x-request-id: the serving worker makes one)."""
    return request(
        port,
        "POST",
        "/v1/chat/completions",
        {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        timeout=timeout,
    )


def worker_of(reply: Reply) -> str:
    """Which worker process answered (the random per-process prefix of the request id it made)."""
    rid = reply.headers.get("x-request-id", "")
    assert len(rid) == 32, reply
    return rid[:RID_PREFIX]


def fan_out(fn: Callable[[int], T], n: int, threads: int = 8) -> list[T]:
    """``fn(i)`` for i in range(n), ``threads`` at a time."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, range(n)))


def chats_on_both(port: int, model: str, batch: int = 50, max_s: float = 15.0) -> list[Reply]:
    """Batches of concurrent chats on fresh connections until two different workers answered (bounded),
    whatever the status; every reply is returned (the caller checks them)."""
    replies: list[Reply] = []
    deadline = time.monotonic() + max_s
    while True:
        replies += fan_out(lambda _: chat(port, model), batch)
        seen = {worker_of(r) for r in replies if "x-request-id" in r.headers}
        if len(seen) >= 2 or time.monotonic() > deadline:
            return replies


def metric_total(text: str, sample: str, **labels: str) -> float:
    """The sum of ``sample`` over the series whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# --------------------------------------------------------------------------- the real thing


def serve_env() -> dict[str, str]:
    """This environment without AIB_* settings, the request log off (nothing in the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    env["AIB_REQUEST_LOG"] = "off"
    return env


READY_LINE = re.compile(r"gateway listening on http://127\.0\.0\.1:(\d+) \((\d+) workers: ([\d, ]+)\)")
WORKER_READY = re.compile(r"worker (\d+) \(pid (\d+)\) ready")


class ServedGateway:
    """``aib serve --workers N -c CONFIG --port 0 ARGS`` with its output in ``log_path``.

    ``aib serve`` execs the supervisor, so :attr:`proc`'s PID is the supervisor's.
    """

    def __init__(
        self,
        config_dir: Path,
        log_path: Path,
        *args: str,
        workers: int = 2,
        port: int = 0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.env = {**serve_env(), **(env or {})}
        self.log_path = log_path
        self.count = workers
        self.argv = [
            *aib_command(), "serve", "--workers", str(workers), "-c", str(config_dir),
            "--host", HOST, "--port", str(port), *args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port
        self._tree: list[psutil.Process] = []  # every process of the tree seen so far (for the cleanup)

    # ----- lifecycle

    def start(self) -> ServedGateway:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_exit(self, timeout: float) -> int:
        """The supervisor's exit code, waiting up to ``timeout`` s (TimeoutExpired after)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def wait_listening(self, timeout: float = 60.0) -> int:
        """Until the supervisor says it listens (the port); fails when it exits first."""
        found: list[re.Match[str]] = []

        def listening() -> bool:
            assert self.proc is not None
            m = READY_LINE.search(self.log())
            if m:
                found.append(m)
                return True
            assert self.proc.poll() is None, f"aib serve exited ({self.proc.returncode}):\n{self.log()}"
            return False

        wait_until(listening, timeout, 0.05, "aib serve --workers to listen")
        self.port = int(found[0].group(1))
        return self.port

    def wait_stable(self, timeout: float = 30.0) -> dict[int, int]:
        """Until every worker index has a live, ready process and those are all the supervisor's
        children; ``{index: pid}``."""
        result: dict[int, int] = {}

        def stable() -> bool:
            ready = self.ready_workers()
            pids = {c.pid for c in self.workers()}
            ok = len(ready) == self.count and set(ready.values()) == pids and len(pids) == self.count
            if ok:
                result.update(ready)
            return ok

        wait_until(stable, timeout, 0.05, f"{self.count} ready workers")
        return result

    def __enter__(self) -> ServedGateway:
        self.start()
        try:
            self.wait_listening()
            self.wait_stable()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 45.0) -> int | None:
        """SIGTERM the supervisor and wait for it (bounded); then kill, by PID, whatever of its tree is
        still running (it should be nothing). Its exit code (None: never started)."""
        if self.proc is None:
            return None
        self._remember_tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        for p in self._tree:
            with contextlib.suppress(psutil.Error):
                if p.is_running():
                    p.kill()
        psutil.wait_procs(self._tree, timeout=10)
        return code

    def _remember_tree(self) -> None:
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(self.pid).children(recursive=True):
                if p not in self._tree:
                    self._tree.append(p)

    # ----- what it runs

    def supervisor(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def workers(self) -> list[psutil.Process]:
        """The supervisor's live children (the workers)."""
        self._remember_tree()
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if _running(k)]

    def ready_workers(self) -> dict[int, int]:
        """``{index: pid}`` of the last "worker N (pid P) ready" line of each index."""
        return {int(i): int(pid) for i, pid in WORKER_READY.findall(self.log())}

    def run_dir(self) -> Path:
        """This instance's run folder (from a worker's spec)."""
        spec = json.loads(self.workers()[0].environ()[SPEC_ENV])
        return Path(spec["run_dir"])

    # ----- its output

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log from offset ``after`` (bounded wait)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.compile(pattern).search(self.log(), after)
            if m:
                found.append(m)
            return m is not None

        wait_until(seen, timeout, 0.05, f"{pattern!r} in the log of aib serve")
        return found[0]


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@contextlib.contextmanager
def listening_socket() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on for the ``with`` block."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        s.listen(1)
        yield s.getsockname()[1]
