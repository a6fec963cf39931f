"""The upstream client's timers (``aib.gateway.httpclient``): deadline, idle limit, bounded pool wait.

A small raw asyncio server in the test's loop plays the upstream; what it sends and when is scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from aib.gateway.httpclient import Pool

pytestmark = pytest.mark.integration

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


@contextlib.asynccontextmanager
async def upstream(script: str) -> AsyncIterator[str]:
    """``script``: 'slow' answers after 0.6 s; 'stall' sends one chunk then nothing; 'drip' sends a chunk
    every 0.1 s for 0.8 s, then ends."""

    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if script == "slow":
                await asyncio.sleep(0.6)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            elif script == "stall":
                writer.write(HEAD + b"5\r\nfirst\r\n")
                await asyncio.sleep(5)
            else:
                writer.write(HEAD)
                for _ in range(8):
                    writer.write(b"4\r\ndrip\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.1)
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def _head(pool: Pool) -> bytes:
    return pool.request_head("POST", "/v1/chat/completions", {"content-type": "application/json"})


async def test_deadline_before_the_answer_raises_timeout_and_drops_the_connection() -> None:
    async with upstream("slow") as url:
        pool = Pool(url)
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await pool.request(_head(pool), b"{}", deadline=loop.time() + 0.2)
        assert pool.stats["idle"] == 0  # a timed-out exchange is never reused
        resp = await pool.request(_head(pool), b"{}", deadline=loop.time() + 3)
        assert await resp.read() == b"ok"
        assert pool.stats["idle"] == 1
        pool.close()


async def test_waiting_for_a_free_connection_ends_at_the_deadline() -> None:
    async with upstream("slow") as url:
        pool = Pool(url, limit=1)
        loop = asyncio.get_running_loop()
        first = asyncio.create_task(pool.request(_head(pool), b"{}", deadline=loop.time() + 3))
        await asyncio.sleep(0.05)
        started = loop.time()
        with pytest.raises(TimeoutError, match="connections busy"):
            await pool.request(_head(pool), b"{}", deadline=loop.time() + 0.2)
        assert loop.time() - started < 0.5  # not held until the first request ends
        resp = await first
        assert await resp.read() == b"ok"
        pool.close()


async def test_idle_limit_fails_a_stalled_stream_but_not_a_slow_steady_one() -> None:
    async with upstream("stall") as url:
        pool = Pool(url)
        resp = await pool.request(_head(pool), b"{}")
        resp.set_idle_timeout(0.3)
        assert await resp.readany() == b"first"
        with pytest.raises(TimeoutError, match=r"no data for 0\.3s"):
            await resp.readany()
        resp.close()
        pool.close()
    async with upstream("drip") as url:
        pool = Pool(url)
        resp = await pool.request(_head(pool), b"{}")
        resp.set_idle_timeout(0.3)  # the stream lasts 0.8 s, a chunk every 0.1 s: never idle 0.3 s
        chunks = [c async for c in resp.chunks()]
        assert b"".join(chunks) == b"drip" * 8
        pool.close()
