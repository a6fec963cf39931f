"""The Ollama door: ``POST /api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``.

Requests are translated by :mod:`aib.codecs.ollama`; answers come back as Ollama's JSON, streams as
NDJSON (``application/x-ndjson``, streaming is Ollama's default), errors as ``{"error": "..."}``.
``created_at`` and the durations of the final object are measured here (the codecs have no clock):
total = request received -> answer done; prompt eval = until the first token was sent; eval = the rest.
The model lists (``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/version``) are in
:mod:`aib.doors.ollama_models`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from aib.codecs import ollama as codec
from aib.codecs.common import JsonObj
from aib.codecs.ollama_stream import NdjsonEncoder
from aib.doors.base import Native, Scope, Send
from aib.doors.exchange import CodecExchange, StreamEncoder

PATHS = {"chat": "api/chat", "generate": "api/generate", "embed": "api/embed", "embeddings": "api/embeddings"}


def created_at(now: float | None = None, cache: list[tuple[int, str]] | None = None) -> str:
    """RFC 3339 UTC with nanoseconds, as Ollama's ``created_at``; ``cache`` keeps the last second
    formatted (the lines of one stream share it)."""
    if now is None:
        sec, ns = divmod(time.time_ns(), 1_000_000_000)
    else:
        sec = int(now)
        ns = round((now - sec) * 1e9)
    if cache is None:
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    elif cache[0][0] == sec:
        head = cache[0][1]
    else:
        head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        cache[0] = (sec, head)
    return f"{head}.{ns:09d}Z"


class OllamaExchange(CodecExchange):
    stream_type = b"application/x-ndjson"

    def __init__(self, scope: Scope, send: Send, kind: str) -> None:
        super().__init__(scope, send)
        self.kind = kind

    def decode_object(self, body: JsonObj) -> tuple[JsonObj, Native]:
        problems: list[Any]
        if self.kind == "chat":
            payload, self.stream, problems = codec.chat_to_openai(body)
        elif self.kind == "generate":
            payload, self.stream, problems = codec.generate_to_openai(body)
        elif self.kind == "embed":
            payload, problems = codec.embed_to_openai(body)
        else:
            payload, problems = codec.embeddings_to_openai(body)
        self.model = payload["model"]
        return payload, Native("ollama", PATHS[self.kind], body, problems)

    def answer(self, completion: JsonObj) -> bytes:
        timings = self.elapsed()
        if self.kind == "chat":
            out = codec.chat_from_completion(completion, self.model, created_at(), timings)
        elif self.kind == "generate":
            out = codec.generate_from_completion(completion, self.model, created_at(), timings)
        elif self.kind == "embed":
            out = codec.embed_from_openai(completion, self.model, timings[0])
        else:
            out = codec.embeddings_from_openai(completion)
        return orjson.dumps(out)

    def error_body(self, status: int, err: JsonObj) -> bytes:
        return orjson.dumps({"error": str(err.get("message") or f"HTTP {status}")})

    def encoder(self) -> StreamEncoder:
        return _Ndjson(self)

    def raw_event(self, event: bytes, data: bytes) -> bytes:
        return data + b"\n"  # a same-API stream reaches here as `data: <line>` events

    def raw_error(self, err: JsonObj) -> bytes:
        return NdjsonEncoder.error(502, err)


class _Ndjson:
    """The NDJSON encoder with this exchange's clock."""

    __slots__ = ("clock", "enc", "x")

    def __init__(self, x: OllamaExchange) -> None:
        self.x = x
        self.enc = NdjsonEncoder(x.model, x.kind == "chat")
        self.clock: list[tuple[int, str]] = [(-1, "")]

    def start(self) -> bytes:
        return b""

    def chunk(self, c: JsonObj) -> bytes:
        out = self.enc.chunk(c, created_at(None, self.clock))
        if not self.x.t_first and self.enc.first_token:
            self.x.t_first = time.perf_counter_ns()
        return out

    def done(self) -> bytes:
        return self.enc.done(created_at(None, self.clock), self.x.elapsed())

    def error(self, status: int, err: Any) -> bytes:
        return self.enc.error(status, err)


class OllamaDoor:
    name = "ollama"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def open(self, scope: Scope, send: Send) -> OllamaExchange:
        return OllamaExchange(scope, send, self.kind)
