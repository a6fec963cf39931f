"""Ollama's native inference endpoints for the contract fake (:class:`aib.devtools.fake_ollama.FakeOllama`).

Follows ``docs/api.md`` ("Generate a completion", "Generate a chat completion", "Generate Embeddings",
"Generate Embedding"), ``api/types.go`` (``ChatRequest``/``ChatResponse``, ``GenerateResponse``,
``Metrics``, ``EmbedResponse``, ``EmbeddingResponse``, ``ToolCall`` with ``function.index``) and
``server/routes.go`` of ollama/ollama at the commit named in :mod:`aib.devtools.fake_ollama`:

* ``POST /api/chat`` and ``POST /api/generate`` stream by default: one JSON object per line,
  ``Content-Type: application/x-ndjson``; with ``"stream": false`` one object, ``application/json;
  charset=utf-8``. The last object has ``done: true``, ``done_reason`` (``stop``, ``length``; ``load``
  for an empty chat or prompt, ``unload`` with ``keep_alive: 0``), ``total_duration``,
  ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``,
  ``eval_duration`` (nanoseconds).
* errors are ``{"error": "..."}``: ``missing request body`` and ``model is required`` (400), ``model
  '<name>' not found`` (404), ``"<name>" does not support chat`` / ``generate`` (400); an error after
  the first line of a stream is one more line ``{"error": "..."}``.
* the prompt is cut to ``options.num_ctx`` (default :data:`DEFAULT_NUM_CTX`) as Ollama does:
  ``prompt_eval_count`` then equals the context (the fake's tokens are words).
* ``POST /api/embed`` answers ``{"model", "embeddings", "total_duration", "load_duration",
  "prompt_eval_count"}``; ``POST /api/embeddings`` (legacy, ``prompt``) answers ``{"embedding"}``.

Test controls: :meth:`NativeInference.enqueue_tool_calls` (the next chat answer calls these tools),
:attr:`NativeInference.bodies` (``(path, body)`` of every native inference request).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

DEFAULT_NUM_CTX = 4096
_JSON = "application/json; charset=utf-8"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=_dumps({"error": message}).encode(), headers={"Content-Type": _JSON}
    )


def _created() -> str:
    return datetime.now().astimezone().isoformat()


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class NativeInference:
    """Mixed into FakeOllama: the handlers of Ollama's native inference API."""

    # provided by FakeOllama
    _lock: threading.Lock
    delay: float
    token_delay: float
    _get: Callable[[str], Any]
    _load: Callable[[Any], Awaitable[None]]  # waits load_delay (counted in loads) unless in memory
    _take_failure: Callable[[], tuple[int, str] | None]
    _reply_text: Callable[[str, list[dict[str, Any]]], str]
    _embed_vector: Callable[[str, str, int], list[float]]

    def _init_native(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self._tool_script: deque[list[dict[str, Any]]] = deque()

    def enqueue_tool_calls(self, *calls: dict[str, Any]) -> None:
        """The next ``/api/chat`` answer calls these tools (``{"name", "arguments"}``), with no text."""
        with self._lock:
            self._tool_script.append([dict(c) for c in calls])

    def add_native_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self._api_chat)
        app.router.add_post("/api/generate", self._api_generate)
        app.router.add_post("/api/embed", self._api_embed)
        app.router.add_post("/api/embeddings", self._api_embeddings)

    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return _error(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error(400, str(exc))
        if not isinstance(body, dict):
            return _error(400, "json: cannot unmarshal request body")
        with self._lock:
            self.bodies.append((request.path, body))
        return body

    def _model(self, body: dict[str, Any], capability: str, what: str) -> Any:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        m = self._get(name)
        if m is None:
            return _error(404, f"model '{name}' not found")
        if capability not in m.capabilities:
            return _error(400, f'"{name}" does not support {what}')
        return m

    async def _api_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generate(request, chat=True)

    async def _api_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generate(request, chat=False)

    async def _native_generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        m = self._model(body, "completion", "chat" if chat else "generate")
        if isinstance(m, web.Response):
            return m
        await self._load(m)  # a model not in memory is loaded first, as Ollama does
        messages = body.get("messages") if chat else None
        if chat and not isinstance(messages, list):
            messages = []
        prompt_text = (
            " ".join(str(x.get("content", "")) for x in messages or [] if isinstance(x, dict))
            if chat
            else str(body.get("prompt") or "")
        )
        for msg in messages or []:
            for img in (msg.get("images") or []) if isinstance(msg, dict) else []:
                if not isinstance(img, str) or not img:
                    return _error(400, "illegal base64 data at input byte 0")
        if (chat and not messages) or (not chat and not prompt_text):
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            out: dict[str, Any] = {"model": body["model"], "created_at": _created()}
            out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            out.update({"done": True, "done_reason": reason})
            return web.Response(body=_dumps(out).encode(), headers={"Content-Type": _JSON})
        failure = self._take_failure()
        if failure is not None:
            return _error(*failure)
        if self.delay:
            await asyncio.sleep(self.delay)
        raw_options = body.get("options")
        options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
        given = options.get("num_ctx")
        num_ctx = given if isinstance(given, int) else DEFAULT_NUM_CTX
        prompt_tokens = min(max(1, len(prompt_text.split())), num_ctx)
        with self._lock:
            calls = self._tool_script.popleft() if chat and self._tool_script else None
        text = (
            ""
            if calls
            else self._reply_text(body["model"], list(messages or [{"role": "user", "content": prompt_text}]))
        )
        tokens = _words(text) if text else []
        reason = "stop"
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            tokens, reason = tokens[:limit], "length"
        stops = options.get("stop") or []
        joined = "".join(tokens)
        for stop in stops if isinstance(stops, list) else []:
            if isinstance(stop, str) and stop and stop in joined:
                joined = joined[: joined.index(stop)]
                tokens, reason = _words(joined) if joined else [], "stop"
        t0 = time.monotonic_ns()
        base = {"model": body["model"], "created_at": ""}
        tool_calls = [
            {
                "id": f"call_{i}",
                "function": {"index": i, "name": c["name"], "arguments": c.get("arguments", {})},
            }
            for i, c in enumerate(calls or [])
        ]

        def piece(text: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
            if chat:
                msg: dict[str, Any] = {"role": "assistant", "content": text}
                if extra:
                    msg.update(extra)
                return {**base, "created_at": _created(), "message": msg, "done": False}
            return {**base, "created_at": _created(), "response": text, "done": False}

        def final(text: str) -> dict[str, Any]:
            out = piece(
                text, {"tool_calls": tool_calls} if tool_calls and body.get("stream") is False else None
            )
            elapsed = max(time.monotonic_ns() - t0, 1000)
            out.update(
                done=True,
                done_reason=reason,
                total_duration=elapsed + 2000,
                load_duration=1000,
                prompt_eval_count=prompt_tokens,
                prompt_eval_duration=1000,
                eval_count=len(tokens),
                eval_duration=elapsed,
            )
            return out

        if body.get("stream") is False:
            return web.Response(body=_dumps(final("".join(tokens))).encode(), headers={"Content-Type": _JSON})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for tok in tokens:
            await resp.write((_dumps(piece(tok)) + "\n").encode())
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
        if tool_calls:
            await resp.write((_dumps(piece("", {"tool_calls": tool_calls})) + "\n").encode())
        await resp.write((_dumps(final("")) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _api_embed(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        m = self._model(body, "embedding", "embeddings")
        if isinstance(m, web.Response):
            return m
        await self._load(m)  # a model not in memory is loaded first, as Ollama does
        inp = body.get("input")
        if isinstance(inp, str):
            inputs = [inp]
        elif isinstance(inp, list) and all(isinstance(s, str) for s in inp):
            inputs = list(inp)
        else:
            return _error(400, "invalid input type")
        failure = self._take_failure()
        if failure is not None:
            return _error(*failure)
        dims = body.get("dimensions")
        size = dims if isinstance(dims, int) and dims > 0 else m.embedding_length
        vectors = [self._embed_vector(m.name, text, size) for text in inputs]
        count = sum(max(1, len(t.split())) for t in inputs)
        out = {
            "model": body["model"],
            "embeddings": vectors,
            "total_duration": 5000,
            "load_duration": 1000,
            "prompt_eval_count": count,
        }
        return web.Response(body=_dumps(out).encode(), headers={"Content-Type": _JSON})

    async def _api_embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if isinstance(body, web.Response):
            return body
        m = self._model(body, "embedding", "embeddings")
        if isinstance(m, web.Response):
            return m
        await self._load(m)  # a model not in memory is loaded first, as Ollama does
        prompt = body.get("prompt")
        vector = (
            self._embed_vector(m.name, prompt, m.embedding_length)
            if isinstance(prompt, str) and prompt
            else []
        )
        return web.Response(body=_dumps({"embedding": vector}).encode(), headers={"Content-Type": _JSON})
