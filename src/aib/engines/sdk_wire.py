"""HTTP plumbing of the LiteLLM SDK adapter (:mod:`aib.engines.sdk_adapter`): request headers, the
provider options header, reading the body, watching for a hang-up, JSON and SSE answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aib.config.litellm_sdk import CONFIG_HEADER, SdkOptions
from aib.engines.sdk_calls import AdapterError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    pass


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return str(v.decode("latin-1"))
    return None


def rid(scope: Scope) -> str:
    return f"[{header(scope, b'x-request-id') or '-'}]"


def bearer(scope: Scope) -> str | None:
    auth = header(scope, b"authorization") or ""
    key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    return key or None


def options(scope: Scope) -> SdkOptions:
    raw = header(scope, CONFIG_HEADER.encode())
    if raw is None:
        raise AdapterError(
            400,
            f"no {CONFIG_HEADER} header: this adapter serves requests from the aib gateway, which sends each "
            "provider's options with every request",
            "invalid_request_error",
            "missing_provider_options",
        )
    try:
        return SdkOptions.from_header(raw)
    except ValueError as exc:
        raise AdapterError(400, str(exc), "invalid_request_error", "bad_provider_options") from None


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def event(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def send_json(send: Send, status: int | AdapterError, body: bytes = b"") -> None:
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(status, AdapterError):
        body, headers, status = status.body(), status.headers(), status.status
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
