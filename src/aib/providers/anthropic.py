"""Anthropic through its OpenAI SDK compatibility endpoint (``/v1/chat/completions``).

That endpoint takes the key as a bearer token; the native ``/v1/models`` (the health probe and
discovery) wants ``x-api-key`` and ``anthropic-version``, so both are sent.
"""

from __future__ import annotations

from typing import ClassVar

from aib.config.plan import ProviderInfo
from aib.providers.base import ProviderKind

ANTHROPIC_VERSION = "2023-06-01"


class Anthropic(ProviderKind):
    type: ClassVar[str] = "anthropic"

    def auth_headers(self, info: ProviderInfo) -> dict[str, str]:
        headers = super().auth_headers(info)
        if headers:
            headers["x-api-key"] = headers["authorization"].removeprefix("Bearer ")
            headers["anthropic-version"] = ANTHROPIC_VERSION
        return headers
