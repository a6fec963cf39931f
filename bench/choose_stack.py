"""Choose the HTTP server and the pooled upstream client for the gateway, by measurement.

One run starts the instant fake upstream (``aib.devtools.fake_openai``) in its own process, then, for each
candidate (server x client), a minimal forwarding proxy (``bench/_stack_candidates.py``) in its own process,
and measures against hitting the fake directly:

* sequential latency p50/p99 over one keep-alive connection (raw socket + httptools client, this process),
  interleaved in blocks with the same requests sent direct, so background noise hits both paths alike;
* req/s at concurrency 64 for a bounded time, with ``wrk`` (falls back to a Python load generator);
* streaming TTFT (time to first body byte of an SSE stream) and total stream time, added over direct;
* RSS of the proxy (process tree) after load, and proxy CPU time per request.

Usage::

    .venv/bin/python bench/choose_stack.py              # full run, ~2-3 minutes
    .venv/bin/python bench/choose_stack.py --quick      # smoke run, 1 round, ~1 min
    .venv/bin/python bench/choose_stack.py --only uvicorn+aiohttp,granian-rsgi+aiohttp

Results: a table on stdout and ``bench/results/choose_stack.json``. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from aib.benchmark.client import RawConn, check_ok, first_ok, stream_check
from aib.benchmark.client import http_request as _http_request
from aib.benchmark.client import paired as _paired
from aib.benchmark.load import pyload, run_wrk
from aib.benchmark.procs import Proc, cpu_busy_s, free_port, own_cpu_s, wait_quiet
from aib.benchmark.procs import machine_info as _machine_info
from aib.benchmark.procs import spawn as _spawn
from aib.benchmark.procs import wait_ready as _wait_ready
from aib.benchmark.stats import pct

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
PATH = "/v1/chat/completions"
FAKE_CHUNKS, FAKE_DELAY_MS = 8, 1.0
BODY = orjson.dumps(
    {
        "model": "client-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        "max_tokens": 16,
        "temperature": 0.2,
    }
)
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})
_stream_check = stream_check(FAKE_CHUNKS + 2)

# (server, client). "raw" = hand-rolled asyncio.Protocol + httptools (reference floor, not a framework).
CANDIDATES = [
    ("uvicorn", "aiohttp"),
    ("uvicorn", "httpx"),
    ("granian-asgi", "aiohttp"),
    ("granian-rsgi", "aiohttp"),
    ("aiohttp-web", "aiohttp"),
    ("raw", "aiohttp"),
    ("uvicorn", "raw"),
    ("granian-rsgi", "raw"),
    ("raw", "raw"),
]
# Not in the default run (time budget); select with --only, e.g. --only uvicorn+aiohttp-default
EXTRA = [("uvicorn", "aiohttp-default"), ("aiohttp-lowlevel", "aiohttp"), ("granian-rsgi", "httpx")]
TARGETS = {"added_p50_us": 300.0, "rps_ratio": 0.40, "ttft_added_us": 1000.0, "rss_mb": 100.0}


def http_request(body: bytes, port: int) -> bytes:
    return _http_request(body, port, PATH)


def _check_stream(status: int, body: bytes) -> None:
    _stream_check(status, body)
    if body.count(b"data: ") != FAKE_CHUNKS + 2:
        raise RuntimeError(f"bad stream: {body.count(b'data: ')} events, want {FAKE_CHUNKS + 2}")


def paired(ports: tuple[int, int], n: int, warmup: int, stream: bool, max_s: float) -> list[dict[str, float]]:
    """Sequential requests over one keep-alive connection per port, interleaved in blocks of 25 so that
    background noise hits the direct and the proxied path alike. Returns one summary per port."""
    body = STREAM_BODY if stream else BODY
    check = _check_stream if stream else check_ok
    return [s.summary(stream) for s in _paired(ports, n, warmup, body, check=check, max_s=max_s)]


# --------------------------------------------------------------------------- load at concurrency


def load_wrk(port: int, conns: int, seconds: float, script: Path) -> dict[str, float]:
    return run_wrk(port, conns, seconds, script, path=PATH)


def load_python(port: int, conns: int, seconds: float) -> dict[str, float]:
    cmd = [PY, __file__, "--_loadgen", f"{port},{conns},{seconds}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 40, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- aiohttp client ablation

# Cumulative: each variant adds one setting to the previous one.
ABLATION = [
    "default ClientSession()",
    "+ DummyCookieJar",
    "+ auto_decompress=False",
    "+ skip_auto_headers UA/Accept/Accept-Encoding",
    "+ pre-parsed yarl.URL(encoded=True)",
    "+ timeout total=None (no per-request timer)",
    "+ TCPConnector(limit=512, ttl_dns_cache=None)",
]


async def _ablation_run(level: int, port: int, seconds: float) -> dict[str, float]:
    import aiohttp
    from yarl import URL

    kw: dict[str, Any] = {}
    if level >= 1:
        kw["cookie_jar"] = aiohttp.DummyCookieJar()
    if level >= 2:
        kw["auto_decompress"] = False
    if level >= 3:
        kw["skip_auto_headers"] = ("User-Agent", "Accept", "Accept-Encoding")
    if level >= 5:
        kw["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=5)
    if level >= 6:
        kw["connector"] = aiohttp.TCPConnector(limit=512, ttl_dns_cache=None)
    url_s = f"http://127.0.0.1:{port}{PATH}"
    url: Any = URL(url_s, encoded=True) if level >= 4 else url_s
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(**kw) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=headers) as resp:
                await resp.read()

        for _ in range(300):
            await one()
        lat = []
        for _ in range(1500):
            t0 = time.perf_counter()
            await one()
            lat.append((time.perf_counter() - t0) * 1e6)
        lat.sort()
        count = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await one()
                count += 1

        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(64))), seconds + 20)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return {"seq_p50_us": pct(lat, 0.5), "client_cpu_us_per_req": cpu / count * 1e6, "rps_c64": count / wall}


def ablation(up_port: int, seconds: float, rounds: int) -> list[dict[str, Any]]:
    """Each aiohttp client variant in its own process against the fake upstream; best of ``rounds``."""
    out: list[dict[str, Any]] = [{"variant": name, "runs": []} for name in ABLATION]
    for _ in range(rounds):
        for level, row in enumerate(out):
            cmd = [PY, __file__, "--_ablation", f"{level},{up_port},{seconds}"]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
            row["runs"].append(json.loads(res.stdout.strip().splitlines()[-1]))
    for row in out:
        runs = row["runs"]
        row["seq_p50_us"] = min(r["seq_p50_us"] for r in runs)
        row["client_cpu_us_per_req"] = min(r["client_cpu_us_per_req"] for r in runs)
        row["rps_c64"] = max(r["rps_c64"] for r in runs)
        print(
            f"  {row['variant']:48s} seq p50 {row['seq_p50_us']:5.0f} µs  "
            f"client CPU {row['client_cpu_us_per_req']:4.0f} µs/req  {row['rps_c64']:6.0f} req/s @64",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- processes


def spawn(name: str, cmd: list[str], env: dict[str, str], logdir: Path) -> Proc:
    return _spawn(name, cmd, env, logdir, cwd=ROOT)


def wait_ready(proc: Proc, port: int, seconds: float) -> None:
    """Poll until the process answers a real forwarded request with 200 (bounded)."""
    _wait_ready(proc, lambda: first_ok(port, BODY), seconds, interval=0.1)


def proxy_cmd(server: str, client: str, port: int, upstream: str) -> list[str]:
    if server.startswith("granian-"):
        return [
            PY,
            "-m",
            "granian",
            "--interface",
            server.removeprefix("granian-"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--runtime-threads",
            "1",
            "--loop",
            "uvloop",
            "--http",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            "--no-access-log",
            "--backlog",
            "2048",
            "--working-dir",
            str(BENCH),
            f"_stack_candidates:{server.removeprefix('granian-')}_app",
        ]
    return [
        PY,
        str(BENCH / "_stack_candidates.py"),
        "--server",
        server,
        "--client",
        client,
        "--port",
        str(port),
        "--upstream",
        upstream,
    ]


# --------------------------------------------------------------------------- orchestration


def measure(port: int, a: argparse.Namespace, loader: Any, procs: list[Proc], up_port: int) -> dict[str, Any]:
    """One round against ``port``; ``procs[-1]`` is the process whose RSS/CPU is reported."""
    m: dict[str, Any] = {"busy_before_pct": wait_quiet(a.settle)}
    m["seq_direct"], m["seq"] = paired((up_port, port), a.n, a.warmup, False, 30)
    m["stream_direct"], m["stream"] = paired((up_port, port), a.stream_n, 25, True, 20)
    target = procs[-1]
    m["rss_idle_mb"] = target.rss_mb()
    loader(port, a.connections, 1.0)  # fill the pools at full concurrency
    cpu0, own0, busy0, t0 = target.cpu_s(), own_cpu_s(procs), cpu_busy_s(), time.monotonic()
    m["load"] = loader(port, a.connections, a.duration)
    wall = time.monotonic() - t0
    m["cpu_us_per_req"] = (target.cpu_s() - cpu0) / max(1.0, m["load"]["requests"]) * 1e6
    foreign = (cpu_busy_s() - busy0) - (own_cpu_s(procs) - own0)
    m["foreign_cpu_pct"] = max(0.0, foreign / (wall * (os.cpu_count() or 1)) * 100)
    m["rss_after_mb"] = target.rss_mb()
    m["added_p50_us"] = m["seq"]["p50_us"] - m["seq_direct"]["p50_us"]
    m["ttft_added_us"] = m["stream"]["ttft_p50_us"] - m["stream_direct"]["ttft_p50_us"]
    m["stream_total_added_us"] = m["stream"]["total_p50_us"] - m["stream_direct"]["total_p50_us"]
    return m


@dataclass
class Row:
    stack: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def summarize(self, direct_rps: float, direct_p99_us: float) -> None:
        """Best of the rounds per metric (noise on a shared 2-core box only ever makes numbers worse).

        p50 is paired with the direct run taken right before the candidate; p99 is too noisy for that, so
        its "added" is the best proxy p99 minus the best direct p99 seen in the whole run (conservative).
        """
        rs = self.rounds
        b = self.best
        for key in ("added_p50_us", "ttft_added_us", "stream_total_added_us", "cpu_us_per_req"):
            b[key] = min(r[key] for r in rs)
        b["p50_us"] = min(r["seq"]["p50_us"] for r in rs)
        b["p99_us"] = min(r["seq"]["p99_us"] for r in rs)
        b["added_p99_us"] = b["p99_us"] - direct_p99_us
        b["rps"] = max(r["load"]["rps"] for r in rs)
        b["load_p99_ms"] = min(r["load"]["lat_p99_ms"] for r in rs)
        b["errors"] = sum(r["load"]["errors"] for r in rs)
        b["rss_after_mb"] = max(r["rss_after_mb"] for r in rs)
        b["foreign_cpu_pct"] = min(r["foreign_cpu_pct"] for r in rs)
        b["rps_ratio"] = b["rps"] / direct_rps
        b["meets_all_targets"] = float(
            b["added_p50_us"] <= TARGETS["added_p50_us"]
            and b["rps_ratio"] >= TARGETS["rps_ratio"]
            and b["ttft_added_us"] <= TARGETS["ttft_added_us"]
            and b["rss_after_mb"] <= TARGETS["rss_mb"]
        )


def machine_info() -> dict[str, Any]:
    return _machine_info(("uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "granian", "orjson"))


def print_table(rows: list[Row], direct: Row) -> None:
    headers = [
        "stack",
        "+p50 µs",
        "+p99 µs",
        "req/s c64",
        "% direct",
        "load p99 ms",
        "+TTFT µs",
        "RSS MB",
        "CPU µs/req",
        "foreign CPU",
        "targets",
    ]
    data = []
    for r in [direct, *rows]:
        if r.error:
            data.append([r.stack, "ERROR: " + r.error[:60]] + [""] * (len(headers) - 2))
            continue
        b, is_direct = r.best, r is direct
        data.append(
            [
                r.stack,
                f"({b['p50_us']:.0f})" if is_direct else f"{b['added_p50_us']:+.0f}",
                f"({b['p99_us']:.0f})" if is_direct else f"{b['added_p99_us']:+.0f}",
                f"{b['rps']:.0f}",
                "100%" if is_direct else f"{b['rps_ratio'] * 100:.0f}%",
                f"{b['load_p99_ms']:.2f}",
                "-" if is_direct else f"{b['ttft_added_us']:+.0f}",
                f"{b['rss_after_mb']:.1f}",
                f"{b['cpu_us_per_req']:.0f}",
                f"{b['foreign_cpu_pct']:.0f}%",
                "-" if is_direct else ("PASS" if b["meets_all_targets"] else "fail"),
            ]
        )
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Gateway stack candidates vs direct (best of rounds)")
        for h in headers:
            table.add_column(h, justify="left" if h == "stack" else "right")
        for line in data:
            table.add_row(*line)
        Console(width=max(150, shutil.get_terminal_size().columns)).print(table)
    except ImportError:
        widths = [max(len(str(x)) for x in col) for col in zip(headers, *data, strict=False)]
        for line in [headers, *data]:
            print("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=False)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (1 round, small counts)")
    ap.add_argument("--only", default="", help="comma list of server+client, e.g. uvicorn+aiohttp,raw+raw")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over all candidates; best round counts")
    ap.add_argument("-n", type=int, default=2000, help="sequential requests per candidate and round")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--direct-n", type=int, default=1000, help="direct requests right before each candidate")
    ap.add_argument("--stream-n", type=int, default=50, help="sequential streams per candidate and round")
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of load at concurrency per round")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--settle", type=float, default=2.0, help="max seconds to wait for a quiet machine")
    ap.add_argument("--loader", choices=["auto", "wrk", "python"], default="auto")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "choose_stack.json")
    ap.add_argument("--ablation", action="store_true", help="also measure aiohttp client settings one by one")
    ap.add_argument("--_loadgen", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_ablation", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._loadgen:
        import uvloop

        port, conns, secs = a._loadgen.split(",")
        print(json.dumps(uvloop.run(pyload(int(port), int(conns), float(secs), BODY))))
        return 0
    if a._ablation:
        import uvloop

        level, port, secs = a._ablation.split(",")
        print(json.dumps(uvloop.run(_ablation_run(int(level), int(port), float(secs)))))
        return 0
    if a.quick:
        a.rounds, a.n, a.warmup, a.stream_n, a.duration = 1, 500, 100, 25, 2.0
    cands = CANDIDATES
    if a.only:
        wanted = [s.strip() for s in a.only.split(",") if s.strip()]
        cands = [(w.split("+", 1)[0], w.split("+", 1)[-1]) for w in wanted]
        unknown = [f"{sv}+{cl}" for sv, cl in cands if (sv, cl) not in CANDIDATES + EXTRA]
        if unknown:
            ap.error(
                f"unknown candidates {unknown}; known: servers {sorted({c[0] for c in CANDIDATES})}, "
                "clients aiohttp, aiohttp-default, httpx, raw"
            )

    use_wrk = a.loader == "wrk" or (a.loader == "auto" and shutil.which("wrk"))
    logdir = Path(tempfile.mkdtemp(prefix="aib-choose-stack-"))
    if use_wrk:
        script = logdir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(BODY.decode())}\n"
        )
        loader: Any = lambda port, c, s: load_wrk(port, c, s, script)  # noqa: E731
    else:
        loader = load_python
    info = machine_info()
    info["loader"] = "wrk -t1" if use_wrk else "python asyncio"
    print(
        f"machine: {info['nproc']} CPU, {info['cpu_model']}, loadavg {info['loadavg_start']}; "
        f"loader: {info['loader']}; {len(cands)} candidates x {a.rounds} rounds; logs in {logdir}",
        flush=True,
    )

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(BENCH)])}
    up_port = free_port()
    fake_cmd = [
        PY,
        "-m",
        "aib.devtools.fake_openai",
        "--host",
        "127.0.0.1",
        "--port",
        str(up_port),
        "--chunks",
        str(FAKE_CHUNKS),
        "--chunk-delay-ms",
        str(FAKE_DELAY_MS),
    ]
    upstream = spawn("fake_openai", fake_cmd, env, logdir)
    upstream_url = f"http://127.0.0.1:{up_port}"
    direct = Row("direct (fake upstream)")
    rows = [Row(f"{s}+{c}") for s, c in cands]
    ablation_rows: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        wait_ready(upstream, up_port, 15)
        for rnd in range(a.rounds):
            print(f"round {rnd + 1}/{a.rounds}", flush=True)
            direct.rounds.append(measure(up_port, a, loader, [upstream], up_port))
            print(
                f"  {direct.stack:28s} p50 {direct.rounds[-1]['seq']['p50_us']:6.0f} µs  "
                f"{direct.rounds[-1]['load']['rps']:7.0f} req/s",
                flush=True,
            )
            for (server, client), row in zip(cands, rows, strict=True):
                if row.error:
                    continue
                port = free_port()
                cenv = {**env, "AIB_BENCH_CLIENT": client, "AIB_BENCH_UPSTREAM": upstream_url}
                proc = spawn(row.stack, proxy_cmd(server, client, port, upstream_url), cenv, logdir)
                try:
                    wait_ready(proc, port, 30)
                    conn = RawConn(port)
                    try:
                        _, body, _, _ = conn.roundtrip(http_request(BODY, port))
                    finally:
                        conn.close()
                    if orjson.loads(body)["model"] != "rewritten-model":
                        raise RuntimeError("proxy did not rewrite the model")
                    m = measure(port, a, loader, [upstream, proc], up_port)
                    row.rounds.append(m)
                    print(
                        f"  {row.stack:28s} +p50 {m['added_p50_us']:6.0f} µs  {m['load']['rps']:7.0f} req/s  "
                        f"+TTFT {m['ttft_added_us']:5.0f} µs  CPU {m['cpu_us_per_req']:4.0f} µs/req  "
                        f"RSS {m['rss_after_mb']:5.1f} MB  foreign CPU {m['foreign_cpu_pct']:3.0f}%",
                        flush=True,
                    )
                except Exception as exc:  # one broken candidate must not sink the run
                    row.error = f"{type(exc).__name__}: {exc}"
                    print(f"  {row.stack}: {row.error}", flush=True)
                finally:
                    proc.stop()
        direct.rounds.append(measure(up_port, a, loader, [upstream], up_port))  # closing baseline (drift)
        if a.ablation:
            print("aiohttp client settings, cumulative (client process only, against the fake):", flush=True)
            ablation_rows = ablation(up_port, 1.5, a.rounds)
    finally:
        upstream.stop()
    direct_rps = max(r["load"]["rps"] for r in direct.rounds)  # most demanding baseline for the ratio
    direct_p99 = min(r["seq_direct"]["p99_us"] for row in [direct, *rows] for r in row.rounds)
    direct.summarize(direct_rps, direct_p99)
    for row in rows:
        if not row.error:
            row.summarize(direct_rps, direct_p99)
    info["loadavg_end"] = os.getloadavg()
    info["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print_table(rows, direct)
    print(
        f"direct req/s per round: {[round(r['load']['rps']) for r in direct.rounds]} (ratio uses the max); "
        f"elapsed {info['elapsed_s']} s"
    )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": info,
        "targets": TARGETS,
        "direct_rps_baseline": direct_rps,
        "settings": {k: str(v) for k, v in vars(a).items() if not k.startswith("_")},
        "fake_upstream": {"chunks": FAKE_CHUNKS, "chunk_delay_ms": FAKE_DELAY_MS},
        "direct": asdict(direct),
        "candidates": [asdict(r) for r in rows],
        "aiohttp_client_ablation": ablation_rows,
    }
    a.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
    failed = any(r.error for r in rows)
    if not failed:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
