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

The payload a door decodes is a :class:`DoorPayload`: a plain dict to everything on the request path,
carrying the request as the client sent it (:class:`Native`). An outbound adapter whose upstream
speaks the door's own API (Anthropic to Anthropic, Ollama to Ollama, Responses to an upstream with a
Responses API) sends that instead of a translation, and marks the exchange's answer as already in the
door's shape (``Native.raw``): nothing is lost in translation, unknown fields included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aib.gateway.errors import GatewayError

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


@dataclass(slots=True)
class Native:
    """A request as its client sent it, for an upstream that speaks the same API."""

    api: str  # "anthropic" | "ollama" | "responses"
    path: str  # the API's endpoint, relative to its base: "messages", "api/chat", "responses", ...
    body: dict[str, Any]
    # what the translation to the OpenAI shape could not carry: refused (the first of them, a 400)
    # when the request is routed to an upstream that does not speak `api`
    problems: list[GatewayError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # passed to a same-API upstream (anthropic-beta)
    raw: bool = False  # set by the outbound adapter of each attempt: the answer is in the door's shape


class DoorPayload(dict[str, Any]):
    """The internal (OpenAI-shaped) request of a front door, with the request as sent (``native``)."""

    __slots__ = ("native",)

    def __init__(self, payload: dict[str, Any], native: Native) -> None:
        super().__init__(payload)
        self.native = native
