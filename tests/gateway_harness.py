"""Test helpers for the native gateway (not a test module).

* :func:`write_config` / :func:`plan_from_yaml` - two YAML strings into a config folder, then a plan.
* :func:`running_gateway` - the real app under the real server (``aib.gateway.server.serve_app``, as
  ``aib serve`` runs it) in a background thread with its own event loop,
  on a free 127.0.0.1 port; yields a :class:`RunningGateway` (``base_url``, ``gateway``, ...).
* :class:`ScriptedUpstream` - an aiohttp server in a thread whose answers are scripted per request
  with :meth:`ScriptedUpstream.enqueue` (:class:`Reply`: status, headers, body, delays, SSE chunks,
  connection resets, garbage) and which records every inference request it received.
* :func:`fake_openai_process` - the instant fake (``aib.devtools.fake_openai``) as a child process.
* :class:`RecordingObserver` - collects the gateway's :class:`RequestRecord` of every request.
* :func:`stop_process` - stop a child process we started, by PID (SIGTERM, then SIGKILL).

Everything binds to 127.0.0.1 and everything started here is stopped here.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import uvloop
from aiohttp import web

from aib.config.compile import build_plan
from aib.config.load import LoadedConfig
from aib.config.plan import RoutingPlan
from aib.devtools.llamacpp import free_port
from aib.gateway.app import Gateway, create_app
from aib.gateway.server import serve_app
from aib.gateway.settings import GatewaySettings
from aib.observe.records import RequestRecord
from config_support import write_files

HOST = "127.0.0.1"
T = TypeVar("T")


def dead_url() -> str:
    """A base URL where nothing listens (connection refused)."""
    return f"http://{HOST}:{free_port()}"


def wait_until(
    cond: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- config


def write_config(config_dir: Path, providers_yaml: str, mappings_yaml: str) -> Path:
    """Write both files (dedented) into ``config_dir``; return the folder."""
    return write_files(
        config_dir,
        textwrap.dedent(providers_yaml).strip() + "\n",
        textwrap.dedent(mappings_yaml).strip() + "\n",
    )


def plan_from_yaml(
    config_dir: Path, providers_yaml: str, mappings_yaml: str
) -> tuple[RoutingPlan, LoadedConfig]:
    """Write the files and build the plan (errors raise :class:`aib.config.errors.ConfigError`)."""
    plan, cfg, _warnings = build_plan(write_config(config_dir, providers_yaml, mappings_yaml))
    return plan, cfg


# --------------------------------------------------------------------------- the gateway


class RecordingObserver:
    """An observer keeping every finished request's record (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.records: list[RequestRecord] = []

    def request_done(self, record: RequestRecord) -> None:
        with self._lock:
            self.records.append(record)

    def find(self, request_id: str) -> RequestRecord | None:
        with self._lock:
            return next((r for r in self.records if r.request_id == request_id), None)

    def wait_for(self, request_id: str, timeout: float = 5.0) -> RequestRecord:
        wait_until(lambda: self.find(request_id) is not None, timeout, what=f"record of request {request_id}")
        rec = self.find(request_id)
        assert rec is not None
        return rec


class RunningGateway(NamedTuple):
    base_url: str  # http://127.0.0.1:PORT (no /v1)
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    observer: RecordingObserver

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the gateway's event loop (e.g. ``gateway.health.probe_all()``)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def probe_now(self, timeout: float = 10.0) -> None:
        """One health/discovery round of every provider, now (health checks must be on)."""
        assert self.gateway.health is not None, "health checks are off in these settings"
        self.call(self.gateway.health.probe_all(), timeout)

    def wait_first_probe(self, timeout: float = 10.0) -> None:
        health = self.gateway.health
        assert health is not None, "health checks are off in these settings"
        wait_until(health.first_round.is_set, timeout, what="the first health round")


def gateway_settings(**overrides: Any) -> GatewaySettings:
    """Settings for tests: no background probes unless asked, short drain."""
    values: dict[str, Any] = {"host": HOST, "port": 0, "health_checks": False, "drain_timeout_s": 1.0}
    values.update(overrides)
    return GatewaySettings(**values)


@contextlib.contextmanager
def running_gateway(
    source: RoutingPlan | tuple[RoutingPlan, LoadedConfig] | Path | str,
    settings: GatewaySettings | None = None,
    *,
    loop: str = "uvloop",
    startup_timeout: float = 10.0,
    setup: Callable[[Gateway], object] | None = None,
    port: int = 0,
) -> Iterator[RunningGateway]:
    """Serve the gateway on a free port (or ``port``, e.g. to bring a stopped gateway back at the
    same address) in a background thread for the ``with`` block.

    ``source`` is a plan, a ``(plan, loaded_config)`` pair (breaker settings come from the config)
    or a config folder. Startup is complete (lifespan ran, ``/health/live`` answers) when this yields.
    ``setup(gateway)`` runs before the server starts (e.g. ``aib.reload.install_reload``).
    """
    config: LoadedConfig | None = None
    if isinstance(source, RoutingPlan):
        plan = source
    elif isinstance(source, tuple):
        plan, config = source
    else:
        plan, config, _ = build_plan(Path(source))
    observer = RecordingObserver()
    gw = create_app(plan, settings or gateway_settings(), config, observers=[observer])
    if setup is not None:
        setup(gw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    port = sock.getsockname()[1]
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"] = asyncio.get_running_loop()
        holder["stop"] = stop = asyncio.Event()
        await serve_app(gw, sock=sock, drain_s=gw.settings.drain_timeout_s, stop=stop)

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
                runner.run(main())
        except BaseException as exc:  # reported to the test below
            holder["error"] = exc

    thread = threading.Thread(target=run, name=f"aib-gateway-{port}", daemon=True)
    thread.start()
    base_url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while not _live(base_url):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {holder.get('error')!r}")
            time.sleep(0.01)
        yield RunningGateway(base_url, gw, holder["loop"], observer)
    finally:
        if "stop" in holder and thread.is_alive():
            holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout=15)
        sock.close()
    assert not thread.is_alive(), "the gateway thread did not stop within 15 s"
    assert "error" not in holder, f"gateway thread failed: {holder['error']!r}"


def _live(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health/live", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------------- scripted upstream


def chat_completion(
    content: str = "Hello from the scripted upstream.", model: str = "scripted"
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    }


def sse_event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_chunk(text: str, model: str = "scripted", finish: str | None = None) -> bytes:
    delta = {"content": text} if text else {}
    return sse_event(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build with the class methods; fields combine freely.

    ``delay_s`` waits before the status line; ``chunks`` are written one by one as a chunked body,
    ``body_delay_s`` after the headers and before the first chunk, ``chunk_delay_s`` between chunks,
    ``end_delay_s`` after the last chunk and before the end of the chunked body;
    ``reset_after`` resets the TCP connection (RST) after that many chunks (0: right after the
    headers); ``abort`` resets it before anything is sent; ``raw`` writes these bytes to the socket
    instead of an HTTP answer (a tuple: one part after another, ``chunk_delay_s`` apart), then closes it.
    Delays end early when the client goes away (recorded as :attr:`Received.disconnected`).
    """

    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunks: tuple[bytes, ...] | None = None
    body_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    end_delay_s: float = 0.0
    reset_after: int | None = None
    abort: bool = False
    raw: bytes | tuple[bytes, ...] | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200, **kw: Any) -> Reply:
        return cls(status=status, body=orjson.dumps(obj), **kw)

    @classmethod
    def chat(cls, content: str = "Hello from the scripted upstream.", **kw: Any) -> Reply:
        return cls.json(chat_completion(content), **kw)

    @classmethod
    def error(
        cls, status: int, message: str = "scripted failure", retry_after: float | None = None, **kw: Any
    ) -> Reply:
        headers = dict(kw.pop("headers", {}))
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
        return cls.json(body, status=status, headers=headers, **kw)

    @classmethod
    def sse(
        cls,
        texts: Iterable[str] = ("Hel", "lo", "!"),
        *,
        done: bool = True,
        chunk_delay_s: float = 0.0,
        reset_after: int | None = None,
        content_type: str = "text/event-stream",
        **kw: Any,
    ) -> Reply:
        """A chat stream: one event per text, a finish event, then ``[DONE]`` unless ``done=False``."""
        events = [chat_chunk(t) for t in texts] + [chat_chunk("", finish="stop")]
        if done:
            events.append(SSE_DONE)
        return cls(
            content_type=content_type,
            chunks=tuple(events),
            chunk_delay_s=chunk_delay_s,
            reset_after=reset_after,
            **kw,
        )

    @classmethod
    def text(cls, body: str, content_type: str = "text/html", status: int = 200, **kw: Any) -> Reply:
        return cls(status=status, body=body.encode(), content_type=content_type, **kw)

    @classmethod
    def garbage(cls, **kw: Any) -> Reply:
        """200 claiming JSON, body that is not JSON."""
        return cls(body=b"<html><body>502 Bad Gateway</body></html>", content_type="application/json", **kw)

    @classmethod
    def reset(cls) -> Reply:
        """Reset the connection before any byte of an answer."""
        return cls(abort=True)


@dataclass
class Received:
    """One inference request as the scripted upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    started: float = field(default_factory=time.monotonic)
    chunks_sent: int = 0
    disconnected: bool = False  # the client went away while we were answering
    finished: bool = False

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class ScriptedUpstream:
    """An OpenAI-compatible upstream whose answers are scripted per request.

    ``enqueue(Reply...)`` queues answers for the next inference requests (POSTs), in order; with the
    queue empty it answers a valid completion (an SSE stream when the request asked for one).
    Inference requests are recorded in :attr:`requests`.

    Probes (``GET /v1/models`` lists :attr:`models`; ``GET /health`` answers ``{"status": "ok"}``) are
    only counted (:attr:`probes`). They answer 503 when :attr:`healthy` is False, ``models_body`` /
    ``health_body`` (with ``probe_status``, 200 by default) when set, and only after ``probe_delay_s``.
    """

    def __init__(self, models: Iterable[str] = ("scripted",), tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve https with this server context (``base_url`` then names ``localhost``)."""
        self.models = list(models)
        self.tls = tls
        self.healthy = True
        self.models_body: bytes | None = None
        self.health_body: bytes | None = None
        self.probe_status = 200
        self.probe_delay_s = 0.0
        self.requests: list[Received] = []
        self.probes = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._cm: contextlib.AbstractContextManager[ScriptedUpstream] | None = None
        self.port = 0

    # ----- test controls

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}" if self.tls else f"http://{HOST}:{self.port}"

    def enqueue(self, *replies: Reply) -> ScriptedUpstream:
        with self._lock:
            self._script.extend(replies)
        return self

    def clear(self) -> None:
        """Forget the script and the recorded requests; probes answer normally again."""
        self.healthy, self.models_body, self.health_body, self.probe_delay_s = True, None, None, 0.0
        self.probe_status = 200
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._script)

    def wait_disconnect(self, timeout: float = 5.0) -> bool:
        """Block until a request recorded since the last :meth:`clear` saw its client go away mid-answer.

        (A request of an earlier test that notices its own disconnect late does not count.)
        """
        deadline = time.monotonic() + timeout
        while not any(r.disconnected for r in list(self.requests)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_requests(self, n: int, timeout: float = 5.0) -> None:
        wait_until(lambda: len(self.requests) >= n, timeout, what=f"{n} upstream requests")

    # ----- server

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator[ScriptedUpstream]:
        ready = threading.Event()
        holder: dict[str, Any] = {}

        async def serve() -> None:
            stop = asyncio.Event()
            holder["stop"] = stop
            self._loop = asyncio.get_running_loop()
            try:
                app = web.Application()
                app.router.add_get("/v1/models", self._probe)
                app.router.add_get("/health", self._probe)
                app.router.add_route("*", "/{tail:.*}", self._handle)
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
                await self._runner.setup()
                site = web.TCPSite(self._runner, HOST, 0, ssl_context=self.tls)
                await site.start()
                self.port = self._runner.addresses[0][1]
            except BaseException as exc:
                holder["error"] = exc
                ready.set()
                return
            ready.set()
            try:
                await stop.wait()
            finally:
                await self._runner.cleanup()

        thread = threading.Thread(target=asyncio.run, args=(serve(),), name="scripted-upstream", daemon=True)
        thread.start()
        ready.wait(10)
        if "error" in holder:
            thread.join(5)
            raise holder["error"]
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(holder["stop"].set)
            thread.join(timeout=10)

    def __enter__(self) -> ScriptedUpstream:
        self._cm = self.serve_in_thread()
        return self._cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        assert self._cm is not None
        self._cm.__exit__(*exc)
        self._cm = None

    # ----- handlers

    async def _probe(self, request: web.Request) -> web.Response:
        self.probes += 1
        if self.probe_delay_s:
            await _sleep_unless_closed(request.transport, self.probe_delay_s)  # type: ignore[arg-type]
        if not self.healthy:
            return web.json_response({"error": {"message": "scripted: unhealthy"}}, status=503)
        if request.path == "/health":
            if self.health_body is not None:
                return web.Response(
                    body=self.health_body, status=self.probe_status, content_type="application/json"
                )
            return web.json_response({"status": "ok"})
        if self.models_body is not None:
            return web.Response(
                body=self.models_body, status=self.probe_status, content_type="application/json"
            )
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "scripted"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    def _next(self, rec: Received) -> Reply:
        with self._lock:
            self.requests.append(rec)
            if self._script:
                return self._script.popleft()
        try:
            payload = orjson.loads(rec.body)
        except orjson.JSONDecodeError:
            payload = {}
        model = str(payload.get("model", "scripted")) if isinstance(payload, dict) else "scripted"
        if isinstance(payload, dict) and payload.get("stream"):
            return Reply.sse()
        if rec.path.endswith("/embeddings"):
            return Reply.json(
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "model": model,
                }
            )
        if rec.path.endswith("/completions") and not rec.path.endswith("chat/completions"):
            return Reply.json(
                {
                    "id": "cmpl-scripted",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": "scripted", "finish_reason": "stop"}],
                }
            )
        return Reply.json(chat_completion(model=model))

    def _gone(self, rec: Received) -> None:
        rec.disconnected = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Received(
            request.method,
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
        )
        reply = self._next(rec)
        transport = request.transport
        assert transport is not None
        if reply.delay_s and not await _sleep_unless_closed(transport, reply.delay_s):
            self._gone(rec)
            return web.Response(status=499)
        if reply.raw is not None:
            for i, part in enumerate(reply.raw if isinstance(reply.raw, tuple) else (reply.raw,)):
                if i and not await _sleep_unless_closed(transport, reply.chunk_delay_s):
                    break
                transport.write(part)
            transport.close()
            rec.finished = True
            return web.Response(status=499)  # never sent: the transport is closed
        if reply.abort:
            _rst(transport)
            rec.finished = True
            return web.Response(status=499)
        headers = dict(reply.headers)
        if reply.content_type is not None:
            headers["content-type"] = reply.content_type
        if reply.chunks is None and reply.reset_after is None:
            rec.finished = True
            return web.Response(status=reply.status, body=reply.body, headers=headers)
        resp = web.StreamResponse(status=reply.status, headers=headers)
        try:
            await resp.prepare(request)
            for i, chunk in enumerate(reply.chunks or ()):
                if reply.reset_after is not None and i >= reply.reset_after:
                    _rst(transport)
                    rec.finished = True
                    return resp
                delay = reply.body_delay_s if i == 0 else reply.chunk_delay_s
                if (delay and not await _sleep_unless_closed(transport, delay)) or transport.is_closing():
                    self._gone(rec)
                    return resp
                await resp.write(chunk)
                rec.chunks_sent += 1
            if reply.reset_after is not None:
                _rst(transport)
            else:
                if reply.end_delay_s and not await _sleep_unless_closed(transport, reply.end_delay_s):
                    self._gone(rec)
                    return resp
                await resp.write_eof()
        except ConnectionError:
            self._gone(rec)
        rec.finished = True
        return resp


async def _sleep_unless_closed(transport: asyncio.BaseTransport, seconds: float) -> bool:
    """Sleep, waking early (False) when the client closed the connection."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if transport.is_closing():
            return False
        await asyncio.sleep(min(left, 0.01))
    return not transport.is_closing()


def _rst(transport: asyncio.BaseTransport) -> None:
    """Abort with SO_LINGER 0: the peer sees a connection reset, not a clean close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- fake_openai processes


class FakeOpenAIProcess(NamedTuple):
    port: int
    base_url: str  # root URL, no /v1
    pid: int


@contextlib.contextmanager
def fake_openai_process(*args: str, timeout: float = 10.0) -> Iterator[FakeOpenAIProcess]:
    """``python -m aib.devtools.fake_openai --port 0 ARGS`` as a child process, stopped by PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aib.devtools.fake_openai", "--host", HOST, "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        line = _read_line(proc.stderr, timeout)
        if "listening on http://" not in line:
            raise RuntimeError(f"fake_openai did not start: {line!r}")
        port = int(line.strip().rsplit(":", 1)[1])
        yield FakeOpenAIProcess(port, f"http://{HOST}:{port}", proc.pid)
    finally:
        stop_process(proc, timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int:
    """Stop a child we started, by its PID: SIGTERM, then SIGKILL after ``timeout`` s; its exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - only a child that ignores SIGTERM
        proc.kill()
        return proc.wait(timeout=5)


def _read_line(stream: Any, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            byte = stream.read1(1) if hasattr(stream, "read1") else stream.read(1)
            if not byte:
                break
            buf += byte
    finally:
        sel.close()
    return buf.decode(errors="replace")


# --------------------------------------------------------------------------- response checks


def assert_envelope(resp: Any, status: int, code: str | None = None, param: object = ...) -> dict[str, Any]:
    """The response is the OpenAI error envelope with this status (and code/param when given)."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    return dict(err)


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
