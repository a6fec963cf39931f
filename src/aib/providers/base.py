"""What differs between provider kinds: auth headers, the health probe, model discovery.

The request itself is the same everywhere (OpenAI-compatible JSON under ``api_base``); a kind only
says how to authenticate, how to read its free health endpoint, and how to list its models.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from aib.config.plan import ProviderInfo
from aib.providers.signals import SignalSource


class ProviderKind:
    type: ClassVar[str] = ""
    discovery_path: ClassVar[str] = "/v1/models"  # relative to base_url
    # Does the server honour `stream_options.include_usage`? Then the gateway asks for usage on every
    # stream (for token metrics) and strips that chunk when the client did not ask for it. Unknown
    # servers are not sent a field they might reject.
    stream_usage: ClassVar[bool] = False
    # where the server reports its load (aib.providers.signals); None: it does not
    signals: ClassVar[SignalSource | None] = None

    def auth_headers(self, info: ProviderInfo) -> dict[str, str]:
        key = os.environ.get(info.api_key_env) if info.api_key_env else None
        return {"authorization": f"Bearer {key}"} if key else {}

    def upstream_request_id(self, request_id: str) -> str:
        """The ``x-request-id`` sent upstream (the client's or the gateway's own, unchanged)."""
        return request_id

    def healthy(self, status: int, payload: Any) -> tuple[bool, str | None]:
        """Read a probe answer: (healthy, reason when not)."""
        if 200 <= status < 300:
            return True, None
        return False, f"health endpoint answered {status}{_detail(payload)}"

    def parse_models(self, payload: Any) -> tuple[str, ...]:
        """Model ids from an OpenAI-style ``/v1/models`` answer."""
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ValueError("expected an object with a `data` list")
        return tuple(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)


def _detail(payload: Any) -> str:
    if isinstance(payload, dict):
        err = payload.get("error")
        msg = err.get("message") if isinstance(err, dict) else err or payload.get("status")
        if msg:
            return f": {str(msg)[:200]}"
    return ""
