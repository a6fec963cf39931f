"""Load at a fixed concurrency for a bounded time: ``wrk`` when installed, else an asyncio generator.

Both report ``rps``, ``requests``, ``errors`` (non-2xx answers, socket errors and timeouts),
``lat_p50_ms`` and ``lat_p99_ms``. The asyncio generator runs in this process and saturates earlier
than wrk (it competes for the same cores), so runs say which one they used.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from aib.benchmark.client import CHAT_PATH, http_request
from aib.benchmark.stats import pct

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``1.20ms``, ``2.00s``) in milliseconds; NaN when unreadable."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def parse_wrk(out: str) -> dict[str, float]:
    """The figures of one ``wrk --latency`` run from its output."""
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out[-800:]}")
    res: dict[str, float] = {"rps": float(m.group(1))}
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else float("nan")
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}(?:\.0+)?%\s+(\S+)", out, re.M)
        res[f"lat_p{q}_ms"] = wrk_ms(m.group(1)) if m else float("nan")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(x) for x in m.groups()) if m else 0
    res["errors"] = float(errors)
    return res


def wrk_script(path: Path, body: bytes, headers: dict[str, str] | None = None) -> Path:
    extra = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in (headers or {}).items())
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"{extra}wrk.body = {json.dumps(body.decode())}\n"
    )
    return path


def run_wrk(
    port: int, conns: int, seconds: float, script: Path, *, timeout_s: float = 5.0, path: str = CHAT_PATH
) -> dict[str, float]:
    cmd = [
        "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
        "--timeout", f"{max(1, round(timeout_s))}s", "-s", str(script), f"http://127.0.0.1:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip() or done.stdout[-500:]}")
    return parse_wrk(done.stdout)


async def pyload(
    port: int, conns: int, seconds: float, body: bytes, timeout_s: float = 5.0, headers: bytes = b""
) -> dict[str, float]:
    """``conns`` keep-alive connections sending ``body`` back to back for ``seconds``."""
    req = http_request(body, port, headers=headers)
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                errors += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    writer.write(req)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
                    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    if m is None:
                        raise RuntimeError("the python load generator needs content-length answers")
                    await asyncio.wait_for(reader.readexactly(int(m.group(1))), timeout_s)
                    if not head.startswith(b"HTTP/1.1 2"):
                        errors += 1
                    lat.append(time.perf_counter() - t0)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                errors += 1
            finally:
                writer.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conns))), seconds + timeout_s + 10)
    elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "rps": len(lat) / elapsed,
        "requests": float(len(lat)),
        "lat_p50_ms": pct(lat, 0.5) * 1e3,
        "lat_p99_ms": pct(lat, 0.99) * 1e3,
        "errors": float(errors),
    }


def run_pyload(
    port: int, conns: int, seconds: float, body: bytes, timeout_s: float = 5.0, headers: bytes = b""
) -> dict[str, float]:
    import uvloop

    return uvloop.run(pyload(port, conns, seconds, body, timeout_s, headers))


class Loader:
    """Load generator for one body: ``wrk`` when available (``kind="auto"``), else asyncio."""

    def __init__(
        self, body: bytes, workdir: Path, kind: str = "auto", headers: dict[str, str] | None = None
    ) -> None:
        if kind not in ("auto", "wrk", "python"):
            raise ValueError(f"loader {kind!r}: use auto, wrk or python")
        if kind == "wrk" and shutil.which("wrk") is None:
            raise RuntimeError("wrk is not installed: apt-get install -y wrk (or use the python loader)")
        self.kind = "wrk" if kind == "wrk" or (kind == "auto" and shutil.which("wrk")) else "python"
        self.body = body
        self.headers = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in (headers or {}).items())
        name = f"post-{abs(hash(self.headers))}.lua"
        self.script = wrk_script(workdir / name, body, headers) if self.kind == "wrk" else None

    @property
    def name(self) -> str:
        return "wrk -t1" if self.kind == "wrk" else "python asyncio (in process)"

    def __call__(self, port: int, conns: int, seconds: float, timeout_s: float = 5.0) -> dict[str, float]:
        if self.script is not None:
            return run_wrk(port, conns, seconds, self.script, timeout_s=timeout_s)
        return run_pyload(port, conns, seconds, self.body, timeout_s, self.headers)
