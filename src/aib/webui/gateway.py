"""The UI's side of the gateway: the official ``openai`` client for models and chat, stdlib HTTP for /health.

The UI is a client of the gateway like any other. Everything here returns data or raises
:class:`GatewayProblem`, whose message is a sentence for the page (never a traceback):
:func:`explain` turns any exception of the client into one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import openai
import orjson

from aib.clientauth import client_key, headers_for

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger("aib.webui")

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 120.0
POLL_S = 0.05  # how often a waiting stream looks at its stop flag  # a slow model on CPU may think for a while before its first token


class GatewayProblem(Exception):
    """Something went wrong talking to the gateway; ``str(exc)`` is a sentence for the user."""


def root_url(url: str) -> str:
    """``http://host:4000``, ``http://host:4000/``, ``http://host:4000/v1`` -> ``http://host:4000``."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not a gateway URL: use e.g. http://127.0.0.1:4000")
    return url


def _error_message(body: object, fallback: str) -> str:
    """The ``message`` of an OpenAI error envelope (inner or outer shape), else ``fallback``."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str) and inner["message"]:
            return str(inner["message"])
        if isinstance(inner, str) and inner:
            return inner
    return fallback


def explain(exc: BaseException, gateway: str, model: str | None = None) -> str:
    """One sentence saying what went wrong and, where we know, what to do."""
    about = f" for {model!r}" if model else ""
    if isinstance(exc, openai.APITimeoutError):
        return (
            f"The gateway at {gateway} did not answer in time{about}: the model may be overloaded or stuck."
        )
    if isinstance(exc, openai.APIConnectionError | GatewayDown):
        return f"The gateway at {gateway} does not answer: is it running? (start it with `aib serve`)"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _error_message(exc.body, exc.message)
        if status == 404 and (exc.code == "model_not_found" or "model" in message.lower()):
            return f"Model not found: {message}"
        if status == 404:
            return f"The gateway at {gateway} answered 404 ({message}): is this the URL of an aib gateway?"
        if status in (401, 403):
            return f"The gateway refused the request{about} ({status}): {message}"
        if status == 503:
            return f"No provider is available{about}: {message}"
        if status >= 500:
            return f"The provider failed{about} ({status}): {message}"
        return f"The gateway rejected the request{about} ({status}): {message}"
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return f"The provider failed mid-reply{about}: {_error_message(exc.body, exc.message)}"
    log.warning("unexpected error talking to the gateway", exc_info=exc)
    return f"Unexpected error{about}: {type(exc).__name__}: {exc}"


class GatewayDown(OSError):
    pass


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET ``url`` -> (status, parsed JSON or None); :class:`GatewayDown` when nothing answers."""
    req = urllib.request.Request(
        url, headers={"accept": "application/json", **headers_for(urlsplit(url).path)}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise GatewayDown(str(getattr(exc, "reason", exc))) from None
    try:
        return status, orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return status, None


@dataclass
class ReplyMeta:
    """Where one reply went and how long it took (from headers, timings and usage)."""

    model: str
    provider: str | None = None
    upstream: str | None = None
    request_id: str | None = None
    fallbacks: int = 0
    ttft_s: float | None = None  # request sent -> first content token
    total_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool = False  # no usage from the provider: counted content chunks instead
    finish_reason: str | None = None
    error: str | None = None
    stopped: bool = False

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of generation (after the first token)."""
        n, total, ttft = self.completion_tokens, self.total_s, self.ttft_s
        if not n or total is None or ttft is None or total - ttft <= 0:
            return None
        return n / (total - ttft)


@dataclass
class Cancel:
    """Set by a stop button from another thread: the stream stops and its connection is closed."""

    event: threading.Event = field(default_factory=threading.Event)
    _closers: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self) -> None:
        self.event.set()
        with self._lock:
            closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:  # closing a stream another thread reads may complain; it is closed anyway
                log.debug("closing a stopped stream", exc_info=True)

    def is_set(self) -> bool:
        return self.event.is_set()

    def on_cancel(self, close: Any) -> None:
        with self._lock:
            self._closers.append(close)
        if self.event.is_set():
            self.set()


class ChatStream:
    """One streamed chat completion: iterate for text deltas; :attr:`meta` is complete afterwards."""

    def __init__(
        self,
        client: openai.OpenAI,
        gateway: str,
        model: str,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cancel: Cancel | None = None,
    ) -> None:
        self.client, self.gateway, self.messages = client, gateway, messages
        self.temperature, self.max_tokens = temperature, max_tokens
        self.cancel = cancel or Cancel()
        self.meta = ReplyMeta(model=model)
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they arrive. The HTTP exchange runs in a helper thread so that a stop takes
        effect at once, even while the gateway has not answered yet; the helper closes the connection
        as soon as it can (at the latest when the first byte arrives)."""
        meta, t0, chunks = self.meta, time.perf_counter(), 0
        q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        worker = threading.Thread(target=self._pump, args=(q, t0), name=f"aib-ui-{meta.model}", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    text = q.get(timeout=POLL_S)
                except queue.Empty:
                    if self.cancel.is_set():
                        break
                    continue
                if text is None:
                    break
                if meta.ttft_s is None:
                    meta.ttft_s = time.perf_counter() - t0
                chunks += 1
                self.text += text
                yield text
        finally:
            if worker.is_alive():  # stopped, or the consumer went away: end the exchange too
                self.cancel.set()
            meta.total_s = time.perf_counter() - t0
            meta.stopped = self.cancel.is_set()
            if meta.completion_tokens is None and chunks:
                meta.completion_tokens, meta.tokens_estimated = chunks, True

    def _pump(self, q: queue.SimpleQueue[str | None], t0: float) -> None:
        """The HTTP exchange (helper thread): headers and usage into :attr:`meta`, text into ``q``."""
        meta = self.meta
        try:
            with self.client.chat.completions.with_streaming_response.create(
                model=meta.model,
                messages=cast("list[ChatCompletionMessageParam]", self.messages),
                stream=True,
                stream_options={"include_usage": True},
                temperature=openai.omit if self.temperature is None else self.temperature,
                max_tokens=int(self.max_tokens) if self.max_tokens else openai.omit,
            ) as resp:
                self.cancel.on_cancel(resp.close)
                headers = resp.headers
                meta.provider = headers.get("x-aib-provider")
                meta.upstream = headers.get("x-aib-model")
                meta.request_id = headers.get("x-request-id")
                meta.fallbacks = int(headers.get("x-aib-fallbacks") or 0)
                for chunk in resp.parse():
                    if self.cancel.is_set():
                        break
                    if chunk.usage is not None:
                        meta.prompt_tokens = chunk.usage.prompt_tokens
                        meta.completion_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            meta.finish_reason = choice.finish_reason
                        if choice.delta and choice.delta.content:
                            q.put(choice.delta.content)
        except Exception as exc:
            if not self.cancel.is_set():  # closing the connection under the reader ends it with an error
                meta.error = explain(exc, self.gateway, meta.model)
        finally:
            q.put(None)


def build_messages(
    system: str | None, history: list[dict[str, str]], user: str | None = None
) -> list[dict[str, str]]:
    """The messages to send: the system prompt (when given), the turns so far, the new user turn."""
    out: list[dict[str, str]] = []
    if system and system.strip():
        out.append({"role": "system", "content": system.strip()})
    out.extend({"role": m["role"], "content": m["content"]} for m in history)
    if user is not None:
        out.append({"role": "user", "content": user})
    return out


class GatewayClient:
    """The gateway as the UI sees it: models, chat streams, health. Thread-safe; one per UI."""

    def __init__(self, url: str, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.url = root_url(url)
        self.client = openai.OpenAI(
            base_url=self.url + "/v1",
            # a client key when the gateway wants one ($AIB_API_KEY, else $AIB_ADMIN_KEY); the
            # gateway holds the providers' keys itself
            api_key=client_key() or "aib-ui",
            max_retries=0,  # a failure must show, not hide behind retries
            timeout=openai.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        )

    def close(self) -> None:
        self.client.close()

    def models(self) -> list[str]:
        """Every name the gateway lists on ``/v1/models``, in its order."""
        return [m for m, _ in self.catalog()]

    def catalog(self) -> list[tuple[str, str]]:
        """(name, ``owned_by``) of every model on ``/v1/models``, in its order: the gateway names the
        provider of a single-provider model there ("aib:group" for several)."""
        try:
            return [(m.id, str(m.owned_by or "")) for m in self.client.models.list().data]
        except Exception as exc:
            raise GatewayProblem(explain(exc, self.url)) from None

    def chat(self, model: str, messages: list[dict[str, str]], **kw: Any) -> ChatStream:
        return ChatStream(self.client, self.url, model, messages, **kw)

    def health(self) -> dict[str, Any]:
        """The gateway's ``/health`` report (200 or 503 both carry it)."""
        try:
            status, data = get_json(self.url + "/health")
        except GatewayDown as exc:
            raise GatewayProblem(explain(exc, self.url)) from None
        if not isinstance(data, dict) or "providers" not in data:
            raise GatewayProblem(
                f"{self.url}/health answered {status} without a health report: is this an aib gateway?"
            )
        return data
