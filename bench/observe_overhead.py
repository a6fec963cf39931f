"""What observability costs: the gateway's added latency with and without metrics + logs + request log.

One run starts the instant fake upstream (``python -m aib.devtools.fake_openai``) and two gateways
(``aib serve``) routing to it, one with everything off (``AIB_METRICS=off AIB_ACCESS_LOG=off
AIB_REQUEST_LOG=off``) and one with everything on (JSON access log to a file, request log in a temp
SQLite file, /metrics scraped during the run). It measures sequential latency over one keep-alive
connection each, in interleaved blocks of 100 requests (direct, off, on, on, off, direct, ...), so drift
and the neighbours' load hit all of them alike:

    added = p50(gateway) - p50(direct);   extra = added(on) / added(off) - 1      (target <= 10 %)

and, with ``wrk`` installed, req/s at concurrency 32 for a bounded time (CPU cost shows there; the
CPU figure is the gateway process's own: ``bench/observe_cpu.py`` also measures the writer process).

    .venv/bin/python bench/observe_overhead.py            # ~1 minute
    .venv/bin/python bench/observe_overhead.py --quick    # ~20 s

Writes ``bench/results/observe_overhead.json``. Everything binds to 127.0.0.1; every process started
here is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import httptools
import orjson

from aib.benchmark.procs import free_port, running, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "observe_overhead.json"
PY = sys.executable
PATH = "/v1/chat/completions"
BODY = orjson.dumps(
    {
        "model": "bench",
        "messages": [{"role": "user", "content": "Say hello in five words."}],
        "max_tokens": 16,
    }
)
TARGET_EXTRA = 0.10
_OFF = {"AIB_METRICS": "off", "AIB_ACCESS_LOG": "off", "AIB_REQUEST_LOG": "off"}
VARIANTS = {  # "on" and "requestlog" also get AIB_REQUEST_LOG=<tmp file>
    "off": _OFF,
    "on": {"AIB_METRICS": "on", "AIB_ACCESS_LOG": "on", "AIB_LOG_FORMAT": "json"},
    "metrics": {**_OFF, "AIB_METRICS": "on"},
    "access": {**_OFF, "AIB_ACCESS_LOG": "on", "AIB_LOG_FORMAT": "json"},
    "requestlog": {**_OFF, "AIB_REQUEST_LOG": ""},
}


class RawConn:
    """Blocking keep-alive HTTP/1.1 client with an httptools parser: as little client noise as possible."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = httptools.HttpResponseParser(self)
        self.done = False
        self.req = (
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (PATH.encode(), port, len(BODY), BODY)
        )

    def on_message_complete(self) -> None:
        self.done = True

    def roundtrip(self) -> float:
        self.done = False
        t0 = time.perf_counter()
        self.sock.sendall(self.req)
        while not self.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by peer")
            self.parser.feed_data(data)
        elapsed = time.perf_counter() - t0
        if self.parser.get_status_code() != 200:
            raise RuntimeError(f"status {self.parser.get_status_code()}")
        return elapsed

    def close(self) -> None:
        self.sock.close()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def interleaved(
    targets: dict[str, int], rounds: int, per_round: int, block: int = 100, max_s: float = 300
) -> dict[str, list[float]]:
    """Sequential latency of every target, in blocks of ``block`` requests taken in turn (order reversed
    every other block), one keep-alive connection per target: drift and neighbours' load hit all alike."""
    conns = {name: RawConn(port) for name, port in targets.items()}
    lat: dict[str, list[float]] = {name: [] for name in targets}
    deadline = time.monotonic() + max_s
    try:
        for conn in conns.values():
            for _ in range(50):  # warm-up
                conn.roundtrip()
        blocks = max(rounds * per_round // block, 1)
        for b in range(blocks):
            if time.monotonic() > deadline:
                break
            order = list(conns) if b % 2 == 0 else list(reversed(conns))
            for name in order:
                conn = conns[name]
                lat[name] += [conn.roundtrip() * 1e6 for _ in range(block)]
    finally:
        for conn in conns.values():
            conn.close()
    return lat


def wrk(port: int, seconds: int, script: Path) -> dict[str, float] | None:
    if shutil.which("wrk") is None:
        return None
    cmd = [
        "wrk",
        "-t1",
        "-c32",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(m.group(1)) if m else float("nan"),
        "requests": float(n.group(1)) if n else float("nan"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Scraper:
    """Scrapes /metrics every second during the run, as Prometheus would."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url, timeout=2) as r:
                r.read()
                self.scrapes += 1


def write_config(folder: Path, upstream_port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "providers.yaml").write_text(
        "version: 1\nproviders:\n  fake:\n    type: openai_compatible\n"
        f"    base_url: http://127.0.0.1:{upstream_port}\n    models: [bench]\n"
    )
    (folder / "model-mappings.yaml").write_text("version: 1\nmodels:\n  bench: {provider: fake}\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--per-round", type=int, default=None, help="sequential requests per target per round")
    ap.add_argument("--no-load", action="store_true", help="skip the wrk throughput runs")
    ap.add_argument(
        "--breakdown", action="store_true", help="also measure metrics, access log, request log alone"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 6)
    per_round = args.per_round or (1000 if args.quick else 2500)
    load_s = 2 if args.quick else 4

    tmp = Path(tempfile.mkdtemp(prefix="aib-observe-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    env["PYTHONUNBUFFERED"] = "1"
    names = ["off", "on"] + (["metrics", "access", "requestlog"] if args.breakdown else [])
    fake_port, ports = free_port(), {name: free_port() for name in names}
    write_config(tmp / "config", fake_port)
    lat: dict[str, list[float]] = {"direct": [], **{name: [] for name in names}}
    pids: dict[str, int] = {}
    result: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                running(
                    [PY, "-m", "aib.devtools.fake_openai", "--host", "127.0.0.1", "--port", str(fake_port)],
                    env,
                    tmp / "fake.log",
                )
            )
            wait_http(f"http://127.0.0.1:{fake_port}/health")
            for name, port in ports.items():
                venv = {**env, **VARIANTS[name]}
                if name in ("on", "requestlog"):
                    venv["AIB_REQUEST_LOG"] = str(tmp / f"requests-{name}.db")
                cmd = [
                    PY,
                    "-c",
                    "from aib.cli.main import app; app()",
                    "serve",
                    "--config-dir",
                    str(tmp / "config"),
                    "--port",
                    str(port),
                ]
                pids[name] = stack.enter_context(running(cmd, venv, tmp / f"gateway-{name}.log")).pid
            for port in ports.values():
                wait_http(f"http://127.0.0.1:{port}/health/ready")
            scraper = Scraper(ports["on"])
            scraper.thread.start()
            targets = {"direct": fake_port, **ports}
            lat = interleaved(targets, rounds, per_round)
            load: dict[str, Any] = {}
            if not args.no_load:
                script = tmp / "post.lua"
                script.write_text(
                    f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY.decode())}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                )
                for name in ["direct", *names, *names]:
                    cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                    res = wrk(targets[name], load_s, script)
                    if res is not None:
                        if name in pids:
                            res["cpu_us_per_req"] = (
                                (cpu_seconds(pids[name]) - cpu0) / max(res["requests"], 1) * 1e6
                            )
                        load.setdefault(name, []).append(res)
            scraper.stop.set()
            scraper.thread.join(5)
        rows = _summarize(lat, load)
        db = tmp / "requests-on.db"
        logged = _count_rows(db)
        result = {
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "settings": {
                "rounds": rounds,
                "per_round": per_round,
                "block": 100,
                "load_s": load_s,
                "path": PATH,
            },
            "latency_us": rows,
            "extra_pct": rows["on"]["extra_pct"],
            "target_extra_pct": TARGET_EXTRA * 100,
            "meets_target": rows["on"]["extra_pct"] <= TARGET_EXTRA * 100,
            "request_log_rows": logged,
            "metrics_scrapes": scraper.scrapes,
            "access_log_lines": _count_access_lines(tmp / "gateway-on.log"),
        }
        _print(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _summarize(lat: dict[str, list[float]], load: dict[str, Any]) -> dict[str, dict[str, Any]]:
    direct = pct(lat["direct"], 0.5)
    rows: dict[str, dict[str, Any]] = {}
    for name, values in lat.items():
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        rows[name] = {
            "n": len(values),
            "p50_us": round(p50, 1),
            "p99_us": round(p99, 1),
            "added_p50_us": round(p50 - direct, 1),
        }
        runs = load.get(name)
        if runs:
            rows[name]["rps_c32"] = round(sum(r["rps"] for r in runs) / len(runs), 1)
            cpu = [r["cpu_us_per_req"] for r in runs if "cpu_us_per_req" in r]
            if cpu:
                rows[name]["cpu_us_per_req"] = round(min(cpu), 1)
    off = rows["off"]["added_p50_us"]
    for name, row in rows.items():
        if name != "direct":
            row["extra_us"] = round(row["added_p50_us"] - off, 1)
            row["extra_pct"] = round(row["extra_us"] / off * 100, 1) if off > 0 else float("nan")
    return rows


def _count_rows(db: Path) -> int | None:
    import sqlite3

    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(db)) as con:
        return int(con.execute("SELECT count(*) FROM requests").fetchone()[0])


def _count_access_lines(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines() if '"logger":"aib.access"' in line)


def _print(result: dict[str, Any]) -> None:
    rows = result["latency_us"]
    print(
        f"\n{'target':<10}{'n':>8}{'p50 us':>10}{'p99 us':>10}{'added p50':>11}{'extra':>9}{'req/s c32':>11}"
    )
    for name, r in rows.items():
        extra = f"{r['extra_pct']:+.1f}%" if "extra_pct" in r else ""
        rps = f"{r['rps_c32']:.0f}" if "rps_c32" in r else "-"
        print(
            f"{name:<10}{r['n']:>8}{r['p50_us']:>10.1f}{r['p99_us']:>10.1f}{r['added_p50_us']:>11.1f}{extra:>9}{rps:>11}"
        )
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(
        f"\nobservability adds {rows['on']['extra_us']:+.1f} us p50 ({rows['on']['extra_pct']:+.1f} %): {verdict} the "
        f"<= {result['target_extra_pct']:.0f} % target. Request log rows: {result['request_log_rows']}, "
        f"access lines: {result['access_log_lines']}, /metrics scrapes: {result['metrics_scrapes']}."
    )


if __name__ == "__main__":
    raise SystemExit(main())
