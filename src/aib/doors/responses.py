"""The OpenAI Responses door: ``POST /v1/responses`` (and ``/responses``), plain and streamed.

Translated to chat completions by :mod:`aib.codecs.responses` for upstreams without a Responses API;
passed on unchanged (``Native.raw``) to upstreams that have one (``responses_api: true`` in
providers.yaml; OpenAI's own API by default). Errors use OpenAI's envelope, as the Responses API does.
"""

from __future__ import annotations

import time

import orjson

from aib.codecs.common import JsonObj, sse
from aib.codecs.responses import request_to_openai, response_from_completion
from aib.codecs.responses_stream import ResponseStreamEncoder
from aib.doors.base import Native, Scope, Send
from aib.doors.exchange import CodecExchange, StreamEncoder


class ResponsesExchange(CodecExchange):
    def __init__(self, scope: Scope, send: Send) -> None:
        super().__init__(scope, send)
        self.echo: JsonObj = {}

    def decode_object(self, body: JsonObj) -> tuple[JsonObj, Native]:
        payload, self.stream, problems, self.echo = request_to_openai(body)
        self.model = payload["model"]
        return payload, Native("responses", "responses", body, problems)

    def answer(self, completion: JsonObj) -> bytes:
        return orjson.dumps(response_from_completion(completion, self.model, self.item_id(), self.echo))

    def error_body(self, status: int, err: JsonObj) -> bytes:
        out = {"message": str(err.get("message") or f"HTTP {status}"), "type": err.get("type") or "api_error"}
        out["param"] = err.get("param")
        out["code"] = err.get("code")
        return orjson.dumps({"error": out})

    def encoder(self) -> StreamEncoder:
        return ResponseStreamEncoder(self.model, self.item_id(), int(time.time()), self.echo)

    def raw_error(self, err: JsonObj) -> bytes:
        event = {
            "type": "error",
            "code": err.get("code"),
            "message": str(err.get("message") or "stream broken"),
            "param": None,
            "sequence_number": 0,
        }
        return sse(b"error", orjson.dumps(event))


class ResponsesDoor:
    name = "responses"

    def open(self, scope: Scope, send: Send) -> ResponsesExchange:
        return ResponsesExchange(scope, send)
