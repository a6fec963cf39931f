"""Does a change cost CPU per request? ``aib serve`` from an earlier source tree against this checkout.

Both run in front of the same instant fake upstream (its own process), observability off (the request
path alone) or on (``--observe``). Two measures, each in one run:

* **CPU per request at concurrency 64** (``wrk``, else the asyncio load generator): the gateway
  process tree's CPU time over the requests it served, in alternating rounds so that the noise of a
  shared machine hits both alike; medians.
* **The same with both loaded at once** (``--together N``): each gateway gets its own c=64 load at
  the same moment, so that a burst of other work on the machine hits both in the same round.
* **Instructions per request** (``--callgrind``): the gateway under valgrind's callgrind, counters
  zeroed after a warm-up, then N sequential keep-alive requests; independent of the machine's load,
  which on a shared 2-core machine makes CPU time per request swing by ±20 %.

Prints a table and writes ``bench/results/ab_cpu.json``.

    git archive <commit> src | tar -x -C /tmp/before          # the earlier source tree
    .venv/bin/python bench/ab_cpu.py --before /tmp/before/src                # ~4 minutes
    .venv/bin/python bench/ab_cpu.py --before /tmp/before/src --rounds 0 --together 10
    .venv/bin/python bench/ab_cpu.py --before /tmp/before/src --callgrind 2000 --rounds 0
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from floor import CONFIG, PY  # noqa: E402

BARE = {"AIB_REQUEST_LOG": "off", "AIB_ACCESS_LOG": "off", "AIB_METRICS": "off"}


def serve_argv(cfg: Path, port: int) -> list[str]:
    return [PY, "-c", "from aib.cli.main import app; app()", "serve", "-c", str(cfg), "--no-health-checks",
            "--log-level", "warning", "--port", str(port)]  # fmt: skip


def cpu_rounds(envs: dict[str, dict[str, str]], cfg: Path, workdir: Path, rounds: int, seconds: float) -> Any:
    from aib.benchmark.client import first_ok
    from aib.benchmark.load import Loader
    from aib.benchmark.procs import free_port, spawn, wait_idle, wait_ready
    from aib.benchmark.runner import BODY

    loader = Loader(BODY, workdir)
    rows: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        for name in list(envs) if r % 2 == 0 else list(reversed(envs)):
            port = free_port()
            proc = spawn(f"{name}-{time.monotonic_ns()}", serve_argv(cfg, port), envs[name], workdir)
            try:
                wait_ready(proc, lambda port=port: first_ok(port, BODY), 30)  # type: ignore[misc]
                loader(port, 64, 1.0)  # warm-up
                wait_idle(proc, max_s=5)
                cpu0 = proc.cpu_s()
                res = loader(port, 64, seconds)
                n = max(1.0, res["requests"])
                row = {
                    "rps": res["rps"],
                    "errors": res["errors"],
                    "cpu_us_per_req": (proc.cpu_s() - cpu0) / n * 1e6,
                }
                rows.setdefault(name, []).append(row)
                print(
                    f"  round {r + 1} {name:7} {row['rps']:>8,.0f} req/s {row['cpu_us_per_req']:7.1f} µs/req",
                    flush=True,
                )
            finally:
                proc.stop()
    return {
        name: {**{k: statistics.median(x[k] for x in rs) for k in rs[0]}, "rounds": rs}
        for name, rs in rows.items()
    }


def together_rounds(
    envs: dict[str, dict[str, str]], cfg: Path, workdir: Path, rounds: int, seconds: float
) -> Any:
    """Both gateways under c=64 load at the same moment: the machine's noise hits both alike."""
    import threading

    from aib.benchmark.client import first_ok
    from aib.benchmark.load import Loader
    from aib.benchmark.procs import free_port, spawn, wait_ready
    from aib.benchmark.runner import BODY

    def load(res: dict[str, dict[str, float]], name: str, port: int, secs: float) -> None:
        res[name] = Loader(BODY, workdir / name)(port, 64, secs)

    rows: dict[str, list[float]] = {name: [] for name in envs}
    for r in range(rounds):
        procs = {}
        for name, env in envs.items():
            port = free_port()
            procs[name] = (spawn(f"{name}-{time.monotonic_ns()}", serve_argv(cfg, port), env, workdir), port)
        try:
            res: dict[str, dict[str, float]] = {}
            for name, (proc, port) in procs.items():
                wait_ready(proc, lambda port=port: first_ok(port, BODY), 30)  # type: ignore[misc]
                (workdir / name).mkdir(exist_ok=True)

            cpu0: dict[str, float] = {}
            for secs in (1.0, seconds):  # a warm-up, then the measure
                cpu0 = {name: proc.cpu_s() for name, (proc, _) in procs.items()}
                threads = [
                    threading.Thread(target=load, args=(res, n, port, secs)) for n, (_, port) in procs.items()
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            for name, (proc, _) in procs.items():
                rows[name].append((proc.cpu_s() - cpu0[name]) / max(res[name]["requests"], 1.0) * 1e6)
            print(f"  round {r + 1} " + "  ".join(f"{n} {rows[n][-1]:6.1f} µs/req" for n in rows), flush=True)
        finally:
            for proc, _ in procs.values():
                proc.stop()
    diffs = [a - b for a, b in zip(rows["after"], rows["before"], strict=True)]
    return {
        **{name: {"cpu_us_per_req": statistics.median(v), "rounds": v} for name, v in rows.items()},
        "median_difference_us": statistics.median(diffs),
    }


def instructions(env: dict[str, str], cfg: Path, workdir: Path, label: str, n: int) -> float:
    """Instructions per request of N keep-alive requests, counted by callgrind after a warm-up."""
    from aib.benchmark.procs import free_port
    from aib.benchmark.runner import BODY

    port = free_port()
    out = workdir / f"callgrind.{label}"
    with open(workdir / f"{label}.log", "wb") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *serve_argv(cfg, port)],
            env={**env, "PYTHONHASHSEED": "0"}, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:  # python under valgrind takes a while to start
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                conn.request("GET", "/health/live")
                conn.getresponse().read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{label}: the gateway did not start under valgrind") from None
                time.sleep(1)

        def one() -> None:
            conn.request(
                "POST", "/v1/chat/completions", body=BODY, headers={"content-type": "application/json"}
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{label}: status {resp.status}")

        for _ in range(300):
            one()
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        for _ in range(n):
            one()
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(120)
    dump = Path(f"{out}.{proc.pid}.1")  # the dump made right after the N requests
    m = re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(errors="replace"), re.M)
    if m is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(m.group(1)) / n


def main() -> int:
    from aib.benchmark.client import first_ok
    from aib.benchmark.procs import free_port, spawn, wait_ready
    from aib.benchmark.runner import BODY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="the earlier source tree (its src/ folder)")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds of c=64 load (0: none)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds of load per candidate and round")
    ap.add_argument(
        "--together", type=int, default=0, metavar="N", help="also N rounds with both loaded at once"
    )
    ap.add_argument(
        "--callgrind", type=int, default=0, metavar="N", help="also count instructions of N requests"
    )
    ap.add_argument("--observe", action="store_true", help="observability on (default: off)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "ab_cpu.json")
    a = ap.parse_args()
    if not (a.before / "aib" / "__init__.py").exists():
        ap.error(f"{a.before} is not a source tree with aib/ in it")
    if not 0 <= a.rounds <= 20 or not 0.5 <= a.duration <= 30 or not 0 <= a.callgrind <= 100_000:
        ap.error("--rounds 0..20, --duration 0.5..30, --callgrind 0..100000")

    workdir = Path(tempfile.mkdtemp(prefix="aib-ab-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    if not a.observe:
        base.update(BARE)
    envs = {"before": {**base, "PYTHONPATH": str(a.before.resolve())}, "after": base}
    up = free_port()
    fake = spawn("fake", [PY, "-m", "aib.devtools.fake_openai", "--host", "127.0.0.1", "--port", str(up)],
                 os.environ, workdir)  # fmt: skip
    cfg = workdir / "config"
    cfg.mkdir()
    for name, text in CONFIG.items():
        (cfg / name).write_text(text.format(up=up))
    result: dict[str, Any] = {"observe": a.observe, "before": str(a.before), "duration_s": a.duration}
    try:
        wait_ready(fake, lambda: first_ok(up, BODY), 20)
        if a.rounds:
            result["cpu_c64"] = cpu_rounds(envs, cfg, workdir, a.rounds, a.duration)
        if a.together:
            result["cpu_c64_together"] = together_rounds(envs, cfg, workdir, a.together, a.duration)
        if a.callgrind:
            result["instructions"] = {
                k: instructions(envs[k], cfg, workdir, k, a.callgrind) for k in ("before", "after")
            }
    finally:
        fake.stop()
    nan = float("nan")
    print(f"\n{'':8}{'req/s c64':>11}{'CPU/req µs c64':>16}{'same, together':>16}{'instructions/req':>18}")
    for k in ("before", "after"):
        c = result.get("cpu_c64", {}).get(k, {})
        t = result.get("cpu_c64_together", {}).get(k, {})
        i = result.get("instructions", {}).get(k)
        print(f"{k:8}{c.get('rps', nan):>11,.0f}{c.get('cpu_us_per_req', nan):>16.1f}"
              f"{t.get('cpu_us_per_req', nan):>16.1f}{i if i is not None else nan:>18,.0f}")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {a.out} (medians of {a.rounds} rounds; logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
