"""One small class per provider kind, registered by the config's ``type``."""

from __future__ import annotations

from aib.providers.anthropic import Anthropic
from aib.providers.base import ProviderKind
from aib.providers.litellm_sdk import LiteLLMSdk
from aib.providers.ollama import Ollama
from aib.providers.openai_compat import LlamaCpp, OpenAI, OpenAICompatible, Vllm

KINDS: dict[str, ProviderKind] = {
    k.type: k for k in (Ollama(), LlamaCpp(), Vllm(), OpenAI(), Anthropic(), OpenAICompatible(), LiteLLMSdk())
}


def kind_for(provider_type: str) -> ProviderKind:
    return KINDS[provider_type]


__all__ = ["KINDS", "ProviderKind", "kind_for"]
