"""Notice a client that hangs up, and stop the upstream work done for it.

ASGI tells an application about a disconnect only through ``receive()``. Waiting on it costs a task,
so a request starts watching only once it has lasted ``delay_s`` (a long generation) or when its
stream starts; short requests finish before the watch would begin and pay one timer handle.
On a disconnect the request's task is cancelled; the proxy turns that into :class:`ClientGone` and
the upstream connection is dropped, so the upstream stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


Notify = Callable[[Callable[[], None] | None], None]


class DisconnectWatch:
    __slots__ = ("_handle", "_notify", "_receive", "_task", "_waiter", "gone")

    def __init__(
        self,
        receive: Receive,
        delay_s: float,
        loop: asyncio.AbstractEventLoop | None = None,
        notify: Notify | None = None,
    ) -> None:
        """``notify``: the server's ``aib.on_disconnect`` extension when it has one (the gateway's own
        server does): the server then calls back on a hang-up, with no timer and no task at all."""
        loop = loop or asyncio.get_running_loop()
        self._receive = receive
        self._task = asyncio.current_task(loop)
        self._waiter: asyncio.Task[None] | None = None
        self.gone = False
        self._notify = notify
        self._handle: asyncio.TimerHandle | None = None
        if notify is not None:
            notify(self._gone)
        else:
            self._handle = loop.call_later(delay_s, self.start)

    def _gone(self) -> None:
        self.gone = True
        if self._task is not None:
            self._task.cancel()

    def start(self) -> None:
        """Watch from now on (idempotent)."""
        if self._notify is not None:
            return  # the server tells us
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._waiter is None and self._task is not None:
            self._waiter = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                self._gone()
                return

    def close(self) -> None:
        """Stop watching. Call before the last byte is sent: after the response is complete, ASGI
        servers answer ``receive()`` with a disconnect, which must not cancel the finishing request."""
        if self._notify is not None:
            self._notify(None)
            self._notify = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._waiter is not None:
            self._waiter.cancel()
            self._waiter = None

    def absorb(self) -> None:
        """The cancellation was ours (the client left): clear it so the task can finish normally."""
        if self._task is not None:
            with contextlib.suppress(AttributeError):
                self._task.uncancel()
