"""The LiteLLM SDK adapter: a small OpenAI-compatible server in front of the LiteLLM SDK.

The gateway runs it (:mod:`aib.engines.sdk_sidecar`) for providers of type ``litellm_sdk``, with the
Python of ``.venv-litellm`` (``make litellm``), bound to the providers' loopback address::

    .venv-litellm/bin/python -m aib.engines.sdk_adapter --host 127.0.0.1 --port 4010

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` (also without ``/v1``) call
``litellm.acompletion`` / ``atext_completion`` / ``aembedding`` with the provider's LiteLLM model
string, its key and ``api_base``; a stream goes out as OpenAI SSE ``data:`` events ending with
``data: [DONE]``; an SDK exception becomes an OpenAI error envelope (:mod:`aib.engines.sdk_calls`).
Each request carries its provider's options in the ``x-aib-litellm`` header and the key as a bearer
token (:mod:`aib.config.litellm_sdk`): the adapter holds no configuration and no API key. It answers
only the gateway that started it (the ``x-aib-adapter-token`` from ``$AIB_SDK_ADAPTER_TOKEN``), except
``/health/live`` and ``/health/ready``.

``GET /health`` answers 200 once LiteLLM is loaded and the provider's options are usable (503 while
LiteLLM loads, for about 5 s, and for good when it is not installed: "LiteLLM SDK adapter not
installed: run `make litellm`"; 401 when the provider's key variable is unset; 400 when LiteLLM does
not know the model string's provider). It never calls the upstream. ``/health/live`` answers as soon
as the port is open, ``/health/ready`` once LiteLLM is loaded or known to be missing.
``GET /v1/models`` lists the provider's configured models.

A client that hangs up cancels its LiteLLM call (the upstream stops generating). Keys never reach
the log: messages are scrubbed and LiteLLM's own loggers are silenced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hmac
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from aib.config.litellm_sdk import CONFIG_HEADER, NOT_INSTALLED, TOKEN_ENV, TOKEN_HEADER, SdkOptions
from aib.engines.sdk_calls import AdapterError, build_kwargs, dump, error_from_exception, scrub, sse_event
from aib.engines.sdk_wire import (
    ClientGone,
    Receive,
    Scope,
    Send,
    bearer,
    event,
    header,
    options,
    read_body,
    rid,
    send_json,
    wait_disconnect,
)

log = logging.getLogger("aib.sdk_adapter")
ENDPOINTS = ("chat/completions", "completions", "embeddings")
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY_DISABLED": "true"}
SERVICE = "aib-sdk-adapter"
_QUIET_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore")


def load_litellm() -> Any:
    """Import LiteLLM, offline and quiet."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import litellm  # only in .venv-litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.turn_off_message_logging = True
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


class Adapter:
    """The ASGI application. ``litellm``: the module (tests pass a stand-in); None loads it at startup."""

    def __init__(
        self, litellm: Any = None, loader: Callable[[], Any] = load_litellm, token: str | None = None
    ) -> None:
        self.litellm = litellm
        self.token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.version: str | None = getattr(litellm, "version", None) if litellm is not None else None
        self.error: str | None = None  # why LiteLLM is not available (for good)
        self.settled = threading.Event()
        if litellm is not None:
            self.settled.set()
        self._loader = loader
        self.inflight = 0
        self.served = 0
        self.started = time.time()

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Import LiteLLM (in a thread: the port answers "starting" meanwhile)."""
        t0 = time.monotonic()
        try:
            self.litellm = self._loader()
            self.version = _version(self.litellm)
            log.info("LiteLLM %s loaded in %.1f s", self.version, time.monotonic() - t0)
        except Exception as exc:  # ImportError, or a broken install
            self.error = f"{NOT_INSTALLED} (importing litellm failed: {type(exc).__name__}: {exc})"
            log.error("%s", self.error)
        finally:
            self.settled.set()

    def _unavailable(self) -> AdapterError | None:
        if self.litellm is not None:
            return None
        if self.error is not None:
            return AdapterError(503, self.error, "service_unavailable", "adapter_not_installed")
        return AdapterError(
            503,
            "LiteLLM SDK adapter is starting (loading LiteLLM, about 5 s)",
            "service_unavailable",
            "adapter_starting",
            retry_after="2",
        )

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"].rstrip("/") or "/"
        method = scope["method"]
        endpoint = path.removeprefix("/v1").lstrip("/")
        if path not in ("/health/live", "/health/ready") and not self._trusted(scope):
            await send_json(
                send,
                AdapterError(
                    401,
                    f"this LiteLLM SDK adapter answers only the gateway that started it ({TOKEN_HEADER})",
                    "authentication_error",
                    "adapter_token",
                ),
            )
        elif endpoint in ENDPOINTS and method == "POST":
            await self._serve(endpoint, scope, receive, send)
        elif (
            path in ("/health", "/health/live", "/health/ready", "/v1/models", "/models") and method == "GET"
        ):
            handler = {
                "/health": self._health,
                "/health/live": self._live,
                "/health/ready": self._ready,
            }.get(path, self._models)
            await handler(scope, send)
        else:
            allowed = "POST" if endpoint in ENDPOINTS else "GET"
            known = endpoint in ENDPOINTS or path.startswith(("/health", "/v1/models", "/models"))
            await send_json(
                send,
                AdapterError(
                    405 if known else 404,
                    f"{method} {path}: the adapter serves POST /v1/chat/completions, /v1/completions, "
                    f"/v1/embeddings and GET /v1/models, /health" + (f" (use {allowed})" if known else ""),
                    "invalid_request_error",
                    "method_not_allowed" if known else "unknown_url",
                ),
            )

    def _trusted(self, scope: Scope) -> bool:
        given = header(scope, TOKEN_HEADER.encode()) or ""
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                if self.litellm is None and not self.settled.is_set():
                    threading.Thread(target=self.load, name="load-litellm", daemon=True).start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ inference

    async def _serve(self, endpoint: str, scope: Scope, receive: Receive, send: Send) -> None:
        self.inflight += 1
        try:
            body = await read_body(receive)
            handler = asyncio.ensure_future(self._call(endpoint, scope, body, send))
            watch = asyncio.ensure_future(wait_disconnect(receive))
            done, _ = await asyncio.wait({handler, watch}, return_when=asyncio.FIRST_COMPLETED)
            if handler not in done:  # the client hung up: stop the LiteLLM call (and the upstream)
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
                log.info("%s: client went away; LiteLLM call cancelled", rid(scope))
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            if handler in done:
                handler.result()
        except ClientGone:
            pass
        finally:
            self.inflight -= 1
            self.served += 1

    async def _call(self, endpoint: str, scope: Scope, raw: bytes, send: Send) -> None:
        key = bearer(scope)
        secrets = (key,) if key else ()
        try:
            opts = options(scope)
            body = self._body(raw)
            kwargs = build_kwargs(endpoint, body, opts, key)
        except AdapterError as err:
            await send_json(send, err)
            return
        lm = self.litellm
        fn = {"chat/completions": lm.acompletion, "completions": lm.atext_completion}.get(
            endpoint, lm.aembedding
        )
        stream = endpoint != "embeddings" and bool(kwargs.get("stream"))
        try:
            result = await fn(**kwargs)
            chunks = result.__aiter__() if stream else None
            first = await anext(chunks, None) if chunks is not None else None
        except Exception as exc:
            failure = error_from_exception(exc, opts, secrets)
            log.warning(
                "%s %s %s -> %d %s",
                rid(scope),
                opts.provider,
                body["model"],
                failure.status,
                failure.message,
            )
            await send_json(send, failure)
            return
        if chunks is None:
            data = dump(result)
            data["model"] = body["model"]
            await send_json(send, 200, orjson.dumps(data))
        else:
            await self._stream(scope, send, opts, secrets, result, chunks, first)

    async def _stream(
        self,
        scope: Scope,
        send: Send,
        opts: SdkOptions,
        secrets: tuple[str, ...],
        result: Any,
        chunks: Any,
        first: Any,
    ) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            if first is not None:
                await event(send, sse_event(first))
            async for chunk in chunks:
                await event(send, sse_event(chunk))
        except Exception as exc:  # after the first byte: an error event, and no [DONE]
            failure = error_from_exception(exc, opts, secrets)
            log.warning("%s %s stream broke: %s", rid(scope), opts.provider, failure.message)
            await send({"type": "http.response.body", "body": b"data: " + failure.body() + b"\n\n"})
            return
        finally:  # also when cancelled (the client hung up): close the upstream stream
            close = getattr(result, "aclose", None)
            if close is not None and asyncio.iscoroutinefunction(close):
                with contextlib.suppress(Exception):
                    await close()
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    def _body(self, raw: bytes) -> dict[str, Any]:
        err = self._unavailable()
        if err is not None:
            raise err
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AdapterError(
                400, f"The body is not JSON: {exc}", "invalid_request_error", "invalid_json"
            ) from None
        if not isinstance(body, dict):
            raise AdapterError(
                400, "The body must be a JSON object.", "invalid_request_error", "invalid_json"
            )
        return body

    # ------------------------------------------------------------------ health and models

    async def _live(self, scope: Scope, send: Send) -> None:
        state = "loaded" if self.litellm is not None else "missing" if self.error else "loading"
        body = {"status": "alive", "service": SERVICE, "pid": os.getpid(), "inflight": self.inflight}
        body.update(litellm=state, litellm_version=self.version, served=self.served)
        await send_json(send, 200, orjson.dumps(body))

    async def _ready(self, scope: Scope, send: Send) -> None:
        ok = self.settled.is_set()
        body = {"status": "ready" if ok else "starting", "litellm_version": self.version, "error": self.error}
        await send_json(send, 200 if ok else 503, orjson.dumps(body))

    async def _health(self, scope: Scope, send: Send) -> None:
        try:
            err = self._unavailable()
            if err is not None:
                raise err
            opts = options(scope) if header(scope, CONFIG_HEADER.encode()) is not None else None
            body: dict[str, Any] = {"status": "ok", "service": SERVICE, "litellm_version": self.version}
            if opts is not None:
                self._check_opts(opts, bearer(scope))
                body["provider"] = opts.provider
        except AdapterError as err:
            await send_json(send, err)
            return
        await send_json(send, 200, orjson.dumps(body))

    def _check_opts(self, opts: SdkOptions, key: str | None) -> None:
        if opts.api_key_env and not key:
            raise AdapterError(
                401,
                f"no API key: the environment variable {opts.api_key_env} is not set where the gateway runs",
                "authentication_error",
                "missing_api_key",
            )
        for name in opts.listed_models() or ("model",):
            model = opts.litellm_model(name) or ""
            try:
                self.litellm.get_llm_provider(model)
            except Exception as exc:
                raise AdapterError(
                    400,
                    f"LiteLLM does not know the provider of {model!r} (litellm_model): "
                    f"{scrub(str(exc), ())[:200]}",
                    "invalid_request_error",
                    "unknown_litellm_provider",
                ) from None

    async def _models(self, scope: Scope, send: Send) -> None:
        names: tuple[str, ...] = ()
        with contextlib.suppress(AdapterError):
            names = options(scope).listed_models()
        data = [
            {"id": m, "object": "model", "created": int(self.started), "owned_by": "litellm"} for m in names
        ]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))


def _version(module: Any) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("litellm")
    except PackageNotFoundError:  # a module that is not the installed distribution (tests)
        return str(getattr(module, "version", "unknown"))


# --------------------------------------------------------------------------- the process


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or exit 3 with a message saying what to change."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        print(
            f"sdk-adapter: {host}:{port} {why}; give the litellm_sdk provider another loopback port in "
            "providers.yaml (base_url)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(3) from None
    sock.listen(128)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aib.engines.sdk_adapter",
        description="The LiteLLM SDK adapter: an OpenAI-compatible server in front of the LiteLLM SDK.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4010)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s sdk-adapter %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    import uvicorn

    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    app = Adapter()
    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
        log_config=None,
    )
    print(
        f"sdk-adapter (pid {os.getpid()}) listening on http://{args.host}:{port}", file=sys.stderr, flush=True
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
