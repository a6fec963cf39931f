"""What each front door (Anthropic Messages, Ollama, OpenAI Responses) adds to the gateway's CPU over
the OpenAI pass-through, in one run against instant fake upstreams.

Two fake upstreams (``python -m aib.devtools.fake_openai``): ``m5`` streams 5 content chunks, ``m45``
45. One ``aib serve`` (health checks and observability off, so only the request path is measured) routes
both. In interleaved rounds, every (door, mode) pair gets ``wrk -c8`` for a warm-up and a measured
window: the gateway process's own CPU (utime + stime from /proc) over the window, divided by the
requests served, is its CPU per request. Per round:

* non-streaming added CPU = door(plain) - openai(plain);
* per stream chunk = ((door - openai)(45 chunks) - (door - openai)(5 chunks)) / 40;
* TTFT added: sequential streamed requests on one keep-alive connection (door and OpenAI
  interleaved), time to the first body byte, median(door) - median(openai).

``--in-process`` also times the door code alone (decode a request, encode a whole answer, encode one
stream chunk) with no HTTP around it: a precise floor for the numbers above.

    .venv/bin/python bench/doors_bench.py            # 3 rounds, ~4 min
    .venv/bin/python bench/doors_bench.py --quick    # 1 round, ~1 min

Prints a table and writes ``bench/results/doors.json``. Targets (issue #15): <= 40 us per request
non-streaming, <= 5 us per stream chunk, TTFT <= 0.3 ms added. Everything binds to 127.0.0.1; every
process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from aib.benchmark.client import RawConn, http_request
from aib.benchmark.procs import Proc, free_port, machine_info, spawn, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGETS = {"plain_us": 40.0, "chunk_us": 5.0, "ttft_ms": 0.3}
DOORS = ("openai", "anthropic", "ollama", "responses")
MODES = ("plain", "stream5", "stream45")
PATHS = {
    "openai": "/v1/chat/completions",
    "anthropic": "/v1/messages",
    "ollama": "/api/chat",
    "responses": "/v1/responses",
}


def body(door: str, model: str, stream: bool) -> dict[str, Any]:
    hi = [{"role": "user", "content": "hi"}]
    if door == "openai":
        b: dict[str, Any] = {"model": model, "messages": hi, "max_tokens": 64}
        if stream:
            b["stream_options"] = {"include_usage": True}  # as the doors ask: the same upstream work
    elif door == "anthropic":
        b = {"model": model, "max_tokens": 64, "messages": hi}
    elif door == "ollama":
        b = {"model": model, "messages": hi, "options": {"num_predict": 64}}
    else:
        b = {"model": model, "input": "hi", "max_output_tokens": 64}
    b["stream"] = stream
    return b


def lua(door: str, mode: str) -> str:
    model = "m45" if mode == "stream45" else "m5"
    payload = orjson.dumps(body(door, model, mode != "plain")).decode().replace("'", "\\'")
    return f'wrk.method = "POST"\nwrk.path = "{PATHS[door]}"\nwrk.body = \'{payload}\'\nwrk.headers["Content-Type"] = "application/json"\n'


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: float, script: Path, connections: int) -> int:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"(\d+) requests in", out)
    if m is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk: {out}")
    return int(m.group(1))


def measure(gw: Proc, port: int, script: Path, args: argparse.Namespace) -> dict[str, float]:
    wrk(port, args.warmup, script, args.connections)
    c0 = proc_cpu_s(gw.popen.pid)
    reqs = wrk(port, args.seconds, script, args.connections)
    cpu = proc_cpu_s(gw.popen.pid) - c0
    return {"requests": reqs, "cpu_us_per_req": cpu / reqs * 1e6}


def ttft(port: int, n: int) -> dict[str, float]:
    """Median seconds to the first body byte of a streamed answer, per door (interleaved)."""
    reqs = {d: http_request(orjson.dumps(body(d, "m5", True)), port, PATHS[d]) for d in DOORS}
    seen: dict[str, list[float]] = {d: [] for d in DOORS}
    conn = RawConn(port)
    try:
        for i in range(n):
            for d in DOORS if i % 2 == 0 else DOORS[::-1]:
                status, _, _, first = conn.roundtrip(reqs[d])
                if status != 200:
                    raise RuntimeError(f"{d}: status {status}")
                seen[d].append(first)
    finally:
        conn.close()
    return {d: statistics.median(v) for d, v in seen.items()}


def in_process(iterations: int) -> dict[str, dict[str, float]]:
    """CPU (us) of the door code alone: decode a request + encode a whole answer; encode one chunk; a
    whole 5-chunk stream less its chunks (decode, start and end events)."""
    import asyncio

    from aib.doors.anthropic import AnthropicExchange
    from aib.doors.ollama import OllamaExchange
    from aib.doors.responses import ResponsesExchange

    answer = orjson.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 "}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}})  # fmt: skip
    chunk = b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,"delta":{"content":"tok1 "},"logprobs":null,"finish_reason":null}]}\n\n'
    usage = b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":5,"total_tokens":6}}\n\n'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"r1")],
    }
    sse_start = {**start, "headers": [(b"content-type", b"text/event-stream"), (b"x-request-id", b"r1")]}
    out: dict[str, dict[str, float]] = {}

    async def sink(message: dict[str, Any]) -> None:
        pass

    makers = {
        "anthropic": lambda: AnthropicExchange({"headers": []}, sink),
        "ollama": lambda: OllamaExchange({"headers": []}, sink, "chat"),
        "responses": lambda: ResponsesExchange({"headers": []}, sink),
    }

    async def run() -> None:
        for door, make in makers.items():
            req = orjson.dumps(body(door, "m5", False))
            c0 = time.process_time()
            for _ in range(iterations):
                x = make()
                x.decode(req)
                await x.send(start)
                await x.send({"type": "http.response.body", "body": answer})
            plain = (time.process_time() - c0) / iterations * 1e6
            x = make()
            x.decode(orjson.dumps(body(door, "m5", True)))
            await x.send(sse_start)
            c0 = time.process_time()
            for _ in range(iterations * 5):
                await x.send({"type": "http.response.body", "body": chunk, "more_body": True})
            per_chunk = (time.process_time() - c0) / (iterations * 5) * 1e6
            stream_req = orjson.dumps(body(door, "m5", True))
            c0 = time.process_time()
            for _ in range(iterations):  # a whole 5-chunk stream: decode, start, chunks, usage, [DONE]
                x = make()
                x.decode(stream_req)
                await x.send(sse_start)
                for _ in range(5):
                    await x.send({"type": "http.response.body", "body": chunk, "more_body": True})
                await x.send({"type": "http.response.body", "body": usage, "more_body": True})
                await x.send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            whole = (time.process_time() - c0) / iterations * 1e6
            out[door] = {
                "decode_and_answer_us": round(plain, 2),
                "chunk_us": round(per_chunk, 2),
                "stream_fixed_us": round(whole - 5 * per_chunk, 2),
            }

    asyncio.run(run())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--ttft-requests", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s windows")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.ttft_requests = 1, 2.0, 100
    RESULTS.mkdir(parents=True, exist_ok=True)
    procs: list[Proc] = []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aib-doors-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            ports = [free_port(), free_port()]
            for p, chunks in zip(ports, (5, 45), strict=True):
                procs.append(spawn(f"fake{chunks}", [sys.executable, "-m", "aib.devtools.fake_openai", "--port", str(p), "--chunks", str(chunks)], dict(os.environ), tmp))  # fmt: skip
            for p in ports:
                wait_http(f"http://127.0.0.1:{p}/v1/models", 20)
            config = tmp / "config"
            config.mkdir()
            (config / "providers.yaml").write_text(
                "version: 1\nproviders:\n"
                f"  f5: {{type: openai_compatible, base_url: 'http://127.0.0.1:{ports[0]}', models: [m5]}}\n"
                f"  f45: {{type: openai_compatible, base_url: 'http://127.0.0.1:{ports[1]}', models: [m45]}}\n"
            )
            (config / "model-mappings.yaml").write_text(
                "version: 1\nmodels:\n  m5: {provider: f5}\n  m45: {provider: f45}\n"
            )
            port = free_port()
            env = {**os.environ, "AIB_METRICS": "off", "AIB_ACCESS_LOG": "off", "AIB_REQUEST_LOG": "off"}
            cmd = [sys.executable, "-c", "from aib.cli.main import app; app()", "serve", "--config-dir", str(config),
                   "--port", str(port), "--log-level", "warning", "--no-health-checks"]  # fmt: skip
            gw = spawn("gateway", cmd, env, tmp, cwd=tmp)
            procs.append(gw)
            wait_http(f"http://127.0.0.1:{port}/health/live", 30)
            scripts = {}
            for d in DOORS:
                for m in MODES:
                    scripts[(d, m)] = tmp / f"{d}-{m}.lua"
                    scripts[(d, m)].write_text(lua(d, m))
            pairs = [(d, m) for m in MODES for d in DOORS]
            ttfts = []
            for rnd in range(args.rounds):
                for d, m in pairs if rnd % 2 == 0 else pairs[::-1]:
                    r = measure(gw, port, scripts[(d, m)], args)
                    runs.append({"round": rnd, "door": d, "mode": m, **r})
                    print(
                        f"round {rnd + 1} {d:>9} {m:>8}: {r['cpu_us_per_req']:8.1f} us/req ({r['requests']} requests)",
                        flush=True,
                    )
                ttfts.append(ttft(port, args.ttft_requests))
        finally:
            for p in reversed(procs):
                p.stop()
    cpu = {(r["round"], r["door"], r["mode"]): r["cpu_us_per_req"] for r in runs}
    summary: dict[str, dict[str, Any]] = {}
    for d in DOORS[1:]:
        plain, per_chunk, fixed = [], [], []
        for rnd in range(args.rounds):
            added = {m: cpu[(rnd, d, m)] - cpu[(rnd, "openai", m)] for m in MODES}
            plain.append(added["plain"])
            chunk = (added["stream45"] - added["stream5"]) / 40
            per_chunk.append(chunk)
            fixed.append(added["stream5"] - 5 * chunk)
        ttft_ms = statistics.median((t[d] - t["openai"]) * 1000 for t in ttfts)
        summary[d] = {
            "plain_us": round(statistics.median(plain), 1),
            "chunk_us": round(statistics.median(per_chunk), 2),
            "stream_fixed_us": round(statistics.median(fixed), 1),
            "ttft_ms": round(ttft_ms, 3),
        }
    base = {m: round(statistics.median(cpu[(r, "openai", m)] for r in range(args.rounds)), 1) for m in MODES}
    micro = in_process(2000 if args.quick else 5000)
    print("\nCPU the door adds per request over the OpenAI pass-through (median of rounds; OpenAI itself: "
          f"{base['plain']} us plain, {base['stream5']} us for 5 chunks, {base['stream45']} us for 45)")  # fmt: skip
    print(f"{'door':>10} | {'plain us':>9} | {'per chunk us':>12} | {'stream fixed us':>15} | {'TTFT ms':>8} | {'alone: req us':>13} | {'alone: chunk us':>15} | {'alone: stream fixed us':>22}")  # fmt: skip
    for d, row in summary.items():
        print(f"{d:>10} | {row['plain_us']:>9} | {row['chunk_us']:>12} | {row['stream_fixed_us']:>15} | {row['ttft_ms']:>8} | "
              f"{micro[d]['decode_and_answer_us']:>13} | {micro[d]['chunk_us']:>15} | {micro[d]['stream_fixed_us']:>22}")  # fmt: skip
    print(
        f"targets: plain <= {TARGETS['plain_us']} us, per chunk <= {TARGETS['chunk_us']} us, TTFT <= {TARGETS['ttft_ms']} ms"
    )
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(["orjson", "uvloop", "httptools"]),
        "settings": vars(args),
        "targets": TARGETS,
        "openai_cpu_us_per_req": base,
        "summary": summary,
        "in_process": micro,
        "runs": runs,
        "ttft_s": ttfts,
    }
    out = RESULTS / "doors.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
