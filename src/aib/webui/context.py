"""What every tab of one UI shares: the gateway client, the request log's place, running streams.

State lives here, on the UI built by :func:`aib.webui.create_ui`, never in module globals.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aib.observe.requestquery import RequestLogMissing, RequestLogReader
from aib.webui.gateway import Cancel, GatewayClient

T = TypeVar("T")
WARN = "⚠"  # in the fonts every system has (emoji fonts are not a given)
LOG_OFF = (
    "The request log is off, so there is nothing to show: run the gateway without AIB_REQUEST_LOG=off "
    "(it writes var/requests.db by default) and start the UI with `aib ui --db var/requests.db`."
)
MAX_RUNNING = 256  # streams that can be stopped at once (older entries are forgotten)


class LogProblem(Exception):
    """The request log cannot be read; ``str(exc)`` is a sentence for the page."""


class UIContext:
    def __init__(self, gateway_url: str, request_log_path: Path | str | None) -> None:
        self.gateway = GatewayClient(gateway_url)
        self.request_log = Path(request_log_path) if request_log_path is not None else None
        self._running: dict[str, Cancel] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for key in list(self._running):
            self.stop(key)
        self.gateway.close()

    # ----- streams a stop button can end (keyed by browser session and tab)

    def begin(self, key: str) -> Cancel:
        """A fresh :class:`Cancel` for a new run under ``key`` (a previous run there is stopped)."""
        cancel = Cancel()
        with self._lock:
            old = self._running.pop(key, None)
            while len(self._running) >= MAX_RUNNING:
                self._running.pop(next(iter(self._running)))
            self._running[key] = cancel
        if old is not None:
            old.set()
        return cancel

    def end(self, key: str, cancel: Cancel) -> None:
        with self._lock:
            if self._running.get(key) is cancel:
                del self._running[key]

    def stop(self, key: str) -> bool:
        """Stop the run under ``key``; False when nothing was running."""
        with self._lock:
            cancel = self._running.pop(key, None)
        if cancel is None:
            return False
        cancel.set()
        return True

    # ----- the request log (read-only)

    def read_log(self, fn: Callable[[RequestLogReader], T]) -> T:
        """Run ``fn`` on a read-only reader of the request log; problems become :class:`LogProblem`."""
        if self.request_log is None:
            raise LogProblem(LOG_OFF)
        try:
            reader = RequestLogReader(self.request_log)
        except RequestLogMissing as exc:
            raise LogProblem(f"No request log yet: {exc}.") from None
        except sqlite3.Error as exc:
            raise LogProblem(f"The request log {self.request_log} cannot be opened: {exc}.") from None
        try:
            return fn(reader)
        except sqlite3.Error as exc:
            raise LogProblem(f"The request log {self.request_log} cannot be read: {exc}.") from None
        finally:
            reader.close()
