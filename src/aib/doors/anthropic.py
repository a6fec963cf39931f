"""The Anthropic Messages door: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Requests are translated by :mod:`aib.codecs.anthropic` (the ``anthropic-version`` header is accepted
whatever its value; ``anthropic-beta`` is passed on to Anthropic upstreams; the client key arrives as
``x-api-key`` and is the identity stage's business, not the door's). Answers, streams and errors come
back in Anthropic's shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from aib.codecs.anthropic import (
    error_from_openai,
    estimate_tokens,
    message_from_completion,
    request_to_openai,
)
from aib.codecs.anthropic_stream import MessageStreamEncoder
from aib.codecs.common import JsonObj, parse_object, sse
from aib.doors.base import Native, Scope, Send
from aib.doors.exchange import CodecExchange, StreamEncoder
from aib.gateway.errors import GatewayError

if TYPE_CHECKING:
    from aib.gateway.app import Gateway, Receive


class AnthropicExchange(CodecExchange):
    def decode_object(self, body: JsonObj) -> tuple[JsonObj, Native]:
        payload, problems = request_to_openai(body)
        self.model = payload["model"]
        self.stream = bool(payload.get("stream"))
        headers = {}
        beta = self.header(b"anthropic-beta")
        if beta:
            headers["anthropic-beta"] = beta
        return payload, Native("anthropic", "messages", body, problems, headers)

    def msg_id(self) -> str:
        return f"msg_{self.item_id()}"

    def answer(self, completion: JsonObj) -> bytes:
        return orjson.dumps(message_from_completion(completion, self.model, self.msg_id()))

    def error_body(self, status: int, err: JsonObj) -> bytes:
        return orjson.dumps(error_from_openai(status, err))

    def encoder(self) -> StreamEncoder:
        return MessageStreamEncoder(self.model, self.msg_id())

    def raw_error(self, err: JsonObj) -> bytes:
        return sse(b"error", orjson.dumps(error_from_openai(502, err)))


class AnthropicDoor:
    name = "anthropic"

    def open(self, scope: Scope, send: Send) -> AnthropicExchange:
        return AnthropicExchange(scope, send)


async def count_tokens(gw: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, an estimate (characters / 4):
    the gateway does not run the models' tokenizers."""
    from aib.gateway.app import read_body, send_json

    try:
        obj = parse_object(await read_body(scope, receive, gw.settings.max_body_bytes))
        request_to_openai({"max_tokens": 1, **obj})  # the same checks as a Messages request
        model = obj["model"]
        if model not in {m for m, _ in gw.models_for(scope)}:
            raise GatewayError(
                404,
                f"model: {model!r} is not configured on this gateway.",
                "not_found_error",
                "model_not_found",
                "model",
            )
        await send_json(send, 200, orjson.dumps({"input_tokens": estimate_tokens(obj)}))
    except GatewayError as err:
        await send_error(send, err)


async def send_error(send: Send, err: GatewayError) -> None:
    from aib.gateway.app import send_json

    extra = [(k.encode(), v.encode()) for k, v in err.headers.items()]
    body: Any = error_from_openai(err.status, {"message": err.message})
    await send_json(send, err.status, orjson.dumps(body), extra)
