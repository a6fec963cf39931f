"""Instant fake OpenAI-compatible upstream: the "direct" baseline for benchmarks and tests.

Raw ``asyncio.Protocol`` + ``httptools`` parser on uvloop, single process, HTTP/1.1 keep-alive.

    python -m aib.devtools.fake_openai --host 127.0.0.1 --port 9001 [--chunks 5] [--chunk-delay-ms 0]

Every response carries ``x-fake-port: <port>`` and echoes ``x-request-id``. The request header
``x-fake-status: <code>`` (>= 400) forces that status with an OpenAI-style error body.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import signal
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast

import httptools
import orjson

ROUTES = {b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings"}
_ids = itertools.count(1)


@dataclass(slots=True)
class Config:
    port: int
    chunks: int = 5
    chunk_delay: float = 0.0
    model: str = "fake-model"
    embedding_dim: int = 8


@dataclass(slots=True)
class Request:
    url: bytes = b""
    path: bytes = b""
    method: bytes = b""
    request_id: bytes | None = None
    force_status: int | None = None
    keep_alive: bool = True
    body: bytearray = field(default_factory=bytearray)


def _words(value: Any) -> int:
    """Cheap deterministic "token" count: whitespace words in strings / message contents."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content") or value.get("text"))
    return 0


def _embedding(text: Any, dim: int, as_base64: bool) -> Any:
    seed = zlib.crc32(orjson.dumps(text))
    vec = [((seed >> (i % 29)) & 0xFF) / 255.0 - 0.5 for i in range(dim)]
    return base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if as_base64 else vec


def _choice(content: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"index": 0, **content, "logprobs": None, "finish_reason": finish}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeOpenAI(asyncio.Protocol):
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.port_header = b"x-fake-port: %d\r\n" % cfg.port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request] = deque()  # pipelined requests, answered in order
        self.task: asyncio.Task[None] | None = None  # a slow stream in progress
        self.cur = Request()

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(Request(keep_alive=False), 400, b'{"error":{"message":"bad http request"}}')
            return
        self._drain()

    # ---- httptools callbacks ----
    def on_message_begin(self) -> None:
        self.cur = Request()

    def on_url(self, url: bytes) -> None:
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"x-request-id":
            self.cur.request_id = value
        elif lname == b"x-fake-status":
            self.cur.force_status = int(value)

    def on_headers_complete(self) -> None:
        self.cur.path = self.cur.url.split(b"?", 1)[0]
        self.cur.method, self.cur.keep_alive = self.parser.get_method(), self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.cur.body += body

    def on_message_complete(self) -> None:
        self.pending.append(self.cur)

    # ---- responses ----
    def _drain(self) -> None:
        while self.pending and self.task is None and self.transport is not None:
            slow = self._handle(self.pending.popleft())
            if slow is not None:
                self.task = asyncio.get_running_loop().create_task(slow)
                self.task.add_done_callback(self._task_done)

    def _task_done(self, _: asyncio.Task[None]) -> None:
        self.task = None
        self._drain()

    def _head(self, req: Request, status: int, ctype: bytes) -> bytearray:
        head = bytearray(b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()))
        head += b"content-type: " + ctype + b"\r\n" + self.port_header
        if req.request_id is not None:
            head += b"x-request-id: " + req.request_id + b"\r\n"
        if not req.keep_alive:
            head += b"connection: close\r\n"
        return head

    def _send(self, data: bytes, keep: bool) -> None:
        if self.transport is not None:
            self.transport.write(data)
            if not keep:
                self.transport.close()

    def _write(self, req: Request, status: int, body: bytes) -> None:
        head = self._head(req, status, b"application/json") + b"content-length: %d\r\n\r\n" % len(body)
        self._send(bytes(head + body), req.keep_alive)

    def _json(self, req: Request, obj: Any, status: int = 200) -> None:
        self._write(req, status, orjson.dumps(obj))

    def _error(self, req: Request, status: int, message: str) -> None:
        err = {"message": message, "type": "fake_error", "param": None, "code": status}
        self._json(req, {"error": err}, status)

    def _handle(self, req: Request) -> Coroutine[Any, Any, None] | None:
        """Answer ``req`` now, or return a coroutine that streams it (only with --chunk-delay-ms)."""
        if (req.force_status or 0) >= 400:
            self._error(req, req.force_status or 500, f"forced status {req.force_status}")
        elif req.method == b"GET" and req.path == b"/health":
            self._write(req, 200, b'{"status":"ok"}')
        elif req.method == b"GET" and req.path == b"/v1/models":
            model = {"id": self.cfg.model, "object": "model", "created": 0, "owned_by": "fake"}
            self._json(req, {"object": "list", "data": [model]})
        elif req.method != b"POST" or req.path not in ROUTES:
            self._error(req, 404, f"no route {req.method.decode()} {req.path.decode()}")
        else:
            try:
                body = orjson.loads(req.body)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):
                self._error(req, 400, "body must be a JSON object")
            elif req.path == b"/v1/embeddings":
                self._embeddings(req, body)
            else:
                return self._completion(req, body, chat=req.path == b"/v1/chat/completions")
        return None

    def _embeddings(self, req: Request, body: dict[str, Any]) -> None:
        raw = body.get("input", "")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        b64, dim = body.get("encoding_format") == "base64", self.cfg.embedding_dim
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(x, dim, b64)}
            for i, x in enumerate(inputs)
        ]
        n = max(1, _words(inputs))
        model = body.get("model") or self.cfg.model
        usage = {"prompt_tokens": n, "total_tokens": n}
        self._json(req, {"object": "list", "data": data, "model": model, "usage": usage})

    def _completion(self, req: Request, body: dict[str, Any], chat: bool) -> Coroutine[Any, Any, None] | None:
        cfg = self.cfg
        toks = [f"tok{i} " for i in range(cfg.chunks)]
        prompt = max(1, _words(body.get("messages") if chat else body.get("prompt")))
        usage = {"prompt_tokens": prompt, "completion_tokens": len(toks), "total_tokens": prompt + len(toks)}
        base: dict[str, Any] = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-fake{next(_ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or cfg.model,
        }
        if not body.get("stream"):
            text = "".join(toks)
            out = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            self._json(req, {**base, "choices": [_choice(out, "stop")], "usage": usage})
            return None
        if chat:
            base["object"] = "chat.completion.chunk"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def event(choices: list[dict[str, Any]], use: dict[str, int] | None = None) -> bytes:
            payload = {**base, "choices": choices, **({"usage": use} if include_usage else {})}
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        events = [
            event([_choice({"delta": ({"role": "assistant"} if i == 0 else {}) | {"content": t}}, None)])
            if chat
            else event([_choice({"text": t}, None)])
            for i, t in enumerate(toks)
        ]
        events.append(event([_choice({"delta": {}} if chat else {"text": ""}, "stop")]))
        if include_usage:
            events.append(event([], usage))
        events.append(b"data: [DONE]\n\n")
        head = self._head(req, 200, b"text/event-stream")
        head += b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        if cfg.chunk_delay <= 0:
            self._send(bytes(head) + b"".join(map(_chunk, events)) + b"0\r\n\r\n", req.keep_alive)
            return None
        return self._slow_stream(bytes(head), events, req.keep_alive)

    async def _slow_stream(self, head: bytes, events: list[bytes], keep: bool) -> None:
        for i, ev in enumerate(events):
            if self.transport is None:
                return
            self.transport.write(head + _chunk(ev) if i == 0 else _chunk(ev))
            if i < len(events) - 1:
                await asyncio.sleep(self.cfg.chunk_delay)
        self._send(b"0\r\n\r\n", keep)


async def serve(host: str, cfg: Config) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeOpenAI(cfg), host, cfg.port, backlog=2048)
    cfg.port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake_openai listening on http://{host}:{cfg.port}", file=sys.stderr, flush=True)
    print("READY", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Instant fake OpenAI-compatible upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001, help="0 = pick a free port (printed on stderr)")
    ap.add_argument("--chunks", type=int, default=5, help="content chunks per reply (= completion tokens)")
    ap.add_argument("--chunk-delay-ms", type=float, default=0.0, help="sleep between stream chunks")
    ap.add_argument("--model", default="fake-model", help="listed by /v1/models; used if body has none")
    ap.add_argument("--embedding-dim", type=int, default=8)
    a = ap.parse_args(argv)
    cfg = Config(
        a.port, max(1, a.chunks), max(0.0, a.chunk_delay_ms) / 1000, a.model, max(1, a.embedding_dim)
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        asyncio.run(serve(a.host, cfg))
    else:
        uvloop.run(serve(a.host, cfg))


if __name__ == "__main__":
    main()
