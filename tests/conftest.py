"""Shared fixtures: a real small model, two real llama.cpp servers (llama-cpp-python), two real
llama.cpp ``llama-server`` processes, a contract fake of Ollama.

Every process a fixture starts is stopped by that fixture, by PID.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aib.devtools.fake_ollama import FakeOllama
from aib.devtools.llama_server import LlamaServer
from aib.devtools.llama_server_build import binary_path, find_binary
from aib.devtools.llamacpp import LlamaCppServer, free_port, llamacpp_available
from aib.devtools.models import ensure_model
from aib.devtools.redisserver import RedisServer, redis_available

# tests/vllm needs a real vLLM (3.5 GB, minutes to start): only `make test-vllm` collects it
collect_ignore = [] if os.environ.get("AIB_TEST_VLLM") == "1" else ["vllm"]


@pytest.fixture(autouse=True)
def _no_stray_request_log(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gateways built by tests do not write var/requests.db or var/keys.db in the checkout unless a
    test asks."""
    if "AIB_REQUEST_LOG" not in os.environ:
        monkeypatch.setenv("AIB_REQUEST_LOG", "off")
    if "AIB_KEYS_DB" not in os.environ:
        monkeypatch.setenv("AIB_KEYS_DB", str(tmp_path_factory.mktemp("keys") / "keys.db"))


@pytest.fixture(scope="session")
def smollm_model() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf in the model cache (downloaded once, ~93 MB)."""
    return ensure_model()


@pytest.fixture(scope="session")
def llama_servers(
    smollm_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LlamaCppServer]]:
    """Two real llama.cpp servers (alias ``smollm2``) on free ports, started in parallel and warmed up."""
    if not llamacpp_available():
        # `make test` installs it; a skip here would count a missing real part as a pass
        pytest.fail("llama-cpp-python[server] is not installed (pip install -e '.[llamacpp]')")
    logs = tmp_path_factory.mktemp("llamacpp-logs")
    servers = [
        LlamaCppServer(smollm_model, alias="smollm2", port=p, log_path=logs / f"llamacpp-{p}.log")
        for p in _ports(2)
    ]
    try:
        for srv in servers:
            srv.start(wait=False)
        for srv in servers:
            srv.wait_ready()
            srv.warm_up()  # the first request is ~10x slower than the next ones
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """llama.cpp's ``llama-server``, built once per machine by ``make llama-server`` (``make test`` does)."""
    found = find_binary()
    if found is None:  # a skip would count a missing real part as a pass
        pytest.fail(f"llama-server is not built (expected {binary_path()}): run `make llama-server`")
    return found


@pytest.fixture(scope="session")
def native_servers(
    smollm_model: Path, llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LlamaServer]]:
    """Two real ``llama-server`` processes (alias ``smollm2``, 2 slots each, ``--metrics``), warmed up."""
    logs = tmp_path_factory.mktemp("llama-server-logs")
    servers = [
        LlamaServer(smollm_model, binary=llama_server_binary, port=p, log_path=logs / f"llama-server-{p}.log")
        for p in _ports(2)
    ]
    try:
        for srv in servers:
            srv.start(wait=False)
        for srv in servers:
            srv.wait_ready()
            srv.warm_up()
        yield servers
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture(scope="session")
def fake_ollama() -> Iterator[FakeOllama]:
    """The Ollama contract fake on a free port (``.base_url``; OpenAI API under ``/v1``)."""
    with FakeOllama().serve_in_thread() as fake:
        yield fake


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server (Debian's) on a free loopback port, one per test module."""
    if not redis_available():
        pytest.fail("redis-server is not installed (make sysdeps installs Debian's redis-server)")
    srv = RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log")
    try:
        yield srv.start()
    finally:
        srv.close()
