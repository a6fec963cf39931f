"""A stream that ended with ``[DONE]`` is recorded as served: status 200, one good attempt, no fallback,
the client not "gone", whatever the client does once it has ``[DONE]``.

The ``openai`` SDK closes its connection as soon as it reads ``[DONE]``. The gateway used to forward
``[DONE]`` and then wait for the end of the upstream's body before ending its own; a client that hung
up in between was taken for one that went away mid-stream (a failed attempt, ``fallbacks 1``). The
scripted upstream here holds the end of its body back after ``[DONE]``, which made that happen every
time; the real llama.cpp servers show it as it happened on ``make demo``.

Everything runs against ``aib serve`` (a child process) and reads the SQLite request log it writes,
which is what ``aib logs`` and the UI's History tab show.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from textwrap import dedent
from typing import Any

import openai
import pytest

from aib.devtools.llamacpp import LlamaCppServer
from config_support import write_files
from gateway_harness import Reply, ScriptedUpstream
from serve_support import Served, aib_serve, served_trace

pytestmark = pytest.mark.integration

HELD_S = 0.5  # the scripted upstream ends its body this long after [DONE]
PROMPT: Any = [{"role": "user", "content": "Say hello."}]


def rid() -> str:
    return uuid.uuid4().hex


def assert_served(row: dict[str, Any], provider: str) -> None:
    assert row["status"] == 200 and row["stream"] == 1, row
    assert row["client_disconnected"] == 0, row
    assert row["fallbacks"] == 0 and row["error"] is None and row["error_code"] is None, row
    assert [(a["provider"], a["ok"], a["error"]) for a in row["attempts"]] == [(provider, 1, None)], row


def sdk_stream(base_url: str, model: str, request_id: str, max_tokens: int = 16) -> str:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model=model,
        messages=PROMPT,
        stream=True,
        max_tokens=max_tokens,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": request_id},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    client.close()
    return text


async def sdk_stream_async(base_url: str, model: str, request_id: str, max_tokens: int = 16) -> str:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=PROMPT,
            stream=True,
            max_tokens=max_tokens,
            extra_headers={"x-request-id": request_id},
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    finally:
        await client.close()


def curl_stream(base_url: str, model: str, request_id: str, max_tokens: int = 16) -> tuple[str, float]:
    """``curl -N`` as a person types it; its output and how long it took."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is part of the base system here"
    body = f'{{"model": "{model}", "stream": true, "max_tokens": {max_tokens}, "messages": [{{"role": "user", "content": "Say hello."}}]}}'
    t0 = time.monotonic()
    out = subprocess.run(
        [curl, "-sN", "--max-time", "60", base_url + "/v1/chat/completions",
         "-H", "content-type: application/json", "-H", f"x-request-id: {request_id}", "-d", body],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    return out.stdout, time.monotonic() - t0


# --------------------------------------------------------------------------- a scripted upstream


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def served(up: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("stream-record")
    providers = f"""
        providers:
          scripted:
            type: openai_compatible
            base_url: {up.base_url}
            models: [m]
            health: {{enabled: false}}
    """
    write_files(folder / "config", dedent(providers), "models:\n  m: {provider: scripted}\n")
    with aib_serve(folder / "config", folder / "serve.log", request_log=folder / "requests.db") as s:
        yield s


@pytest.fixture
def held(up: ScriptedUpstream) -> ScriptedUpstream:
    """The next answer: a stream whose body ends HELD_S after its [DONE]."""
    up.clear()
    up.enqueue(Reply.sse(("Hel", "lo", "!"), end_delay_s=HELD_S))
    return up


def test_openai_sdk_stream_is_recorded_as_served(served: Served, held: ScriptedUpstream) -> None:
    request_id = rid()
    assert sdk_stream(served.base_url, "m", request_id) == "Hello!"
    assert_served(served_trace(served, request_id), "scripted")


def test_openai_async_sdk_stream_is_recorded_as_served(served: Served, held: ScriptedUpstream) -> None:
    request_id = rid()
    assert asyncio.run(sdk_stream_async(served.base_url, "m", request_id)) == "Hello!"
    assert_served(served_trace(served, request_id), "scripted")


def test_curl_stream_is_recorded_as_served_and_ends_at_done(served: Served, up: ScriptedUpstream) -> None:
    up.clear()
    up.enqueue(Reply.sse(("Hel", "lo", "!"), end_delay_s=5.0))  # an upstream that lingers after [DONE]
    request_id = rid()
    out, took = curl_stream(served.base_url, "m", request_id)
    assert out.rstrip().endswith("data: [DONE]") and '"error"' not in out, out
    assert took < 4.0, f"curl waited {took:.1f}s: the answer did not end at [DONE]"
    assert_served(served_trace(served, request_id), "scripted")


def test_a_client_that_leaves_mid_stream_is_still_recorded_as_gone(
    served: Served, up: ScriptedUpstream
) -> None:
    """The honest other side: leaving before [DONE] is "the client went away"."""
    up.clear()
    up.enqueue(Reply.sse([f"w{i} " for i in range(40)], chunk_delay_s=0.1))
    request_id = rid()
    client = openai.OpenAI(base_url=served.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stream = client.chat.completions.create(
        model="m", messages=PROMPT, stream=True, extra_headers={"x-request-id": request_id}
    )
    first = next(iter(stream))
    assert first.choices[0].delta.content == "w0 "
    stream.close()
    client.close()
    row = served_trace(served, request_id)
    assert row["client_disconnected"] == 1 and row["status"] == 200, row
    assert up.wait_disconnect(10), "the upstream's connection is dropped too"


# --------------------------------------------------------------------------- the real llama.cpp servers


@pytest.fixture(scope="module")
def served_llama(
    llama_servers: list[LlamaCppServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("stream-record-llama")
    a, b = llama_servers
    providers = f"""
        providers:
          llama_a: {{type: llamacpp, base_url: {a.root_url}, models: [smollm2]}}
          llama_b: {{type: llamacpp, base_url: {b.root_url}, models: [smollm2]}}
    """
    mappings = """
        models:
          smollm2:
            strategy: round_robin
            deployments:
              - {provider: llama_a, upstream: smollm2}
              - {provider: llama_b, upstream: smollm2}
    """
    write_files(folder / "config", dedent(providers), dedent(mappings))
    with aib_serve(folder / "config", folder / "serve.log", request_log=folder / "requests.db") as s:
        yield s


def test_streams_from_llama_cpp_are_recorded_as_served(served_llama: Served) -> None:
    """Three clients, three streams each, as the UI and a script send them: all recorded served."""
    ids: list[str] = []
    for _ in range(3):
        ids.append(rid())
        assert sdk_stream(served_llama.base_url, "smollm2", ids[-1])
        ids.append(rid())
        assert asyncio.run(sdk_stream_async(served_llama.base_url, "smollm2", ids[-1]))
        ids.append(rid())
        out, _ = curl_stream(served_llama.base_url, "smollm2", ids[-1])
        assert out.rstrip().endswith("data: [DONE]"), out
    for request_id in ids:
        row = served_trace(served_llama, request_id)
        assert_served(row, row["provider"])
        assert row["provider"] in ("llama_a", "llama_b")
