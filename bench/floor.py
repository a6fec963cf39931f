"""How low can a proxy's CPU per request go here? From the fake alone up to the gateway, one layer at a time.

Each candidate runs in front of the same instant fake upstream (its own process) and gets the same load
(``wrk`` at one concurrency, after a warm-up), in alternating rounds so that noise hits all alike:

* ``direct``: the fake itself;
* ``raw+raw``: a bare forwarder (hand-written asyncio protocol, body parsed and re-encoded, pooled
  keep-alive client) from ``bench/_stack_candidates.py``;
* ``asgi-min``: a minimal ASGI app (read body, rewrite model, forward, answer) on the gateway's own
  HTTP server and upstream client: what the stack costs with no gateway logic;
* ``gateway-bare``: ``aib serve`` with metrics, access log and request log off;
* ``gateway``: ``aib serve`` with its defaults (the observe writer's CPU counts too).

Prints a table and writes ``bench/results/floor.json``: req/s, the candidate's CPU per request (its
process tree) and the whole machine's CPU per request (``/proc/stat``, load generator included).

    .venv/bin/python bench/floor.py                 # ~1 minute
    .venv/bin/python bench/floor.py --rounds 3 --duration 4 --connections 64
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

BENCH = Path(__file__).resolve().parent
PY = sys.executable

ASGI_MIN = r"""
import sys, gc, orjson, uvloop
from aib.gateway.server import serve_app
from aib.gateway.httpclient import Pool

port, upstream = int(sys.argv[1]), sys.argv[2]
pool = Pool(upstream)
HEAD = pool.request_head("POST", "/v1/chat/completions", {"content-type": "application/json"})
JSON = [(b"content-type", b"application/json")]

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            done = msg["type"] == "lifespan.shutdown"
            await send({"type": msg["type"] + ".complete"})
            if done:
                return
    msg = await receive()
    obj = orjson.loads(msg["body"])
    obj["model"] = "fake-model"
    resp = await pool.request(HEAD, orjson.dumps(obj), b"", 5.0, None)
    data = await resp.read()
    await send({"type": "http.response.start", "status": resp.status, "headers": JSON})
    await send({"type": "http.response.body", "body": data})

def ready(_port):
    gc.collect(); gc.freeze(); gc.set_threshold(20000, 20, 20)

uvloop.run(serve_app(app, "127.0.0.1", port, on_ready=ready))
"""

CONFIG = {
    "providers.yaml": "providers:\n  fake:\n    type: openai_compatible\n"
    "    base_url: http://127.0.0.1:{up}\n    models: [fake-model]\n",
    "model-mappings.yaml": "models:\n  bench: {{provider: fake, upstream: fake-model}}\n",
}


def candidates(up: int, workdir: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    cfg = workdir / "config"
    cfg.mkdir(exist_ok=True)
    for name, text in CONFIG.items():
        (cfg / name).write_text(text.format(up=up))
    (workdir / "asgi_min.py").write_text(ASGI_MIN)
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIB_")}
    off = {**base, "AIB_REQUEST_LOG": "off", "AIB_ACCESS_LOG": "off", "AIB_METRICS": "off"}
    upstream = f"http://127.0.0.1:{up}"
    serve = [PY, "-c", "from aib.cli.main import app; app()", "serve", "-c", str(cfg), "--no-health-checks"]
    serve += ["--log-level", "warning"]
    return {
        "raw+raw": (
            [
                PY,
                str(BENCH / "_stack_candidates.py"),
                "--server",
                "raw",
                "--client",
                "raw",
                "--port",
                "{port}",
                "--upstream",
                upstream,
            ],
            base,
        ),
        "asgi-min": ([PY, str(workdir / "asgi_min.py"), "{port}", upstream], base),
        "gateway-bare": ([*serve, "--port", "{port}"], off),
        "gateway": ([*serve, "--port", "{port}"], base),
    }


def main() -> int:
    from aib.benchmark.client import first_ok
    from aib.benchmark.load import Loader
    from aib.benchmark.procs import cpu_busy_s, free_port, spawn, wait_idle, wait_ready
    from aib.benchmark.runner import BODY

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds of load per candidate and round")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "floor.json")
    a = ap.parse_args()
    if not 1 <= a.rounds <= 10 or not 0.5 <= a.duration <= 30:
        ap.error("--rounds 1..10, --duration 0.5..30")

    workdir = Path(tempfile.mkdtemp(prefix="aib-floor-"))
    loader = Loader(BODY, workdir)
    up = free_port()
    fake = spawn("fake", [PY, "-m", "aib.devtools.fake_openai", "--host", "127.0.0.1", "--port", str(up)],
                 os.environ, workdir)  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {}
    try:
        wait_ready(fake, lambda: first_ok(up, BODY), 20)
        cands = candidates(up, workdir)

        def measure(name: str, port: int, target: Any) -> None:
            loader(port, a.connections, 1.0)  # warm-up
            wait_idle(target, max_s=5)
            cpu0, busy0 = target.cpu_s(), cpu_busy_s()
            res = loader(port, a.connections, a.duration)
            n = max(1.0, res["requests"])
            results.setdefault(name, []).append(
                {
                    "rps": res["rps"],
                    "errors": res["errors"],
                    "cpu_us_per_req": (target.cpu_s() - cpu0) / n * 1e6,
                    "machine_us_per_req": (cpu_busy_s() - busy0) / n * 1e6,
                }
            )
            print(f"  {name:13} round {len(results[name])}: {res['rps']:>9,.0f} req/s", flush=True)

        for _ in range(a.rounds):
            measure("direct", up, fake)
            for name, (cmd, env) in cands.items():
                port = free_port()
                argv = [c.replace("{port}", str(port)) for c in cmd]
                proc = spawn(f"{name}-{time.monotonic_ns()}", argv, env, workdir)
                try:
                    wait_ready(proc, lambda port=port: first_ok(port, BODY), 30)  # type: ignore[misc]
                    measure(name, port, proc)
                finally:
                    proc.stop()
    finally:
        fake.stop()

    rows = []
    for name, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        rows.append({"candidate": name, **med, "rounds": rounds})
    direct_rps = rows[0]["rps"]
    print(
        f"\n{'candidate':14}{'req/s':>10}{'% direct':>10}{'CPU/req µs':>12}{'machine/req µs':>16}{'errors':>8}"
    )
    for r in rows:
        print(f"{r['candidate']:14}{r['rps']:>10,.0f}{r['rps'] / direct_rps * 100:>9.1f}%"
              f"{r['cpu_us_per_req']:>12.1f}{r['machine_us_per_req']:>16.1f}{r['errors']:>8.0f}")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps({"connections": a.connections, "duration_s": a.duration, "medians": rows}, indent=2)
    )
    print(f"\nwrote {a.out} (medians of {a.rounds} rounds; logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
