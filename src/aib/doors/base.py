"""What a front door provides (see :mod:`aib.doors`).

A :class:`Door` is stateless and built once; :meth:`Door.open` makes the per-request
:class:`DoorExchange`, which wraps the ASGI ``send`` of that request. The request path then:

1. sends every answer, errors included, through ``exchange.send``: answers are produced in the
   OpenAI shape (``{"error": {"message", "type", "param", "code"}}`` envelopes, chat completion JSON,
   ``text/event-stream`` chunks ending with ``data: [DONE]``) and the exchange re-encodes them in the
   door's own shape, status kept;
2. calls ``exchange.decode(body)`` once the body is read: the internal payload (a dict in the OpenAI
   shape of ``endpoint``), the model asked for and whether the client wants a stream. A body the door
   cannot translate raises :class:`aib.gateway.errors.GatewayError` (400 naming the field), which
   goes out through ``exchange.send`` like any other error.

The OpenAI door itself has no exchange (``Door.open`` returns None): its bytes pass through as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Send = Callable[[dict[str, Any]], Awaitable[None]]
Scope = dict[str, Any]


class DoorExchange(Protocol):
    async def send(self, message: dict[str, Any]) -> None:
        """The ASGI send of this request, re-encoding OpenAI-shaped answers in the door's shape."""
        ...

    def decode(self, body: bytes) -> tuple[dict[str, Any], str, bool]:
        """(payload in the internal OpenAI shape, model asked for, stream?)."""
        ...


class Door(Protocol):
    name: str  # "openai", "anthropic", "ollama", "responses": the request log's `door`

    def open(self, scope: Scope, send: Send) -> DoorExchange | None:
        """The exchange of one request (None: answers pass through unchanged)."""
        ...
