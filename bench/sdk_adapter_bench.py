"""The LiteLLM SDK adapter: start-up, memory and the latency it adds, in one run.

Starts the Anthropic contract fake (``aib.devtools.fake_anthropic``, in this process), then a gateway
process (``build_gateway`` + ``install_sdk_adapter``, as ``aib serve`` runs it) whose one provider is
``litellm_sdk`` -> the fake; the gateway starts the adapter with ``.venv-litellm``'s Python. Measured:

* seconds from the gateway's start to the provider being healthy (LiteLLM's import dominates);
* RSS of the gateway process (target <= 100 MB: it must not load LiteLLM) and of the adapter;
* latency of N sequential chat requests (plain and streamed) through the gateway, to the adapter
  directly, and to the fake directly (the SDK's own cost is adapter - fake; the gateway's hop is
  gateway - adapter), and requests per second at concurrency C.

    .venv/bin/python bench/sdk_adapter_bench.py            # N=300, C=8
    .venv/bin/python bench/sdk_adapter_bench.py --quick    # N=60

Writes ``bench/results/sdk_adapter.json``. Everything binds to 127.0.0.1; every process started here is
stopped by PID (the adapter by its gateway). Load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from aib.config.litellm_sdk import CONFIG_HEADER, TOKEN_ENV, TOKEN_HEADER, SdkOptions, find_adapter_python
from aib.devtools.fake_anthropic import FakeAnthropic
from aib.devtools.llamacpp import free_port

KEY = "sk-ant-bench-0123456789"
TOKEN = "bench-adapter-token"  # given to the gateway, so this script may talk to its adapter too
MODEL = "claude-3-5-haiku-latest"
CHILD = """
import sys, uvloop
from pathlib import Path
from aib.engines.sdk_sidecar import install_sdk_adapter
from aib.gateway.server import build_gateway, serve_app
from aib.gateway.settings import GatewaySettings
from aib.observe.settings import ObserveSettings
settings = GatewaySettings(port=int(sys.argv[2]), config_dir=Path(sys.argv[1]), watch_config=False)
gw = build_gateway(settings, ObserveSettings(request_log=None, access_log=False))
install_sdk_adapter(gw)
uvloop.run(serve_app(gw, "127.0.0.1", settings.port, drain_s=2))
"""


def write_config(folder: Path, fake: FakeAnthropic, adapter_port: int) -> None:
    (folder / "providers.yaml").write_text(
        "providers:\n"
        f"  claude: {{type: litellm_sdk, base_url: 'http://127.0.0.1:{adapter_port}', "
        f"litellm_model: 'anthropic/{{model}}', api_base: '{fake.base_url}', api_key_env: AIB_BENCH_KEY, "
        f"models: [{MODEL}], health: {{interval_s: 1}}}}\n"
    )
    (folder / "model-mappings.yaml").write_text(
        f"models:\n  claude: {{provider: claude, upstream: {MODEL}}}\n"
    )


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


async def timed(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], n: int
) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await client.post(url, json=body, headers=headers)
        await resp.aread()
        assert resp.status_code == 200, resp.text
        lat.append(time.perf_counter() - t0)
    return {
        "p50_ms": pct(lat, 0.5),
        "p95_ms": pct(lat, 0.95),
        "mean_ms": round(statistics.mean(lat) * 1000, 2),
    }


async def rate(
    url: str, body: dict[str, Any], headers: dict[str, str], n: int, c: int, max_s: float
) -> float:
    done = 0
    deadline = time.monotonic() + max_s
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=c)) as client:

        async def worker() -> None:
            nonlocal done
            while done < n and time.monotonic() < deadline:
                done += 1
                resp = await client.post(url, json=body, headers=headers)
                assert resp.status_code == 200, resp.text

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return round(done / (time.perf_counter() - t0), 1)


async def measure(gw: str, adapter: str, fake: FakeAnthropic, n: int, c: int) -> dict[str, Any]:
    chat = {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    opts = SdkOptions("claude", "anthropic/{model}", fake.base_url, "AIB_BENCH_KEY", models=(MODEL,))
    direct_headers = {CONFIG_HEADER: opts.to_header(), "authorization": f"Bearer {KEY}", TOKEN_HEADER: TOKEN}
    fake_headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for stream in (False, True):
            body = {**chat, "stream": stream}
            label = "stream" if stream else "plain"
            await timed(client, gw + "/v1/chat/completions", body, {}, 10)  # warm-up
            out[f"gateway_{label}"] = await timed(client, gw + "/v1/chat/completions", body, {}, n)
            out[f"adapter_{label}"] = await timed(
                client, adapter + "/v1/chat/completions", {**body, "model": MODEL}, direct_headers, n
            )
            fake_body = {"model": MODEL, "messages": chat["messages"], "max_tokens": 16, "stream": stream}
            out[f"fake_{label}"] = await timed(
                client, fake.base_url + "/v1/messages", fake_body, fake_headers, n
            )
    out[f"gateway_rps_c{c}"] = await rate(gw + "/v1/chat/completions", chat, {}, n, c, 60)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("-c", type=int, default=8)
    args = ap.parse_args()
    n = 60 if args.quick else args.n
    python = find_adapter_python()
    if not python.installed:
        print(f"{python.problem}", file=sys.stderr)
        return 2
    with FakeAnthropic(keys={KEY}).serve_in_thread() as fake, tempfile.TemporaryDirectory() as tmp:
        adapter_port, gw_port = free_port(), free_port()
        write_config(Path(tmp), fake, adapter_port)
        env = {**os.environ, "AIB_BENCH_KEY": KEY, "AIB_REQUEST_LOG": "off", TOKEN_ENV: TOKEN}
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, tmp, str(gw_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gw, adapter = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{adapter_port}"
        try:
            while time.monotonic() - t0 < 120:
                try:
                    body = httpx.get(gw + "/health", timeout=2).json()
                    if body["providers"]["claude"]["status"] == "healthy":
                        break
                except (httpx.HTTPError, KeyError, ValueError):
                    pass
                time.sleep(0.05)
            ready_s = round(time.monotonic() - t0, 2)
            result: dict[str, Any] = {"n": n, "c": args.c, "ready_s": ready_s, "litellm": python.version}
            result.update(asyncio.run(measure(gw, adapter, fake, n, args.c)))
            gw_proc = psutil.Process(proc.pid)
            children = gw_proc.children(recursive=True)
            result["gateway_rss_mb"] = round(gw_proc.memory_info().rss / 2**20, 1)
            result["adapter_rss_mb"] = round(sum(ch.memory_info().rss for ch in children) / 2**20, 1)
            result["gateway_imports_litellm"] = any("litellm" in m.path for m in gw_proc.memory_maps())
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    out = Path(__file__).resolve().parent / "results" / "sdk_adapter.json"
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    for k, v in result.items():
        print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
