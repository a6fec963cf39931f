"""Child processes of `aib demo` (started, stopped by PID, cleaned up after a hard kill) and the UI's lifecycle."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from aib.devtools.llamacpp import free_port
from aib.ops import procs
from aib.ops.demo import DemoOptions, DemoStack
from aib.ops.procs import Child, PidRecord, aib_command, alive, cmdline
from gateway_harness import Reply, ScriptedUpstream, dead_url, wait_until

pytestmark = pytest.mark.integration

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)",
]


def test_child_runs_logs_and_stops_by_pid(tmp_path: Path) -> None:
    child = Child("sleeper", SLEEPER, tmp_path / "logs" / "sleeper.log").start()
    assert child.running() and child.exit_code() is None and child.pid is not None
    wait_until(lambda: "up" in child.log_tail().splitlines(), what="the child's first line")
    assert "--- aib: starting" in child.log_tail()
    assert child.stop(timeout=5) == -signal.SIGTERM
    assert not alive(child.pid) and not child.running()
    assert Child("never", SLEEPER, tmp_path / "x.log").stop() is None
    assert Child("never", SLEEPER, tmp_path / "missing" / "x.log").log_tail() == ""


def test_a_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    child = Child("stubborn", STUBBORN, tmp_path / "stubborn.log").start()
    wait_until(lambda: "up" in child.log_tail().splitlines(), what="the child to ignore SIGTERM")
    assert child.stop(timeout=0.5) == -signal.SIGKILL
    assert child.pid is not None and not alive(child.pid)


def test_leftovers_are_stopped_only_when_they_still_run_what_was_recorded(tmp_path: Path) -> None:
    record = PidRecord(tmp_path / "demo.pids")
    kept = subprocess.Popen([*SLEEPER, "unrelated"], start_new_session=True)
    ours = subprocess.Popen([*SLEEPER, "marker-123"], start_new_session=True)
    stubborn = subprocess.Popen([*STUBBORN, "marker-456"], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"up\n"
        record.add("ours", ours.pid, ("marker-123",))
        record.add("stubborn", stubborn.pid, ("marker-456",))
        record.add("recycled", kept.pid, ("marker-789",))  # the PID now runs something else
        record.add("gone", 999_999_999, ("x",))
        stopped = PidRecord(record.path).stop_leftovers(timeout=0.5)
        assert [r.name for r in stopped] == ["ours", "stubborn"]
        ours.wait(10)
        stubborn.wait(10)
        assert alive(kept.pid) and not record.path.exists()
    finally:
        for p in (kept, ours, stubborn):
            p.kill()
            p.wait(10)
        if stubborn.stdout is not None:
            stubborn.stdout.close()
    assert cmdline(999_999_999) is None and not alive(999_999_999)


def test_aib_command_falls_back_to_the_interpreter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Path(aib_command()[0]).name == "aib"
    monkeypatch.setattr(procs.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert aib_command() == [str(tmp_path / "python"), "-c", "from aib.cli.main import app; app()"]
    (tmp_path / "aib").write_text("#!/bin/sh\n")
    (tmp_path / "aib").chmod(0o755)
    assert aib_command() == [str(tmp_path / "aib")]


# --------------------------------------------------------------------------- the UI and the check, alone


def stack(tmp_path: Path, **opts: object) -> tuple[DemoStack, list[str]]:
    """A demo stack in ``tmp_path``; free ports unless given (the defaults, 4000 and 5001, may be
    taken by a gateway or UI someone runs on this machine: a UI there would look "ready")."""
    opts.setdefault("port", free_port())
    opts.setdefault("ui_port", free_port())
    lines: list[str] = []
    st = DemoStack(DemoOptions(demo_dir=tmp_path, **opts), out=lines.append)  # type: ignore[arg-type]
    st.logs.mkdir(parents=True)
    return st, lines


def test_ui_that_exits_is_reported(tmp_path: Path) -> None:
    st, lines = stack(tmp_path, ui_command=(sys.executable, "-c", "import sys; sys.exit(3)"))
    st.start_ui()
    assert st.ui is not None and st.ui.pid is not None
    assert st.wait_ui(30) is False
    assert any("web UI exited with code 3" in line for line in lines)
    assert st.stop() == [f"ui (pid {st.ui.pid})"]


def test_ui_port_taken_or_not_installed(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        st, lines = stack(tmp_path, ui_port=port, ui_command=("true",))
        st.start_ui()
    assert st.ui is None and f"port {port} is in use" in lines[-1] and f"--ui-port {port + 1}" in lines[-1]
    st, lines = stack(tmp_path / "b", ui=False)
    st.start_ui()
    assert "--no-ui" in lines[-1]


def test_ui_stand_in_becomes_ready(tmp_path: Path) -> None:
    ui = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    st, lines = stack(tmp_path, ui_port=port, ui_command=ui)
    try:
        st.start_ui()
        assert st.wait_ui(30) is True and st.ui_ready
        assert f"web UI ready: http://127.0.0.1:{port}" in lines
    finally:
        st.stop()
    assert st.ui is not None and st.ui.pid is not None and not alive(st.ui.pid)


def test_check_chat_reports_a_dead_or_failing_gateway(tmp_path: Path) -> None:
    st, lines = stack(tmp_path, port=int(dead_url().rsplit(":", 1)[1]))
    assert st.check_chat() is False and lines[-1].startswith("check FAILED: nothing answers")
    with ScriptedUpstream() as up:
        up.enqueue(Reply.error(503, "no healthy deployment"))
        st, lines = stack(tmp_path / "b", port=up.port)
        assert st.check_chat() is False
    assert lines[-1].startswith("check FAILED: status 503")
