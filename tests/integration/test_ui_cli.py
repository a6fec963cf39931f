"""`aib ui`: starts the web UI on 127.0.0.1, says clearly what is wrong otherwise.

One test runs the real command as a child process (stopped by PID with SIGINT, like Ctrl-C, and with SIGTERM, like systemd); the
others run it in-process through typer's CliRunner and exit before anything listens.
"""

from __future__ import annotations

import _thread
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.devtools.llamacpp import free_port
from gateway_harness import dead_url

pytestmark = pytest.mark.integration

runner = CliRunner()


def test_help_says_what_the_ui_does() -> None:
    result = runner.invoke(app, ["ui", "--help"])
    assert result.exit_code == 0
    for word in ("chat", "compare", "analytics", "--port", "--gateway", "--db"):
        assert word in result.output


def test_a_bad_gateway_url_is_refused() -> None:
    result = runner.invoke(app, ["ui", "--gateway", "localhost:4000"])
    assert result.exit_code == 2
    assert "'localhost:4000' is not a gateway URL: use e.g. http://127.0.0.1:4000" in result.output


def test_a_port_in_use_is_refused_before_starting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(app, ["ui", "--port", str(port), "--gateway", dead_url()])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use: choose another with --port" in result.output


def test_without_the_ui_extra_the_command_installs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """gradio missing: `aib ui` runs pip for the pinned ui extra (here pip is told to fail: the
    command says what it tried and stops)."""
    import importlib.util

    from aib.cli import extras

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    ran: list[list[str]] = []
    monkeypatch.setattr(extras, "_pip", lambda argv: ran.append(argv) or 1)
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 1
    assert "gradio not installed: installing the ui extra now (gradio==" in result.output
    assert "pip could not install the ui extra (exit 1): pip install gradio==" in result.output
    assert ran and ran[0][1:4] == ["-m", "pip", "install"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_aib_ui_serves_the_page_until_interrupted(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    log = tmp_path / "ui.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from aib.cli.main import app; app()", "ui", "--port", str(port),
             "--gateway", dead_url(), "--db", "off"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        page = ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    page = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert "<!doctype html>" in page, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as resp:
            assert '"title":"aib · ai-backend-unified"' in resp.read().decode()
        proc.send_signal(sig)  # Ctrl-C, or systemd stopping the unit: both stop it cleanly
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log.read_text()
    assert f"web UI on http://127.0.0.1:{port}" in text and "request log off" in text
    assert "warning: nothing answers at" in text
    assert "Traceback" not in text and text.rstrip().endswith("web UI stopped")


def test_aib_ui_in_process_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """The same command in this process (Ctrl-C delivered with ``interrupt_main`` once the page answers)."""
    port = free_port()
    served: list[str] = []

    def interrupt_when_served() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not served:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as resp:
                    served.append(resp.read().decode())
            except OSError:
                time.sleep(0.1)
        _thread.interrupt_main()

    poker = threading.Thread(target=interrupt_when_served, daemon=True)
    poker.start()
    result = runner.invoke(
        app, ["ui", "--port", str(port), "--gateway", dead_url(), "--db", str(tmp_path / "r.db")]
    )
    poker.join(5)
    assert served and '"title":"aib · ai-backend-unified"' in served[0]
    assert result.exit_code == 0, result.output
    assert f"request log {tmp_path / 'r.db'}" in result.output.replace("\n", "")
    assert result.output.rstrip().endswith("web UI stopped")
    with pytest.raises(OSError):  # the port is free again: nothing listens
        urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
