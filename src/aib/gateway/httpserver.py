"""A small HTTP/1.1 server for ASGI applications, built for the gateway's hot path.

Why not uvicorn: measured in ``bench/choose_stack.py`` and ``docs/performance.md``, uvicorn's
per-request work (two regexes per response header, head and body written as two syscalls, a
flow-control object and a task per cycle) costs more CPU than everything the gateway itself does.
This server keeps what the gateway needs and nothing else:

* HTTP/1.1 and 1.0 with keep-alive, pipelining (answered in order), chunked request bodies,
  ``Expect: 100-continue``, ``HEAD``; percent-decoded ``path``; the ASGI 3 ``http`` and ``lifespan``
  scopes (no WebSocket);
* one write per whole response (head and body together), chunked encoding for streamed bodies;
* back-pressure both ways: reading pauses while a request body waits unread, ``send`` waits while
  the client's socket buffer is full;
* ``receive()`` returns ``http.disconnect`` once the client has gone or the response is complete,
  and ``send`` raises :class:`ClientDisconnected` (an ``OSError``) after the client left;
* limits (:class:`ServerLimits`, what each bounds in :mod:`aib.gateway.httpconn`): request head
  bytes and lines counted as they arrive (431), head and body time (408), a stalled reader cut after
  ``write_timeout_s``, at most ``max_pipeline`` requests waiting per connection, at most
  ``max_connections`` connections (the next ones get 503), idle keep-alive connections closed;
  malformed requests get 400 after the answers to the requests before them;
* graceful stop: stop accepting, close idle connections, let requests in flight finish (bounded),
  then the lifespan shutdown.

Errors the server itself answers use the OpenAI error envelope, like the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aib.gateway.httpconn import HttpConnection
from aib.gateway.httprequest import ClientDisconnected, ServerLimits

log = logging.getLogger("aib.gateway.http")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Any], Awaitable[None]]

MAX_HEAD_BYTES = ServerLimits().max_head_bytes
MAX_HEADERS = ServerLimits().max_headers
SWEEP_EVERY_S = 1.0  # idle, slow and stalled connections are looked at this often
_ASGI = {"version": "3.0", "spec_version": "2.3"}


class HttpServer:
    """Serve one ASGI application on one listening socket (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: ServerLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ServerLimits()
        self.loop = asyncio.get_running_loop()
        self.clock = self.loop.time()  # a coarse clock for the sweeper, updated once a second
        self.connections: set[HttpConnection] = set()  # every open one, refused ones included
        self.open = 0  # connections counted against limits.max_connections
        self.inflight = 0
        self.stopping = False
        self.force = False  # a second signal: stop without waiting
        self._server: asyncio.Server | None = None
        self._extra: list[asyncio.Server] = []  # more listening sockets (a leader worker's unix socket)
        self._sweeper: asyncio.TimerHandle | None = None
        self._lifespan: _Lifespan | None = None

    async def start(self, sock: socket.socket | None = None, host: str = "127.0.0.1", port: int = 0) -> int:
        """Run the lifespan startup, then listen (on ``sock`` when given). Returns the port."""
        self._lifespan = _Lifespan(self.app)
        await self._lifespan.startup()
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.setblocking(False)
        self._server = await self.loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=2048)
        self._sweep()
        name = sock.getsockname()
        return int(name[1]) if isinstance(name, tuple) else 0

    async def listen_also(self, sock: socket.socket) -> None:
        """Serve the same application on one more listening socket (TCP or unix), stopped with the rest."""
        sock.setblocking(False)
        self._extra.append(
            await self.loop.create_server(lambda: HttpConnection(self), sock=sock, backlog=128)
        )

    def _sweep(self) -> None:
        now = self.clock = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        self._sweeper = self.loop.call_later(SWEEP_EVERY_S, self._sweep)

    async def stop(self, drain_s: float = 30.0) -> None:
        """Stop accepting, let requests in flight finish (at most ``drain_s``), then shut the app down."""
        self.stopping = True
        for srv in (self._server, *self._extra):
            if srv is not None:
                srv.close()
        for conn in list(self.connections):
            if not conn.queue and conn.transport is not None:
                conn.transport.close()
        deadline = self.loop.time() + drain_s
        while self.connections and self.loop.time() < deadline and not self.force:
            if all(not c.queue for c in self.connections):
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            for req in conn.queue:
                if req.task is not None and not req.task.done():
                    req.task.cancel()
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._lifespan is not None:
            await self._lifespan.shutdown()


class _Lifespan:
    """The ASGI lifespan protocol: startup before listening, shutdown after the last request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.supported = True

    async def _send(self, message: dict[str, Any]) -> None:
        await self.outbox.put(message)

    async def _run(self) -> None:
        try:
            await self.app({"type": "lifespan", "asgi": _ASGI, "state": {}}, self.inbox.get, self._send)
        except Exception as exc:
            if self.outbox.empty():  # the app does not speak lifespan (allowed by the spec)
                self.supported = False
                log.debug("lifespan not supported: %r", exc)
            await self.outbox.put({"type": "lifespan.unsupported"})
        else:
            await self.outbox.put({"type": "lifespan.unsupported"})

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        msg = await self.outbox.get()
        if msg["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"application startup failed: {msg.get('message', '')}")
        if msg["type"] == "lifespan.unsupported":
            self.supported = False

    async def shutdown(self) -> None:
        if not self.supported or self.task is None:
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        msg = await self.outbox.get()
        if msg["type"] == "lifespan.shutdown.failed":
            log.error("application shutdown failed: %s", msg.get("message", ""))
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 5.0)


__all__ = ["ClientDisconnected", "HttpServer", "ServerLimits"]
