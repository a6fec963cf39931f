"""Anthropic: its Messages API (``/v1/messages``, the default, ``api: native``) or its OpenAI SDK
compatibility endpoint (``/v1/chat/completions``, ``api: openai``).

The Messages API and ``/v1/models`` (the health probe and discovery) want the key as ``x-api-key``
with an ``anthropic-version``; the compatibility endpoint takes it as a bearer token, so with
``api: openai`` both are sent.
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
            key = headers["authorization"].removeprefix("Bearer ")
            if info.wire == "anthropic":
                headers = {"x-api-key": key}
            else:
                headers["x-api-key"] = key
        headers["anthropic-version"] = ANTHROPIC_VERSION
        return headers
