"""`make run` (`aib serve` on the shipped config) where no provider answers: the first lines say so."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aib.cli import ports as portscan
from aib.config.load import load_config
from aib.devtools.llamacpp import free_port
from aib.ops.procs import aib_command, alive

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIRST_LINES = 15


def read_lines_until(proc: subprocess.Popen[bytes], done: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    lines: list[str] = []
    partial = b""
    deadline = time.monotonic() + timeout
    try:
        while not any(done in line for line in lines):
            left = deadline - time.monotonic()
            assert left > 0, f"no {done!r} within {timeout}s:\n" + "\n".join(lines)
            if sel.select(left):
                chunk = os.read(fd, 65536)
                assert chunk, "aib serve exited:\n" + "\n".join(lines) + partial.decode()
                *whole, partial = (partial + chunk).split(b"\n")
                lines += [w.decode(errors="replace") for w in whole]
    finally:
        sel.close()
    return lines


def test_first_lines_name_the_down_providers_and_point_to_make_demo(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")  # make run: ./config of the checkout
    cfg = load_config(tmp_path / "config")
    enabled = {n: p for n, p in cfg.providers.providers.items() if p.enabled}
    # the shipped config's ports; whatever happens to listen on this machine is up, the rest is down
    down = [n for n, p in enabled.items() if not portscan.probe(p.host_port[1])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    env["AIB_REQUEST_LOG"] = "off"
    proc = subprocess.Popen(
        [*aib_command(), "serve", "--port", str(free_port())],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        marker = "providers are down" if down else "providers are up"
        lines = read_lines_until(proc, marker, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert not alive(proc.pid)
    (at, line), *_ = [(i, ln) for i, ln in enumerate(lines) if marker in ln]
    assert at < FIRST_LINES, "\n".join(lines)
    assert "Traceback" not in "\n".join(lines)
    if down:
        assert f"{len(down)} of {len(enabled)} providers are down" in line
        for name in down:
            assert f"{name} (" in line, (name, line)
        assert "`make demo`" in line and "`aib doctor`" in line
