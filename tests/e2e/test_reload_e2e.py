"""Hot reload as an operator meets it: `aib serve` as a real process, files edited, SIGHUP, the scripts.

Each test starts `aib serve` (and ``fake_openai`` upstreams) as child processes on free 127.0.0.1 ports
and stops them by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from aib.devtools.llamacpp import free_port
from gateway_harness import FakeOpenAIProcess, fake_openai_process, stop_process, wait_until
from reload_support import mappings_yaml, provider_yaml, version_of, write

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AIB = [str(Path(sys.executable).parent / "aib")]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Served(NamedTuple):
    url: str
    pid: int
    log: Path


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAIProcess, FakeOpenAIProcess]]:
    with fake_openai_process() as a, fake_openai_process() as b:
        yield a, b


@contextlib.contextmanager
def aib_serve(cdir: Path, log: Path, **env: str) -> Iterator[Served]:
    port = free_port()
    full_env = {
        **os.environ,
        "AIB_REQUEST_LOG": "off",
        "AIB_ADMIN_KEY": "",
        "AIB_RELOAD_DEBOUNCE_MS": "100",
        **env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*AIB, "serve", "--config-dir", str(cdir), "--port", str(port), "--log-level", "info"],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"aib serve did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Served(url, proc.pid, log)
    finally:
        stop_process(proc, timeout=15)


def provider_of(url: str) -> str:
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-aib-provider"]


@pytest.fixture
def cdir(tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]) -> Path:
    d = tmp_path / "config"
    d.mkdir()
    write(d, provider_yaml({"pa": upstreams[0].base_url}), mappings_yaml({"m": "pa"}, critical=True))
    return d


def test_an_edited_file_is_served_and_the_scripts_work(
    cdir: Path, tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]
) -> None:
    with aib_serve(cdir, tmp_path / "gw.log") as gw:
        assert provider_of(gw.url) == "pa"
        v2 = write(
            cdir, provider_yaml({"pb": upstreams[1].base_url}), mappings_yaml({"m": "pb"}, critical=True)
        )
        wait_until(
            lambda: httpx.get(f"{gw.url}/health/ready").json()["plan_version"] == v2, 10, what="the reload"
        )
        assert provider_of(gw.url) == "pb"
        assert (cdir / "litellm-unified.yaml").read_text().count(v2) == 1
        env = {**os.environ, "AIB_BIN": AIB[0], "AIB_ADMIN_KEY": ""}
        r = subprocess.run(
            ["bash", str(ROOT / "scripts" / "reload-litellm-config.sh"), "--gateway", gw.url],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 0 and f"unchanged: the files are unchanged; serving {v2}" in r.stdout, r
        r = subprocess.run(
            ["bash", str(ROOT / "scripts" / "test-rollback.sh"), "--gateway", gw.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert r.stdout.count("PASS") == 3 and "FAIL" not in r.stdout
        assert "rolled_back: rolled back to" in r.stdout
        assert version_of(cdir) == v2 and provider_of(gw.url) == "pb"
        log = gw.log.read_text()
        assert "reload #1 (watcher: " in log and "applied" in log and "Traceback" not in log


def test_sighup_reloads(
    cdir: Path, tmp_path: Path, upstreams: tuple[FakeOpenAIProcess, FakeOpenAIProcess]
) -> None:
    with aib_serve(cdir, tmp_path / "gw.log", AIB_RELOAD_WATCH="off") as gw:
        v2 = write(cdir, provider_yaml({"pb": upstreams[1].base_url}), mappings_yaml({"m": "pb"}))
        time.sleep(0.5)  # no watcher: nothing happens by itself
        assert provider_of(gw.url) == "pa"
        os.kill(gw.pid, signal.SIGHUP)
        wait_until(
            lambda: httpx.get(f"{gw.url}/health/ready").json()["plan_version"] == v2, 10, what="SIGHUP"
        )
        assert provider_of(gw.url) == "pb"
        last = httpx.get(f"{gw.url}/admin/reloads").json()
        assert last["watching"] is False and last["reloads"][0]["trigger"] == "SIGHUP"
        assert "SIGHUP" in gw.log.read_text().split("config reload:", 1)[1].split("\n", 1)[0]


def test_bad_reload_settings_stop_the_start_with_a_clear_message(cdir: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [*AIB, "serve", "--config-dir", str(cdir), "--port", str(free_port())],
        env={**os.environ, "AIB_RELOAD_DEBOUNCE_MS": "soon", "AIB_REQUEST_LOG": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "environment: AIB_RELOAD_DEBOUNCE_MS: expected a whole number >= 0, got 'soon'" in r.stderr
    assert "Traceback" not in r.stderr
