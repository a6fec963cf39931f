"""The door exchanges (aib.doors.*): ASGI messages in the OpenAI shape in, the door's shape out, with the
status kept and the content-length recomputed; streams re-encoded however the bytes are cut; answers of
a same-API upstream passed on."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aib.codecs.common import event_fields, split_events
from aib.doors.anthropic import AnthropicExchange
from aib.doors.base import DoorPayload
from aib.doors.exchange import CodecExchange
from aib.doors.ollama import OllamaExchange, created_at
from aib.doors.responses import ResponsesExchange
from aib.gateway.errors import GatewayError
from codec_support import Turn, chunks, completion, sse, turns

pytestmark = pytest.mark.unit
HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"rid-1"), (b"x-aib-provider", b"up"), (b"content-length", b"999")]  # fmt: skip
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"x-request-id", b"rid-1"),
    (b"cache-control", b"no-cache"),
]


class Wire:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def start(self) -> dict[str, Any]:
        return self.sent[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def exchange(kind: str, body: dict[str, Any] | None = None) -> tuple[CodecExchange, Wire]:
    wire = Wire()
    scope = {"type": "http", "headers": [(b"anthropic-beta", b"tools-2025")]}
    x: CodecExchange = {
        "anthropic": lambda: AnthropicExchange(scope, wire),
        "ollama": lambda: OllamaExchange(scope, wire, "chat"),
        "generate": lambda: OllamaExchange(scope, wire, "generate"),
        "embed": lambda: OllamaExchange(scope, wire, "embed"),
        "responses": lambda: ResponsesExchange(scope, wire),
    }[kind]()
    if body is not None:
        x.decode(orjson.dumps(body))
    return x, wire


BODIES = {
    "anthropic": {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]},
    "ollama": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    "generate": {"model": "m", "prompt": "hi", "stream": False},
    "embed": {"model": "m", "input": "hi"},
    "responses": {"model": "m", "input": "hi"},
}


def send_plain(
    x: CodecExchange, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = HEADERS
) -> None:
    async def go() -> None:
        await x.send({"type": "http.response.start", "status": status, "headers": headers})
        await x.send({"type": "http.response.body", "body": body})

    asyncio.run(go())


def test_decode_keeps_the_request_as_sent() -> None:
    x, _ = exchange("anthropic")
    payload, model, stream = x.decode(orjson.dumps({**BODIES["anthropic"], "stream": True, "container": "c"}))
    assert isinstance(payload, DoorPayload) and (model, stream) == ("m", True)
    native = payload.native
    assert (native.api, native.path, native.body["container"], native.raw) == (
        "anthropic",
        "messages",
        "c",
        False,
    )
    assert native.headers == {"anthropic-beta": "tools-2025"} and native.problems[0].param == "container"
    with pytest.raises(GatewayError):
        x.decode(b"[1, 2]")


@pytest.mark.parametrize("kind", sorted(BODIES))
def test_a_whole_answer_is_reencoded_with_its_length(kind: str) -> None:
    x, wire = exchange(kind, BODIES[kind])
    answer = {"object": "list", "data": [{"index": 0, "embedding": [0.5]}], "usage": {"prompt_tokens": 1}} if kind == "embed" else completion(Turn(["hello"]))  # fmt: skip
    send_plain(x, 200, orjson.dumps(answer))
    h = wire.headers
    assert wire.start["status"] == 200 and h[b"content-type"] == b"application/json"
    assert h[b"x-request-id"] == b"rid-1" and h[b"x-aib-provider"] == b"up"
    assert int(h[b"content-length"]) == len(wire.body)
    out = orjson.loads(wire.body)
    got = {
        "anthropic": lambda: out["content"][0]["text"],
        "ollama": lambda: out["message"]["content"],
        "generate": lambda: out["response"],
        "embed": lambda: out["embeddings"],
        "responses": lambda: out["output"][0]["content"][0]["text"],
    }[kind]()
    assert got == ([[0.5]] if kind == "embed" else "hello")


@pytest.mark.parametrize(
    ("kind", "shape"),
    [("anthropic", {"type": "error", "error": {"type": "not_found_error", "message": "no such model"}}),
     ("ollama", {"error": "no such model"}),
     ("responses", {"error": {"message": "no such model", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})],
)  # fmt: skip
def test_errors_keep_their_status_in_the_doors_shape(kind: str, shape: dict[str, Any]) -> None:
    x, wire = exchange(kind)  # before decode: e.g. a body that was too large
    envelope = {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    send_plain(
        x, 404, orjson.dumps(envelope), [(b"content-type", b"application/json"), (b"retry-after", b"3")]
    )
    assert wire.start["status"] == 404 and wire.headers[b"retry-after"] == b"3"
    assert orjson.loads(wire.body) == shape
    x, wire = exchange(kind)
    send_plain(x, 502, b"<html>bad gateway</html>")
    assert wire.start["status"] == 502 and "bad gateway" in wire.body.decode()


def test_a_same_api_answer_passes_unchanged() -> None:
    x, wire = exchange("anthropic", BODIES["anthropic"])
    assert x.native is not None
    x.native.raw = True
    own = orjson.dumps({"id": "msg_up", "type": "message", "content": []})
    send_plain(x, 200, own)
    assert wire.body == own
    x, wire = exchange("anthropic", BODIES["anthropic"])
    anthropic_error = orjson.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    )
    send_plain(x, 429, anthropic_error)  # already Anthropic's shape: kept
    assert wire.body == anthropic_error


def stream(x: CodecExchange, data: bytes, cuts: list[int]) -> None:
    async def go() -> None:
        await x.send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        start = 0
        for cut in [*cuts, len(data)]:
            if cut > start:
                await x.send({"type": "http.response.body", "body": data[start:cut], "more_body": True})
                start = cut
        await x.send({"type": "http.response.body", "body": b"", "more_body": False})

    asyncio.run(go())


@settings(max_examples=40, deadline=None)
@given(
    turn=turns(),
    kind=st.sampled_from(["anthropic", "ollama", "generate", "responses"]),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_streams_come_out_the_same_however_the_bytes_are_cut(turn: Turn, kind: str, cuts: list[int]) -> None:
    """Property: the re-encoded stream depends on the events, not on where the bytes were cut."""
    if kind == "generate":
        turn = Turn(turn.texts or ["x"], [], "stop", turn.usage)
    data = sse(chunks(turn))
    outs = []
    for c in (sorted(cuts), []):
        x, wire = exchange(kind, {**BODIES[kind], "stream": True})
        stream(x, data, [min(i, len(data)) for i in c])
        assert wire.headers[b"content-type"] == (
            b"application/x-ndjson" if kind in ("ollama", "generate") else b"text/event-stream"
        )
        outs.append(wire.body)
    strip = _without_clock if kind in ("ollama", "generate") else (lambda b: b)
    assert strip(outs[0]) == strip(outs[1])


def _without_clock(data: bytes) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in data.splitlines()]
    for line in lines:
        for k in ("created_at", "total_duration", "prompt_eval_duration", "eval_duration", "load_duration"):
            line.pop(k, None)
    return lines


def test_a_stream_that_stops_early_ends_with_the_doors_error() -> None:
    x, wire = exchange("anthropic", {**BODIES["anthropic"], "stream": True})
    stream(x, sse(chunks(Turn(["a"]))[:2], done=False), [])
    events, _ = split_events(wire.body)
    assert event_fields(events[-1])[0] == b"error"
    x, wire = exchange("ollama", {**BODIES["ollama"], "stream": True})
    err = b'data: {"error":{"message":"up broke","type":"upstream_error","code":"stream_interrupted"}}\n\n'
    stream(x, sse(chunks(Turn(["a"]))[:2], done=False) + err, [])
    assert orjson.loads(wire.body.splitlines()[-1]) == {"error": "up broke"}


def test_same_api_streams_pass_through() -> None:
    x, wire = exchange("anthropic", {**BODIES["anthropic"], "stream": True})
    assert x.native is not None
    x.native.raw = True
    own = b'event: message_start\ndata: {"type":"message_start"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    stream(x, own + b"data: [DONE]\n\n", [7, 30])
    assert wire.body == own  # the [DONE] the request path needs is taken off again
    x, wire = exchange("ollama", {**BODIES["ollama"], "stream": True})
    assert x.native is not None
    x.native.raw = True
    err = b'data: {"error":{"message":"cut","type":"upstream_error"}}\n\n'
    stream(x, b'data: {"done":false}\n\ndata: {"done":true}\n\n' + err, [])
    assert wire.body == b'{"done":false}\n{"done":true}\n{"error":"cut"}\n'
    x, wire = exchange("responses", {**BODIES["responses"], "stream": True})
    assert x.native is not None
    x.native.raw = True
    stream(x, err, [])
    name, data = event_fields(split_events(wire.body)[0][0])
    assert name == b"error" and orjson.loads(data or b"")["message"] == "cut"


def test_created_at_is_rfc3339_with_nanoseconds() -> None:
    assert created_at(1700000000.5) == "2023-11-14T22:13:20.500000000Z"


def test_created_at_reuses_the_formatted_second() -> None:
    cache: list[tuple[int, str]] = [(-1, "")]
    assert created_at(1700000000.25, cache) == "2023-11-14T22:13:20.250000000Z"
    assert cache[0] == (1700000000, "2023-11-14T22:13:20")
    assert created_at(1700000000.75, cache) == "2023-11-14T22:13:20.750000000Z"
    assert created_at(1700000001.0, cache) == "2023-11-14T22:13:21.000000000Z"
