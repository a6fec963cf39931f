"""``aib serve --engine litellm``'s hot reload: the native front on the public port, the real LiteLLM
behind it on a loopback port, and a reload that starts a second LiteLLM, switches traffic once it is
ready and stops the old one after its requests finish.

Under a bounded load (8 concurrent clients), a reload that moves a model from upstream A to upstream B
loses no request, and afterwards every request goes to B; the old LiteLLM process is gone (by PID).
A new LiteLLM that exits at once (tests/fake_litellm.py) makes the reload fail while the old one keeps
serving. LiteLLM comes from ``make litellm`` (``.venv-litellm``) or ``$AIB_LITELLM_BIN``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aib.devtools.llamacpp import pid_alive
from aib.engines.litellm_front import LiteLLMFront, attach_front, start_front
from gateway_harness import (
    RunningGateway,
    ScriptedUpstream,
    gateway_settings,
    running_gateway,
    wait_until,
    write_config,
)
from litellm_support import fake_bin, require_litellm

pytestmark = pytest.mark.integration

BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def providers(a: ScriptedUpstream, b: ScriptedUpstream) -> str:
    return f"""
        providers:
          up_a: {{type: openai_compatible, base_url: "{a.base_url}", models: [scripted]}}
          up_b: {{type: openai_compatible, base_url: "{b.base_url}", models: [scripted]}}
    """


def mappings(provider: str) -> str:
    return f"""
        models:
          chat: {{provider: {provider}, upstream: scripted}}
          other: {{provider: up_b, upstream: scripted}}
    """


@dataclass
class Front:
    gw: RunningGateway
    front: LiteLLMFront
    a: ScriptedUpstream
    b: ScriptedUpstream
    cfg: Path

    def reload(self) -> httpx.Response:
        return httpx.post(self.gw.base_url + "/admin/reload", json={"by": "test"}, timeout=120)

    def serving_pid(self) -> int:
        cur = self.front.current
        assert cur is not None and cur.pid is not None
        return cur.pid


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_litellm()
    tmp = tmp_path_factory.mktemp("front")
    with ScriptedUpstream() as a, ScriptedUpstream() as b:
        cfg = write_config(tmp / "cfg", providers(a, b), mappings("up_a"))
        lf = LiteLLMFront(log_path=tmp / "litellm.log", drain_s=15)
        try:
            fplan, fcfg, plan, first = start_front(cfg, lf)
            settings = gateway_settings(watch_config=False)
            setup = lambda gw: attach_front(gw, cfg, lf, plan, first)  # noqa: E731
            with running_gateway((fplan, fcfg), settings, setup=setup) as gw:
                yield Front(gw, lf, a, b, cfg)
        finally:
            pids = [p.pid for p in [lf.current, *lf.draining.values()] if p is not None]
            asyncio.run(lf.close())
            for pid in pids:
                assert pid is not None and not pid_alive(pid)


def test_front_serves_through_litellm(front: Front) -> None:
    r = httpx.post(front.gw.base_url + "/v1/chat/completions", json=BODY, timeout=60)
    assert r.status_code == 200, r.text
    assert front.a.requests and not front.b.requests
    models = httpx.get(front.gw.base_url + "/v1/models", timeout=10).json()
    assert {"chat", "other"} <= {m["id"] for m in models["data"]}
    detail = httpx.get(front.gw.base_url + "/v1/models/chat", timeout=10)
    assert detail.status_code == 200 and detail.json()["id"] == "chat"
    assert httpx.get(front.gw.base_url + "/v1/models/nope", timeout=10).status_code == 404
    status = httpx.get(front.gw.base_url + "/admin/litellm", timeout=10).json()
    assert status["serving"]["pid"] == front.serving_pid() and status["draining"] == []


def test_reload_under_load_loses_nothing_and_stops_the_old_litellm(front: Front) -> None:
    old_pid = front.serving_pid()
    stop = threading.Event()
    results: Counter[str] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=front.gw.base_url, timeout=60) as c:
            # bounded in time and count, but long enough for LiteLLM's start on a busy machine (10-60 s):
            # traffic must still flow after the reload, which the test waits for
            t_end = time.monotonic() + 120
            for _ in range(20000):
                if stop.is_set() or time.monotonic() > t_end:
                    return
                try:
                    r = c.post("/v1/chat/completions", json=BODY)
                    key = str(r.status_code)
                    if r.status_code != 200:
                        with lock:
                            errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    with lock:
                        errors.append(repr(exc))
                with lock:
                    results[key] += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(results.values()) >= 20, timeout=15, what="traffic before the reload")
        write_config(front.cfg, providers(front.a, front.b), mappings("up_b"))
        r = front.reload()
        assert r.status_code == 200, r.text
        assert r.json()["result"] == "applied"
        new_pid = front.serving_pid()
        assert new_pid != old_pid
        wait_until(lambda: not pid_alive(old_pid), timeout=30, what="the old LiteLLM to stop")
        assert front.front.draining == {}
        a_after, b_after, n_after = len(front.a.requests), len(front.b.requests), sum(results.values())
        wait_until(lambda: sum(results.values()) >= n_after + 20, timeout=15, what="traffic after the reload")
    finally:
        stop.set()
        for t in threads:
            t.join(70)
    assert errors == [] and set(results) == {"200"}, (results, errors[:3])
    assert len(front.a.requests) == a_after  # nothing went to A once the old LiteLLM was gone
    assert len(front.b.requests) > b_after
    assert pid_alive(new_pid)
    history = httpx.get(front.gw.base_url + "/admin/reloads", timeout=10).json()
    assert history["reloads"][0]["result"] == "applied"


def test_a_new_litellm_that_does_not_start_fails_the_reload(front: Front, tmp_path: Path) -> None:
    exe = fake_bin(tmp_path)
    serving, real = front.serving_pid(), (front.front.binary, front.front.env)
    front.front.binary = exe
    front.front.env = {**front.front.env, "FAKE_LITELLM_MODE": "crash"}
    try:
        write_config(front.cfg, providers(front.a, front.b), mappings("up_a"))
        r = front.reload()
    finally:
        front.front.binary, front.front.env = real
    assert r.status_code == 500, r.text
    report = r.json()
    assert report["result"] == "failed" and "did not start" in report["message"]
    assert "exited with code 3" in report["message"]
    assert front.serving_pid() == serving and pid_alive(serving)
    b_before = len(front.b.requests)
    ok = httpx.post(front.gw.base_url + "/v1/chat/completions", json=BODY, timeout=60)
    assert ok.status_code == 200, ok.text
    assert len(front.b.requests) == b_before + 1  # still the previous version (chat -> B)
    assert front.front.draining == {}
