"""Answering from a handler: JSON bodies, errors in the envelope, reading a bounded request body.

Shared by the gateway's handlers and every module that adds routes to it (admin, reload, engines).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aib.gateway.errors import GatewayError
from aib.gateway.proxy import ClientGone

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


async def read_body(scope: Scope, receive: Receive, limit: int, declared: bytes | None = b"?") -> bytes:
    """The whole body (at most ``limit`` bytes). ``declared``: the Content-Length header when the
    caller already looked it up (None: there is none); by default it is looked up here."""
    if declared == b"?":
        h = _header(scope, b"content-length")
        declared = h.encode("latin-1") if h is not None else None
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"The request body is larger than the limit of {limit} bytes (AIB_MAX_BODY_BYTES).",
        "invalid_request_error",
        "request_too_large",
    )


async def send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send,
    err: GatewayError,
    request_id: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
) -> None:
    """``err`` as a JSON answer: OpenAI's envelope, or ``body`` (another API's error shape)."""
    extra = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    if headers:
        extra += headers
    if request_id:
        extra.append((b"x-request-id", request_id.encode()))
    with contextlib.suppress(OSError):  # the client is gone; nothing to tell it
        await send_json(send, err.status, err.body() if body is None else body, extra)
