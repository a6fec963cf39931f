"""What the response cache and the Redis-backed limits cost and save, measured in one run
(docs/performance.md, docs/scaling.md).

Gateways (``aib serve``, defaults: metrics, access log, request log) in front of the same instant fake
upstream and one real redis-server, all running at once and measured in alternating rounds so that
noise hits all:

* ``off``: no cache anywhere in the configuration (the path as it was);
* ``offroute``: the measured route does not cache, another route does (the cache stage is looked at);
* ``mem``: the route caches in memory (``when: always``): ``mem-hit`` repeats one request,
  ``mem-miss`` sends a new one every time (looked up, sent upstream, stored);
* ``redis``: the same with ``cache.backend: redis`` (``redis-hit``);
* ``keys``: client keys in SQLite with every limit set on the key (none reached); ``rkeys``: the same key
  with ``auth.store: redis``: the limits are one Lua script in Redis per request.

Per round: req/s and CPU per request of each gateway's process tree (writer included) under ``wrk``
at ``--connections`` for ``--duration`` s after a warm-up; then sequential latency over one keep-alive
connection per gateway, interleaved in blocks (p50s). Prints a table of the medians and writes
``bench/results/cache.json``.

    .venv/bin/python bench/cache_bench.py                  # ~4 minutes
    .venv/bin/python bench/cache_bench.py --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from aib.auth.redis_store import RedisKeyStore
from aib.auth.store import SqliteKeyStore
from aib.benchmark.client import RawConn, http_request, paired
from aib.benchmark.load import Loader, parse_wrk
from aib.benchmark.procs import Proc, free_port, machine_info, spawn, wait_idle, wait_ready
from aib.benchmark.runner import BODY, MODEL, aib_command, clean_env
from aib.config.schema import RedisSettings
from aib.devtools.redisserver import RedisServer

BENCH = Path(__file__).resolve().parent
BIG = 10**12  # a limit no run reaches
PROMPT = b"Say hello in five words."


def config(folder: Path, up_port: int, redis_url: str, extra: str, route_cache: str = "") -> Path:
    folder.mkdir(parents=True)
    (folder / "providers.yaml").write_text(
        f"providers:\n  fake: {{type: openai_compatible, base_url: 'http://127.0.0.1:{up_port}', models: [fake-model]}}\n"
    )
    (folder / "model-mappings.yaml").write_text(
        f"redis: {{url: '{redis_url}', key_prefix: 'bench:'}}\n{extra}\nmodels:\n"
        f"  {MODEL}: {{provider: fake, upstream: fake-model{route_cache}}}\n"
        "  other: {provider: fake, upstream: fake-model, cache: {enabled: true}}\n"
    )
    return folder


def gateway(name: str, workdir: Path, cfg: Path, env: dict[str, str], key: str | None) -> tuple[Proc, int]:
    port = free_port()
    cwd = workdir / f"{name}-cwd"
    cwd.mkdir()
    proc = spawn(name, [*aib_command(), "serve", "-c", str(cfg), "--port", str(port)], env, workdir, cwd=cwd)
    hdr = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(http_request(BODY, port, headers=hdr))
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_ready(proc, ready, 60)
    return proc, port


def unique_script(path: Path) -> Path:
    """A wrk script whose every request is new, in this run and every other (a run tag and a counter
    in the prompt): cache misses."""
    head, tail = BODY.split(PROMPT)
    tag = f" #{time.time_ns()}-"
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nlocal n = 0\n'
        f"local head = {json.dumps(head.decode() + PROMPT.decode() + tag)}\nlocal tail = {json.dumps(tail.decode())}\n"
        "request = function()\n  n = n + 1\n  return wrk.format(nil, nil, nil, head .. n .. tail)\nend\n"
    )
    return path


def wrk(port: int, conns: int, seconds: float, script: Path) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s",
           "-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(done.stdout)


def measure(run: Callable[[float], dict[str, float]], proc: Proc, seconds: float) -> dict[str, float]:
    run(min(1.0, seconds / 2))  # warm-up
    wait_idle(proc, max_s=5.0)
    cpu0 = proc.cpu_s()
    res = run(seconds)
    return {
        "rps": res["rps"],
        "cpu_us_per_req": (proc.cpu_s() - cpu0) / max(1.0, res["requests"]) * 1e6,
        "lat_p50_ms": res["lat_p50_ms"],
        "lat_p99_ms": res["lat_p99_ms"],
        "non_2xx": res["errors"],
    }


def sequential_misses(ports: list[int], n: int, start: int, block: int = 25) -> list[list[float]]:
    """``n`` sequential new requests per port (µs), interleaved in blocks over one connection each."""
    conns = [RawConn(p) for p in ports]
    out: list[list[float]] = [[] for _ in ports]
    try:
        for i in range(0, n, block):
            for k, (conn, port) in enumerate(zip(conns, ports, strict=True)):
                for j in range(i, min(i + block, n)):
                    body = BODY.replace(PROMPT, PROMPT + b" #seq-%d" % (start + j))
                    status, data, total, _ = conn.roundtrip(http_request(body, port))
                    assert status == 200, data[:200]
                    out[k].append(total * 1e6)
    finally:
        for c in conns:
            c.close()
    return out


def inprocess_cpu(up_port: int, workdir: Path, blocks: int, per_block: int) -> dict[str, float]:
    """CPU per request of the request path itself, in this process (``time.process_time``: other
    processes on the machine do not count): the ``off`` and ``offroute`` gateways as ASGI apps, no
    server, no observers, proxying to the fake upstream, in alternating blocks. Returns the median
    per-request CPU of each, and the median of the per-block differences."""
    import uvloop

    from aib.config.compile import build_plan
    from aib.gateway.app import create_app
    from aib.gateway.settings import GatewaySettings

    apps = {}
    for name in ("off", "offroute"):
        plan, cfg, _ = build_plan(workdir / name)
        apps[name] = create_app(plan, GatewaySettings(health_checks=False), cfg)
    scope = {
        "type": "http", "method": "POST", "path": "/v1/chat/completions", "extensions": {},
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    async def run() -> dict[str, float]:
        for app in apps.values():
            await app.startup()
            for _ in range(200):
                await app(scope, receive, send)
        per: dict[str, list[float]] = {n: [] for n in apps}
        diffs = []
        for b in range(blocks):
            got = {}
            order = list(apps.items()) if b % 2 == 0 else list(reversed(apps.items()))  # no order bias
            for name, app in order:
                c0 = time.process_time()
                for _ in range(per_block):
                    await app(scope, receive, send)
                got[name] = (time.process_time() - c0) / per_block * 1e6
                per[name].append(got[name])
            diffs.append(got["offroute"] - got["off"])
        for app in apps.values():
            await app.shutdown()
        return {
            "inproc_cpu_us_off": statistics.median(per["off"]),
            "inproc_cpu_us_offroute": statistics.median(per["offroute"]),
            "inproc_cpu_us_offroute_added": statistics.median(diffs),
        }

    return uvloop.run(run())


def stage_latency(redis_url: str, n: int) -> dict[str, float]:
    """p50 of the stages alone, in this process, interleaved in blocks (µs): the limits' admission
    (with the previous request's settle) in memory and in Redis, for a key with every limit set; a
    cache hit's lookup in memory and in Redis."""
    import uvloop

    from aib.auth.keys import ClientKey
    from aib.cache.stage import ResponseCache
    from aib.config.compile import build_plan
    from aib.config.schema import CacheStore
    from aib.limits.limiter import Limiter
    from aib.limits.remote import RedisLimits
    from aib.limits.slots import LocalSlots
    from aib.observe.records import RequestRecord
    from aib.shared.link import RedisLink

    key = ClientKey(id="k", num=1, name="bench", prefix="", hash="0" * 64, created_at=0.0,
                    rpm=BIG, tpm=BIG, concurrency=100_000, budget_day=BIG, budget_month=BIG)  # fmt: skip
    payload = orjson.loads(BODY)

    async def run() -> dict[str, float]:
        settings = RedisSettings(url=redis_url, key_prefix="stage:")
        link = RedisLink(settings, ("limits", "cache"))
        await link.start()
        local, remote = Limiter(LocalSlots()), RedisLimits(link, "bench")
        folder = Path(tempfile.mkdtemp())
        (folder / "providers.yaml").write_text(
            "providers:\n  f: {type: openai_compatible, base_url: 'http://127.0.0.1:9', models: [m]}\n"
        )
        (folder / "model-mappings.yaml").write_text(
            f"models:\n  {MODEL}: {{provider: f, upstream: m, cache: {{enabled: true, when: always}}}}\n"
        )
        plan = build_plan(folder)[0]
        caches = {
            "mem": ResponseCache(CacheStore()),
            "redis": ResponseCache(CacheStore(backend="redis"), link),
        }
        answer = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
        for c in caches.values():  # store one entry through the stage itself
            rec = RequestRecord("r", "chat/completions", MODEL, 0.0)
            look = await c.lookup(plan, "chat/completions", payload, rec, None, None)
            assert look is not None
            sent: list[dict[str, Any]] = []

            async def sink(m: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
                sent.append(m)

            send = look.wrap(sink, 1 << 20)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": answer})
            rec.status = 200
            c.store(look, rec)
        await asyncio.sleep(0.2)
        times: dict[str, list[float]] = {
            "limits_local": [],
            "limits_redis": [],
            "lookup_mem": [],
            "lookup_redis": [],
        }
        for _ in range(n):  # each stage in turn: noise hits all
            t = time.perf_counter()
            local.settle(local.admit(key, 100), 50)
            times["limits_local"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ticket = await remote.admit(key, 100)
            times["limits_redis"].append(time.perf_counter() - t)
            remote.settle(ticket, 50)
            for name, c in caches.items():
                rec = RequestRecord("r", "chat/completions", MODEL, 0.0)
                t = time.perf_counter()
                look = await c.lookup(plan, "chat/completions", payload, rec, None, None)
                times[f"lookup_{name}"].append(time.perf_counter() - t)
                assert look is not None and look.entry is not None
        await remote.close()
        await link.close()
        return {f"stage_{k}_p50_us": statistics.median(v) * 1e6 for k, v in times.items()}

    return uvloop.run(run())


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--seq", type=int, default=1000, help="sequential requests per gateway and round")
    ap.add_argument(
        "--inproc-blocks", type=int, default=40, help="blocks of 500 requests per app, in process"
    )
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "cache.json")
    args = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="aib-cache-bench-"))
    env = clean_env()
    env["AIB_KEYS_DB"] = str(workdir / "keys.db")
    limits = {"rpm": BIG, "tpm": BIG, "concurrency": 100_000, "budget_day": BIG, "budget_month": BIG}
    store = SqliteKeyStore(workdir / "keys.db")
    _, local_key = store.create("bench", **limits)
    store.close()
    redis = RedisServer(log_path=workdir / "redis.log").start()
    rstore = RedisKeyStore(RedisSettings(url=redis.url, key_prefix="bench:"))
    _, redis_key = rstore.create("bench", **limits)
    rstore.close()
    procs: list[Proc] = []
    up_port = free_port()
    fake = spawn(
        "fake", [sys.executable, "-m", "aib.devtools.fake_openai", "--port", str(up_port)], env, workdir
    )
    procs.append(fake)
    always = ", cache: {enabled: true, when: always}"
    setups = {  # name: (extra top-level config, the route's cache, key)
        "off": ("", "", None),
        "offroute": ("", "", None),
        "mem": ("cache: {backend: memory}", always, None),
        "redis": ("cache: {backend: redis}", always, None),
        "keys": ("auth: {mode: keys}", "", local_key),
        "rkeys": ("auth: {mode: keys, store: redis}", "", redis_key),
    }
    try:
        wait_ready(fake, lambda: _ok(up_port), 20)
        ports: dict[str, int] = {}
        gws: dict[str, Proc] = {}
        for name, (extra, route, key) in setups.items():
            cfg = config(workdir / name, up_port, redis.url, extra, route)
            if name == "off":  # no route caches: strip the other route's cache
                text = (cfg / "model-mappings.yaml").read_text().replace(", cache: {enabled: true}", "")
                (cfg / "model-mappings.yaml").write_text(text)
            gws[name], ports[name] = gateway(name, workdir, cfg, env, key)
            procs.append(gws[name])
        loaders = {
            "off": Loader(BODY, workdir),
            "offroute": Loader(BODY, workdir),
            "mem-hit": Loader(BODY, workdir),
            "redis-hit": Loader(BODY, workdir),
            "keys": Loader(BODY, workdir, headers={"Authorization": f"Bearer {local_key}"}),
            "rkeys": Loader(BODY, workdir, headers={"Authorization": f"Bearer {redis_key}"}),
        }
        gw_of = {"off": "off", "offroute": "offroute", "mem-hit": "mem", "mem-miss": "mem", "redis-hit": "redis",
                 "keys": "keys", "rkeys": "rkeys"}  # fmt: skip
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in (*gw_of, "seq")}
        counter = 0
        for r in range(args.rounds):
            for name in gw_of:
                proc, port = gws[gw_of[name]], ports[gw_of[name]]
                if name == "mem-miss":  # a new script per run: nothing it sends was ever sent before
                    res = measure(
                        lambda s, p=port: wrk(p, args.connections, s, unique_script(workdir / "unique.lua")),
                        proc,
                        args.duration,
                    )
                else:
                    loader = loaders[name]
                    res = measure(
                        lambda s, p=port, ld=loader: ld(p, args.connections, s, 5.0), proc, args.duration
                    )
                rounds[name].append(res)
                print(f"round {r + 1} {name:9} {res['rps']:>9,.0f} req/s  {res['cpu_us_per_req']:6.1f} us CPU/req  "
                      f"p99 {res['lat_p99_ms']:.2f} ms", flush=True)  # fmt: skip
            seq_ports = [up_port, ports["off"], ports["mem"], ports["redis"], ports["keys"], ports["rkeys"]]
            hdrs = [b"", b"", b"", b"", b"Authorization: Bearer %s\r\n" % local_key.encode(),
                    b"Authorization: Bearer %s\r\n" % redis_key.encode()]  # fmt: skip
            d, off, mem, red, keys, rkeys = (
                s.totals_us for s in paired(seq_ports, args.seq, 200, BODY, headers=hdrs)
            )
            off_m, mem_m = sequential_misses([ports["off"], ports["mem"]], args.seq // 2, counter)
            counter += args.seq
            seq = {
                "direct_p50_us": p50(d),
                "off_p50_us": p50(off),
                "mem_hit_p50_us": p50(mem),
                "redis_hit_p50_us": p50(red),
                "keys_p50_us": p50(keys),
                "rkeys_p50_us": p50(rkeys),
                "off_new_p50_us": p50(off_m),
                "mem_miss_p50_us": p50(mem_m),
            }
            rounds["seq"].append(seq)
            print(
                f"round {r + 1} seq p50 (us): " + ", ".join(f"{k[:-7]} {v:.0f}" for k, v in seq.items()),
                flush=True,
            )
        inproc = inprocess_cpu(up_port, workdir, args.inproc_blocks, 500)
        inproc.update(stage_latency(redis.url, args.seq * 2))
        print(
            "in process, CPU per request (us): " + ", ".join(f"{k} {v:.2f}" for k, v in inproc.items()),
            flush=True,
        )
    finally:
        for p in reversed(procs):
            p.stop()
        redis.close()

    def med(name: str, field: str) -> float:
        return statistics.median(x[field] for x in rounds[name])

    m = {
        **{f"rps_{n}": med(n, "rps") for n in gw_of},
        **{f"cpu_us_{n}": med(n, "cpu_us_per_req") for n in gw_of},
        **{f"p99_ms_{n}": med(n, "lat_p99_ms") for n in gw_of},
        **{k: med("seq", k) for k in rounds["seq"][0]},
    }
    m["hit_over_miss_rps"] = m["rps_mem-hit"] / m["rps_mem-miss"]
    m["miss_added_p50_us"] = m["mem_miss_p50_us"] - m["off_new_p50_us"]
    m["hit_vs_off_p50_us"] = m["mem_hit_p50_us"] - m["off_p50_us"]
    m["redis_hit_over_mem_hit_p50_us"] = m["redis_hit_p50_us"] - m["mem_hit_p50_us"]
    m["redis_limits_added_p50_us"] = m["rkeys_p50_us"] - m["keys_p50_us"]
    m["redis_limits_stage_added_p50_us"] = (
        inproc["stage_limits_redis_p50_us"] - inproc["stage_limits_local_p50_us"]
    )
    m["redis_lookup_stage_added_p50_us"] = (
        inproc["stage_lookup_redis_p50_us"] - inproc["stage_lookup_mem_p50_us"]
    )
    m["offroute_cpu_us_added"] = m["cpu_us_offroute"] - m["cpu_us_off"]
    m.update(inproc)
    verdicts = [
        {"target": "a memory-cache hit: >= 3x the req/s of a miss", "value": round(m["hit_over_miss_rps"], 2),
         "met": m["hit_over_miss_rps"] >= 3},
        {"target": "the memory cache adds <= 150 us to the p50 of a miss (lookup, store)",
         "value": round(m["miss_added_p50_us"], 1), "met": m["miss_added_p50_us"] <= 150},
        {"target": "a Redis hit: <= 300 us p50 over a memory hit", "value": round(m["redis_hit_over_mem_hit_p50_us"], 1),
         "met": m["redis_hit_over_mem_hit_p50_us"] <= 300},
        {"target": "Redis-backed limits add <= 200 us p50 (over limits in SQLite and memory; end to end)",
         "value": round(m["redis_limits_added_p50_us"], 1), "met": m["redis_limits_added_p50_us"] <= 200},
        {"target": "Redis-backed limits add <= 200 us p50 (the limits stage alone)",
         "value": round(m["redis_limits_stage_added_p50_us"], 1), "met": m["redis_limits_stage_added_p50_us"] <= 200},
        {"target": "a route with the cache off: CPU per request +<= 3 us (the request path, in process)",
         "value": round(m["inproc_cpu_us_offroute_added"], 2), "met": m["inproc_cpu_us_offroute_added"] <= 3},
    ]  # fmt: skip
    print()
    print(f"{'':12}{'req/s':>10}{'CPU us/req':>12}{'p99 ms':>9}")
    for n in gw_of:
        print(f"{n:12}{m[f'rps_{n}']:>10,.0f}{m[f'cpu_us_{n}']:>12.1f}{m[f'p99_ms_{n}']:>9.2f}")
    print("\nsequential p50 (us): " + ", ".join(f"{k[:-7]} {m[k]:.0f}" for k in rounds["seq"][0]))
    for v in verdicts:
        print(f"{'MET ' if v['met'] else 'MISSED'} {v['target']}: {v['value']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": machine_info(("ai-backend-unified", "uvloop", "httptools", "orjson", "redis", "hiredis")),
        "redis_server": _redis_version(),
        "options": {k: str(v) for k, v in vars(args).items()},
        "rounds": rounds,
        "medians": m,
        "verdicts": verdicts,
        "loadavg_end": os.getloadavg(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all(v["met"] for v in verdicts) else 1


def _redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("v=")[1].split()[0] if "v=" in out else out.strip()


def _ok(port: int) -> bool:
    try:
        with RawConn(port, 2.0) as conn:
            status, _, _, _ = conn.roundtrip(http_request(BODY, port))
    except OSError:
        return False
    return status == 200


if __name__ == "__main__":
    sys.exit(main())
