"""What client keys and limits cost the gateway, measured in one run (docs/performance.md).

Three gateways (``aib serve``, defaults: metrics, access log, request log) in front of the same
instant fake upstream, all running at once and measured in alternating rounds so that noise hits all:

* ``off``: ``auth: {mode: none}``;
* ``keys``: ``auth: {mode: keys}``, a key with every limit set (rpm, tpm, concurrency, day and month
  budgets, a model list), none of them reached: the whole who/may/settle path runs on each request;
* ``429``: the same gateway, a key whose request rate is used up: every request is refused.

Per round: CPU per request of the gateway's process tree (writer included) under ``wrk`` at
``--connections`` (default 64) for ``--duration`` seconds after a warm-up, req/s; then sequential
latency over one keep-alive connection, interleaved in blocks with the fake called directly (added
p50). Prints a table of the medians and writes ``bench/results/auth.json``.

    .venv/bin/python bench/auth_bench.py                  # ~2 minutes
    .venv/bin/python bench/auth_bench.py --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aib.auth.store import SqliteKeyStore
from aib.benchmark.client import first_ok, http_request, paired
from aib.benchmark.load import Loader
from aib.benchmark.procs import Proc, free_port, machine_info, spawn, wait_idle, wait_ready
from aib.benchmark.runner import BODY, MODEL, aib_command, clean_env, write_bench_config

BENCH = Path(__file__).resolve().parent
BIG = 10**12  # a limit no run reaches


def gateway(
    name: str, workdir: Path, config: Path, env: dict[str, str], ready_body: bytes, key: str | None
) -> tuple[Proc, int]:
    port = free_port()
    cwd = workdir / f"{name}-cwd"
    cwd.mkdir()
    proc = spawn(
        name, [*aib_command(), "serve", "-c", str(config), "--port", str(port)], env, workdir, cwd=cwd
    )
    hdr = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""

    def ready() -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(http_request(ready_body, port, headers=hdr))
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_ready(proc, ready, 60)
    return proc, port


def load(loader: Loader, proc: Proc, port: int, conns: int, seconds: float) -> dict[str, float]:
    loader(port, conns, min(1.0, seconds / 2), 5.0)  # warm-up
    wait_idle(proc, max_s=5.0)
    cpu0 = proc.cpu_s()
    res = loader(port, conns, seconds, 5.0)
    return {
        "rps": res["rps"],
        "cpu_us_per_req": (proc.cpu_s() - cpu0) / max(1.0, res["requests"]) * 1e6,
        "lat_p50_ms": res["lat_p50_ms"],
        "non_2xx": res["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1500, help="sequential requests per gateway and round")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "auth.json")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="aib-auth-bench-"))
    env = clean_env()
    env["AIB_KEYS_DB"] = str(workdir / "keys.db")
    store = SqliteKeyStore(workdir / "keys.db")
    _, full = store.create(
        "bench", models=(MODEL,), rpm=BIG, tpm=BIG, concurrency=100_000, budget_day=BIG, budget_month=BIG
    )
    _, spent = store.create("spent", rpm=1)
    store.close()
    procs: list[Proc] = []
    up_port = free_port()
    fake = spawn(
        "fake", [sys.executable, "-m", "aib.devtools.fake_openai", "--port", str(up_port)], env, workdir
    )
    procs.append(fake)
    try:
        wait_ready(fake, lambda: first_ok(up_port, BODY), 20)
        off_cfg = write_bench_config(workdir / "off", up_port)
        keys_cfg = write_bench_config(workdir / "keys", up_port)
        mappings = keys_cfg / "model-mappings.yaml"
        mappings.write_text("auth: {mode: keys}\n" + mappings.read_text())
        off, off_port = gateway("off", workdir, off_cfg, env, BODY, None)
        keys, keys_port = gateway("keys", workdir, keys_cfg, env, BODY, full)
        procs += [off, keys]
        # use up the spent key's one request a minute
        first_ok_spent = paired(
            [keys_port], 1, 0, BODY, headers=[b"Authorization: Bearer %s\r\n" % spent.encode()]
        )
        assert first_ok_spent[0].sent == 1
        auth = {"Authorization": f"Bearer {full}"}
        loaders = {
            "off": (Loader(BODY, workdir), off, off_port),
            "keys": (Loader(BODY, workdir, headers=auth), keys, keys_port),
            "429": (Loader(BODY, workdir, headers={"Authorization": f"Bearer {spent}"}), keys, keys_port),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in (*loaders, "seq")}
        for r in range(args.rounds):
            for name, (loader, proc, port) in loaders.items():
                res = load(loader, proc, port, args.connections, args.duration)
                rounds[name].append(res)
                print(
                    f"round {r + 1} {name:5} {res['rps']:>9,.0f} req/s  {res['cpu_us_per_req']:6.1f} us CPU/req",
                    flush=True,
                )
            direct, s_off, s_keys = paired(
                (up_port, off_port, keys_port), args.seq, 200, BODY,
                headers=[b"", b"", b"Authorization: Bearer %s\r\n" % full.encode()],
            )  # fmt: skip
            d, o, k = direct.summary(), s_off.summary(), s_keys.summary()
            rounds["seq"].append({"direct_p50_us": d["p50_us"], "off_added_p50_us": o["p50_us"] - d["p50_us"],
                                  "keys_added_p50_us": k["p50_us"] - d["p50_us"]})  # fmt: skip
            print(
                f"round {r + 1} seq   added p50: off {o['p50_us'] - d['p50_us']:.0f} us, keys {k['p50_us'] - d['p50_us']:.0f} us",
                flush=True,
            )
        non_2xx = rounds["429"][-1]["non_2xx"]
        assert non_2xx > 0, "the spent key was not refused"
    finally:
        for p in reversed(procs):
            p.stop()

    def med(name: str, field: str) -> float:
        return statistics.median(x[field] for x in rounds[name])

    best = {
        "cpu_us_per_req_off": med("off", "cpu_us_per_req"),
        "cpu_us_per_req_keys": med("keys", "cpu_us_per_req"),
        "cpu_us_per_req_429": med("429", "cpu_us_per_req"),
        "rps_off": med("off", "rps"),
        "rps_keys": med("keys", "rps"),
        "rps_429": med("429", "rps"),
        "added_p50_us_off": med("seq", "off_added_p50_us"),
        "added_p50_us_keys": med("seq", "keys_added_p50_us"),
    }
    best["cpu_us_keys_minus_off"] = best["cpu_us_per_req_keys"] - best["cpu_us_per_req_off"]
    best["added_p50_us_keys_minus_off"] = best["added_p50_us_keys"] - best["added_p50_us_off"]
    verdicts = [
        {"target": f"keys and limits add <= 10 us CPU per request at c={args.connections}",
         "value": round(best["cpu_us_keys_minus_off"], 1), "met": best["cpu_us_keys_minus_off"] <= 10},
        {"target": "keys and limits add <= 30 us to the p50", "value": round(best["added_p50_us_keys_minus_off"], 1),
         "met": best["added_p50_us_keys_minus_off"] <= 30},
        {"target": "a 429 costs less CPU than a proxied request", "value": round(best["cpu_us_per_req_429"], 1),
         "met": best["cpu_us_per_req_429"] < best["cpu_us_per_req_keys"]},
    ]  # fmt: skip
    print()
    print(f"{'':28}{'off':>10}{'keys':>10}{'429':>10}")
    print(
        f"{'CPU per request (us)':28}{best['cpu_us_per_req_off']:>10.1f}{best['cpu_us_per_req_keys']:>10.1f}{best['cpu_us_per_req_429']:>10.1f}"
    )
    print(
        f"{'req/s at c=' + str(args.connections):28}{best['rps_off']:>10,.0f}{best['rps_keys']:>10,.0f}{best['rps_429']:>10,.0f}"
    )
    print(
        f"{'added p50 over direct (us)':28}{best['added_p50_us_off']:>10.0f}{best['added_p50_us_keys']:>10.0f}{'':>10}"
    )
    for v in verdicts:
        print(f"{'MET ' if v['met'] else 'MISSED'} {v['target']}: {v['value']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine_info(("ai-backend-unified", "uvloop", "httptools", "orjson")),
        "options": {k: str(v) for k, v in vars(args).items()},
        "rounds": rounds,
        "medians": best,
        "verdicts": verdicts,
        "loadavg_end": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(v["met"] for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
