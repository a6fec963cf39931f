"""Child processes that are always stopped by PID, and a record of them that survives a hard kill.

:class:`Child` runs one command in its own session (so a terminal's Ctrl-C reaches only its parent,
which stops children in order) with stdout and stderr in a log file. :class:`PidRecord` writes the
PIDs of what a command started to a JSON file; when that command dies without cleaning up (SIGKILL,
a crash), the next run finds the record and stops the leftovers, after checking that each PID still
runs the command that was recorded (a PID may have been reused).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from aib.pids import alive


def aib_command() -> list[str]:
    """How to run `aib` as a child: the console script next to this interpreter, else on PATH."""
    script = Path(sys.executable).with_name("aib")
    if script.exists():
        return [str(script)]
    found = shutil.which("aib")
    return [found] if found else [sys.executable, "-c", "from aib.cli.main import app; app()"]


def cmdline(pid: int) -> list[str] | None:
    """The arguments of a running process (Linux /proc), or None when it is gone, a zombie or unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    args = raw.decode(errors="replace").split("\0")
    return [a for a in args if a] or None


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (our children lead their own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Child:
    """One child process in its own session, logging to ``log_path``; :meth:`stop` ends its group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- aib: starting {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    def exit_code(self) -> int | None:
        """None while it runs (or before it started), else its exit code."""
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, SIGKILL it after ``timeout`` s; return the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
        code = proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # anything it forked and left behind in its group
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    marker: tuple[str, ...]  # arguments its command line holds (a port, a path): identify it

    def matches(self, args: list[str] | None) -> bool:
        return args is not None and all(m in args for m in self.marker)


class PidRecord:
    """``path`` lists the owner's PID and its children's; written on every change, removed at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.children: list[Recorded] = []

    def add(self, name: str, pid: int, marker: Sequence[str]) -> None:
        self.children.append(Recorded(name, pid, tuple(marker)))
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {"owner": os.getpid(), "children": [asdict(c) for c in self.children]}
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def running_owner(self, word: str = "demo") -> int | None:
        """The PID of another live owner of this record (its command line has ``word``), else None."""
        owner = self._read().get("owner")
        if not isinstance(owner, int) or owner == os.getpid() or not alive(owner):
            return None
        args = cmdline(owner)  # None: unreadable or just exec-ing; assume it is still the owner
        return owner if args is None or any(word in a for a in args) else None

    def stop_leftovers(self, timeout: float = 5.0) -> list[Recorded]:
        """Stop the recorded children still running their recorded command; return them."""
        stopped: list[Recorded] = []
        children = self._read().get("children")
        for raw in children if isinstance(children, list) else []:
            try:
                rec = Recorded(str(raw["name"]), int(raw["pid"]), tuple(str(m) for m in raw["marker"]))
            except (KeyError, TypeError, ValueError):
                continue
            if not rec.marker or not rec.matches(cmdline(rec.pid)):
                continue  # gone, or the PID now belongs to something else
            signal_group(rec.pid, signal.SIGTERM)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(rec.pid, signal.SIGTERM)  # in case it does not lead its own group
            deadline = time.monotonic() + timeout
            while cmdline(rec.pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            signal_group(rec.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(rec.pid, signal.SIGKILL)
            stopped.append(rec)
        self.remove()
        return stopped

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
