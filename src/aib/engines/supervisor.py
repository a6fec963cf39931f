"""Keep one child process serving: start it, wait until it is ready, restart it with back-off, stop it.

The child runs in its own process group (its own session), so a terminal's Ctrl-C reaches only the
supervisor, which passes the signal on; every signal goes to the child's group by the child's PID, so
worker processes the child forks get it too, and nothing else does.

>>> sup = Supervisor("litellm", ["litellm", "--port", "4000"], ready=lambda: http_ok(url))  # doctest: +SKIP
>>> restore = sup.install_signal_handlers()   # main thread: SIGTERM/SIGINT stop, SIGHUP -> on_hup
>>> sup.run()                                   # blocks until stopped; restarts the child when it dies
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("aib.engines")


class SupervisorError(RuntimeError):
    """The child cannot be kept running (it never becomes ready), or cannot be started at all."""


@dataclass(frozen=True)
class Backoff:
    """Delay before restart ``n`` (1-based) of a child that keeps exiting: initial x factor^(n-1), capped.

    A child that ran ``stable_s`` seconds after it became ready counts as healthy again: its next exit
    waits ``initial_s`` only.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, n: int) -> float:
        return float(min(self.max_s, self.initial_s * self.factor ** max(0, n - 1)))


@dataclass(frozen=True)
class ChildExit:
    """One exit of the child, as the supervisor saw it."""

    pid: int
    code: int | None  # negative: killed by that signal
    uptime_s: float
    was_ready: bool
    restart_in_s: float | None  # None: not restarted (stop requested or gave up)


class Supervisor:
    """Runs ``command`` as a child and keeps it running until :meth:`request_stop`.

    ``ready`` is polled (every ``poll_s``) after each start until it returns True; a child that exits
    before it ever became ready ``max_start_failures`` times in a row makes :meth:`run` give up with
    :class:`SupervisorError`. ``command`` may be a callable, asked again at every start.
    Output goes to ``log_path`` (appended) or, when None, to the supervisor's own stdout/stderr.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str] | Callable[[], Sequence[str]],
        *,
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout_s: float = 180.0,
        backoff: Backoff | None = None,
        max_start_failures: int = 5,
        stop_timeout_s: float = 15.0,
        poll_s: float = 0.1,
        log_path: Path | None = None,
        on_hup: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self._command = command
        self._ready = ready
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready_timeout_s = ready_timeout_s
        self.backoff = backoff or Backoff()
        self.max_start_failures = max_start_failures
        self.stop_timeout_s = stop_timeout_s
        self.poll_s = poll_s
        self.log_path = log_path
        self.on_hup = on_hup
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[ChildExit] = []
        self.ready_times: list[float] = []  # seconds from start to ready, per start that got there
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._wake = threading.Event()
        self._stop_signal = signal.SIGTERM
        self._signalled: int | None = None  # the child that already got the stop signal
        self._started_at = 0.0

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def command(self) -> list[str]:
        return list(self._command() if callable(self._command) else self._command)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return "(its output went to this terminal, above)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ control (thread- and signal-safe)

    def send(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group; False when there is no child."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
            return True
        return False  # pragma: no cover - exited between poll() and killpg()

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop for good: pass ``sig`` to the child now; :meth:`run` returns once it has exited.

        A second request while stopping kills the child's group (SIGKILL)."""
        if self._stop.is_set():
            self.send(signal.SIGKILL)
        else:
            self._stop_signal = signal.Signals(sig)
            self._stop.set()
            if self.send(sig):
                self._signalled = self.pid
        self._wake.set()

    def request_restart(self) -> None:
        """Restart the child now (a planned restart: no back-off, not counted as a failure)."""
        self._restart.set()
        self._wake.set()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM and SIGINT stop (passed on to the child), SIGHUP calls ``on_hup`` (else restarts).

        Main thread only. Returns a function that puts the previous handlers back."""

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: %s received, stopping %s", self.name, signal.Signals(signum).name, self.name)
            self.request_stop(signum)

        def hup(_signum: int, _frame: FrameType | None) -> None:
            if self.on_hup is not None:
                self.on_hup()
            else:
                self.request_restart()

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup))
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> int:
        """Start the child (its own session and process group); returns its PID."""
        if self.running():
            raise SupervisorError(f"{self.name} is already running (pid {self.pid})")
        cmd = self.command()
        out: int | None = None
        fh = None
        if self.log_path is not None:
            fh = self.log_path.open("ab")
            fh.write(f"\n--- aib: starting {' '.join(cmd)}\n".encode())
            fh.flush()
            out = fh.fileno()
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {self.name} ({cmd[0]}): {exc}") from None
        finally:
            if fh is not None:
                fh.close()
        self.starts += 1
        self._started_at = time.monotonic()
        log.debug("%s started: pid %d", self.name, self.proc.pid)
        return self.proc.pid

    def wait_ready(self) -> bool:
        """Poll ``ready`` until it holds (True), the child exits or a stop/restart is asked (False).

        A child not ready within ``ready_timeout_s`` is stopped (False)."""
        deadline = self._started_at + self.ready_timeout_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self._stop.is_set() or self._restart.is_set():
                return False
            if self._ready():
                self.ready_times.append(time.monotonic() - self._started_at)
                return True
            if time.monotonic() >= deadline:
                log.error("%s not ready within %.0f s; stopping it", self.name, self.ready_timeout_s)
                self.stop()
                return False
            self._wake.wait(self.poll_s)

    def _wait_exit(self) -> int | None:
        """Block until the child exits or a stop/restart is asked; the exit code, or None."""
        while self.proc is not None:
            code = self.proc.poll()
            if code is not None:
                return code
            if self._stop.is_set() or self._restart.is_set():
                return None
            self._wake.wait(self.poll_s)
            self._wake.clear()
        return None

    def run(self) -> int:
        """Keep the child running until a stop is requested; then stop it. Returns 0.

        Raises :class:`SupervisorError` when the child exits ``max_start_failures`` times in a row
        before it became ready (a bad config, a port in use, a missing dependency...)."""
        failures = 0  # exits since the child last ran stably
        start_failures = 0  # exits in a row before it became ready
        try:
            while not self._stop.is_set():
                self._restart.clear()
                self._wake.clear()
                pid = self.start()
                ready = self.wait_ready()
                if ready:
                    start_failures = 0
                    log.info("%s ready in %.1f s (pid %d)", self.name, self.ready_times[-1], pid)
                code = self._wait_exit()
                if self._stop.is_set():
                    break
                if self._restart.is_set():
                    log.info("%s: restarting (pid %d)", self.name, pid)
                    self.stop()
                    failures = 0
                    continue
                uptime = time.monotonic() - self._started_at
                if not ready:
                    start_failures += 1
                    if start_failures >= self.max_start_failures:
                        self.exits.append(ChildExit(pid, code, uptime, ready, None))
                        raise SupervisorError(
                            f"{self.name} exited {start_failures} times in a row before it became ready "
                            f"(last exit code {code}); giving up. Its last output:\n{self.log_tail()}"
                        )
                ran_s = uptime - self.ready_times[-1] if ready else 0.0  # serving, after it got ready
                failures = 1 if ran_s >= self.backoff.stable_s else failures + 1
                delay = self.backoff.delay(failures)
                self.exits.append(ChildExit(pid, code, uptime, ready, delay))
                log.warning(
                    "%s (pid %d) exited with code %s after %.1f s; restarting in %.1f s",
                    self.name,
                    pid,
                    code,
                    uptime,
                    delay,
                )
                self._stop.wait(delay)
        finally:
            self.stop()
        return 0

    def stop(self) -> int | None:
        """Stop the child: the stop signal (SIGTERM by default) to its group, SIGKILL after
        ``stop_timeout_s``; then make sure no process of its group is left. Returns its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            if self._signalled != proc.pid:
                self.send(self._stop_signal if self._stop.is_set() else signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s (pid %d) did not stop in %.0f s; killing it", self.name, proc.pid, self.stop_timeout_s
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        _reap_group(proc.pid)
        return proc.returncode


def _reap_group(pgid: int, grace_s: float = 2.0) -> None:
    """Members of the process group ``pgid`` that outlived its leader (forked workers): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
