"""Servers that speak the OpenAI API: llama.cpp, vLLM, OpenAI itself and any compatible server."""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

from aib.providers.base import ProviderKind
from aib.providers.signals import LlamaCppSignals, SignalSource, VllmSignals

_HEX = re.compile(r"[0-9a-fA-F]{32}")


class OpenAICompatible(ProviderKind):
    type: ClassVar[str] = "openai_compatible"


class OpenAI(ProviderKind):
    type: ClassVar[str] = "openai"
    stream_usage: ClassVar[bool] = True


class Vllm(ProviderKind):
    """vLLM: ``/health`` answers 200 with an empty body when the engine is up."""

    type: ClassVar[str] = "vllm"
    stream_usage: ClassVar[bool] = True
    signals: ClassVar[SignalSource | None] = VllmSignals()  # /metrics: running, waiting, KV cache


class LlamaCpp(ProviderKind):
    """llama.cpp's llama-server: ``/health`` is 503 ``Loading model`` until the model is in memory."""

    type: ClassVar[str] = "llamacpp"
    stream_usage: ClassVar[bool] = True  # llama-server honours it; llama-cpp-python ignores the field
    signals: ClassVar[SignalSource | None] = LlamaCppSignals()  # /metrics, else /slots (llama-server)

    def upstream_request_id(self, request_id: str) -> str:
        """llama-cpp-python's server answers 400 to an ``x-request-id`` that is not a UUID; send a UUID
        derived from the id (stable, so the two can be matched), the id itself when it is one."""
        if len(request_id) == 32 and _HEX.fullmatch(request_id):  # the gateway's own ids: 32 hex digits
            r = request_id.lower()
            return f"{r[:8]}-{r[8:12]}-{r[12:16]}-{r[16:20]}-{r[20:]}"
        try:
            return str(uuid.UUID(request_id))
        except ValueError:
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"aib:{request_id}"))

    def healthy(self, status: int, payload: Any) -> tuple[bool, str | None]:
        if status == 200 and isinstance(payload, dict) and payload.get("status") not in (None, "ok"):
            return False, f"server status {payload.get('status')!r}"
        return super().healthy(status, payload)
