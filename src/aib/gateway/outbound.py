"""Outbound adapters: requests to providers that do not take the OpenAI request as it is.

The request path (``Proxy._attempt``) calls :func:`prepare` only for a provider with an adapter
(``ProviderInfo.wire``: Ollama's or Anthropic's native API) or a request from a front door
(:class:`aib.doors.base.DoorPayload`); the plain OpenAI pass-through never comes here. :func:`prepare`
returns what to send (path, body, extra headers) and a wrapper for the answer, or None for the plain
path, or a :class:`GatewayError` (a 400 naming the field) when the request cannot go to this provider.

Three ways out:

* **same API** - a front door's request to a provider that speaks the door's API (Anthropic door ->
  Anthropic, Ollama door -> Ollama, Responses door -> ``responses_api``): the request as the client
  sent it (model rewritten, route params and per-model settings added where unset); the answer goes
  back in the door's shape (``Native.raw``), framed so the request path can stream it (``data: [DONE]``
  after the API's last event, Ollama lines as SSE events) and with its token counts read;
* **translated** - an OpenAI-shaped request to Ollama's or Anthropic's native API: the codecs of
  :mod:`aib.codecs` both ways, the answer read as if the upstream spoke OpenAI (JSON, SSE chunks,
  error envelopes);
* **plain** - everything else (a door's translated request to an OpenAI-compatible upstream).

The wrappers are :class:`~aib.gateway.httpclient.Response` look-alikes, so timeouts, retries,
breakers and streaming work as for any upstream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from aib.codecs import anthropic as anthropic_codec
from aib.codecs import ollama as ollama_codec
from aib.codecs.anthropic_stream import MessageStreamDecoder
from aib.codecs.common import JsonObj, content_text, event_fields, split_events
from aib.codecs.ollama_stream import NdjsonDecoder
from aib.codecs.openai_sse import DONE_EVENT
from aib.config.plan import Group, ModelSettings, ProviderInfo, Target
from aib.doors.base import Native
from aib.gateway.errors import GatewayError, envelope
from aib.gateway.httpclient import MAX_BODY, Response, UpstreamError
from aib.observe.records import Attempt, RequestRecord
from aib.routing.state import TargetStats

log = logging.getLogger("aib.gateway")

OLLAMA_PATHS = {"chat/completions": "api/chat", "completions": "api/generate", "embeddings": "api/embed"}
_NO_SETTINGS = ModelSettings()
# a prompt has at least this many characters per token (most text has 3-5): more characters than
# num_ctx * this cannot have fitted in the context
CHARS_PER_TOKEN_MAX = 6
CUT_FILL = 0.98  # a prompt that fills this share of num_ctx was (most likely) cut to fit


@dataclass(slots=True)
class Prepared:
    path: str  # relative to the provider's api_base
    data: bytes
    extra: bytes  # extra header lines
    wrap: Callable[[Response], Response]


def prepare(
    info: ProviderInfo,
    target: Target,
    group: Group,
    endpoint: str,
    payload: dict[str, Any],
    stream: bool,
    record: RequestRecord,
) -> Prepared | GatewayError | None:
    native: Native | None = getattr(payload, "native", None)
    if native is not None:
        native.raw = native.api in info.native_apis
        if native.raw:
            return _same_api(info, target, group, native, stream, record)
        if native.problems:
            return native.problems[0]
    if info.wire == "ollama":
        return _ollama(info, target, group, endpoint, payload, stream, record)
    if info.wire == "anthropic":
        return _anthropic(info, target, group, endpoint, payload, stream)
    return None


def refused(stats: TargetStats, attempt: Attempt, err: GatewayError) -> GatewayError:
    """An attempt that never left: this provider cannot take the request (no verdict on its health)."""
    stats.breaker.release()
    attempt.status, attempt.error, attempt.ok = err.status, err.message, True
    return err


def _with_params(payload: Mapping[str, Any], target: Target, group: Group) -> JsonObj:
    body = dict(payload)
    body["model"] = target.upstream
    for k, v in group.params.items():
        body.setdefault(k, v)
    return body


# --------------------------------------------------------------------------- the same API


def _same_api(
    info: ProviderInfo, target: Target, group: Group, native: Native, stream: bool, record: RequestRecord
) -> Prepared:
    body = dict(native.body)
    body["model"] = target.upstream
    params = group.params
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode("latin-1")) for k, v in native.headers.items())
    if native.api == "ollama":
        settings = info.model_settings.get(target.upstream, _NO_SETTINGS)
        options = dict(body["options"]) if isinstance(body.get("options"), dict) else {}
        for k, v in params.items():
            name = (
                "num_predict"
                if k == "max_tokens"
                else ollama_codec._TO_OPTION.get(k, k if k == "stop" else "")
            )
            if name:
                options.setdefault(name, v)
        if settings.context_length:
            options.setdefault("num_ctx", settings.context_length)
        if options:
            body["options"] = options
        if settings.keep_alive is not None:
            body.setdefault("keep_alive", settings.keep_alive)
        num_ctx = options.get("num_ctx") if isinstance(options.get("num_ctx"), int) else None
        watch = _CutWatch(info.name, record, num_ctx, _chars(body.get("messages") or body.get("prompt")))
        if stream:
            return Prepared(native.path, orjson.dumps(body), extra, lambda r: _NdjsonAsSse(r, watch))
        return Prepared(native.path, orjson.dumps(body), extra, lambda r: _OllamaRawPlain(r, watch))
    if native.api == "anthropic":
        for k, v in params.items():
            body.setdefault("stop_sequences" if k == "stop" else k, v)
        return Prepared("messages", orjson.dumps(body), extra, lambda r: _RawSse(r, record, _ANTHROPIC_END))
    for k, v in params.items():  # responses
        body.setdefault("max_output_tokens" if k == "max_tokens" else k, v)
    return Prepared("responses", orjson.dumps(body), extra, lambda r: _RawSse(r, record, _RESPONSES_END))


# --------------------------------------------------------------------------- translated: Ollama


def _ollama(
    info: ProviderInfo,
    target: Target,
    group: Group,
    endpoint: str,
    payload: dict[str, Any],
    stream: bool,
    record: RequestRecord,
) -> Prepared | GatewayError:
    body = _with_params(payload, target, group)
    settings = info.model_settings.get(target.upstream, _NO_SETTINGS)
    num_ctx, keep = settings.context_length, settings.keep_alive
    try:
        if endpoint == "chat/completions":
            out = ollama_codec.chat_from_openai(body, stream, num_ctx, keep)
            chars = _chars(body.get("messages"))
        elif endpoint == "completions":
            out = ollama_codec.generate_from_openai(body, stream, num_ctx, keep)
            chars = _chars(out.get("prompt"))
        else:
            out = ollama_codec.embed_request_from_openai(body, num_ctx, keep)
            chars = 0
    except GatewayError as err:
        return err
    watch = _CutWatch(info.name, record, num_ctx, chars)
    kind = endpoint
    encoding = body.get("encoding_format") if isinstance(body.get("encoding_format"), str) else None
    return Prepared(
        OLLAMA_PATHS[endpoint],
        orjson.dumps(out),
        b"",
        lambda r: _OllamaAnswer(r, kind, stream, watch, encoding),
    )


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_chars(m.get("content")) if isinstance(m, dict) else _chars(m) for m in content)
    return len(content_text(content)) if content is not None else 0


class _CutWatch:
    """Tells, from Ollama's ``prompt_eval_count``, whether the prompt was cut to fit ``num_ctx``."""

    __slots__ = ("chars", "num_ctx", "provider", "record")

    def __init__(self, provider: str, record: RequestRecord, num_ctx: int | None, chars: int) -> None:
        self.provider, self.record, self.num_ctx, self.chars = provider, record, num_ctx, chars

    def final(self, answer: Any) -> None:
        if not isinstance(answer, dict):
            return
        pec, ec = answer.get("prompt_eval_count"), answer.get("eval_count")
        record = self.record
        if isinstance(pec, int):
            record.prompt_tokens = pec
        if isinstance(ec, int):
            record.completion_tokens = ec
        n = self.num_ctx
        if not n or not isinstance(pec, int) or pec <= 0:
            return
        if pec >= CUT_FILL * n or self.chars > CHARS_PER_TOKEN_MAX * n:
            record.prompt_truncated = True
            log.warning(
                "request %s: %s evaluated %d prompt tokens with num_ctx %d (%d characters sent): the prompt "
                "was most likely cut to fit; raise context_length of %s in providers.yaml",
                record.request_id, self.provider, pec, n, self.chars, record.upstream or "the model",
            )  # fmt: skip


# --------------------------------------------------------------------------- translated: Anthropic


def _anthropic(
    info: ProviderInfo, target: Target, group: Group, endpoint: str, payload: dict[str, Any], stream: bool
) -> Prepared | GatewayError:
    if endpoint != "chat/completions":
        return GatewayError(
            400,
            f"{info.name} speaks Anthropic's Messages API, which has no {endpoint} endpoint; route this model elsewhere.",
            "invalid_request_error",
            "unsupported_endpoint",
        )
    try:
        out = anthropic_codec.request_from_openai(_with_params(payload, target, group), info.max_tokens)
    except GatewayError as err:
        return err
    return Prepared("messages", orjson.dumps(out), b"", lambda r: _AnthropicAnswer(r, stream))


# --------------------------------------------------------------------------- answer wrappers


class _Answer(Response):
    """An upstream answer read through a codec; the request path reads it like any Response."""

    __slots__ = ("_eof", "broken", "inner")

    def __init__(self, inner: Response, stream: bool) -> None:  # no super().__init__: every method is ours
        self.inner = inner
        self.status = inner.status
        self._eof = False
        self.broken: str | None = (
            None  # the upstream reported an error mid-stream: raised after what came before
        )
        ok_stream = stream and inner.status == 200
        self.headers = {"content-type": "text/event-stream" if ok_stream else "application/json"}
        retry = inner.headers.get("retry-after")
        if retry is not None:
            self.headers["retry-after"] = retry

    def plain(self, data: bytes) -> bytes:
        return data

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def end(self) -> bytes:
        return b""

    async def read(self, limit: int = MAX_BODY) -> bytes:
        return self.plain(await self.inner.read(limit))

    async def readany(self) -> bytes:
        while True:
            if self.broken is not None:
                message, self.broken, self._eof = self.broken, None, True
                self.inner.close()
                raise UpstreamError(message)
            if self._eof:
                return b""
            chunk = await self.inner.readany()
            if not chunk:
                self._eof = True
                out = self.end()
            else:
                out = self.feed(chunk)
            if out:
                return out

    def set_deadline(self, when: float | None) -> None:
        self.inner.set_deadline(when)

    def set_idle_timeout(self, seconds: float) -> None:
        self.inner.set_idle_timeout(seconds)

    def release(self) -> None:
        self.inner.release()

    def close(self) -> None:
        self.inner.close()


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


class _OllamaAnswer(_Answer):
    __slots__ = ("decoder", "encoding", "kind", "watch")

    def __init__(
        self, inner: Response, kind: str, stream: bool, watch: _CutWatch, encoding: str | None
    ) -> None:
        super().__init__(inner, stream)
        self.kind, self.watch, self.encoding = kind, watch, encoding
        self.decoder = NdjsonDecoder(
            kind == "chat/completions", int(time.time()), f"chatcmpl-{watch.record.request_id}"
        )

    def plain(self, data: bytes) -> bytes:
        obj = _loads(data)
        if self.status >= 400 or not isinstance(obj, dict):
            if self.status < 400:
                return data  # not JSON: the request path reports an unusable answer
            return envelope(
                ollama_codec.error_message(obj, self.status), "upstream_error", "upstream_rejected"
            )
        self.watch.final(obj)
        created, cid = int(time.time()), f"chatcmpl-{self.watch.record.request_id}"
        if self.kind == "chat/completions":
            out = ollama_codec.completion_from_chat(obj, created, cid)
        elif self.kind == "completions":
            out = ollama_codec.completion_from_generate(obj, created, cid)
        else:
            out = ollama_codec.embed_answer_to_openai(obj, self.encoding)
        return orjson.dumps(out)

    def feed(self, chunk: bytes) -> bytes:
        out = self.decoder.feed(chunk)
        if self.decoder.final is not None:
            self.watch.final(self.decoder.final)
        self.broken = self.decoder.error
        return out

    def end(self) -> bytes:
        return self.feed(b"\n")


class _AnthropicAnswer(_Answer):
    __slots__ = ("decoder",)

    def __init__(self, inner: Response, stream: bool) -> None:
        super().__init__(inner, stream)
        self.decoder = MessageStreamDecoder(int(time.time()))

    def plain(self, data: bytes) -> bytes:
        obj = _loads(data)
        if self.status >= 400:
            err = anthropic_codec.error_to_openai(self.status, obj)
            return orjson.dumps({"error": err})
        if not isinstance(obj, dict):
            return data
        return orjson.dumps(anthropic_codec.completion_from_message(obj, int(time.time())))

    def feed(self, chunk: bytes) -> bytes:
        out = self.decoder.feed(chunk)
        self.broken = self.decoder.error
        return out


# --------------------------------------------------------------------------- same-API answers

_ANTHROPIC_END = frozenset({b"message_stop"})
_RESPONSES_END = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})


class _RawSse(_Answer):
    """A same-API SSE stream (Anthropic, Responses), passed on event by event: ``data: [DONE]`` after
    its last event (the request path's sign of a complete stream), token counts read on the way."""

    __slots__ = ("ends", "record", "rest")

    def __init__(self, inner: Response, record: RequestRecord, ends: frozenset[bytes]) -> None:
        super().__init__(inner, True)
        self.headers["content-type"] = inner.headers.get("content-type", "application/json")
        self.record, self.ends, self.rest = record, ends, b""

    def plain(self, data: bytes) -> bytes:
        if self.status < 400:
            _usage(self.record, _loads(data))
        return data

    def feed(self, chunk: bytes) -> bytes:
        events, self.rest = split_events(self.rest + chunk)
        out = []
        for ev in events:
            name, data = event_fields(ev)
            kind = name
            if data is not None and (
                kind is None or kind in (b"message_start", b"message_delta", b"error") or kind in self.ends
            ):
                obj = _loads(data)
                if kind is None and isinstance(obj, dict):
                    kind = str(obj.get("type", "")).encode()
                if kind == b"error":
                    err = obj.get("error", obj) if isinstance(obj, dict) else {}
                    message = err.get("message") if isinstance(err, dict) else None
                    self.broken = str(message or "the upstream reported an error")
                    break
                _usage(self.record, obj)
            out.append(ev + b"\n\n")
            if kind in self.ends:
                out.append(DONE_EVENT)
        return b"".join(out)


def _usage(record: RequestRecord, obj: Any) -> None:
    """Token counts from an Anthropic message (or its stream events) or a Response."""
    if not isinstance(obj, dict):
        return
    holder = obj.get("message") or obj.get("response") or obj
    usage = holder.get("usage") if isinstance(holder, dict) else None
    if usage is None:
        usage = obj.get("usage")
    if not isinstance(usage, dict):
        return
    fresh = usage.get("input_tokens")
    if isinstance(fresh, int):
        cached = sum(
            v
            for k in ("cache_read_input_tokens", "cache_creation_input_tokens")
            if isinstance(v := usage.get(k), int)
        )
        record.prompt_tokens = fresh + cached
    out = usage.get("output_tokens")
    if isinstance(out, int):
        record.completion_tokens = out


class _NdjsonAsSse(_Answer):
    """An Ollama stream for the Ollama door: each line as one ``data:`` event, then ``[DONE]``."""

    __slots__ = ("rest", "watch")

    def __init__(self, inner: Response, watch: _CutWatch) -> None:
        super().__init__(inner, True)
        self.watch, self.rest = watch, b""

    def feed(self, chunk: bytes) -> bytes:
        lines = (self.rest + chunk).split(b"\n")
        self.rest = lines.pop()
        out = []
        for line in lines:
            if not line.strip():
                continue
            if line.startswith(b'{"error"'):
                self.broken = ollama_codec.error_message(_loads(line), 500)
                break
            out.append(self._line(line))
        return b"".join(out)

    def end(self) -> bytes:
        rest, self.rest = self.rest, b""
        return self.feed(rest + b"\n") if rest.strip() else b""

    def _line(self, line: bytes) -> bytes:
        if b'"done":true' in line or b'"done": true' in line:
            self.watch.final(_loads(line))
            return b"data: " + line + b"\n\n" + DONE_EVENT
        return b"data: " + line + b"\n\n"


class _OllamaRawPlain(_Answer):
    __slots__ = ("watch",)

    def __init__(self, inner: Response, watch: _CutWatch) -> None:
        super().__init__(inner, False)
        self.watch = watch

    def plain(self, data: bytes) -> bytes:
        if self.status < 400:
            self.watch.final(_loads(data))
        return data
