"""Gateway CPU per request that observability costs, at full load, part by part.

Starts two instant fake upstreams (``python -m aib.devtools.fake_openai``), then, in interleaved rounds,
one ``aib serve`` (health checks off) per variant: everything off, access log only, request log only,
metrics only, everything on (the defaults). Each gets ``wrk -c32`` for a warm-up and a measured window;
the gateway process's own CPU (utime + stime from /proc) over the window, divided by the requests
served, is ``cpu_us_per_req``. The writer process's CPU (``AIB_OBSERVE_WRITER=process``) is measured
apart, per record. After the load the gateway is stopped with SIGTERM and the run checks that nothing
was lost: request-log rows and access lines equal the requests the gateway counted.

    .venv/bin/python bench/observe_cpu.py                    # 3 rounds, ~3 min
    .venv/bin/python bench/observe_cpu.py --quick            # 1 round, ~40 s
    .venv/bin/python bench/observe_cpu.py --writer thread    # the in-process writer threads instead
    .venv/bin/python bench/observe_cpu.py --baseline OLD/src  # and, interleaved, another source tree
    .venv/bin/python bench/observe_cpu.py --in-process        # the observers alone, no HTTP (~30 s)
    .venv/bin/python bench/observe_cpu.py --writer-capacity   # the writer process alone, flat out

``--in-process`` feeds 50 000 realistic records straight to the observers that ``install_observability``
attaches to a stand-in gateway (on an event loop, so timers and threads run as in the gateway), closes
them (everything written), and divides the process's CPU by the records: what observability costs the
gateway process per request, without the HTTP work around it, and far less noisy than the load test.

Prints a table and writes ``bench/results/observe_cpu[-LABEL].json``. Everything binds to 127.0.0.1;
every process started here is stopped by PID. The machine is shared, so single runs vary: the table
gives the median over rounds, and the cost of each part as the median of its per-round difference to
the "off" run of the same round.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil

from aib.benchmark.procs import (
    Proc,
    cpu_busy_s,
    free_port,
    machine_info,
    own_cpu_s,
    spawn,
    wait_http,
    wait_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BUDGET_US = 12.0  # what everything on may add to the gateway's CPU per request
WRITER_BUDGET_US = 15.0  # the writer process's CPU per record
_OFF = {"AIB_METRICS": "off", "AIB_ACCESS_LOG": "off", "AIB_REQUEST_LOG": "off"}
VARIANTS: dict[str, dict[str, str]] = {  # "db" is replaced by a fresh SQLite file per run
    "off": _OFF,
    "access": {**_OFF, "AIB_ACCESS_LOG": "on"},
    "requestlog": {**_OFF, "AIB_REQUEST_LOG": "db"},
    "metrics": {**_OFF, "AIB_METRICS": "on"},
    "all": {"AIB_METRICS": "on", "AIB_ACCESS_LOG": "on", "AIB_REQUEST_LOG": "db"},
}
LUA = """wrk.method = "POST"
wrk.body = '{"model":"grp","messages":[{"role":"user","content":"hi"}]}'
wrk.headers["Content-Type"] = "application/json"
"""


def write_config(folder: Path, ports: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "providers.yaml").write_text(
        "version: 1\nproviders:\n"
        f'  a: {{type: llamacpp, base_url: "http://127.0.0.1:{ports[0]}", models: [m]}}\n'
        f'  b: {{type: vllm, base_url: "http://127.0.0.1:{ports[1]}", models: [m]}}\n'
    )
    (folder / "model-mappings.yaml").write_text(
        "version: 1\nmodels:\n  grp:\n    deployments: [{provider: a, upstream: m}, {provider: b, upstream: m}]\n"
    )


def proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (not its children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_pids(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def wrk(port: int, seconds: int, script: Path, connections: int) -> int:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(seconds, 1)}s", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/chat/completions"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    return int(m.group(1))


def served(port: int) -> int | None:
    """Requests the gateway counted (``aib_requests_total``), or None without metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("aib_requests_total{")
        )
    )


def count_rows(db: Path) -> int | None:
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return int(con.execute("SELECT count(*) FROM requests").fetchone()[0])


def count_lines(log: Path) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines() if "aib.access" in line)


def one_run(
    variant: str, args: argparse.Namespace, tmp: Path, config: Path, script: Path, n: int, fakes: list[Proc]
) -> dict[str, Any]:
    port = free_port()
    base, _, name = variant.rpartition(":")  # "base:all" runs the --baseline tree
    db = tmp / f"{name}-{n}.db"
    env = {**os.environ, "AIB_OBSERVE_WRITER": args.writer, "AIB_LOG_FORMAT": args.format}
    env.update({k: (str(db) if v == "db" else v) for k, v in VARIANTS[name].items()})
    if base:
        env["PYTHONPATH"] = args.baseline
    cmd = [sys.executable, "-c", "from aib.cli.main import app; app()", "serve", "--config-dir", str(config),
           "--port", str(port), "--log-level", "warning", "--no-health-checks"]  # fmt: skip
    gw = spawn(f"gw-{name}-{n}", cmd, env, tmp, cwd=tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", 30)
        total = wrk(port, args.warmup, script, args.connections)
        children = writer_pids(gw.popen.pid)
        ours = [gw, *fakes]
        b0, o0 = cpu_busy_s(), own_cpu_s(ours)
        g0, w0 = proc_cpu_s(gw.popen.pid), sum(proc_cpu_s(p) for p in children)
        reqs = wrk(port, args.seconds, script, args.connections)
        g1, w1 = proc_cpu_s(gw.popen.pid), sum(proc_cpu_s(p) for p in children)
        foreign = (cpu_busy_s() - b0) - (own_cpu_s(ours) - o0)
        total += reqs
        counted = served(port)
    finally:
        gw.stop()
    run: dict[str, Any] = {
        "variant": variant,
        "requests": reqs,
        "req_s": round(reqs / args.seconds, 1),
        "cpu_us_per_req": round((g1 - g0) / reqs * 1e6, 2),
        "writer_us_per_record": round((w1 - w0) / reqs * 1e6, 2) if children else None,
        "wrk_total": total,
        "foreign_pct": round(max(foreign, 0.0) / (args.seconds * (os.cpu_count() or 1)) * 100, 1),
    }
    # nothing lost: with metrics on, rows and lines must equal what the gateway counted (wrk's own count
    # misses the requests in flight when it stops, so without metrics the counts are only reported)
    if VARIANTS[name].get("AIB_REQUEST_LOG") == "db":
        run["rows"] = count_rows(db) or 0
        if counted is not None:
            run["rows_lost"] = counted - run["rows"]
    if VARIANTS[name].get("AIB_ACCESS_LOG") == "on":
        run["lines"] = count_lines(gw.log)
        if counted is not None:
            run["lines_lost"] = counted - run["lines"]
    return run


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    rounds = sorted({r["round"] for r in runs})
    off = {
        (r["variant"].rpartition(":")[0], r["round"]): r["cpu_us_per_req"]
        for r in runs
        if r["variant"].endswith("off")
    }
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        tree = v.rpartition(":")[0]
        mine = [r for r in runs if r["variant"] == v]
        row: dict[str, Any] = {
            "cpu_us_per_req": round(statistics.median(r["cpu_us_per_req"] for r in mine), 1),
            "req_s": round(statistics.median(r["req_s"] for r in mine)),
        }
        deltas = [r["cpu_us_per_req"] - off[(tree, r["round"])] for r in mine if (tree, r["round"]) in off]
        if deltas and not v.endswith("off"):
            row["extra_us"] = round(statistics.median(deltas), 1)
        writer = [r["writer_us_per_record"] for r in mine if r.get("writer_us_per_record") is not None]
        if writer:
            row["writer_us_per_record"] = round(statistics.median(writer), 1)
        for key in ("rows_lost", "lines_lost"):
            vals = [r[key] for r in mine if key in r]
            if vals:
                row[key] = max(vals)
        row["rounds"] = len([r for r in mine if r["round"] in rounds])
        out[v] = row
    return out


class StandIn:
    """What ``install_observability`` needs of a gateway, without the HTTP server."""

    def __init__(self, plan: Any) -> None:
        from aib.routing.state import RuntimeState

        self.plan, self.state, self.inflight, self.settings = plan, RuntimeState(), 0, None
        self.observers: list[Any] = []
        self.on_startup: list[Any] = []
        self.on_shutdown: list[Any] = []
        self.on_reload: list[Any] = []
        self.keep_bodies = False

    def add_route(self, path: str, method: str, handler: Any) -> None:
        pass


def records(n: int) -> list[Any]:
    """Records like the load test's: one answered attempt, usage reported, a new request id each."""
    from aib.observe.records import Attempt, RequestRecord

    now = time.time()
    out = []
    for i in range(n):
        r = RequestRecord(
            request_id=f"{i:032x}", endpoint="chat/completions", model="grp", started_at=now + i * 1e-4,
            route="grp", matched_by="exact", rule="model 'grp'", provider="a" if i % 2 else "b", upstream="m",
            status=200, ttfb_s=0.0011, total_s=0.0012, upstream_s=0.0011, prompt_tokens=1, completion_tokens=5,
            plan_version="v1",
        )  # fmt: skip
        r.attempts.append(Attempt(f"{r.provider}/m", r.provider, "m", "grp", 200, None, 0.0011, 0.0011, True))
        out.append(r)
    return out


def in_process_child(variant: str, n: int, config: Path, tmp: Path, fmt: str) -> dict[str, Any]:
    """One variant's observers in this process; returns its CPU per record (run in a fresh process)."""
    import asyncio
    import gc
    import logging

    from aib.config.compile import build_plan
    from aib.observe import install_observability
    from aib.observe.logs import configure_logging
    from aib.observe.settings import ObserveSettings

    env = {k: (str(tmp / f"{variant}.db") if v == "db" else v) for k, v in VARIANTS[variant].items()}
    configure_logging(fmt, "warning")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - the thread writer's lines
    gw = StandIn(build_plan(config)[0])
    handle = install_observability(gw, ObserveSettings.from_env({**os.environ, **env, "AIB_LOG_FORMAT": fmt}))
    recs = records(n)
    gc.collect()
    gc.freeze()  # the records stand for requests that come and go: the collector should not walk them

    async def drive() -> float:
        for hook in gw.on_startup:
            hook()
        await asyncio.sleep(0.5)  # the writer process is up
        c0 = time.process_time()
        observers = gw.observers
        for i, r in enumerate(recs):
            for o in observers:
                o.request_done(r)
            if i % 64 == 63:
                await asyncio.sleep(0)  # let the loop run its timers, as between requests
        handle.close()  # everything written (threads joined, writer process stopped)
        return time.process_time() - c0

    cpu = asyncio.run(drive())
    return {"variant": variant, "records": n, "cpu_us_per_record": round(cpu / n * 1e6, 2)}


def in_process(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aib-observe-cpu-") as tmpdir:
        tmp = Path(tmpdir)
        config = tmp / "config"
        write_config(config, [9, 10])
        for rnd in range(args.rounds):
            for v in variants if rnd % 2 == 0 else variants[::-1]:
                base, _, name = v.rpartition(":")
                env = {**os.environ, "AIB_OBSERVE_WRITER": args.writer}
                if base:
                    env["PYTHONPATH"] = args.baseline
                out = subprocess.run(
                    [sys.executable, __file__, "--in-process-child", name, "--records", str(args.records),
                     "--config", str(config), "--tmp", str(tmp), "--format", args.format],
                    env=env, capture_output=True, text=True, timeout=600, check=True,
                ).stdout  # fmt: skip
                run = orjson.loads(out.strip().splitlines()[-1])
                run["variant"], run["round"] = v, rnd
                runs.append(run)
                print(f"round {rnd + 1} {v:>15}: {run['cpu_us_per_record']:6.2f} us/record", flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for v in variants:
        tree = v.rpartition(":")[0]
        mine = [r["cpu_us_per_record"] for r in runs if r["variant"] == v]
        off = [r["cpu_us_per_record"] for r in runs if r["variant"] == (f"{tree}:off" if tree else "off")]
        row = {"cpu_us_per_record": round(statistics.median(mine), 2)}
        if not v.endswith("off"):
            row["extra_us"] = round(statistics.median(mine) - statistics.median(off), 2)
        summary[v] = row
    return {"runs": runs, "summary": summary}


def writer_capacity(args: argparse.Namespace) -> dict[str, Any]:
    """How fast the writer process writes access lines and request-log rows, and its CPU per record."""
    import resource

    from aib.observe.client import WriterClient

    out: dict[str, Any] = {}
    for fmt in ("human", "json"):
        with tempfile.TemporaryDirectory(prefix="aib-writer-") as tmpdir:
            db = Path(tmpdir) / "requests.db"
            cfg = {"access": True, "log_format": fmt, "access_level": 20, "request_log": str(db)}
            client = WriterClient(cfg, queue_size=args.records + 1)
            recs = records(args.records)
            client.start()
            time.sleep(0.5)  # started, database open
            assert client.pid is not None
            startup = proc_cpu_s(client.pid)  # its start-up CPU is not per-record work
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            for i in range(0, len(recs), 1000):  # batches as the gateway sends them at ~20 000 req/s
                for r in recs[i : i + 1000]:
                    client.request_done(r)
                client.send()
            client.close(timeout=300)  # returns when the writer has written everything and exited
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime) - startup
            rows = count_rows(db)
        out[fmt] = {
            "records": args.records,
            "records_per_s": round(args.records / wall),
            "writer_cpu_us_per_record": round(cpu / args.records * 1e6, 2),
            "rows": rows,
            "dropped": client.dropped_total,
        }
        print(f"writer, {fmt} lines + rows: {out[fmt]['records_per_s']:8.0f} records/s, "
              f"{out[fmt]['writer_cpu_us_per_record']:.2f} us CPU per record, rows {rows}/{args.records}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="measured window per run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--writer", choices=("process", "thread"), default="process")
    ap.add_argument("--format", choices=("human", "json"), default="human")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS)
    )
    ap.add_argument("--baseline", default="", help="also run each variant from this source tree ('base:...')")
    ap.add_argument("--label", default="", help="suffix of the result file")
    ap.add_argument(
        "--extra", action="append", default=[], metavar="NAME=VARIANT:VAR=VALUE,...",
        help="an extra variant: VARIANT's settings plus these variables (e.g. all0=all:AIB_OBSERVE_WRITER_NICE=0)",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s")
    ap.add_argument(
        "--max-foreign", type=float, default=15.0, help="redo a run when other processes used more (%%)"
    )
    ap.add_argument("--retries", type=int, default=3, help="redos per run at most")
    ap.add_argument("--in-process", action="store_true", help="the observers alone, without HTTP (see above)")
    ap.add_argument("--records", type=int, default=50_000, help="records per in-process run")
    ap.add_argument("--writer-capacity", action="store_true", help="the writer process alone, flat out")
    ap.add_argument("--in-process-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--config", default="", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.in_process_child:
        result = in_process_child(
            args.in_process_child, args.records, Path(args.config), Path(args.tmp), args.format
        )
        print(orjson.dumps(result).decode())
        return 0
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 3, 1
    for spec in args.extra:
        name, _, rest = spec.partition("=")
        base, _, assigns = rest.partition(":")
        if not name or base not in VARIANTS:
            ap.error(
                f"--extra {spec!r}: use NAME=VARIANT:VAR=VALUE,... with VARIANT one of {', '.join(VARIANTS)}"
            )
        VARIANTS[name] = {**VARIANTS[base], **dict(a.split("=", 1) for a in assigns.split(",") if "=" in a)}
        args.variants += f",{name}"
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "off" not in variants:
        variants.insert(0, "off")
    if args.baseline:
        variants += [f"base:{v}" for v in variants]
    if args.writer_capacity:
        cap = writer_capacity(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "observe_writer_capacity.json"
        info = machine_info(["orjson"])
        out.write_bytes(orjson.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info, **cap}))
        print(f"wrote {out.relative_to(ROOT)}")
        return 0
    if args.in_process:
        res = in_process(args, variants)
        res.update(
            when=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine_info(["orjson", "prometheus-client"])
        )
        res["settings"] = {k: getattr(args, k) for k in ("rounds", "records", "writer", "format", "baseline")}
        out = RESULTS / f"observe_cpu_inprocess{'-' + args.label if args.label else ''}.json"
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        print(f"\n{'variant':>15} {'us/record':>10} {'extra':>8}")
        for v, row in res["summary"].items():
            extra = f"{row['extra_us']:+.2f}" if "extra_us" in row else "-"
            print(f"{v:>15} {row['cpu_us_per_record']:10.2f} {extra:>8}")
        print(f"wrote {out.relative_to(ROOT)}")
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    info = machine_info(["orjson", "prometheus-client", "uvloop"])
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aib-observe-cpu-") as tmpdir:
        tmp = Path(tmpdir)
        ports = [free_port(), free_port()]
        fakes: list[Proc] = [
            spawn(f"fake{i}", [sys.executable, "-m", "aib.devtools.fake_openai", "--port", str(p)], dict(os.environ), tmp)
            for i, p in enumerate(ports)
        ]  # fmt: skip
        try:
            for p in ports:
                wait_http(f"http://127.0.0.1:{p}/v1/models", 30)
            config = tmp / "config"
            write_config(config, ports)
            script = tmp / "post.lua"
            script.write_text(LUA)
            n = 0
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else variants[::-1]
                for v in order:
                    for _attempt in range(args.retries + 1):  # redo a run the neighbours disturbed
                        wait_quiet(20, busy_pct=args.max_foreign, procs=fakes)
                        n += 1
                        run = one_run(v, args, tmp, config, script, n, fakes)
                        if run["foreign_pct"] <= args.max_foreign:
                            break
                    run["round"] = rnd
                    runs.append(run)
                    print(f"round {rnd + 1} {v:>15}: {run['cpu_us_per_req']:7.1f} us/req  {run['req_s']:8.0f} req/s"
                          f"  others {run['foreign_pct']:4.1f}%"
                          + (f"  writer {run['writer_us_per_record']:.1f} us/record" if run["writer_us_per_record"] else "")
                          + "".join(f"  {k}={run[k]}" for k in ("rows_lost", "lines_lost") if k in run),
                          flush=True)  # fmt: skip
        finally:
            for f in fakes:
                f.stop()
    summary = summarize(runs, variants)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "settings": {k: getattr(args, k) for k in ("rounds", "seconds", "warmup", "connections", "writer", "format", "baseline")},
        "budget_us": BUDGET_US,
        "writer_budget_us": WRITER_BUDGET_US,
        "summary": summary,
        "runs": runs,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"observe_cpu{'-' + args.label if args.label else ''}.json"
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"\n{'variant':>15} {'us/req':>8} {'extra':>7} {'req/s':>8} {'writer us/rec':>14} {'lost':>5}")
    for v, row in summary.items():
        lost = max(row.get("rows_lost", 0), row.get("lines_lost", 0))
        extra = f"{row['extra_us']:+.1f}" if "extra_us" in row else "-"
        writer = f"{row['writer_us_per_record']:.1f}" if "writer_us_per_record" in row else "-"
        print(f"{v:>15} {row['cpu_us_per_req']:8.1f} {extra:>7} {row['req_s']:8.0f} {writer:>14} {lost:>5}")
    extra_all = summary.get("all", {}).get("extra_us")
    if extra_all is not None:
        verdict = "within" if extra_all <= BUDGET_US else "OVER"
        print(
            f"\neverything on adds {extra_all:.1f} us/req of gateway CPU: {verdict} the {BUDGET_US:.0f} us budget"
        )
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
