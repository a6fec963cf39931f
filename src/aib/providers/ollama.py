"""Ollama: chat through its OpenAI-compatible ``/v1``; discovery and health through ``/api/tags``.

``GET /api/tags`` answers ``{"models": [{"name": "llama3.1:8b", "model": "llama3.1:8b", ...}]}``
(Ollama's API documentation, "List Local Models").
"""

from __future__ import annotations

from typing import Any, ClassVar

from aib.providers.base import ProviderKind
from aib.providers.signals import OllamaSignals, SignalSource


class Ollama(ProviderKind):
    type: ClassVar[str] = "ollama"
    discovery_path: ClassVar[str] = "/api/tags"
    stream_usage: ClassVar[bool] = True  # /v1 supports stream_options.include_usage
    signals: ClassVar[SignalSource | None] = OllamaSignals()  # /api/ps: the models in memory

    def parse_models(self, payload: Any) -> tuple[str, ...]:
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise ValueError("expected an object with a `models` list")
        return tuple(str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict))
