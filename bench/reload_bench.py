"""What a hot reload costs: file write -> new plan serving, and request latency during reloads.

One run starts two instant fake upstreams (``python -m aib.devtools.fake_openai``) and ``aib serve``
on a config folder in a temp dir (watcher on, default debounce), where model ``m`` goes to upstream A
in one config and to upstream B in the other. Then:

1. **write -> serving**: a prober sends requests back to back over one keep-alive connection; the
   config files are rewritten (plain writes, as an editor does) and the time until the first response
   from the other upstream is taken (target p50 <= 200 ms, debounce included). The same through
   ``POST /admin/reload`` (no watcher, no debounce) for comparison.
2. **latency with and without reloads**: ``wrk -c32`` rounds, alternating a quiet run and a run during
   which the config flips every 0.5 s; p50/p99 of both, and every error counted (must be 0).

    .venv/bin/python bench/reload_bench.py            # ~1 minute
    .venv/bin/python bench/reload_bench.py --quick    # ~20 s

Writes ``bench/results/reload.json``. Everything binds to 127.0.0.1; every process started here is
stopped by PID.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from aib.benchmark.procs import free_port, running, wait_http

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "reload.json"
PY = sys.executable
AIB = str(Path(PY).parent / "aib")
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
TARGET_P50_MS = 200.0


def configs(port_a: int, port_b: int) -> list[tuple[str, str, str]]:
    out = []
    for name, port in (("pa", port_a), ("pb", port_b)):
        providers = f'providers:\n  {name}: {{type: openai_compatible, base_url: "http://127.0.0.1:{port}", models: [m]}}\n'
        out.append((providers, f"models:\n  m: {{provider: {name}}}\n", name))
    return out


def write(folder: Path, cfg: tuple[str, str, str]) -> None:
    (folder / "providers.yaml").write_text(cfg[0])
    (folder / "model-mappings.yaml").write_text(cfg[1])


class Prober:
    """Requests back to back on one keep-alive connection; remembers when each provider last answered."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.stop = threading.Event()
        self.latest: tuple[float, str] = (0.0, "")
        self.errors = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
                resp = self.conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.errors += 1
                self.latest = (time.perf_counter(), resp.getheader("x-aib-provider") or "")
            except OSError:
                self.errors += 1
                self.conn.close()

    def wait_for(self, provider: str, since: float, timeout: float = 5.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            t, prov = self.latest
            if prov == provider and t > since:
                return t - since
            time.sleep(0.0005)
        raise RuntimeError(f"{provider} never answered within {timeout}s of the write")


def post_reload(port: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/reload", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return dict(json.loads(r.read()))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


def write_to_serving(folder: Path, port: int, cfgs: list[tuple[str, str, str]], n: int) -> dict[str, Any]:
    prober = Prober(port)
    prober.thread.start()
    watcher_ms, api_ms = [], []
    try:
        for i in range(n):
            cfg = cfgs[(i + 1) % 2]
            t0 = time.perf_counter()
            write(folder, cfg)
            watcher_ms.append(prober.wait_for(cfg[2], t0) * 1000)
            time.sleep(0.3)
        time.sleep(0.3)
        for i in range(n):  # through the API: no watcher debounce
            cfg = cfgs[i % 2]
            write(folder, cfg)
            t0 = time.perf_counter()
            post_reload(port)
            api_ms.append(prober.wait_for(cfg[2], t0) * 1000)
            time.sleep(0.3)
    finally:
        prober.stop.set()
        prober.thread.join(10)
    return {
        "watcher_ms": {
            "p50": statistics.median(watcher_ms),
            "p90": pct(watcher_ms, 0.9),
            "max": max(watcher_ms),
        },
        "api_ms": {"p50": statistics.median(api_ms), "p90": pct(api_ms, 0.9), "max": max(api_ms)},
        "samples": n,
        "prober_errors": prober.errors,
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port: int, seconds: int, script: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--timeout", "5s", "--latency", "-s", str(script)]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    lat = {
        f"p{q}": float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        **lat,
        "requests": float(n.group(1)) if n else float("nan"),
        "errors": float(bad.group(1) if bad else 0) + (sum(float(x) for x in sock.groups()) if sock else 0.0),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
    }


def latency_rounds(
    folder: Path, port: int, cfgs: list[tuple[str, str, str]], rounds: int, seconds: int
) -> dict[str, Any]:
    script = folder.parent / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(BODY)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    runs: dict[str, list[dict[str, float]]] = {"quiet": [], "reloading": []}
    reloads = 0
    for _ in range(rounds):
        runs["quiet"].append(wrk(port, seconds, script))
        stop = threading.Event()

        def flip(stop: threading.Event = stop) -> None:
            nonlocal reloads
            i = 0
            while not stop.wait(0.5):
                i += 1
                write(folder, cfgs[i % 2])
                reloads += 1

        t = threading.Thread(target=flip, daemon=True)
        t.start()
        try:
            runs["reloading"].append(wrk(port, seconds, script))
        finally:
            stop.set()
            t.join(5)
    summary = {}
    for name, rs in runs.items():
        summary[name] = {
            "p50_ms": statistics.median(r["p50"] for r in rs),
            "p99_ms": statistics.median(r["p99"] for r in rs),
            "rps": statistics.median(r["rps"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "errors": sum(r["errors"] for r in rs),
        }
    summary["file_writes_during_load"] = reloads
    summary["rounds"] = rounds
    summary["seconds_per_run"] = seconds
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n, rounds, seconds = (10, 1, 3) if args.quick else (30, 3, 5)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): needed for the latency part", file=sys.stderr)
        return 1
    port_a, port_b, port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="aib-reload-bench-") as tmp:
        folder = Path(tmp) / "config"
        folder.mkdir()
        cfgs = configs(port_a, port_b)
        write(folder, cfgs[0])
        env = {**os.environ, "AIB_REQUEST_LOG": "off", "AIB_ACCESS_LOG": "off", "AIB_ADMIN_KEY": ""}
        fake = [PY, "-m", "aib.devtools.fake_openai", "--host", "127.0.0.1", "--port"]
        with (
            running([*fake, str(port_a)]),
            running([*fake, str(port_b)]),
            running(
                [AIB, "serve", "--config-dir", str(folder), "--port", str(port), "--log-level", "warning"],
                env,
            ) as gw,
        ):
            wait_http(f"http://127.0.0.1:{port}/health/ready")
            swap = write_to_serving(folder, port, cfgs, n)
            lat = latency_rounds(folder, port, cfgs, rounds, seconds)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/reloads?limit=1000") as r:
                history = json.loads(r.read())["reloads"]
            gw_pid = gw.pid
    results = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "gateway_pid": gw_pid,
        "debounce_ms": int(os.environ.get("AIB_RELOAD_DEBOUNCE_MS") or 100),
        "write_to_serving": swap,
        "latency": lat,
        "reloads": {
            "total": len(history),
            "by_result": {
                k: sum(1 for h in history if h["result"] == k) for k in {h["result"] for h in history}
            },
            "gateway_side_ms_p50": statistics.median(
                h["duration_ms"] for h in history if h["result"] == "applied"
            ),
        },
        "target_p50_ms": TARGET_P50_MS,
        "ok": swap["watcher_ms"]["p50"] <= TARGET_P50_MS
        and lat["reloading"]["errors"] == 0
        and lat["quiet"]["errors"] == 0,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    w, a = swap["watcher_ms"], swap["api_ms"]
    q, rl = lat["quiet"], lat["reloading"]
    print(f"\nhot reload, {n} reloads each way; wrk -c32, {rounds} x {seconds} s per mode")
    print(f"{'':34}{'p50':>10}{'p90':>10}{'max':>10}")
    print(
        f"{'file write -> serving (watcher)':34}{w['p50']:>8.1f}ms{w['p90']:>8.1f}ms{w['max']:>8.1f}ms   target p50 <= {TARGET_P50_MS:.0f} ms"
    )
    print(f"{'POST /admin/reload -> serving':34}{a['p50']:>8.1f}ms{a['p90']:>8.1f}ms{a['max']:>8.1f}ms")
    print(
        f"{'reload inside the gateway':34}{results['reloads']['gateway_side_ms_p50']:>8.1f}ms   (read, compile, back up, swap, probe)"
    )
    print(f"\n{'request latency':34}{'p50':>10}{'p99':>10}{'req/s':>10}{'errors':>8}")
    writes = lat["file_writes_during_load"]
    for name, row in (("without reloads", q), (f"during reloads ({writes} file writes)", rl)):
        print(
            f"{name:34}{row['p50_ms']:>8.2f}ms{row['p99_ms']:>8.2f}ms{row['rps']:>10.0f}{int(row['errors']):>8}"
        )
    print(
        f"\nreloads: {results['reloads']['by_result']}; prober errors: {swap['prober_errors']}; wrote {args.output}"
    )
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
