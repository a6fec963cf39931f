"""Tiny blocking HTTP helpers for commands that ask a running gateway something (stdlib only)."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import orjson

from aib.clientauth import headers_for


class GatewayDown(Exception):
    pass


def request_json(
    url: str,
    method: str = "GET",
    body: Any = None,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """(status, parsed JSON or None). Raises :class:`GatewayDown` when nothing answers. Without
    ``headers``, the key for that path from the environment is sent (:mod:`aib.clientauth`)."""
    data = orjson.dumps(body) if body is not None else None
    if headers is None:
        headers = headers_for(urlsplit(url).path)
    req = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayDown(f"nothing answers at {url}: {reason}") from None
    try:
        return status, orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return status, None
