"""Test helpers for talking to a running gateway (not a test module).

* :func:`chat` - a one-message chat through an ``httpx.Client``; :func:`post_chat` - the same on a fresh
  connection to a :class:`~gateway_harness.RunningGateway`, optionally streamed and with a request id.
* :func:`assert_served` - a 200 from this provider after this many fallbacks.
* :func:`provider_health`, :func:`breaker_state`, :func:`model_ids` - what ``/health`` and ``/v1/models``
  say.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from gateway_harness import RunningGateway

CHAT = [{"role": "user", "content": "hi"}]
TIMEOUT = httpx.Timeout(15.0)
REFUSED = re.compile(r"cannot connect|unreachable|refused", re.IGNORECASE)  # wording may vary
CHAIN_PROVIDERS = ("alpha", "beta", "gamma")  # the ``chain`` fixture's providers, in fallback order


def chat(
    client: httpx.Client,
    model: str,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """POST a one-message chat for ``model``; ``extra`` goes into the body (e.g. ``stream=True``)."""
    return client.post(path, json={"model": model, "messages": CHAT, **extra}, headers=headers)


def post_chat(
    gw: RunningGateway, model: str = "primary", *, stream: bool = False, rid: str | None = None
) -> httpx.Response:
    """One chat request to ``gw`` on a fresh connection, with ``x-request-id: rid`` when given."""
    headers = {"x-request-id": rid} if rid else {}
    body: dict[str, Any] = {"model": model, "messages": CHAT}
    if stream:
        body["stream"] = True
    return httpx.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)


def assert_served(r: httpx.Response, provider: str, fallbacks: int) -> None:
    """A 200 served by ``provider`` after ``fallbacks`` failed candidates."""
    assert r.status_code == 200, r.text
    assert r.headers["x-aib-provider"] == provider
    assert r.headers["x-aib-fallbacks"] == str(fallbacks)


def provider_health(gw: RunningGateway, name: str) -> dict[str, Any]:
    """The ``/health`` entry of one provider."""
    return dict(httpx.get(gw.base_url + "/health", timeout=TIMEOUT).json()["providers"][name])


def breaker_state(gw: RunningGateway, provider: str, upstream: str = "m") -> dict[str, Any]:
    """The breaker of deployment ``provider/upstream`` as ``/health`` shows it ({} before it has one)."""
    return dict(provider_health(gw, provider)["breakers"].get(f"{provider}/{upstream}", {}))


def model_ids(gw: RunningGateway) -> set[str]:
    """The ids ``/v1/models`` lists."""
    return {m["id"] for m in httpx.get(gw.base_url + "/v1/models", timeout=TIMEOUT).json()["data"]}
