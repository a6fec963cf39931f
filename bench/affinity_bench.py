"""Load-aware routing on real servers: round_robin, least_outstanding, least_loaded and prefix_affinity.

Two llama.cpp ``llama-server`` processes with SmolLM2 (``make llama-server``; 2 slots, 1 thread each,
``--metrics``) behind one gateway process (``aib serve``, health checks and backend signals on), with one
route per strategy over the same two deployments. Two scenarios, in one run:

* **conversations**: N conversations of M turns, all at once (each conversation's turns one after the
  other), sharing one long system prompt; each conversation starts with its own ~130-token document.
  A turn is a streamed chat request; TTFT is the time to the first SSE event. A fresh nonce per run
  keeps one strategy's cache from helping the next. Turns >= 2 are where prefix affinity matters: the
  server that answered turn 1 has the conversation's prefix in its KV cache (``timings.cache_n``).
* **slow server**: another client keeps server 2 busy (four loops of long generations straight to it:
  two run, two wait for a slot); R short streamed requests, C at a time. Only
  the server's own ``/metrics`` shows that load; least_outstanding counts only the gateway's requests.

Strategies run interleaved (round 1 in one order, round 2 reversed) so the machine's other load hits
them alike; ratios within a run are what count. Writes ``bench/results/affinity_bench.{json,md}``.

    .venv/bin/python bench/affinity_bench.py            # N=6 M=3, 2 rounds, R=12 C=4: ~8 min
    .venv/bin/python bench/affinity_bench.py --quick    # N=4 M=3, 1 round, R=8: ~4 min

Everything binds to 127.0.0.1; every process started here is stopped by PID; load is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from aib.benchmark.procs import Proc, cpu_busy_s, machine_info, own_cpu_s, spawn, wait_ready
from aib.devtools.llama_server import LlamaServer
from aib.devtools.llama_server_build import build
from aib.devtools.llamacpp import free_port
from aib.devtools.models import ensure_model

STRATEGIES = ("round_robin", "least_outstanding", "least_loaded", "prefix_affinity")
RESULTS = Path(__file__).resolve().parent / "results"
WORDS = [
    "river",
    "mountain",
    "archive",
    "ledger",
    "lantern",
    "orchard",
    "harbor",
    "meadow",
    "quarry",
    "beacon",
    "canyon",
    "glacier",
    "timber",
    "granary",
    "citadel",
    "vineyard",
    "compass",
    "parchment",
    "foundry",
    "observatory",
    "aqueduct",
    "monastery",
    "estuary",
    "causeway",
]
SYSTEM = " ".join(
    f"Rule {i}: you are the reading-room assistant of a city library; answer in one short sentence, "
    "quote the document when you can, never invent facts, and be polite to every reader."
    for i in range(5)
)


def document(seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(100))


# --------------------------------------------------------------------------- servers and gateway


def write_config(folder: Path, servers: list[LlamaServer]) -> None:
    provs = "".join(
        f"  s{i + 1}:\n    type: llamacpp\n    base_url: {s.root_url}\n    models: [smollm2]\n"
        "    health: {interval_s: 2, timeout_s: 2}\n"
        "    signals: {interval_s: 1.5, timeout_s: 1, stale_after_s: 8}\n"
        for i, s in enumerate(servers)
    )
    (folder / "providers.yaml").write_text("providers:\n" + provs)
    deps = "[{provider: s1, upstream: smollm2}, {provider: s2, upstream: smollm2}]"
    routes = "".join(f"  {st}: {{strategy: {st}, deployments: {deps}}}\n" for st in STRATEGIES)
    (folder / "model-mappings.yaml").write_text(
        "defaults:\n  timeouts: {first_byte_s: 300, total_s: 600}\n  breaker: {failure_threshold: 50}\n"
        "models:\n" + routes
    )


def start_gateway(folder: Path, logdir: Path) -> tuple[Proc, str]:
    port = free_port()
    env = {**os.environ, "AIB_REQUEST_LOG": "off", "AIB_ACCESS_LOG": "off"}
    cmd = [
        str(Path(sys.executable).with_name("aib")),
        "serve",
        "--config-dir",
        str(folder),
        "--port",
        str(port),
    ]
    proc = spawn("gateway", cmd, env, logdir)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            h = httpx.get(url + "/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        return all(
            p["status"] == "healthy" and (p.get("signals") or {}).get("state") == "fresh"
            for p in h["providers"].values()
        )

    wait_ready(proc, ready, 60, 0.2)
    return proc, url


# --------------------------------------------------------------------------- one request


async def turn(
    client: httpx.AsyncClient, url: str, model: str, messages: list[dict[str, str]], max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},  # llama-server's timings (cache_n) ride on that chunk
    }
    t0 = time.perf_counter()
    ttft = None
    text: list[str] = []
    cache_n = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{model}: {r.status_code} {(await r.aread())[:300]!r}")
        provider = r.headers.get("x-aib-provider")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            if ttft is None:
                ttft = time.perf_counter() - t0
            event = orjson.loads(line[6:])
            for c in event.get("choices") or []:
                text.append((c.get("delta") or {}).get("content") or "")
            timings = event.get("timings")
            if isinstance(timings, dict):
                cache_n = timings.get("cache_n")
    return {
        "provider": provider,
        "ttft_s": ttft,
        "total_s": time.perf_counter() - t0,
        "answer": "".join(text),
        "cache_n": cache_n,
    }


# --------------------------------------------------------------------------- scenario 1: conversations


async def conversations(url: str, strategy: str, n: int, m: int, max_tokens: int) -> dict[str, Any]:
    nonce = uuid.uuid4().hex[:12]
    system = f"Session {nonce}. {SYSTEM}"
    rows: list[dict[str, Any]] = []

    async def one(client: httpx.AsyncClient, c: int) -> None:
        msgs = [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": f"Here is document {c}: {document(c * 7919 + len(nonce))}. What is it about?",
            },
        ]
        for t in range(1, m + 1):
            out = await turn(client, url, strategy, msgs, max_tokens)
            rows.append({"conversation": c, "turn": t, **{k: v for k, v in out.items() if k != "answer"}})
            msgs += [
                {"role": "assistant", "content": out["answer"]},
                {"role": "user", "content": f"Tell me more, point {t}."},
            ]

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=n * 2, max_keepalive_connections=n * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await asyncio.gather(*(one(client, c) for c in range(n)))
    wall = time.perf_counter() - t0
    first = sorted(r["ttft_s"] for r in rows if r["turn"] == 1)
    later = sorted(r["ttft_s"] for r in rows if r["turn"] >= 2)
    sticky = sum(1 for c in range(n) if len({r["provider"] for r in rows if r["conversation"] == c}) == 1)
    cached = [r["cache_n"] for r in rows if r["turn"] >= 2 and r["cache_n"] is not None]
    return {
        "strategy": strategy,
        "wall_s": wall,
        "ttft_turn1_p50_s": pct(first, 0.5),
        "ttft_turn1_p95_s": pct(first, 0.95),
        "ttft_later_p50_s": pct(later, 0.5),
        "ttft_later_p95_s": pct(later, 0.95),
        "conversations_on_one_server": sticky,
        "cache_n_later_mean": statistics.mean(cached) if cached else None,
        "requests": rows,
    }


# --------------------------------------------------------------------------- scenario 2: one slow server


class OtherClient:
    """Keeps ``server`` busy with ``loops`` back-to-back long generations sent straight to it."""

    def __init__(self, server: LlamaServer, loops: int = 4, max_tokens: int = 96) -> None:
        self.server, self.loops, self.max_tokens = server, loops, max_tokens
        self.stop = threading.Event()
        self.done = 0
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(loops)]

    def _loop(self, i: int) -> None:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": f"Write a long poem about the sea, voice {i}."}],
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
        }
        with httpx.Client(timeout=120) as c:
            deadline = time.monotonic() + 3600  # bounded in time whatever happens
            while not self.stop.is_set() and time.monotonic() < deadline:
                c.post(self.server.base_url + "/chat/completions", json=body)
                self.done += 1

    def __enter__(self) -> OtherClient:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=130)


async def slow_server(url: str, strategy: str, requests: int, concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    rows: list[dict[str, Any]] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with sem:
            msgs = [{"role": "user", "content": f"Name one colour, request {i}."}]
            out = await turn(client, url, strategy, msgs, 8)
            rows.append({k: v for k, v in out.items() if k != "answer"})

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        await asyncio.gather(*(one(client, i) for i in range(requests)))
    ttft = sorted(r["ttft_s"] for r in rows)
    total = sorted(r["total_s"] for r in rows)
    return {
        "strategy": strategy,
        "wall_s": time.perf_counter() - t0,
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p95_s": pct(ttft, 0.95),
        "latency_p50_s": pct(total, 0.5),
        "latency_p95_s": pct(total, 0.95),
        "to_slow_server": sum(1 for r in rows if r["provider"] == "s2"),
        "requests": rows,
    }


# --------------------------------------------------------------------------- report


def pct(xs: list[float], q: float) -> float:
    return float(xs[min(len(xs) - 1, int(q * len(xs)))]) if xs else float("nan")


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return float(statistics.median(vals)) if vals else float("nan")


def tables(
    conv: dict[str, list[dict[str, Any]]], slow: dict[str, list[dict[str, Any]]], n: int, m: int
) -> str:
    base = median_of(conv["round_robin"], "ttft_later_p50_s")
    lines = [
        f"Conversations: {n} x {m} turns at once, shared system prompt (median over rounds)",
        "",
        "| strategy | TTFT turn 1 p50 | p95 | TTFT turns>=2 p50 | p95 | vs round_robin (p50, turns>=2) | total | on one server | cache_n turns>=2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for st in STRATEGIES:
        runs = conv[st]
        p50 = median_of(runs, "ttft_later_p50_s")
        lines.append(
            f"| {st} | {median_of(runs, 'ttft_turn1_p50_s'):.2f} s | {median_of(runs, 'ttft_turn1_p95_s'):.2f} s "
            f"| {p50:.2f} s | {median_of(runs, 'ttft_later_p95_s'):.2f} s | {100 * (p50 / base - 1):+.0f} % "
            f"| {median_of(runs, 'wall_s'):.1f} s | {median_of(runs, 'conversations_on_one_server'):.0f}/{n} "
            f"| {median_of(runs, 'cache_n_later_mean'):.0f} |"
        )
    rr95 = median_of(slow["round_robin"], "ttft_p95_s")
    lines += [
        "",
        "One server busy with another client's requests (median over rounds)",
        "",
        "| strategy | TTFT p50 | TTFT p95 | vs round_robin (p95) | latency p50 | latency p95 | total | sent to the busy server |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for st in STRATEGIES:
        runs = slow[st]
        p95 = median_of(runs, "ttft_p95_s")
        lines.append(
            f"| {st} | {median_of(runs, 'ttft_p50_s'):.2f} s | {p95:.2f} s | {100 * (p95 / rr95 - 1):+.0f} % "
            f"| {median_of(runs, 'latency_p50_s'):.2f} s | {median_of(runs, 'latency_p95_s'):.2f} s "
            f"| {median_of(runs, 'wall_s'):.1f} s | {median_of(runs, 'to_slow_server'):.0f}/{len(runs[0]['requests'])} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", "-n", type=int, default=6)
    ap.add_argument("--turns", "-m", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16, help="answer length of each turn")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=12, help="slow-server scenario: requests per strategy")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="N=4 M=3, 1 round, 8 requests")
    args = ap.parse_args()
    if args.quick:
        args.conversations, args.turns, args.rounds, args.requests = 4, 3, 1, 8
    model, binary = ensure_model(), build()
    RESULTS.mkdir(exist_ok=True)
    info = machine_info(["llama-cpp-python"])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="aib-affinity-bench-") as tmp_name:
        tmp = Path(tmp_name)
        servers = [
            LlamaServer(model, binary=binary, n_ctx=8192, n_threads=1, parallel=2, log_path=tmp / f"s{i}.log")
            for i in (1, 2)
        ]
        gateway: Proc | None = None
        try:
            for s in servers:
                s.start(wait=False)
            for s in servers:
                s.wait_ready()
                s.warm_up()
            write_config(tmp, servers)
            gateway, url = start_gateway(tmp, tmp)
            procs = [gateway]
            busy0, own0 = cpu_busy_s(), own_cpu_s(procs)
            conv: dict[str, list[dict[str, Any]]] = {st: [] for st in STRATEGIES}
            slow: dict[str, list[dict[str, Any]]] = {st: [] for st in STRATEGIES}
            for rnd in range(args.rounds):
                order = STRATEGIES if rnd % 2 == 0 else tuple(reversed(STRATEGIES))
                for st in order:
                    res = asyncio.run(conversations(url, st, args.conversations, args.turns, args.max_tokens))
                    conv[st].append(res)
                    print(
                        f"round {rnd + 1} conversations {st:18s} TTFT turn1 p50 {res['ttft_turn1_p50_s']:.2f} s, "
                        f"turns>=2 p50 {res['ttft_later_p50_s']:.2f} s p95 {res['ttft_later_p95_s']:.2f} s, "
                        f"{res['wall_s']:.1f} s, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
            with OtherClient(servers[1]) as other:
                time.sleep(4)  # the other client's requests are running and the gateway has polled
                for rnd in range(args.rounds):
                    order = STRATEGIES if rnd % 2 == 0 else tuple(reversed(STRATEGIES))
                    for st in order:
                        res = asyncio.run(slow_server(url, st, args.requests, args.concurrency))
                        slow[st].append(res)
                        print(
                            f"round {rnd + 1} slow server   {st:18s} TTFT p50 {res['ttft_p50_s']:.2f} s "
                            f"p95 {res['ttft_p95_s']:.2f} s, {res['to_slow_server']}/{args.requests} to the busy "
                            f"server, load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
                other_done = other.done
            wall = time.time() - started
            foreign = max(0.0, (cpu_busy_s() - busy0) - (own_cpu_s(procs) - own0))
        finally:
            if gateway is not None:
                gateway.stop()
            for s in servers:
                s.stop()
    table = tables(conv, slow, args.conversations, args.turns)
    info["loadavg_end"] = os.getloadavg()
    result = {
        "settings": vars(args),
        "machine": info,
        "wall_s": wall,
        "machine_cpu_s_besides_gateway": foreign,
        "other_client_requests": other_done,
        "conversations": conv,
        "slow_server": slow,
        "table": table,
    }
    (RESULTS / "affinity_bench.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (RESULTS / "affinity_bench.md").write_text(table + "\n")
    print()
    print(table)
    print(
        f"\nmachine: {info['nproc']} cores, load {info['loadavg_start']} -> {info['loadavg_end']}; {wall:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
