"""The measuring client: a blocking keep-alive HTTP/1.1 connection parsed with httptools (minimal noise),
and sequential requests sent in interleaved blocks to two ports, so that background noise on a shared
machine hits the direct and the proxied path alike.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httptools

from aib.benchmark.stats import pct

CHAT_PATH = "/v1/chat/completions"


def http_request(body: bytes, port: int, path: str = CHAT_PATH, headers: bytes = b"") -> bytes:
    """One ``POST path`` with a JSON ``body``, ready to send on a keep-alive connection."""
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), port, headers, len(body), body)
    )


class RawConn:
    """Blocking keep-alive HTTP/1.1 connection to 127.0.0.1:port with an httptools response parser."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = httptools.HttpResponseParser(self)
        self.body = bytearray()
        self.done = False
        self.first_body = 0.0

    def on_body(self, data: bytes) -> None:
        if not self.body:
            self.first_body = time.perf_counter()
        self.body += data

    def on_message_complete(self) -> None:
        self.done = True

    def roundtrip(self, req: bytes) -> tuple[int, bytes, float, float]:
        """Send ``req``; returns (status, body, total seconds, seconds to the first body byte)."""
        self.body, self.done = bytearray(), False
        t0 = time.perf_counter()
        self.sock.sendall(req)
        while not self.done:
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError(f"127.0.0.1:{self.port} closed the connection")
            self.parser.feed_data(data)
        t1 = time.perf_counter()
        return self.parser.get_status_code(), bytes(self.body), t1 - t0, self.first_body - t0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_ok(status: int, body: bytes) -> None:
    if status != 200:
        raise RuntimeError(f"status {status}: {body[:300]!r}")


def stream_check(min_events: int) -> Callable[[int, bytes], None]:
    """A check that a body is a whole SSE stream: 200, at least ``min_events`` events, ``[DONE]`` last."""

    def check(status: int, body: bytes) -> None:
        events = body.count(b"data:")
        if status != 200 or not body.rstrip().endswith(b"data: [DONE]") or events < min_events:
            raise RuntimeError(f"bad stream: status {status}, {events} events: {body[:300]!r}")

    return check


@dataclass
class Samples:
    """Sequential timings against one port, in µs (warm-up excluded); ``sent`` counts warm-up too."""

    port: int
    totals_us: list[float] = field(default_factory=list)
    firsts_us: list[float] = field(default_factory=list)
    sent: int = 0

    def summary(self, stream: bool = False) -> dict[str, float]:
        tot, fst = sorted(self.totals_us), sorted(self.firsts_us)
        if stream:
            return {
                "n": len(tot),
                "ttft_p50_us": pct(fst, 0.5),
                "ttft_p99_us": pct(fst, 0.99),
                "total_p50_us": pct(tot, 0.5),
            }
        return {
            "n": len(tot),
            "p50_us": pct(tot, 0.5),
            "p99_us": pct(tot, 0.99),
            "mean_us": sum(tot) / max(1, len(tot)),
        }


def paired(
    ports: Sequence[int],
    n: int,
    warmup: int,
    body: bytes,
    *,
    check: Callable[[int, bytes], None] = check_ok,
    max_s: float = 30.0,
    block: int = 25,
    timeout: float = 10.0,
    headers: Sequence[bytes] = (),
) -> list[Samples]:
    """``warmup + n`` sequential requests per port over one keep-alive connection each, in blocks of
    ``block`` per port in turn (port 0, port 1, port 0, ...). Stops early after ``max_s`` seconds.
    ``headers``: extra header lines per port (``b"Authorization: Bearer ...\\r\\n"``), when given."""
    conns = [RawConn(p, timeout) for p in ports]
    extra = list(headers) or [b""] * len(ports)
    reqs = [http_request(body, p, headers=h) for p, h in zip(ports, extra, strict=True)]
    out = [Samples(p) for p in ports]
    deadline = time.monotonic() + max_s
    try:
        for i in range(0, warmup + n, block):
            if time.monotonic() > deadline:
                break
            for conn, req, s in zip(conns, reqs, out, strict=True):
                for j in range(min(block, warmup + n - i)):
                    status, data, total, first = conn.roundtrip(req)
                    check(status, data)
                    s.sent += 1
                    if i + j >= warmup:
                        s.totals_us.append(total * 1e6)
                        s.firsts_us.append(first * 1e6)
    finally:
        for c in conns:
            c.close()
    return out


def first_ok(port: int, body: bytes, timeout: float = 2.0) -> bool:
    """True when one request to ``port`` answers 200 (False when nothing listens yet)."""
    try:
        with RawConn(port, timeout) as conn:
            status, _, _, _ = conn.roundtrip(http_request(body, port))
    except OSError:
        return False
    return status == 200
