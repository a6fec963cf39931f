"""``aib serve --workers N``: N gateway processes on one listening socket, under one supervisor.

One process serves about one core's worth of requests (docs/performance.md). With more cores, start
more workers: the supervisor binds HOST:PORT once and starts N workers (``python -m
aib.gateway.workers``), each an ordinary gateway that accepts from that same socket, so the kernel
hands each new connection to whichever worker takes it first: a busy worker takes fewer.

The supervisor
- starts the workers together and reports ready when all listen; a leader that cannot start (a bad
  config: exit code 2) stops everything with its exit code;
- restarts a worker that exits (at once, then after a growing pause if it keeps exiting); the socket
  stays open in the supervisor, so connections wait in its queue and nothing is refused meanwhile;
- on SIGTERM or SIGINT tells every worker to drain and stop (a second signal: at once), waits for
  them by PID and kills what is left after the drain time;
- on SIGHUP has the leader reload; on SIGUSR1 (the leader applied a new configuration) has every
  other worker load it (:mod:`aib.reload.cluster`).

Per worker, as in a single process: health probes, circuit breakers, balancer counters, the observe
writer (all write the same request log and access log) and the LiteLLM-SDK adapter. Shared: the
configuration in force (the leader's) and the metrics (:mod:`aib.observe.shared`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from aib.pids import alive

log = logging.getLogger("aib.gateway")
SPEC_ENV = "AIB_WORKER_SPEC"
READY_TIMEOUT_S = 120.0
QUICK_EXIT_S = 10.0  # a worker that exits sooner than this after its start is restarted after a pause
MAX_PAUSE_S = 30.0
EXIT_BAD_CONFIG = 2
BACKLOG = 2048
RUN_DIR_PREFIX = "aib-serve-"  # then the supervisor's PID: <tmp>/aib-serve-<pid>-<random>


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to know (passed as JSON in ``$AIB_WORKER_SPEC``)."""

    index: int
    count: int
    listen_fd: int
    ready_fd: int
    run_dir: str
    supervisor_pid: int
    host: str
    port: int
    config_dir: str | None
    health_checks: bool
    log_level: str
    insecure_open: bool = False

    @property
    def leader(self) -> bool:
        return self.index == 0

    def to_env(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_env(cls) -> WorkerSpec | None:
        raw = os.environ.get(SPEC_ENV)
        return cls(**orjson.loads(raw)) if raw else None


def bind(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from (raises OSError: port taken, address not local)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _ignore_sighup() -> None:  # runs in the child between fork and exec: the supervisor has no threads
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _remove_stale_run_dirs() -> None:
    """Run folders of supervisors that were killed (SIGKILL leaves no chance to clean up)."""
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(RUN_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        if not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    ready_r: int  # the supervisor's end of the worker's ready pipe (-1 once ready or gone)
    started: float
    ready: bool = False


class Supervisor:
    """Run N workers until a signal says stop (see the module doc). :meth:`run` returns the exit code."""

    def __init__(
        self,
        count: int,
        host: str,
        port: int,
        config_dir: Path | None,
        health_checks: bool = True,
        log_level: str = "info",
        drain_s: float = 30.0,
        insecure_open: bool = False,
    ) -> None:
        if count < 1:
            raise ValueError("--workers must be at least 1")
        self.count = count
        self.host, self.port = host, port
        self.config_dir = config_dir
        self.health_checks = health_checks
        self.log_level = log_level
        self.insecure_open = insecure_open
        self.drain_s = drain_s
        self.workers: dict[int, _Worker] = {}
        self.sock: socket.socket | None = None
        self.run_dir: Path | None = None
        self.signals: list[int] = []
        self.stopping = False
        self.restarts = 0  # worker exits followed by a restart
        self.started = False  # every worker got ready once
        self._reload_pending = False
        self._pause: dict[int, float] = {}  # index -> pause before its next restart
        self._next_start: dict[int, float] = {}
        self._wake_r, self._wake_w = -1, -1

    # ---------------------------------------------------------------- the loop

    def run(self) -> int:
        try:
            self.sock = bind(self.host, self.port)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.host, self.port, exc.strerror or exc)
            return 1
        _remove_stale_run_dirs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            return self._run()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            signal.set_wakeup_fd(old_wakeup)
            self._kill_all()
            self.sock.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)

    def _run(self) -> int:
        for i in range(self.count):
            self._start(i)
        code = self._wait_ready()
        if code is not None:
            return code
        self.started = True
        port = self.sock.getsockname()[1] if self.sock else self.port
        pids = ", ".join(str(w.proc.pid) for w in self.workers.values())
        log.info("gateway listening on http://%s:%d (%d workers: %s)", self.host, port, self.count, pids)
        while not self.stopping:
            self._wait(1.0)
            self._handle_signals()
            if not self.stopping:
                self._reap()
        return self._stop()

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r] + [w.ready_r for w in self.workers.values() if w.ready_r >= 0]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(fds, [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 512)
            for w in list(self.workers.values()):
                if w.ready_r in readable:
                    self._ready_pipe(w)

    def _ready_pipe(self, w: _Worker) -> None:
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(w.ready_r, 16)
        if data:
            w.ready = True
        os.close(w.ready_r)
        w.ready_r = -1
        if w.ready and w.index == 0 and self._reload_pending:  # asked for while the leader started
            self._reload_pending = False
            self._send(0, signal.SIGHUP)

    def _wait_ready(self) -> int | None:
        """Until every worker listens; the leader's exit code when it cannot start."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.workers) < self.count or not all(w.ready for w in self.workers.values()):
            if time.monotonic() > deadline:
                log.error("the workers did not get ready within %.0fs", READY_TIMEOUT_S)
                return 1
            self._wait(0.2)
            self._handle_signals()
            if self.stopping:
                return self._stop()
            leader = self.workers.get(0)
            if leader is not None and not leader.ready and leader.proc.poll() is not None:
                code = leader.proc.returncode
                log.error("the leader worker could not start (exit code %s)", code)
                return code if code and code > 0 else 1
            self._reap()
        return None

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:  # a second one: the workers stop at once too
                    self._send_all(signal.SIGTERM)
                self.stopping = True
            elif sig == signal.SIGHUP:  # a reload: the leader runs it (once it can)
                leader = self.workers.get(0)
                if leader is not None and leader.ready:
                    self._send(0, signal.SIGHUP)
                else:
                    self._reload_pending = True
            elif sig == signal.SIGUSR1:  # the leader applied a configuration: the others load it
                for i in self.workers:
                    if i != 0:
                        self._send(i, signal.SIGHUP)

    # ---------------------------------------------------------------- workers

    def spec(self, index: int, ready_w: int) -> WorkerSpec:
        assert self.sock is not None and self.run_dir is not None
        return WorkerSpec(
            index=index,
            count=self.count,
            listen_fd=self.sock.fileno(),
            ready_fd=ready_w,
            run_dir=str(self.run_dir),
            supervisor_pid=os.getpid(),
            host=self.host,
            port=self.sock.getsockname()[1],
            config_dir=str(self.config_dir) if self.config_dir else None,
            health_checks=self.health_checks,
            log_level=self.log_level,
            insecure_open=self.insecure_open,
        )

    def _start(self, index: int) -> None:
        assert self.sock is not None
        ready_r, ready_w = os.pipe()
        env = {**os.environ, SPEC_ENV: self.spec(index, ready_w).to_env()}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "aib.gateway.workers"],
                env=env,
                pass_fds=(self.sock.fileno(), ready_w),
                # a Ctrl-C in the terminal reaches the supervisor only, which drains the workers
                process_group=0,
                # a SIGHUP (a reload relayed) before the worker's handler is set must not kill it;
                # an ignored signal stays ignored across exec, until the worker sets its handler
                # (it reads the published configuration after that, so nothing is missed)
                preexec_fn=_ignore_sighup,
            )
        except OSError as exc:
            os.close(ready_r)
            log.error("cannot start worker %d: %s", index, exc)
            self._next_start[index] = time.monotonic() + MAX_PAUSE_S
            return
        finally:
            os.close(ready_w)
        self.workers[index] = _Worker(index, proc, ready_r, time.monotonic())

    def _reap(self) -> None:
        """Restart workers that exited (after a pause when they keep exiting quickly)."""
        now = time.monotonic()
        for i in range(self.count):
            w = self.workers.get(i)
            if w is not None and w.proc.poll() is None:
                continue
            if w is not None:
                code = w.proc.returncode
                del self.workers[i]
                if w.ready_r >= 0:
                    os.close(w.ready_r)
                quick = now - w.started < QUICK_EXIT_S
                pause = min(self._pause.get(i, 0.5) * 2, MAX_PAUSE_S) if quick else 0.0
                self._pause[i] = pause if quick else 0.5
                self._next_start[i] = now + pause
                self.restarts += 1
                if not self.started and code == EXIT_BAD_CONFIG and i != 0:
                    continue  # the same files as the leader's: its exit code says what happens next
                log.error(
                    "worker %d (pid %d) exited with code %s; restarting it%s",
                    i,
                    w.proc.pid,
                    code,
                    f" in {pause:.0f}s" if pause else "",
                )
            if now >= self._next_start.get(i, 0.0):
                self._start(i)

    def _send(self, index: int, sig: int) -> None:
        w = self.workers.get(index)
        if w is not None and w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, sig)

    def _send_all(self, sig: int) -> None:
        for i in list(self.workers):
            self._send(i, sig)

    def _stop(self) -> int:
        """Drain: every worker stops taking connections and finishes what it has (bounded)."""
        self.stopping = True
        log.info("stopping %d workers (drain up to %gs)", len(self.workers), self.drain_s)
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + self.drain_s + 10.0
        while any(w.proc.poll() is None for w in self.workers.values()):
            if time.monotonic() > deadline:
                break
            self._wait(0.1)
            if any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals):
                self.signals.clear()
                self._send_all(signal.SIGTERM)  # a second signal: stop now
        self._kill_all()
        return 0

    def _kill_all(self) -> None:
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(5.0)
            if w.ready_r >= 0:
                with contextlib.suppress(OSError):
                    os.close(w.ready_r)
                w.ready_r = -1


# -------------------------------------------------------------------- the worker's side


def _report_config_error(exc: Any) -> None:
    """The same lines as the CLI's (``file:path: message``, then the count)."""
    from aib.cli.common import err_console, print_issues

    print_issues(exc.issues)
    n = len(exc.errors)
    err_console.print(f"[red]{n} error{'s' if n != 1 else ''}[/red]: configuration not used")


def worker_main(spec: WorkerSpec) -> int:
    """One worker: the ordinary gateway on the inherited socket, with its part in reloads and metrics."""
    from aib.config.errors import ConfigError
    from aib.gateway.server import serve
    from aib.gateway.settings import GatewaySettings

    settings = GatewaySettings(
        host=spec.host,
        port=spec.port,
        config_dir=Path(spec.config_dir) if spec.config_dir else None,
        health_checks=spec.health_checks,
        insecure_open=spec.insecure_open,
    )
    try:
        serve(settings, log_level=spec.log_level, worker=spec)
    except ConfigError as exc:
        if spec.leader:  # the followers read the same files: one report is enough
            _report_config_error(exc)
        return EXIT_BAD_CONFIG
    return 0


SUPERVISE = "--supervise"


def supervisor_argv(
    count: int,
    host: str,
    port: int,
    config_dir: Path | None,
    health_checks: bool,
    log_level: str,
    drain_s: float,
    insecure_open: bool = False,
) -> list[str]:
    """The supervisor's command: ``aib serve --workers N`` execs it (the same PID, without the CLI's
    libraries in memory: ~17 MB instead of ~58 MB)."""
    args = {
        "count": count,
        "host": host,
        "port": port,
        "config_dir": str(config_dir) if config_dir else None,
        "health_checks": health_checks,
        "log_level": log_level,
        "drain_s": drain_s,
        "insecure_open": insecure_open,
    }
    # the command line the user typed follows, for `ps` and for tools that find a process by its
    # arguments (`aib demo` recognises its leftovers by their port)
    shown = ["--", "aib", *sys.argv[1:]]
    return [sys.executable, "-m", "aib.gateway.workers", SUPERVISE, orjson.dumps(args).decode(), *shown]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_env()
    if spec is not None:
        return worker_main(spec)
    if "--" in argv:
        argv = argv[: argv.index("--")]
    if len(argv) == 2 and argv[0] == SUPERVISE:
        from aib.observe.logs import configure_logging
        from aib.observe.settings import ObserveSettings

        a = orjson.loads(argv[1])
        configure_logging(ObserveSettings.from_env().log_format, a["log_level"])
        cdir = Path(a["config_dir"]) if a["config_dir"] else None
        sup = Supervisor(
            a["count"],
            a["host"],
            a["port"],
            cdir,
            a["health_checks"],
            a["log_level"],
            a["drain_s"],
            bool(a.get("insecure_open", False)),
        )
        return sup.run()
    print("aib.gateway.workers runs `aib serve --workers N`; start that instead", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
