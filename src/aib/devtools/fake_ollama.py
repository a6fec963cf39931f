"""A contract fake of the Ollama server, for tests that cannot run a real one.

It follows Ollama's own documentation and source, as of ollama/ollama v0.33.0-rc2
(commit fb30760996871fa9460115c753afd2c60d4ab0f7, 2026-08-21):

* ``docs/api.md`` - native API: ``GET /api/tags`` ("List Local Models"), ``GET /api/ps`` ("List Running
  Models"), ``POST /api/show``, ``POST /api/pull``, ``DELETE /api/delete``, ``GET /api/version``; and
  inference (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``) in
  :mod:`aib.devtools.fake_ollama_native`;
* ``docs/api/openai-compatibility.mdx`` - the ``/v1`` endpoints and the fields they support;
* ``docs/api/errors.mdx`` - native errors are ``{"error": "<message>"}`` with a 4xx/5xx status;
* ``server/routes.go`` - routes (``GET /`` answers ``Ollama is running``), handlers and the exact error
  messages (``model '<name>' not found``; embeddings use ``model "<name>" not found, try pulling it
  first`` via ``handleScheduleError``);
* ``openai/openai.go`` and ``middleware/openai.go`` - the OpenAI shapes: errors are
  ``{"error": {"message", "type", "param": null, "code": null}}`` where ``type`` is
  ``invalid_request_error`` for 400, ``not_found_error`` for 404 and ``api_error`` otherwise; ids are
  ``chatcmpl-<0..998>`` / ``cmpl-<0..998>``; ``system_fingerprint`` is ``fp_ollama``; a chat stream sends
  the role only in the first delta, then a separate finish chunk with an empty delta, then (only with
  ``stream_options.include_usage``) a chunk with ``choices: []`` and ``usage``, then ``data: [DONE]``;
  a streamed ``/v1/completions`` with ``include_usage`` carries a zero ``usage`` on every chunk before
  the final usage chunk; ``/v1/models`` ids are the model names, ``owned_by`` is the namespace
  (``library`` by default) and ``data`` is ``null`` when no model is installed.
* ``api/types.go`` - field names of ``ListModelResponse``, ``ProcessModelResponse``, ``ModelDetails``,
  ``ShowResponse``.

Text generation is fake and deterministic: the reply is :attr:`FakeOllama.reply` (default
``"Hello from fake Ollama (<model>)."``), one token per word; token counts are word counts.

Test controls (not part of Ollama): :meth:`FakeOllama.pull` / :meth:`FakeOllama.remove` from Python,
``POST /_fake/pull {"name": ...}`` and ``POST /_fake/remove {"name": ...}`` over HTTP (Ollama's own
``POST /api/pull`` also works and makes any name appear), :meth:`FakeOllama.fail_next` to make the next
inference requests fail with an Ollama-shaped error, ``delay``/``token_delay`` for latency, and
:attr:`FakeOllama.requests` recording ``(method, path)`` of every request.

Run it in-process with ``await fake.start()`` / ``await fake.stop()`` or ``with fake.serve_in_thread():``,
or as a process: ``python -m aib.devtools.fake_ollama --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import random
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from aib.devtools.fake_ollama_native import NativeInference

DEFAULT_VERSION = "0.33.0"
KEEP_ALIVE = timedelta(minutes=5)
_JSON = "application/json; charset=utf-8"  # what Gin's c.JSON sends
_OPENAI_JSON = "application/json"  # what Ollama's OpenAI middleware sends


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _now() -> datetime:
    return datetime.now().astimezone()


def normalize_name(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest`` (Ollama's default tag); names with a tag are kept."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    if name and ":" not in last:
        name += ":latest"
    return name


def owned_by(name: str) -> str:
    """The namespace of a model name, as ``/v1/models`` reports it (``library`` when there is none)."""
    parts = name.split(":", 1)[0].split("/")
    if len(parts) >= 3:
        return parts[-2]
    if len(parts) == 2:
        return parts[0]
    return "library"


@dataclass
class FakeModel:
    """One installed model, with the fields Ollama reports for it."""

    name: str
    family: str = "llama"
    families: list[str] | None = None
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    format: str = "gguf"
    size: int = 2019393189
    digest: str = ""
    modified_at: datetime = field(default_factory=_now)
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    context_length: int = 131072
    embedding_length: int = 3072

    def __post_init__(self) -> None:
        self.name = normalize_name(self.name)
        if self.families is None:
            self.families = [self.family]
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": list(self.families or []),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at.isoformat(),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }


def default_models() -> list[FakeModel]:
    """A chat model and an embedding model, with the details Ollama reports for them."""
    return [
        FakeModel("llama3.2:latest"),
        FakeModel(
            "nomic-embed-text:latest",
            family="nomic-bert",
            parameter_size="137M",
            quantization_level="F16",
            size=274302450,
            capabilities=["embedding"],
            context_length=2048,
            embedding_length=768,
        ),
    ]


def _count_tokens(text: str) -> int:
    return len(text.split())


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _embedding(model: str, text: str, dims: int) -> list[float]:
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        digest = hashlib.sha256(f"{model}\0{text}\0{counter}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = values[:dims]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    # round-trip through float32, as Ollama's embeddings are []float32
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in vec]


class _OpenAIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def openai_error(status: int, message: str) -> web.Response:
    """Ollama's ``openai.NewError``: the type follows the status code."""
    etype = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": etype, "param": None, "code": None}}
    return web.Response(
        status=status, body=(_dumps(body) + "\n").encode(), headers={"Content-Type": _OPENAI_JSON}
    )


def native_error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=_dumps({"error": message}).encode(), headers={"Content-Type": _JSON}
    )


def _json(obj: Any, status: int = 200, content_type: str = _JSON) -> web.Response:
    return web.Response(status=status, body=_dumps(obj).encode(), headers={"Content-Type": content_type})


@web.middleware
async def _gin_not_found(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Gin's plain-text answers for unknown routes and wrong methods."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="405 method not allowed", content_type="text/plain")
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")


class FakeOllama(NativeInference):
    """An in-process Ollama look-alike on 127.0.0.1 (see the module docstring for the contract)."""

    def __init__(
        self,
        models: Iterable[FakeModel | str] | None = None,
        *,
        version: str = DEFAULT_VERSION,
        reply: str | Callable[[str, list[dict[str, Any]]], str] | None = None,
        delay: float = 0.0,
        token_delay: float = 0.0,
    ) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, FakeModel] = {}
        self._loaded: dict[str, datetime] = {}
        for m in default_models() if models is None else models:
            self.add_model(m)
        self.version = version
        self.reply = reply
        self.delay = delay
        self.token_delay = token_delay
        self.requests: list[tuple[str, str]] = []
        self._failures: list[tuple[int, str]] = []
        self._init_native()
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None

    # ----- test controls -------------------------------------------------------------------------

    def add_model(self, model: FakeModel | str) -> FakeModel:
        m = model if isinstance(model, FakeModel) else FakeModel(model)
        with self._lock:
            self._models[m.name.lower()] = m
        return m

    def pull(self, name: str, **details: Any) -> FakeModel:
        """Install ``name`` (as ``ollama pull`` would); ``details`` are :class:`FakeModel` fields."""
        return self.add_model(FakeModel(name, **details))

    def remove(self, name: str) -> bool:
        key = normalize_name(name).lower()
        with self._lock:
            self._loaded.pop(key, None)
            return self._models.pop(key, None) is not None

    def model_names(self) -> list[str]:
        with self._lock:
            return [m.name for m in self._models.values()]

    def fail_next(
        self,
        status: int = 500,
        message: str = "an error was encountered while running the model",
        count: int = 1,
    ) -> None:
        """Make the next ``count`` inference requests (``/v1/chat/completions``, ``/v1/completions``,
        ``/v1/embeddings``) fail with ``status`` and an Ollama-shaped error."""
        with self._lock:
            self._failures.extend([(status, message)] * count)

    def _get(self, name: str) -> FakeModel | None:
        with self._lock:
            return self._models.get(normalize_name(name).lower())

    def _all(self) -> list[FakeModel]:
        with self._lock:
            return list(self._models.values())

    def _mark_loaded(self, m: FakeModel) -> None:
        with self._lock:
            self._loaded[m.name.lower()] = _now() + KEEP_ALIVE

    def _take_failure(self) -> tuple[int, str] | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _embed_vector(self, model: str, text: str, dims: int) -> list[float]:
        return _embedding(model, text, dims)

    def _reply_text(self, model: str, messages: list[dict[str, Any]]) -> str:
        if self.reply is None:
            return f"Hello from fake Ollama ({model})."
        if isinstance(self.reply, str):
            return self.reply
        return self.reply(model, messages)

    # ----- server ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Root URL (native API); the OpenAI-compatible API is under ``base_url + "/v1"``."""
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record, _gin_not_found])
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_post("/api/show", self._show)
        r.add_post("/api/pull", self._api_pull)
        r.add_delete("/api/delete", self._api_delete)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/embeddings", self._embeddings)
        r.add_get("/v1/models", self._v1_models)
        r.add_get("/v1/models/{model}", self._v1_model)
        r.add_post("/_fake/pull", self._fake_pull)
        r.add_post("/_fake/remove", self._fake_remove)
        self.add_native_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (``port=0``: a free port, see :attr:`port`)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self.host, self.port = host, sock.getsockname()[1]
        self._runner = web.AppRunner(self.make_app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeOllama]:
        """Run the server on its own event loop in a daemon thread for the ``with`` block."""
        ready = threading.Event()
        errors: list[BaseException] = []
        holder: dict[str, Any] = {}

        async def serve() -> None:
            stop = asyncio.Event()
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
            try:
                await self.start(host, port)
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await stop.wait()
            finally:
                await self.stop()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="fake-ollama", daemon=True)
        thread.start()
        ready.wait()
        if errors:
            thread.join()
            raise errors[0]
        try:
            yield self
        finally:
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
            thread.join(timeout=10)

    # ----- handlers: native API -------------------------------------------------------------------

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        with self._lock:
            self.requests.append((request.method, request.path))
        return await handler(request)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running", content_type="text/plain")

    async def _version(self, request: web.Request) -> web.Response:
        return _json({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return _json({"models": [m.tag_entry() for m in self._all()]})

    async def _ps(self, request: web.Request) -> web.Response:
        now = _now()
        entries = []
        with self._lock:
            for key, expires in list(self._loaded.items()):
                m = self._models.get(key)
                if m is None or expires <= now:
                    del self._loaded[key]
                    continue
                entries.append((expires, m))
        entries.sort(key=lambda e: e[0], reverse=True)
        models = [
            {
                "name": m.name,
                "model": m.name,
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
                "expires_at": expires.isoformat(),
                "size_vram": 0,  # CPU-only, as on the machines this project targets
                "context_length": min(m.context_length, 4096),
            }
            for expires, m in entries
        ]
        return _json({"models": models})

    async def _native_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        if not raw.strip():
            return native_error(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return native_error(400, str(exc))
        if not isinstance(body, dict):
            return native_error(400, "json: cannot unmarshal request body")
        return body

    async def _show(self, request: web.Request) -> web.Response:
        body = await self._native_body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            return native_error(400, "model is required")
        m = self._get(name)
        if m is None:
            return native_error(404, f"model '{normalize_name(name)}' not found")
        arch = m.family
        return _json(
            {
                "modelfile": f'# Modelfile generated by "ollama show"\nFROM {m.name}\n',
                "parameters": 'stop                           "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": m.details(),
                "model_info": {
                    "general.architecture": arch,
                    "general.parameter_count": m.size * 2,
                    f"{arch}.context_length": m.context_length,
                    f"{arch}.embedding_length": m.embedding_length,
                },
                "capabilities": list(m.capabilities),
                "modified_at": m.modified_at.isoformat(),
            }
        )

    async def _api_pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._native_body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or body.get("name") or "")
        if not name:
            return native_error(400, "invalid model name")
        m = self.pull(name)
        if body.get("stream") is False:
            return _json({"status": "success"})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        lines: list[dict[str, Any]] = [
            {"status": "pulling manifest"},
            {"status": f"pulling {m.digest[:12]}", "digest": f"sha256:{m.digest}", "total": m.size},
            {
                "status": f"pulling {m.digest[:12]}",
                "digest": f"sha256:{m.digest}",
                "total": m.size,
                "completed": m.size,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        for line in lines:
            await resp.write((_dumps(line) + "\n").encode())
        await resp.write_eof()
        return resp

    async def _api_delete(self, request: web.Request) -> web.Response:
        body = await self._native_body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.get("model") or body.get("name") or "")
        if not self.remove(name):
            return native_error(404, f"model '{name}' not found")
        return web.Response(status=200)

    async def _fake_pull(self, request: web.Request) -> web.Response:
        body = await self._native_body(request)
        if isinstance(body, web.Response):
            return body
        name = str(body.pop("name", "") or body.pop("model", ""))
        if not name:
            return native_error(400, "name is required")
        try:
            m = self.pull(name, **body)
        except TypeError as exc:
            return native_error(400, str(exc))
        return _json(m.tag_entry())

    async def _fake_remove(self, request: web.Request) -> web.Response:
        body = await self._native_body(request)
        if isinstance(body, web.Response):
            return body
        return _json({"removed": self.remove(str(body.get("name") or body.get("model") or ""))})

    # ----- handlers: OpenAI-compatible API ----------------------------------------------------------

    async def _openai_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise _OpenAIError(400, str(exc)) from exc
        if not isinstance(body, dict):
            raise _OpenAIError(
                400, "json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"
            )
        return body

    async def _before_inference(self) -> None:
        failure = self._take_failure()
        if failure is not None:
            raise _OpenAIError(*failure)
        if self.delay:
            await asyncio.sleep(self.delay)

    def _find_for_inference(self, requested: str, capability: str, what: str) -> FakeModel:
        if not requested:
            raise _OpenAIError(400, "model is required")
        m = self._get(requested)
        if m is None:
            raise _OpenAIError(404, f"model '{requested}' not found")
        if capability not in m.capabilities:
            raise _OpenAIError(400, f'"{requested}" does not support {what}')
        self._mark_loaded(m)
        return m

    @staticmethod
    def _include_usage(body: dict[str, Any]) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    def _generate(self, text: str, max_tokens: Any) -> tuple[list[str], str]:
        tokens = _tokens(text)
        if isinstance(max_tokens, int) and 0 <= max_tokens < len(tokens):
            return tokens[:max_tokens], "length"
        return tokens, "stop"

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return resp

    async def _send(self, resp: web.StreamResponse, obj: Any) -> None:
        await resp.write(f"data: {_dumps(obj)}\n\n".encode())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._openai_body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _OpenAIError(400, "[] is too short - 'messages'")
            requested = str(body.get("model") or "")
            self._find_for_inference(requested, "completion", "chat")
            await self._before_inference()
        except _OpenAIError as exc:
            return openai_error(exc.status, exc.message)

        prompt_tokens = sum(
            _count_tokens(_message_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        tokens, finish = self._generate(self._reply_text(requested, messages), body.get("max_tokens"))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        cid = f"chatcmpl-{random.randrange(999)}"
        created = int(time.time())
        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": requested,
            "system_fingerprint": "fp_ollama",
        }

        if not body.get("stream"):
            return _json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": requested,
                    "system_fingerprint": "fp_ollama",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                },
                content_type=_OPENAI_JSON,
            )

        resp = await self._sse(request)
        for i, tok in enumerate(tokens or [""]):
            delta = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
            await self._send(resp, {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
        await self._send(resp, {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if self._include_usage(body):
            await self._send(resp, {**head, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._openai_body(request)
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise _OpenAIError(
                    400,
                    "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string",
                )
            requested = str(body.get("model") or "")
            self._find_for_inference(requested, "completion", "generate")
            await self._before_inference()
        except _OpenAIError as exc:
            return openai_error(exc.status, exc.message)

        prompt_tokens = _count_tokens(prompt)
        tokens, finish = self._generate(
            self._reply_text(requested, [{"role": "user", "content": prompt}]), body.get("max_tokens")
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        cid = f"cmpl-{random.randrange(999)}"
        created = int(time.time())

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "choices": [{"text": text, "index": 0, "finish_reason": reason}],
                "model": requested,
                "system_fingerprint": "fp_ollama",
            }

        if not body.get("stream"):
            return _json({**chunk("".join(tokens), finish), "usage": usage}, content_type=_OPENAI_JSON)

        include_usage = self._include_usage(body)
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        resp = await self._sse(request)
        for text, reason in [*((t, None) for t in tokens), ("", finish)]:
            c = chunk(text, reason)
            if include_usage:
                c["usage"] = zero
            await self._send(resp, c)
            if self.token_delay and reason is None:
                await asyncio.sleep(self.token_delay)
        if include_usage:
            await self._send(resp, {**chunk("", None), "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await self._openai_body(request)
            fmt = str(body.get("encoding_format") or "")
            if fmt and fmt.lower() not in ("float", "base64"):
                raise _OpenAIError(
                    400,
                    f"Invalid value for 'encoding_format' = {fmt}. Supported values: ['float', 'base64'].",
                )
            inp = body.get("input")
            if inp == "":
                inp = [""]
            if inp is None or inp == []:
                raise _OpenAIError(400, "invalid input")
            if isinstance(inp, str):
                inputs = [inp]
            elif isinstance(inp, list) and all(isinstance(i, str) for i in inp):
                inputs = list(inp)
            else:
                raise _OpenAIError(400, "invalid input type")
            requested = str(body.get("model") or "")
            m = self._get(requested)
            if m is None:
                raise _OpenAIError(404, f'model "{requested}" not found, try pulling it first')
            self._mark_loaded(m)
            await self._before_inference()
        except _OpenAIError as exc:
            return openai_error(exc.status, exc.message)

        dims = body.get("dimensions")
        size = dims if isinstance(dims, int) and dims > 0 else m.embedding_length
        data: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            vec = _embedding(m.name, text, size)
            emb: Any = vec
            if fmt.lower() == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "embedding": emb, "index": i})
        tokens = sum(max(1, _count_tokens(t)) for t in inputs)
        return _json(
            {
                "object": "list",
                "data": data,
                "model": requested,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            content_type=_OPENAI_JSON,
        )

    async def _v1_models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": int(m.modified_at.timestamp()),
                "owned_by": owned_by(m.name),
            }
            for m in self._all()
        ]
        # Go marshals the nil slice of an empty list as null
        return _json({"object": "list", "data": data or None}, content_type=_OPENAI_JSON)

    async def _v1_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        m = self._get(name)
        if m is None:
            return openai_error(404, f"model '{normalize_name(name)}' not found")
        return _json(
            {
                "id": name,
                "object": "model",
                "created": int(m.modified_at.timestamp()),
                "owned_by": owned_by(name),
            },
            content_type=_OPENAI_JSON,
        )


async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    fake: FakeOllama | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[FakeOllama], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGINT/SIGTERM when running in the main thread)."""
    fake = fake or FakeOllama()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    await fake.start(host, port)
    try:
        if on_ready is not None:
            on_ready(fake)
        await stop.wait()
    finally:
        await fake.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aib.devtools.fake_ollama", description="Contract fake of Ollama."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", dest="models", help="installed model (repeatable)")
    parser.add_argument("--version", dest="ollama_version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    fake = FakeOllama(args.models, version=args.ollama_version)

    def ready(f: FakeOllama) -> None:
        print(f"fake ollama listening on {f.base_url}", flush=True)

    asyncio.run(serve(args.host, args.port, fake=fake, on_ready=ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
