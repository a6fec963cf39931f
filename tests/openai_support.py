"""Test helpers for driving an OpenAI-compatible endpoint with the official ``openai`` client (not a test
module): the gateway, the real LiteLLM proxy or a llama.cpp server.

* :func:`sdk_client` - a client that never retries (every failure must be visible to the test).
* :func:`ask` - one chat completion: its text and the response headers.
* :func:`stream_chat` - one streamed chat: how many chunks, their text and the last finish reason.
* :func:`assert_clean_sse` - a raw SSE body that ends with ``[DONE]`` and carries no error event.
"""

from __future__ import annotations

from typing import Any

import httpx
from openai import OpenAI

from gateway_harness import sse_data

PROMPT: Any = [{"role": "user", "content": "Say hello."}]


def sdk_client(base_url: str, timeout: float = 60.0, api_key: str = "none") -> OpenAI:
    """``OpenAI`` on ``base_url`` (with or without ``/v1``, as the caller wants) and no SDK retries."""
    return OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)


def ask(
    client: OpenAI, model: str, max_tokens: int = 8, messages: Any = None, **extra: Any
) -> tuple[str, dict[str, str]]:
    """One deterministic chat completion: the text and every response header (lower-case names)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages or PROMPT, max_tokens=max_tokens, temperature=0, **extra
    )
    text = raw.parse().choices[0].message.content or ""
    return text, dict(raw.headers)


def stream_chat(client: OpenAI, model: str, max_tokens: int = 12) -> tuple[int, str, str | None]:
    """One streamed chat completion: the number of chunks, the text they carry, the finish reason."""
    stream = client.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=max_tokens, temperature=0, stream=True
    )
    pieces: list[str] = []
    finish: str | None = None
    n = 0
    for chunk in stream:
        n += 1
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return n, "".join(pieces), finish


def assert_clean_sse(r: httpx.Response) -> list[str]:
    """A 200 event stream of at least three events ending with ``[DONE]``, no error event; its payloads."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.text)
    assert data[-1] == "[DONE]" and len(data) >= 3, data
    assert not any('"error"' in d for d in data), data
    return data
