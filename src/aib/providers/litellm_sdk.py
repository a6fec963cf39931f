"""Providers of type ``litellm_sdk``: served by the LiteLLM SDK adapter the gateway runs on ``base_url``.

To the gateway the adapter is one more OpenAI-compatible server (``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/models``, health on ``/health``). This kind adds the
provider's adapter options to the static headers (:data:`~aib.config.litellm_sdk.CONFIG_HEADER`, next to
the bearer key every kind sends, and the gateway's adapter token), and reads the adapter's health answer: its error message is the
reason a provider is down ("LiteLLM SDK adapter not installed: run `make litellm`", an unset key, ...).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from aib.config.litellm_sdk import CONFIG_HEADER, TOKEN_ENV, TOKEN_HEADER
from aib.config.plan import ProviderInfo
from aib.providers.base import ProviderKind


class LiteLLMSdk(ProviderKind):
    type: ClassVar[str] = "litellm_sdk"
    stream_usage: ClassVar[bool] = True  # the adapter passes stream_options.include_usage to LiteLLM

    def auth_headers(self, info: ProviderInfo) -> dict[str, str]:
        headers = super().auth_headers(info)
        if info.sdk is not None:
            headers[CONFIG_HEADER] = info.sdk.to_header()
        token = os.environ.get(TOKEN_ENV)
        if token:
            headers[TOKEN_HEADER] = token
        return headers

    def healthy(self, status: int, payload: Any) -> tuple[bool, str | None]:
        if 200 <= status < 300:
            return True, None
        err = payload.get("error") if isinstance(payload, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        if isinstance(message, str) and message:
            return False, message[:300]
        return super().healthy(status, payload)
