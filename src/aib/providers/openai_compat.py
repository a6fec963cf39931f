"""Servers that speak the OpenAI API: llama.cpp, vLLM, OpenAI itself and any compatible server."""

from __future__ import annotations

from typing import Any, ClassVar

from aib.providers.base import ProviderKind


class OpenAICompatible(ProviderKind):
    type: ClassVar[str] = "openai_compatible"


class OpenAI(ProviderKind):
    type: ClassVar[str] = "openai"
    stream_usage: ClassVar[bool] = True


class Vllm(ProviderKind):
    """vLLM: ``/health`` answers 200 with an empty body when the engine is up."""

    type: ClassVar[str] = "vllm"
    stream_usage: ClassVar[bool] = True


class LlamaCpp(ProviderKind):
    """llama.cpp's llama-server: ``/health`` is 503 ``Loading model`` until the model is in memory."""

    type: ClassVar[str] = "llamacpp"
    stream_usage: ClassVar[bool] = True  # llama-server honours it; llama-cpp-python ignores the field

    def healthy(self, status: int, payload: Any) -> tuple[bool, str | None]:
        if status == 200 and isinstance(payload, dict) and payload.get("status") not in (None, "ok"):
            return False, f"server status {payload.get('status')!r}"
        return super().healthy(status, payload)
