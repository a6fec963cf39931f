"""A contract fake of Anthropic's Messages API, for tests that cannot call the real one.

It follows Anthropic's API documentation (API reference "Messages", "Models", "Errors", "Versions";
guide "Streaming Messages"):

* ``POST /v1/messages`` needs the ``x-api-key`` and ``anthropic-version`` headers; without a key (or with
  a wrong one) it answers 401 ``authentication_error``, without a version 400 ``invalid_request_error``;
* the body needs ``model``, ``max_tokens`` (an integer >= 1) and ``messages`` (a non-empty list of
  ``{"role": "user" | "assistant", "content": str | [blocks]}``); ``system`` is a string or a list of
  text blocks; ``temperature`` is within 0..1; a key the API does not know is an error ("Extra inputs
  are not permitted"), as is an unknown model (404 ``not_found_error``, message ``model: <name>``);
* a message is ``{"id": "msg_...", "type": "message", "role": "assistant", "model", "content": [{"type":
  "text", "text"}], "stop_reason": "end_turn" | "max_tokens" | "stop_sequence", "stop_sequence",
  "usage": {"input_tokens", "output_tokens"}}``, with a ``request-id`` response header;
* with ``"stream": true`` the answer is server-sent events, each ``event: <type>`` + ``data: <json>``:
  ``message_start`` (the message with empty ``content``, usage so far), ``content_block_start``,
  ``ping``, ``content_block_delta`` (``text_delta``) per token, ``content_block_stop``,
  ``message_delta`` (``stop_reason``, ``stop_sequence``, cumulative ``usage.output_tokens``),
  ``message_stop``; an error in the middle of a stream is an ``event: error`` with the error body;
* errors are ``{"type": "error", "error": {"type", "message"}, "request_id"}``: 400
  ``invalid_request_error``, 401 ``authentication_error``, 403 ``permission_error``, 404
  ``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error`` (with ``retry-after``), 500
  ``api_error``, 529 ``overloaded_error``;
* ``GET /v1/models`` lists ``{"type": "model", "id", "display_name", "created_at"}`` with ``has_more``,
  ``first_id``, ``last_id``;
* tools (guide "Tool use"): ``tools`` are ``{"name", "description", "input_schema"}``; an answer calling
  them has ``tool_use`` blocks (``{"type": "tool_use", "id": "toolu_...", "name", "input"}``) and
  ``stop_reason: "tool_use"``; streamed, a tool_use block starts with ``"input": {}`` and its input
  arrives as ``input_json_delta`` events (``partial_json`` pieces); every ``tool_use`` of an assistant
  message needs a ``tool_result`` block (``tool_use_id``) in the next message, else 400;
* ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": N}`` for the same body without
  ``max_tokens``.

Text is fake and deterministic: :attr:`FakeAnthropic.reply` (default ``"Hello from fake Anthropic
(<model>)."``), one token per word; token counts are word counts.

Test controls (not part of the API): :meth:`FakeAnthropic.enqueue_content` (the content blocks of the
next answers, e.g. a ``tool_use``), :meth:`FakeAnthropic.fail_next` (the next requests fail with an
Anthropic error), :meth:`FakeAnthropic.break_stream_after` (the next stream sends an ``error`` event
after N deltas), :attr:`FakeAnthropic.requests` (method, path, headers, body of every request).

Run it with ``with FakeAnthropic(keys={"sk-ant-test"}).serve_in_thread() as fake:`` (``fake.base_url``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

VERSION_HEADER = "anthropic-version"
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
MESSAGE_KEYS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
}
DEFAULT_MODELS = ("claude-3-5-haiku-latest", "claude-sonnet-4-5")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any


@dataclass
class _Failure:
    status: int
    error_type: str
    message: str
    retry_after: str | None


class _ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")


class FakeAnthropic:
    def __init__(
        self, keys: Iterable[str] = ("sk-ant-test",), models: Iterable[str] = DEFAULT_MODELS
    ) -> None:
        self.keys = set(keys)
        self.models = list(models)
        self.reply: str | None = None
        self.requests: list[Seen] = []
        self.port = 0
        self._failures: deque[_Failure] = deque()
        self._script: deque[list[dict[str, Any]]] = deque()
        self._break_after: int | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(
        self,
        status: int,
        message: str | None = None,
        *,
        count: int = 1,
        retry_after: float | None = None,
        error_type: str | None = None,
    ) -> None:
        """The next ``count`` requests to ``/v1/messages`` answer this error (429 gets ``retry-after``)."""
        kind = error_type or ERROR_TYPES.get(status, "api_error")
        text = message or {
            "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
            "overloaded_error": "Overloaded",
        }.get(kind, kind.replace("_", " "))
        with self._lock:
            for _ in range(count):
                ra = f"{retry_after:g}" if retry_after is not None else None
                self._failures.append(_Failure(status, kind, text, ra))

    def enqueue_content(self, *blocks: dict[str, Any]) -> None:
        """The next answer's content: text blocks ``{"type": "text", "text"}`` and tool calls
        ``{"type": "tool_use", "name", "input"}`` (ids are added)."""
        with self._lock:
            self._script.append([dict(b) for b in blocks])

    def break_stream_after(self, deltas: int) -> None:
        """The next stream sends an ``overloaded_error`` event after ``deltas`` text deltas, then ends."""
        self._break_after = deltas

    def messages_to(self, path: str = "/v1/messages") -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ server

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_get("/v1/models", self._models)
        return app

    @contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeAnthropic]:
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def serve() -> None:
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = stop = asyncio.Event()
            runner = web.AppRunner(
                self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
            )
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            self.port = runner.addresses[0][1]
            ready.set()
            try:
                await stop.wait()
            finally:
                await runner.cleanup()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fake-anthropic", daemon=True)
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake Anthropic server did not start")
        try:
            yield self
        finally:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
            thread.join(10)

    # ------------------------------------------------------------------ handlers

    def _request_id(self) -> str:
        return f"req_fake{next(self._ids):06d}"

    def _error(self, err: _ApiError, retry_after: str | None = None) -> web.Response:
        rid = self._request_id()
        body = {"type": "error", "error": {"type": err.error_type, "message": err.message}, "request_id": rid}
        headers = {"request-id": rid}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        return web.json_response(body, status=err.status, headers=headers)

    def _check_headers(self, request: web.Request) -> None:
        key = request.headers.get("x-api-key")
        if not key:
            raise _ApiError(401, "x-api-key header is required")
        if key not in self.keys:
            raise _ApiError(401, "invalid x-api-key")
        if not request.headers.get(VERSION_HEADER):
            raise _ApiError(400, f"{VERSION_HEADER}: header is required")

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.requests.append(
            Seen(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        )
        return body

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        try:
            self._check_headers(request)
        except _ApiError as err:
            return self._error(err)
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m.replace("-", " ").title(),
                "created_at": "2024-10-22T00:00:00Z",
            }
            for m in self.models
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": self.models[0] if self.models else None,
                "last_id": self.models[-1] if self.models else None,
            }
        )

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        try:
            self._check_headers(request)
            with self._lock:
                failure = self._failures.popleft() if self._failures else None
            if failure is not None:
                return self._error(
                    _ApiError(failure.status, failure.message, failure.error_type), failure.retry_after
                )
            self._validate(body)
        except _ApiError as err:
            return self._error(err)
        with self._lock:
            script = self._script.popleft() if self._script else None
        usage_in = _count(body.get("system")) + sum(_count(m.get("content")) for m in body["messages"])
        if script is not None:
            content = [
                {**b, "id": f"toolu_fake{next(self._ids):06d}"} if b.get("type") == "tool_use" else b
                for b in script
            ]
            tool = any(b.get("type") == "tool_use" for b in content)
            out_tokens = sum(
                len(str(b.get("text", "")).split()) + (5 if b.get("type") == "tool_use" else 0)
                for b in content
            )
            tokens: list[str] = []
            stop_reason, stop_sequence = ("tool_use" if tool else "end_turn"), None
        else:
            tokens, stop_reason, stop_sequence = self._generate(body)
            content, out_tokens = [{"type": "text", "text": "".join(tokens)}], len(tokens)
        message = {
            "id": f"msg_fake{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": usage_in, "output_tokens": out_tokens},
        }
        if not body.get("stream"):
            return web.json_response(message, headers={"request-id": self._request_id()})
        return await self._stream(request, message)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        try:
            self._check_headers(request)
            if isinstance(body, dict):
                body = {**body, "max_tokens": 1}
            self._validate(body)
        except _ApiError as err:
            return self._error(err)
        tokens = _count(body.get("system")) + sum(_count(m.get("content")) for m in body["messages"])
        return web.json_response({"input_tokens": tokens})

    def _validate(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise _ApiError(400, "request body must be a JSON object")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                raise _ApiError(400, f"{key}: Field required")
        extra = sorted(set(body) - MESSAGE_KEYS)
        if extra:
            raise _ApiError(400, f"{extra[0]}: Extra inputs are not permitted")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise _ApiError(400, "max_tokens: Input should be a valid integer greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            raise _ApiError(400, "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise _ApiError(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
            content = m.get("content")
            if not isinstance(content, str | list) or (
                isinstance(content, list)
                and not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
            ):
                raise _ApiError(
                    400, f"messages.{i}.content: Input should be a valid string or list of blocks"
                )
        _check_tool_pairs(messages)
        for i, t in enumerate(body.get("tools") or []):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise _ApiError(400, f"tools.{i}.name: Field required")
            if t.get("type") in (None, "custom") and not isinstance(t.get("input_schema"), dict):
                raise _ApiError(400, f"tools.{i}.custom.input_schema: Field required")
        system = body.get("system")
        if system is not None and not isinstance(system, str | list):
            raise _ApiError(400, "system: Input should be a valid string or list of text blocks")
        temperature = body.get("temperature")
        if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
            raise _ApiError(400, "temperature: Input should be less than or equal to 1")
        if body["model"] not in self.models:
            raise _ApiError(404, f"model: {body['model']}")

    def _generate(self, body: dict[str, Any]) -> tuple[list[str], str, str | None]:
        text = self.reply if self.reply is not None else f"Hello from fake Anthropic ({body['model']})."
        for stop in body.get("stop_sequences") or ():
            if isinstance(stop, str) and stop and stop in text:
                return _tokens(text[: text.index(stop)]), "stop_sequence", stop
        tokens = _tokens(text)
        if len(tokens) > body["max_tokens"]:
            return tokens[: body["max_tokens"]], "max_tokens", None
        return tokens, "end_turn", None

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": self._request_id(),
            }
        )
        await resp.prepare(request)

        async def event(kind: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())

        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}
        await event("message_start", {"type": "message_start", "message": start})
        broken, self._break_after = self._break_after, None
        deltas = 0
        for index, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                first = {**block, "input": {}}
                await event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                )
                text = json.dumps(block["input"], separators=(",", ":"))
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    await event(
                        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                    )
            else:
                await event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
                if index == 0:
                    await event("ping", {"type": "ping"})
                for tok in _tokens(block.get("text", "")):
                    if broken is not None and deltas >= broken:
                        await event(
                            "error",
                            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                        )
                        await resp.write_eof()
                        return resp
                    deltas += 1
                    delta = {"type": "text_delta", "text": tok}
                    await event(
                        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                    )
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp


def _tokens(text: str) -> list[str]:
    """One token per word, with the whitespace before it (the tokens join back to ``text`` exactly)."""
    tokens = re.findall(r"\s*\S+", text)
    tail = text[len("".join(tokens)) :]
    if tail:
        tokens = [*tokens[:-1], tokens[-1] + tail] if tokens else [tail]
    return tokens


def _check_tool_pairs(messages: list[Any]) -> None:
    """Every tool_use of an assistant message needs its tool_result in the next message."""
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if m.get("role") != "assistant" or not isinstance(content, list):
            continue
        ids = [b.get("id") for b in content if b.get("type") == "tool_use"]
        if not ids:
            continue
        nxt = messages[i + 1].get("content") if i + 1 < len(messages) else None
        answered = (
            {b.get("tool_use_id") for b in nxt if isinstance(b, dict) and b.get("type") == "tool_result"}
            if isinstance(nxt, list)
            else set()
        )
        missing = [x for x in ids if x not in answered]
        if missing:
            raise _ApiError(
                400,
                f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(map(str, missing))}. Each `tool_use` block must have a corresponding `tool_result` "
                "block in the next message.",
            )


def _count(content: Any) -> int:
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(_count(b.get("text")) + _count(b.get("content")) for b in content if isinstance(b, dict))
    return 0
