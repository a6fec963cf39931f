"""The request path: resolve, pick, call, fall back, stream back, record once.

One request body is parsed once (orjson); only ``model`` (and unset route ``params``) is rewritten;
response bytes pass through unchanged, stream chunks included. A failure before the first byte has
reached the client moves on to the next candidate; after it, the stream ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from aib.config.plan import Group, ProviderInfo, Resolution, RoutingPlan, Target
from aib.gateway import outbound
from aib.gateway.disconnect import DisconnectWatch, Notify
from aib.gateway.errors import GatewayError, bad_request, envelope, model_not_found, upstream_failed
from aib.gateway.httpclient import ConnectError, Response, UpstreamError
from aib.gateway.upstream import UpstreamPool
from aib.observe.records import Attempt, RequestRecord
from aib.providers import kind_for
from aib.routing import balance
from aib.routing.state import RuntimeState, TargetStats
from aib.secrets import Scrubber

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# what each endpoint must carry besides `model`, and the type it must have
REQUIRED: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "chat/completions": ("messages", list),
    "completions": ("prompt", (str, list)),
    "embeddings": ("input", (str, list)),
}
STREAMABLE = frozenset({"chat/completions", "completions"})
SSE_DONE = b"data: [DONE]"
WATCH_AFTER_S = 1.0  # a request still running after this long starts watching for a client hang-up
# answers up to this size are parsed whole to check them; larger ones (embeddings of many inputs run
# to megabytes, ~1 ms of CPU per MB to parse) are checked at their ends and only `usage` is parsed
FULL_PARSE_MAX = 16 * 1024
MAX_MODEL_CHARS = 256  # GatewaySettings.max_model_chars


class ClientGone(Exception):
    """The client closed the connection; nothing more can be sent."""


@dataclass(slots=True)
class Failure:
    error: GatewayError
    retriable: bool
    retry_after_s: float | None = None


@dataclass(slots=True)
class Exchange:
    """One attempt at one deployment: what the steps after the upstream's answer all need."""

    info: ProviderInfo
    group: Group
    target: Target
    attempt: Attempt
    record: RequestRecord
    watch: DisconnectWatch
    send: Send
    stats: TargetStats
    strip_usage: bool = False
    read_timeout_s: float = 120.0


def parse_request(
    endpoint: str, body: bytes, max_model_chars: int = MAX_MODEL_CHARS
) -> tuple[dict[str, Any], str, bool]:
    """Validate what the gateway itself needs; everything else is the upstream's to judge."""
    if not body:
        raise bad_request("The request body is empty; send a JSON object with at least `model`.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    model = payload.get("model")
    if model is None:
        raise bad_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' must be a non-empty string.", "model", "invalid_type")
    if len(model) > max_model_chars:
        check_model_length(model, max_model_chars)
    if not model.isprintable():  # a pattern copies it into the x-aib-model response header
        raise bad_request("'model' must not contain control characters.", "model", "invalid_value")
    field, kind = REQUIRED[endpoint]
    if field not in payload:
        raise bad_request(f"Missing required parameter: {field!r}.", field, "missing_required_parameter")
    if not isinstance(payload[field], kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise bad_request(f"{field!r} must be of type {names}.", field, "invalid_type")
    stream = payload.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean.", "stream", "invalid_type")
    if stream and endpoint not in STREAMABLE:
        raise bad_request(f"{endpoint} does not support streaming.", "stream", "invalid_value")
    return payload, model, bool(stream)


def check_model_length(model: str, limit: int) -> None:
    """A model name is a short identifier: a longer one is refused before it reaches a log or a lookup."""
    if len(model) > limit:
        raise bad_request(
            f"'model' is {len(model)} characters long; the limit is {limit} (AIB_MAX_MODEL_CHARS).",
            "model",
            "invalid_value",
        )


def _retry_after(headers: Any) -> float | None:
    raw = headers.get("retry-after") if headers is not None else None
    if not raw:
        return None
    try:
        return max(float(raw), 0.0)
    except ValueError:
        pass
    try:  # an HTTP date; anything else is ignored (never a reason to fail the request)
        when = email.utils.parsedate_to_datetime(raw)
    except (ValueError, TypeError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Proxy:
    """Holds what every request needs; :meth:`handle` serves one request."""

    def __init__(self, state: RuntimeState, pool: UpstreamPool, scrubber: Scrubber | None = None) -> None:
        self.state = state
        self.pool = pool
        # every upstream byte a client sees passes through it: an upstream may echo the key it got
        self.scrubber = scrubber or Scrubber()
        # the event loop, found once: asyncio.get_running_loop() makes a getpid() system call on
        # Python 3.11, which showed up as 10 % of the gateway's CPU under load
        self.loop: asyncio.AbstractEventLoop | None = None

    async def handle(
        self,
        plan: RoutingPlan,
        endpoint: str,
        payload: dict[str, Any],
        record: RequestRecord,
        receive: Receive,
        send: Send,
        on_disconnect: Notify | None = None,
    ) -> None:
        """Serve one request, already parsed (``record.model``, ``record.stream`` set); raises
        :class:`GatewayError` only before anything was sent.

        ``on_disconnect``: the server's ``aib.on_disconnect`` extension, when it offers one."""
        model, stream = record.model, record.stream
        res = plan.resolve(model)
        if res is None:
            raise model_not_found(model, plan.suggestions(model))
        record.route, record.matched_by, record.rule = res.group.name, res.matched_by, res.rule
        record.plan_version = plan.version
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        watch = DisconnectWatch(receive, WATCH_AFTER_S, loop, on_disconnect)
        try:
            await self._route(plan, res, endpoint, payload, stream, record, watch, send)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.absorb()
            record.client_disconnected = True
            raise ClientGone() from None
        finally:
            watch.close()

    async def _route(
        self,
        plan: RoutingPlan,
        res: Resolution,
        endpoint: str,
        payload: dict[str, Any],
        stream: bool,
        record: RequestRecord,
        watch: DisconnectWatch,
        send: Send,
    ) -> None:
        loop = self.loop
        assert loop is not None
        deadline = loop.time() + res.group.timeouts.total_s
        attempts_left = res.group.max_attempts
        last: Failure | None = None
        tried: set[str] = set()
        for pass_no in (0, 1):
            for group in res.chain:
                if pass_no == 0:
                    targets = balance.order(group, self.state)
                else:  # last resort: health said no, but nothing else was tried; breakers still count
                    targets = [t for t in group.targets if t.id not in tried]
                for target in targets:
                    if attempts_left <= 0 or loop.time() >= deadline:
                        break
                    if target.id in tried or target.provider not in plan.providers:
                        continue
                    info = plan.providers[target.provider]
                    if not info.enabled or not self.state.stats(target.id).breaker.acquire():
                        continue
                    tried.add(target.id)
                    attempts_left -= 1
                    failure = await self._attempt(
                        info, group, target, endpoint, payload, stream, deadline, record, watch, send
                    )
                    if failure is None:
                        return
                    last = failure
                    if not failure.retriable:
                        raise failure.error
            if tried or attempts_left <= 0:
                break
        if last is not None:
            raise last.error
        raise self._nothing_available(res.chain)

    def _nothing_available(self, chain: tuple[Group, ...]) -> GatewayError:
        now = time.monotonic()
        reasons = []
        wait: float | None = None
        for g in chain:
            for t in g.targets:
                st = self.state.targets.get(t.id)
                h = self.state.health.get(t.provider)
                if st is not None and not st.breaker.allows(now):
                    left = max(st.breaker.opened_until - now, 0.0)
                    wait = left if wait is None else min(wait, left)
                    reasons.append(f"{t.id}: circuit open ({st.breaker.last_error})")
                elif h is not None and not h.usable:
                    reasons.append(f"{t.provider}: down ({h.last_error})")
                else:
                    reasons.append(f"{t.id}: disabled")
        err = GatewayError(
            503,
            f"No deployment can take this request now: {'; '.join(reasons)}. GET /health shows provider states.",
            "service_unavailable",
            "no_healthy_deployment",
        )
        if wait is not None:
            err.headers["retry-after"] = str(max(int(wait + 0.999), 1))
        return err

    async def _attempt(
        self,
        info: ProviderInfo,
        group: Group,
        target: Target,
        endpoint: str,
        payload: dict[str, Any],
        stream: bool,
        deadline: float,
        record: RequestRecord,
        watch: DisconnectWatch,
        send: Send,
    ) -> Failure | None:
        loop = self.loop
        assert loop is not None
        stats = self.state.stats(target.id)
        attempt = Attempt(target.id, target.provider, target.upstream, group.name)
        record.attempts.append(attempt)
        prep: outbound.Prepared | None = None
        if info.wire is not None or type(payload) is not dict:  # an outbound adapter or a front door
            got = outbound.prepare(info, target, group, endpoint, payload, stream, record)
            if isinstance(got, GatewayError):
                return Failure(outbound.refused(stats, attempt, got), True)
            prep = got
        strip_usage = False
        if prep is None:  # the plain OpenAI pass-through
            body = dict(payload)
            body["model"] = target.upstream
            for k, v in group.params.items():
                body.setdefault(k, v)
            if stream and kind_for(info.type).stream_usage:
                opts = body.get("stream_options")
                if not (isinstance(opts, dict) and opts.get("include_usage")):
                    body["stream_options"] = {
                        **(opts if isinstance(opts, dict) else {}),
                        "include_usage": True,
                    }
                    strip_usage = True
            data = orjson.dumps(body)
            head = self.pool.head(info, endpoint)
        else:
            data = prep.data
            head = self.pool.head(info, prep.path)
        pool = self.pool.http(info)
        extra = b"x-request-id: %s\r\n" % kind_for(info.type).upstream_request_id(record.request_id).encode()
        if prep is not None:
            extra += prep.extra
        t = group.timeouts
        start = loop.time()  # deadlines: the loop's clock
        t0 = time.perf_counter()  # durations: uvloop's loop.time() has only millisecond resolution
        stats.inflight += 1
        stats.requests += 1
        resp: Response | None = None
        try:
            try:
                plain = not stream
                # one timer per attempt, on the upstream connection: the first byte's limit, then
                # (whole answers) the request deadline
                first_by = start + max(min(t.first_byte_s, deadline - start), 0.001)
                resp = await pool.request(head, data, extra, t.connect_s, first_by)
                if prep is not None:
                    resp = prep.wrap(resp)
                first = await resp.readany() if stream and resp.status == 200 else b""
                attempt.ttfb_s = time.perf_counter() - t0
                attempt.status = resp.status
                if plain or resp.status != 200:
                    plain = True
                    resp.set_deadline(max(deadline, loop.time() + 0.001))
                    rest = await resp.read()
                x = Exchange(
                    info, group, target, attempt, record, watch, send, stats, strip_usage, t.first_byte_s
                )
                if plain:
                    return await self._finish_plain(x, resp, rest)
                return await self._finish_stream(x, resp, first)
            except TimeoutError:
                what = "first byte" if attempt.ttfb_s is None else "end of response"
                return _fail(
                    stats,
                    attempt,
                    504,
                    f"{info.name} did not answer within the time limit ({what})",
                    "upstream_timeout",
                )
            except ConnectError as exc:
                return _fail(
                    stats, attempt, 502, f"{info.name} is unreachable: {exc}", "upstream_unreachable"
                )
            except UpstreamError as exc:
                return _fail(
                    stats,
                    attempt,
                    502,
                    f"{info.name} broke the connection: {exc}",
                    "upstream_connection_error",
                )
            except asyncio.CancelledError:
                stats.breaker.release()  # no verdict on the upstream: the client left (or shutdown)
                attempt.error = "client disconnected" if watch.gone else "cancelled"
                raise
        finally:
            stats.inflight -= 1
            attempt.duration_s = time.perf_counter() - t0
            record.upstream_s += attempt.duration_s
            if resp is not None:
                resp.release()

    async def _finish_plain(self, x: Exchange, resp: Response, data: bytes) -> Failure | None:
        info, attempt, record, stats = x.info, x.attempt, x.record, x.stats
        data = self.scrubber.bytes(data)
        status = resp.status
        ctype = resp.headers.get("content-type", "")
        if status in x.group.retry_on_status or status >= 500:
            detail = _error_detail(data)
            retry_after = _retry_after(resp.headers) if status in (429, 503) else None
            code = "upstream_rate_limited" if status == 429 else "upstream_error"
            fail = _fail(
                stats,
                attempt,
                502 if status != 429 else 429,
                f"{info.name} answered {status}{detail}",
                code,
                retry_after,
            )
            if retry_after is not None and status == 429:
                fail.error.headers["retry-after"] = str(max(int(retry_after + 0.999), 1))
            return fail
        parsed: Any = None
        if "json" in ctype:
            with contextlib.suppress(orjson.JSONDecodeError):
                parsed = orjson.loads(data) if status >= 400 or len(data) <= FULL_PARSE_MAX else _skim(data)
        if status >= 400:
            # the upstream judged the request itself bad: pass its answer on, not the breaker's business
            stats.breaker.release()
            attempt.error = f"{info.name} answered {status}{_error_detail(data)}"
            attempt.ok = True
            if not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
                data = envelope(
                    f"{info.name} rejected the request ({status}){_error_detail(data)}",
                    "invalid_request_error",
                    "upstream_rejected",
                )
            await self._respond(x, status, data)
            return None
        if not isinstance(parsed, dict):
            what = "non-JSON" if "json" in ctype else f"content type {ctype or 'none'!r}"
            return _fail(
                stats, attempt, 502, f"{info.name} sent an unusable answer ({what})", "upstream_bad_response"
            )
        stats.breaker.success()
        if attempt.ttfb_s is not None:
            stats.observe_ttfb(attempt.ttfb_s)
        attempt.ok = True
        usage = parsed.get("usage")
        if isinstance(usage, dict) and "prompt_tokens" in usage:  # (a same-API answer's: read by outbound)
            record.prompt_tokens = usage.get("prompt_tokens")
            record.completion_tokens = usage.get("completion_tokens")
        await self._respond(x, status, data)
        return None

    async def _respond(self, x: Exchange, status: int, data: bytes) -> None:
        record, target, send = x.record, x.target, x.send
        x.watch.close()  # the response completes with this send; from here on a "disconnect" is the end
        if record.request_body is not None:  # body logging is on (streams keep only the request)
            record.response_body = data
        record.status = status
        record.provider, record.upstream = target.provider, target.upstream
        headers = self._headers(b"application/json", target, record)
        headers.append((b"content-length", b"%d" % len(data)))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            record.ttfb_s = time.time() - record.started_at
            await send({"type": "http.response.body", "body": data})
        except OSError:  # the client went away; the upstream's work is done, nothing to retry
            record.client_disconnected = True

    def _headers(self, ctype: bytes, target: Target, record: RequestRecord) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", ctype),
            (b"x-request-id", record.request_id.encode()),
            (b"x-aib-provider", target.provider.encode()),
            (b"x-aib-model", target.upstream.encode()),
            # every attempt before this one failed (a stream's own attempt is not marked ok yet)
            (b"x-aib-fallbacks", str(len(record.attempts) - 1).encode()),
        ]

    async def _finish_stream(self, x: Exchange, resp: Response, first: bytes) -> Failure | None:
        info, target, attempt, record, watch, send, stats = (
            x.info,
            x.target,
            x.attempt,
            x.record,
            x.watch,
            x.send,
            x.stats,
        )
        ctype = resp.headers.get("content-type", "")
        if "text/event-stream" not in ctype or not first:
            what = f"content type {ctype or 'none'!r}" if first else "an empty stream"
            return _fail(
                stats,
                attempt,
                502,
                f"{info.name} answered a streaming request with {what}",
                "upstream_bad_response",
            )
        if attempt.ttfb_s is not None:
            stats.observe_ttfb(attempt.ttfb_s)
        record.status = 200
        record.provider, record.upstream = target.provider, target.upstream
        headers = self._headers(b"text/event-stream", target, record)
        headers.append((b"cache-control", b"no-cache"))
        watch.start()  # a stream can run for minutes: notice a client that hangs up
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        except OSError:
            record.client_disconnected = True
            stats.breaker.release()
            resp.close()
            return None
        # from here on the client has bytes: no retry, whatever happens
        try:
            await self._pump(x, resp, first)
        except asyncio.CancelledError:
            record.client_disconnected = watch.gone
            stats.breaker.release()
            attempt.error = "client disconnected" if watch.gone else "cancelled"
            resp.close()  # drop the upstream connection: the upstream stops generating
            raise
        return None

    async def _pump(self, x: Exchange, resp: Response, first: bytes) -> None:
        """Forward whole SSE events as they arrive; bytes are not re-encoded.

        Only complete events are sent (a chunk may end mid-event), so an error event appended after a
        broken stream always starts on an event boundary.
        """
        info, attempt, record, send, stats = x.info, x.attempt, x.record, x.send, x.stats
        strip_usage, read_timeout_s = x.strip_usage, x.read_timeout_s
        scrub = self.scrubber.bytes
        pending = b""
        done = False
        error: str | None = None
        chunk = first
        resp.set_idle_timeout(read_timeout_s)
        try:
            while True:
                data = pending + chunk if pending else chunk
                cut = _last_event_end(data)
                if cut == 0:
                    pending = data
                else:
                    out, pending = data[:cut], data[cut:]
                    if b'"usage":{' in out or b'"usage": {' in out:  # not the `"usage": null` of every chunk
                        out = _take_usage(out, record, strip_usage)
                    if not done and SSE_DONE in out:
                        done = True
                    out = scrub(out)
                    if out:
                        if record.ttfb_s is None:
                            record.ttfb_s = time.time() - record.started_at
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                chunk = await resp.readany()
                if not chunk:
                    break
        except TimeoutError:
            error = f"{info.name} stopped sending mid-stream (nothing for {read_timeout_s:g}s)"
        except UpstreamError as exc:
            error = f"{info.name} broke the stream: {exc}"
        except OSError:  # the client went away while we were sending
            record.client_disconnected = True
            stats.breaker.release()
            resp.close()
            return
        tail = b""
        if error is None and pending.strip():
            tail = scrub(pending) + b"\n\n"  # a last event without its blank line
            done = done or SSE_DONE in pending
        if error is None and not done:
            error = f"{info.name} ended the stream before [DONE]"
        if error is not None:
            attempt.error = error
            record.error, record.error_code = error, "stream_interrupted"
            stats.failures += 1
            stats.breaker.failure(error)
            tail += b"data: " + envelope(error, "upstream_error", "stream_interrupted") + b"\n\n"
        else:
            attempt.ok = True
            stats.breaker.success()
        x.watch.close()  # the last send completes the response
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": tail, "more_body": False})


def _fail(
    stats: TargetStats,
    attempt: Attempt,
    status: int,
    message: str,
    code: str,
    retry_after: float | None = None,
    retriable: bool = True,
) -> Failure:
    """Record a failed attempt (breaker, counters) and say what the client gets if nothing else works."""
    attempt.error = message
    stats.failures += 1
    stats.breaker.failure(message, retry_after)
    return Failure(upstream_failed(status, message, code), retriable, retry_after)


def _last_event_end(data: bytes) -> int:
    """Index just past the last complete SSE event in ``data`` (0 when there is none)."""
    a = data.rfind(b"\n\n")
    b = data.rfind(b"\r\n\r\n")
    return max(a + 2 if a >= 0 else 0, b + 4 if b >= 0 else 0)


def _take_usage(out: bytes, record: RequestRecord, strip: bool) -> bytes:
    """Read token usage from the stream's usage event; drop that event when the client did not ask."""
    kept = []
    for event in out.split(b"\n\n"):
        if event.startswith(b"data: {") and (b'"usage":{' in event or b'"usage": {' in event):
            try:
                obj = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                kept.append(event)
                continue
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict):
                record.prompt_tokens = usage.get("prompt_tokens")
                record.completion_tokens = usage.get("completion_tokens")
                if strip and not obj.get("choices"):
                    continue
                if strip:  # usage riding on a content chunk: keep the chunk, hide the usage
                    obj["usage"] = None
                    event = b"data: " + orjson.dumps(obj)
        kept.append(event)
    return b"\n\n".join(kept)


def _skim(data: bytes) -> dict[str, Any] | None:
    """A large JSON answer: an object (first and last bytes), with ``usage`` read from its last
    occurrence; None when it is not an object. The bytes are passed on unchanged either way."""
    body = data.strip()
    if not (body.startswith(b"{") and body.endswith(b"}")):
        return None
    out: dict[str, Any] = {}
    at = body.rfind(b'"usage":')  # a key (a value "usage" has no colon after it)
    if at < 0:
        at = body.rfind(b'"usage"')
    start = body.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return out
    depth, i, in_str = 0, start, False
    while i < len(body):  # the usage object is small: a byte loop is fine
        c = body[i]
        if in_str:
            if c == 0x5C:  # backslash: skip the escaped byte
                i += 1
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x7B:
            depth += 1
        elif c == 0x7D:
            depth -= 1
            if depth == 0:
                with contextlib.suppress(orjson.JSONDecodeError):
                    out["usage"] = orjson.loads(body[start : i + 1])
                break
        i += 1
    return out


def _error_detail(data: bytes) -> str:
    if not data:
        return ""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data[:200].decode("utf-8", "replace").strip()
        return f": {text}" if text else ""
    if isinstance(parsed, dict):
        err = parsed.get("error")
        msg = (
            err.get("message")
            if isinstance(err, dict)
            else err
            if isinstance(err, str)
            else parsed.get("detail")
        )
        if msg:
            return f": {str(msg)[:300]}"
    return ""
