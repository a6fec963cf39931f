"""Watch the config folder and hand over both files once they stopped changing.

A change event (``watchfiles``: inotify on Linux, polling where that does not work) starts a quiet
window of ``debounce`` seconds. The files are read at its start and again at its end; they are
handed over only when no event came during the window and both reads are identical (bytes, size and
mtime). So a file written in several pieces with pauses shorter than the window is never loaded
half-written; a file that still does not parse after it settled is reported by the reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import awatch

from aib.reload.sources import FILES, Sources, read_sources

log = logging.getLogger("aib.reload")
OnSettled = Callable[[Sources, list[str]], Awaitable[object]]
MAX_BACKOFF_S = 10.0


class ConfigWatcher:
    def __init__(self, config_dir: Path, debounce_s: float, on_settled: OnSettled) -> None:
        self.config_dir = config_dir
        self.debounce_s = debounce_s
        self.on_settled = on_settled
        self.running = False
        self._stop = asyncio.Event()
        self._dirty = asyncio.Event()
        self._last_event = 0.0
        self._changed: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        chatty = logging.getLogger("watchfiles.main")  # "1 change detected" at INFO for every event
        if chatty.level == logging.NOTSET:
            chatty.setLevel(logging.WARNING)
        self._stop.clear()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._settle_loop())]
        self.running = True

    async def stop(self) -> None:
        self._stop.set()
        self.running = False
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def poke(self, name: str = "") -> None:
        """Note a change (from the file watcher, or after watching resumed)."""
        self._last_event = asyncio.get_running_loop().time()
        if name:
            self._changed.add(name)
        self._dirty.set()

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.config_dir)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    @staticmethod
    def _filter(change: object, path: str) -> bool:
        return os.path.basename(path) in FILES

    async def _watch(self) -> None:
        backoff = 0.5
        last_error = ""
        while not self._stop.is_set():
            try:
                folder = self._identity()
                async for changes in awatch(
                    self.config_dir,
                    watch_filter=self._filter,
                    debounce=50,
                    step=5,
                    stop_event=self._stop,
                    recursive=False,
                    rust_timeout=1000,
                    yield_on_timeout=True,  # an empty set every second: time to check the folder
                ):
                    for _, path in changes:
                        self.poke(os.path.basename(path))
                    if last_error:
                        log.info("watching %s again", self.config_dir)
                        last_error, backoff = "", 0.5
                    if self._identity() != folder:  # removed or replaced: the watch is on a dead inode
                        raise FileNotFoundError(f"{self.config_dir} was removed or replaced")
                if not self._stop.is_set():
                    raise RuntimeError("the watch ended by itself")
            except Exception as exc:  # the folder is gone, or the OS refused a watch
                error = f"{type(exc).__name__}: {exc}"
                if error != last_error:
                    log.warning(
                        "cannot watch %s (%s); retrying, `aib reload` still works", self.config_dir, error
                    )
                    last_error = error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                if not self._stop.is_set():
                    self.poke()  # something may have changed while nothing watched

    async def _settle_loop(self) -> None:
        while True:
            await self._dirty.wait()
            sources = await self._settled()
            changed = sorted(self._changed)
            self._changed.clear()
            try:
                await self.on_settled(sources, changed)
            except Exception:  # a bug in a reload must not stop the watching
                log.exception("reload after a file change failed")

    async def _settled(self) -> Sources:
        """Both files, once unchanged (no event, same bytes) for a whole quiet window."""
        loop = asyncio.get_running_loop()
        first = await asyncio.to_thread(read_sources, self.config_dir)
        start = loop.time()
        while True:
            left = max(self._last_event, start) + self.debounce_s - loop.time()
            if left > 0:
                await asyncio.sleep(left)
                continue
            self._dirty.clear()
            second = await asyncio.to_thread(read_sources, self.config_dir)
            if second == first:
                return second
            first, start = second, loop.time()
