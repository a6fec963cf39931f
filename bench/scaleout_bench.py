"""Replicas behind HAProxy on this machine: req/s and p99 through the shipped deploy/haproxy/haproxy.cfg
with 1 and with 3 `aib serve` replicas, against one replica alone, in one run (docs/scaling.md).

Every process runs at once and the setups are measured in alternating rounds: the instant fake upstream,
three replicas (``aib serve``, defaults: metrics, access log, request log; each its own folder), one
HAProxy in front of replica 1 only and one in front of all three. Per round and setup: ``wrk`` at
``--connections`` for ``--duration`` s after a warm-up: req/s, p50, p99, and the CPU each part used per
request (the replicas, HAProxy, the fake, wrk and everything else on the machine), which says what
bounds the throughput. Prints a table of the medians and writes ``bench/results/scaleout.json``.

    .venv/bin/python bench/scaleout_bench.py              # ~3 minutes
    .venv/bin/python bench/scaleout_bench.py --rounds 5 --duration 6
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from aib.benchmark.client import RawConn, http_request
from aib.benchmark.load import Loader
from aib.benchmark.procs import Proc, cpu_busy_s, free_port, machine_info, spawn, wait_ready
from aib.benchmark.runner import BODY, aib_command, clean_env, write_bench_config
from aib.devtools.balancer import Balancer

BENCH = Path(__file__).resolve().parent


def ok(port: int) -> bool:
    try:
        with RawConn(port, 2.0) as conn:
            status, _, _, _ = conn.roundtrip(http_request(BODY, port))
    except OSError:
        return False
    return status == 200


def cpu_of(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def wrk_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "scaleout.json")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="aib-scaleout-bench-"))
    env = clean_env()
    procs: list[Proc] = []
    balancers: list[Balancer] = []
    up_port = free_port()
    fake = spawn(
        "fake", [sys.executable, "-m", "aib.devtools.fake_openai", "--port", str(up_port)], env, workdir
    )
    procs.append(fake)
    rounds: dict[str, list[dict[str, float]]] = {"direct-1": [], "haproxy-1": [], "haproxy-3": []}
    try:
        wait_ready(fake, lambda: ok(up_port), 20)
        cfg = write_bench_config(workdir / "config", up_port)
        replicas: list[tuple[Proc, int]] = []
        for i in range(3):
            port = free_port()
            cwd = workdir / f"replica{i + 1}"
            cwd.mkdir()
            p = spawn(
                f"replica{i + 1}",
                [*aib_command(), "serve", "-c", str(cfg), "--port", str(port)],
                env,
                workdir,
                cwd=cwd,
            )
            procs.append(p)
            wait_ready(p, lambda port=port: ok(port), 60)  # type: ignore[misc]
            replicas.append((p, port))
        one = Balancer("haproxy", free_port(), [replicas[0][1]])
        three = Balancer("haproxy", free_port(), [port for _, port in replicas])
        balancers += [one, three]
        for b in balancers:
            assert b.check().returncode == 0
            b.start()
            wait_ready(fake, lambda b=b: ok(b.listen), 20)  # type: ignore[misc]
        setups = {
            "direct-1": (replicas[0][1], None, [replicas[0][0]]),
            "haproxy-1": (one.listen, one, [replicas[0][0]]),
            "haproxy-3": (three.listen, three, [p for p, _ in replicas]),
        }
        loader = Loader(BODY, workdir, "wrk")
        time.sleep(2.5)  # HAProxy's first health checks
        for r in range(args.rounds):
            for name, (port, lb, gws) in setups.items():
                loader(port, args.connections, min(1.0, args.duration / 2), 5.0)  # warm-up
                time.sleep(0.5)
                lb_pid = lb.proc.pid if lb is not None and lb.proc is not None else None
                c_gw = sum(p.cpu_s() for p in gws)
                c_lb = cpu_of(lb_pid) if lb_pid else 0.0
                c_fake, c_wrk, busy0 = fake.cpu_s(), wrk_cpu(), cpu_busy_s()
                res = loader(port, args.connections, args.duration, 5.0)
                n = max(1.0, res["requests"])
                own = {
                    "replicas": sum(p.cpu_s() for p in gws) - c_gw,
                    "haproxy": (cpu_of(lb_pid) - c_lb) if lb_pid else 0.0,
                    "fake": fake.cpu_s() - c_fake,
                    "wrk": wrk_cpu() - c_wrk,
                }
                busy = cpu_busy_s() - busy0
                row = {
                    "rps": res["rps"],
                    "p50_ms": res["lat_p50_ms"],
                    "p99_ms": res["lat_p99_ms"],
                    "errors": res["errors"],
                    **{f"cpu_us_{k}": v / n * 1e6 for k, v in own.items()},
                    "cpu_us_other": max(busy - sum(own.values()), 0.0) / n * 1e6,
                    "machine_busy_pct": busy / (args.duration * (os.cpu_count() or 1)) * 100,
                }
                rounds[name].append(row)
                print(f"round {r + 1} {name:10} {row['rps']:>8,.0f} req/s  p50 {row['p50_ms']:6.2f} ms  "
                      f"p99 {row['p99_ms']:6.2f} ms  CPU/req us: replicas {row['cpu_us_replicas']:.0f} "
                      f"haproxy {row['cpu_us_haproxy']:.0f} fake {row['cpu_us_fake']:.0f} wrk {row['cpu_us_wrk']:.0f} "
                      f"other {row['cpu_us_other']:.0f}  machine {row['machine_busy_pct']:.0f}%", flush=True)  # fmt: skip
    finally:
        for b in balancers:
            b.close()
        for p in reversed(procs):
            p.stop()

    fields = list(rounds["direct-1"][0])
    med = {name: {f: statistics.median(x[f] for x in rows) for f in fields} for name, rows in rounds.items()}
    print()
    print(
        f"{'':12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'replicas':>10}{'haproxy':>9}{'fake':>7}{'wrk':>7}{'other':>7}{'busy':>7}"
    )
    for name, m in med.items():
        print(f"{name:12}{m['rps']:>9,.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{m['cpu_us_replicas']:>10.0f}"
              f"{m['cpu_us_haproxy']:>9.0f}{m['cpu_us_fake']:>7.0f}{m['cpu_us_wrk']:>7.0f}{m['cpu_us_other']:>7.0f}"
              f"{m['machine_busy_pct']:>6.0f}%")  # fmt: skip
    total = {
        n: sum(m[f"cpu_us_{k}"] for k in ("replicas", "haproxy", "fake", "wrk", "other"))
        for n, m in med.items()
    }
    ceiling = {n: (os.cpu_count() or 1) * 1e6 / t for n, t in total.items()}
    print(
        "\nCPU per request, everything on the machine (us): "
        + ", ".join(f"{n} {t:.0f}" for n, t in total.items())
    )
    print("req/s if the cores were the only bound: " + ", ".join(f"{n} {c:,.0f}" for n, c in ceiling.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine_info(("ai-backend-unified", "uvloop", "httptools", "orjson")),
        "haproxy": Balancer("haproxy", 1, [2]).check().stderr.strip()[:200] or "haproxy -c ok",
        "options": {k: str(v) for k, v in vars(args).items()},
        "rounds": rounds,
        "medians": med,
        "cpu_us_per_request_total": total,
        "cpu_bound_rps": ceiling,
        "loadavg_end": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
