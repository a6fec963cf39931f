"""Helpers for the scale-out tests (not a test module): `aib serve` replicas as child processes, request
bodies, waiting inside an event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway_harness import wait_until

AIB = [str(Path(sys.executable).parent / "aib")]
CONCURRENCY = 64


@dataclass
class Replica:
    index: int
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    prefix: str = ""  # its request ids start with this

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_replica(r: Replica, cdir: Path, env: dict[str, str]) -> None:
    with open(r.log, "ab") as out:
        r.proc = subprocess.Popen(
            [*AIB, "serve", "-c", str(cdir), "--host", "127.0.0.1", "--port", str(r.port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        assert r.proc is not None and r.proc.poll() is None, r.log.read_text()[-3000:]
        try:
            return httpx.get(f"{r.url}/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, 0.1, f"replica {r.index} ready")


def body(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


async def until(cond: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.05)
