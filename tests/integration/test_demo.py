"""`aib demo` for real: two llama.cpp servers with SmolLM2, the gateway, the openai client; nothing left behind.

The in-process test drives :class:`DemoStack` (routes, fallback, the printed examples run as pasted);
the subprocess tests run `aib demo` as a user does and stop it with Ctrl-C (SIGINT), SIGTERM, or
SIGKILL followed by a second run that cleans up what the killed one left. Every PID is checked.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from aib.cli.main import app
from aib.devtools.llamacpp import free_port, llamacpp_available
from aib.observe.requestquery import RequestLogMissing, RequestLogReader
from aib.ops import democonfig
from aib.ops.demo import DemoError, DemoOptions, DemoStack, run_demo
from aib.ops.procs import PidRecord, aib_command, alive, cmdline
from gateway_harness import wait_until

pytestmark = pytest.mark.integration

CHAT = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(autouse=True)
def _needs_llamacpp(smollm_model: Path) -> None:
    if not llamacpp_available():  # `make test` installs it: a skip would count a missing part as a pass
        pytest.fail("llama-cpp-python[server] is not installed (pip install -e '.[llamacpp]')")


def request_trace(db: Path, request_id: str) -> dict[str, Any]:
    """The request log's record of one request, once the gateway's writer stored it."""
    found: list[dict[str, Any]] = []

    def stored() -> bool:
        with contextlib.suppress(RequestLogMissing), RequestLogReader(db) as reader:
            row = reader.trace(request_id)
            if row is not None:
                found.append(row)
        return bool(found)

    wait_until(stored, 10, 0.05, f"request {request_id} in the request log")
    return found[0]


def assert_all_gone(pids: list[int]) -> None:
    assert pids
    wait_until(lambda: not any(alive(p) for p in pids), timeout=15, what=f"processes {pids} to end")


def run_printed_examples(gateway_url: str) -> None:
    """The curl command and the openai snippet `aib demo` prints, run by bash exactly as printed."""
    text = democonfig.examples(gateway_url)
    curl = text.split("Try it with curl:\n\n", 1)[1].split("\n\nor with", 1)[0]
    sdk = text.split("(pip install openai):\n\n", 1)[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for snippet, expect in ((curl, '"choices"'), (sdk, "")):
        run = subprocess.run(
            ["bash", "-c", snippet], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert run.returncode == 0, (snippet, run.stderr)
        assert run.stdout.strip() and expect in run.stdout


# --------------------------------------------------------------------------- in-process


@pytest.fixture
def stack(tmp_path: Path, smollm_model: Path) -> Iterator[tuple[DemoStack, list[str]]]:
    lines: list[str] = []
    ui = (sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1")  # a stand-in web UI
    opts = DemoOptions(
        port=free_port(), ui_port=free_port(), demo_dir=tmp_path / "demo", model=smollm_model, ui_command=ui
    )
    st = DemoStack(opts, out=lines.append)
    try:
        st.start()
        yield st, lines
    finally:
        st.stop()


def test_demo_routes_real_requests_and_stops_everything(stack: tuple[DemoStack, list[str]]) -> None:
    st, lines = stack
    pids = list(st.pids().values())
    assert len(pids) == 4 and all(alive(p) for p in pids)  # two llama.cpp servers, the gateway, the UI
    assert (st.dir / "demo.pids").exists()
    client = OpenAI(base_url=st.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=60)

    raw = client.chat.completions.with_raw_response.create(model="chat", messages=CHAT, max_tokens=8)
    assert raw.headers["x-aib-provider"] in democonfig.PROVIDERS
    assert raw.parse().choices[0].message.content
    chunks = list(
        client.chat.completions.create(model=democonfig.MODEL, messages=CHAT, max_tokens=8, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    served = {
        client.chat.completions.with_raw_response.create(
            model=democonfig.MODEL, messages=CHAT, max_tokens=1
        ).headers["x-aib-provider"]
        for _ in range(4)
    }
    assert served == set(democonfig.PROVIDERS)  # the group spreads over both servers
    run_printed_examples(st.gateway_url)
    # the printed doctor command finds nothing wrong
    doctor = CliRunner().invoke(
        app,
        ["doctor", "--json", "-c", str(st.config_dir), "-g", st.gateway_url, "--ui-port", str(free_port())],
        env={"AIB_REQUEST_LOG": str(st.dir / "requests.db")},
    )
    assert doctor.exit_code == 0, doctor.output
    statuses = {c["name"]: c["status"] for c in orjson.loads(doctor.stdout)["checks"]}
    assert statuses.pop("prometheus") == "skip" and set(statuses.values()) == {"ok"}, statuses

    st.summary()
    assert any("Ready in" in line for line in lines)
    st.servers[0].stop()  # server A goes away: smollm2-a falls back to server B
    rid = uuid.uuid4().hex
    r = httpx.post(
        st.gateway_url + "/v1/chat/completions",
        json={"model": democonfig.PRIMARY, "messages": CHAT, "max_tokens": 4},
        headers={"x-request-id": rid},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-aib-provider"] == "demo-b"
    # A was tried and refused (x-aib-fallbacks: 1), unless a probe (every 5 s) saw it stop first and the
    # gateway went to B at once (0); stopping takes a while on a busy machine. The header says which.
    trace = request_trace(st.dir / "requests.db", rid)
    failed = [(a["provider"], a["error"]) for a in trace["attempts"] if not a["ok"]]
    assert r.headers["x-aib-fallbacks"] == str(len(failed)) and trace["fallbacks"] == len(failed)
    assert all(p == "demo-a" and "unreachable" in str(e) for p, e in failed), failed
    assert trace["attempts"][-1]["provider"] == "demo-b" and trace["attempts"][-1]["ok"] == 1

    polls = iter(range(200))  # at most ~10 s: until the UI, server A's exit and the request were shown
    access = re.compile(r"gateway \| .*aib\.access.*smollm2-a")

    def announced() -> bool:
        text = "\n".join(lines)
        seen = "web UI ready" in text and "demo-a exited" in text and access.search(text) is not None
        return seen or next(polls) >= 199

    assert st.follow(poll_s=0.05, until=announced) == 0
    text = "\n".join(lines)
    assert "llama.cpp demo-a exited" in text
    assert f"web UI ready: {st.ui_url}" in text
    assert access.search(text)

    assert st.gateway is not None and st.gateway.proc is not None
    st.gateway.proc.kill()  # the gateway dies: the demo says so and ends
    assert st.follow(poll_s=0.05) == 1
    assert "the gateway exited" in lines[-1]

    stopped = st.stop()
    assert len(stopped) == 3  # the UI, the (dead) gateway, server B; server A was stopped above
    assert_all_gone(pids)
    assert not (st.dir / "demo.pids").exists()


# --------------------------------------------------------------------------- as a user runs it


class DemoProcess:
    """`aib demo ...` as a child process whose output is read line by line."""

    def __init__(self, demo_dir: Path, *args: str) -> None:
        self.demo_dir = demo_dir
        self.proc = subprocess.Popen(
            [*aib_command(), "demo", "--dir", str(demo_dir), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._partial = b""

    def read_until(self, text: str, timeout: float = 120) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} in:\n" + "\n".join(self.lines)
                if sel.select(left):
                    chunk = os.read(fd, 65536)  # unbuffered: select() and the data agree
                    assert chunk, "aib demo ended early:\n" + "\n".join(self.lines)
                    self._partial += chunk
                    *done, self._partial = self._partial.split(b"\n")
                    self.lines += [line.decode(errors="replace") for line in done]
        finally:
            sel.close()

    def finish(self, timeout: float = 60) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += (self._partial + out).decode(errors="replace").splitlines()
        self._partial = b""
        return self.proc.returncode

    def pids(self) -> list[int]:
        return [int(p) for line in self.lines for p in re.findall(r"\bpid (\d+)", line)]

    def close(self, leftovers: bool = True) -> None:
        """End the demo if it still runs (Ctrl-C first), then what it left: a failed test leaves nothing."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.communicate(timeout=30)
        if leftovers:
            PidRecord(self.demo_dir / "demo.pids").stop_leftovers()


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    demo = DemoProcess(tmp_path, "--port", str(port), "--no-ui")
    try:
        demo.read_until("Ctrl-C stops everything")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model=democonfig.PRIMARY, messages=CHAT, max_tokens=8)
        assert reply.choices[0].message.content
        demo.read_until("aib.access")  # the request shows up in the followed gateway log
        pids = demo.pids()
        assert len(pids) == 3 and all(alive(p) for p in pids)
        demo.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert demo.finish() == 0
    finally:
        demo.close()
    text = "\n".join(demo.lines)
    assert "interrupted" in text and "stopped gateway" in text and "Traceback" not in text
    assert_all_gone(pids)
    assert not (tmp_path / "demo.pids").exists()


def test_a_killed_demo_is_cleaned_up_by_the_next_run(
    tmp_path: Path, smollm_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = DemoProcess(tmp_path, "--port", str(free_port()), "--no-ui")
    try:
        try:
            first.read_until("Ctrl-C stops everything")
            orphans = first.pids()
            first.proc.kill()  # SIGKILL: no chance to clean up; its children run in their own sessions
            first.proc.wait(30)
            assert all(alive(p) for p in orphans)
        finally:
            first.close(leftovers=False)  # the next run is the one that cleans up
        # the next run (`aib demo --check`, in-process here): stops the leftovers, then checks
        monkeypatch.setenv("AIB_MODEL_CACHE", str(smollm_model.parent))
        args = ["demo", "--check", "--no-ui", "--port", str(free_port()), "--dir", str(tmp_path)]
        result = CliRunner().invoke(app, args)
        text = result.output
        assert result.exit_code == 0, text
        assert text.count("left running by a demo that was killed") == 3
        assert "check ok: smollm2 answered" in text
        new_pids = [int(p) for p in re.findall(r"\bpid (\d+)", text)]
        assert len(set(new_pids)) == 6  # 3 leftovers stopped, 3 started (and stopped) by this run
        assert_all_gone(orphans + new_pids)
        assert not (tmp_path / "demo.pids").exists()
    finally:
        PidRecord(tmp_path / "demo.pids").stop_leftovers()  # whatever failed above, nothing stays behind


def test_sigterm_stops_everything(
    tmp_path: Path, smollm_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What systemd or `kill` send, in-process: the handler turns it into a clean stop and is restored."""
    monkeypatch.setenv("AIB_MODEL_CACHE", str(smollm_model.parent))  # the model comes from the cache
    before = signal.getsignal(signal.SIGTERM)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    assert run_demo(DemoOptions(port=free_port(), ui=False, demo_dir=tmp_path), out) == 0
    text = "\n".join(lines)
    assert f"model      {smollm_model}" in text and "interrupted" in text and "stopped gateway" in text
    assert_all_gone([int(p) for p in re.findall(r"\bpid (\d+)", text)])
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_broken_model_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(256))
    opts = DemoOptions(port=free_port(), ui=False, demo_dir=tmp_path / "demo", model=bad, startup_timeout=60)
    with pytest.raises(DemoError, match=r"llama\.cpp server demo-(a|b) did not start"):
        run_demo(opts, out=lambda _: None)
    wait_until(lambda: not any(str(bad) in " ".join(cmdline(int(p)) or []) for p in os.listdir("/proc") if p.isdigit()),
               timeout=15, what="the llama.cpp processes to end")  # fmt: skip
    assert not (tmp_path / "demo" / "demo.pids").exists()
