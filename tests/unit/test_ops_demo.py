"""`aib demo` without starting a model: its config, its examples, and every refusal before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.config.compile import build_plan
from aib.ops import democonfig
from aib.ops.demo import DemoError, DemoOptions, DemoStack, default_demo_dir, port_holder, webui_available
from aib.ops.procs import PidRecord, alive, cmdline
from gateway_harness import wait_until

pytestmark = pytest.mark.unit


def test_demo_config_routes_every_kind_of_name(tmp_path: Path) -> None:
    plan, _cfg, warnings = build_plan(democonfig.write(tmp_path / "config", (18001, 18002)))
    assert warnings == []
    assert set(plan.providers) == set(democonfig.PROVIDERS)
    assert plan.providers["demo-a"].base_url == "http://127.0.0.1:18001"
    group = plan.resolve(democonfig.MODEL)
    assert group is not None and group.matched_by == "exact"
    assert {t.provider for t in group.group.targets} == {"demo-a", "demo-b"}  # load-balanced
    for alias in democonfig.ALIASES:
        res = plan.resolve(alias)
        assert res is not None and res.matched_by == "alias" and res.group.name == democonfig.MODEL
    primary = plan.resolve(democonfig.PRIMARY)
    assert primary is not None
    assert [g.name for g in primary.chain] == [democonfig.PRIMARY, f"{democonfig.MODEL}-b"]  # fallback chain
    assert all(t.upstream == democonfig.MODEL for g in plan.groups.values() for t in g.targets)
    lines = democonfig.describe()
    assert len(lines) == 3 and "falls back" in lines[1]


def test_examples_are_ready_to_paste() -> None:
    text = democonfig.examples("http://127.0.0.1:4100")
    assert "curl -s http://127.0.0.1:4100/v1/chat/completions" in text
    assert 'base_url="http://127.0.0.1:4100/v1"' in text
    # the heredoc runs as written: no indentation inside it, the terminator alone on its line
    body = text.split("<<'EOF'\n", 1)[1].split("\nEOF", 1)[0]
    assert all(not line.startswith(" ") for line in body.splitlines())
    compile(body, "example", "exec")
    assert text.rstrip().endswith("\nEOF")


def test_default_demo_dir_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIB_DEMO_DIR", raising=False)
    assert default_demo_dir() == Path.home() / ".cache" / "aib" / "demo"
    monkeypatch.setenv("AIB_DEMO_DIR", str(tmp_path / "d"))
    assert default_demo_dir() == tmp_path / "d"


def test_port_holder() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        holder = port_holder(port)
        assert holder is not None and (f"pid {os.getpid()}" in holder or holder == "another process")
    assert port_holder(port) is None


def test_taken_port_fails_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        result = CliRunner().invoke(app, ["demo", "--check", "--port", str(port), "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"port {port} is in use" in result.output and f"--port {port + 1}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "demo.pids").exists() and not (tmp_path / "logs").exists()


def test_another_running_demo_is_refused(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "aib", "demo"])
    try:
        (tmp_path / "demo.pids").write_text(f'{{"owner": {other.pid}, "children": []}}')
        with pytest.raises(DemoError, match=f"another `aib demo` \\(pid {other.pid}\\)"):
            DemoStack(DemoOptions(demo_dir=tmp_path), out=lambda _: None).preflight()
    finally:
        other.kill()
        other.wait(5)


def test_demo_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    result = CliRunner().invoke(app, ["demo", "--check", "--port", str(free), "--dir", str(blocker / "demo")])
    assert result.exit_code == 1 and "cannot create the demo folder" in result.output


def test_ui_is_skipped_until_the_ui_command_and_its_libraries_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    has_ui = any(c.name == "ui" for c in app.registered_commands)
    assert webui_available() is (has_ui and importlib.util.find_spec("gradio") is not None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gradio" else real(n, *a))
    assert webui_available() is False


def test_a_recycled_owner_pid_is_not_a_demo(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "demo.pids").write_text(f'{{"owner": {other.pid}, "children": []}}')
        wait_until(lambda: cmdline(other.pid) is not None, what="the child to exec")
        assert PidRecord(tmp_path / "demo.pids").running_owner() is None
    finally:
        other.kill()
        other.wait(5)
    assert not alive(other.pid)


def test_pid_record_round_trip(tmp_path: Path) -> None:
    rec = PidRecord(tmp_path / "demo.pids")
    rec.add("x", 12345, ("--port", "1"))
    assert PidRecord(rec.path).running_owner() is None  # the owner is this process
    rec.remove()
    assert not rec.path.exists()
    rec.path.write_text("{not json")
    assert PidRecord(rec.path).stop_leftovers() == []
