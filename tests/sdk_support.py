"""Test helpers for the LiteLLM SDK adapter (not a test module).

* :func:`require_adapter_python` - the Python of ``.venv-litellm`` (``make litellm``) or a skip; under CI
  a failure (CI runs ``make litellm`` before the tests).
* :func:`sdk_provider` - one ``litellm_sdk`` provider as a YAML flow mapping.
* :class:`StandIn` - a stand-in for the ``litellm`` module, for in-process tests of the adapter's HTTP
  side (the real SDK runs only in the adapter process, under ``.venv-litellm``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aib.config.litellm_sdk import find_adapter_python


def require_adapter_python() -> str:
    found = find_adapter_python()
    if not found.installed:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs `make litellm` before the tests: {found.problem}")
        pytest.skip(str(found.problem))
    return found.path


def sdk_provider(adapter_url: str, api_base: str, key_env: str | None, **extra: Any) -> str:
    parts = {
        "type": "litellm_sdk",
        "base_url": f'"{adapter_url}"',
        "litellm_model": '"anthropic/{model}"',
        "api_base": f'"{api_base}"',
        "models": "[claude-3-5-haiku-latest]",
        "health": "{interval_s: 30, timeout_s: 5}",
        **({"api_key_env": key_env} if key_env else {}),
        **{k: str(v) for k, v in extra.items()},
    }
    return "{" + ", ".join(f"{k}: {v}" for k, v in parts.items()) + "}"


# --------------------------------------------------------------------------- a stand-in litellm module


class StandInError(Exception):
    """Shaped like LiteLLM's exceptions: a class name, ``status_code``, ``litellm_response_headers``."""

    def __init__(self, message: str, status_code: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.litellm_response_headers = headers or {}


def standin_error(name: str, message: str, status: int | None = None, **headers: str) -> StandInError:
    cls = type(name, (StandInError,), {})
    return cls(message, status, {k.replace("_", "-"): v for k, v in headers.items()})


class Dumpable(dict[str, Any]):
    def model_dump(self, **_: Any) -> dict[str, Any]:
        return dict(self)


class StandInStream:
    def __init__(self, chunks: list[dict[str, Any]], fail_after: int | None, error: Exception | None) -> None:
        self.chunks, self.fail_after, self.error = chunks, fail_after, error
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Dumpable]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[Dumpable]:
        for i, c in enumerate(self.chunks):
            if self.fail_after is not None and i >= self.fail_after and self.error is not None:
                raise self.error
            yield Dumpable(c)

    async def aclose(self) -> None:
        self.closed = True


class StandIn:
    """What the adapter uses of ``litellm``: ``acompletion``, ``atext_completion``, ``aembedding``,
    ``get_llm_provider``. Calls are recorded in :attr:`calls`; :attr:`raise_next` fails the next call."""

    version = "stand-in"

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.raise_next: Exception | None = None
        self.stream_error: tuple[int, Exception] | None = None
        self.hang = False
        self.last_stream: StandInStream | None = None

    async def _answer(self, kind: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((kind, kwargs))
        if self.raise_next is not None:
            err, self.raise_next = self.raise_next, None
            raise err
        if self.hang:
            await asyncio.sleep(30)
        if kind == "embedding":
            return Dumpable(object="list", data=[{"object": "embedding", "index": 0, "embedding": [0.5]}])
        if kwargs.get("stream"):
            chunks = [
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": w}}],
                }
                for w in ("Hel", "lo")
            ]
            chunks.append(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            )
            fail_after, err = self.stream_error or (None, None)
            self.stream_error = None
            self.last_stream = StandInStream(chunks, fail_after, err)
            return self.last_stream
        return Dumpable(
            id="c1",
            object="chat.completion",
            model=kwargs["model"],
            choices=[
                {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}
            ],
            usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        )

    async def acompletion(self, **kwargs: Any) -> Any:
        return await self._answer("chat", kwargs)

    async def atext_completion(self, **kwargs: Any) -> Any:
        return await self._answer("text", kwargs)

    async def aembedding(self, **kwargs: Any) -> Any:
        return await self._answer("embedding", kwargs)

    def get_llm_provider(self, model: str) -> tuple[str, str]:
        provider, _, name = model.partition("/")
        if provider not in ("anthropic", "bedrock", "openai"):
            raise standin_error(
                "BadRequestError", f"LLM Provider NOT provided. You passed model={model}", 400
            )
        return name, provider
