"""In-process driver for bench/auth_bench.py: one gateway, N requests through its ASGI callable, no
HTTP server in between, the fake upstream over loopback. Run by callgrind (instructions per request)
and by the CPU-time comparison. Not a module of the package.

    python bench/_auth_inproc.py CASE N UPSTREAM_PORT WORKDIR     # CASE: off, plain, full, 429
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvloop

from aib.auth.store import SqliteKeyStore
from aib.config.compile import build_plan
from aib.gateway.app import Gateway, create_app
from aib.gateway.settings import GatewaySettings

BODY = b'{"model":"bench","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
BIG = 10**12
KEYS = {  # the key each case sends: none, one without limits, one with every limit, one used up
    "plain": {},
    "full": {"models": ("bench",), "rpm": BIG, "tpm": BIG, "concurrency": 100_000, "budget_day": BIG, "budget_month": BIG},
    "429": {"rpm": 1},
    "models": {"models": ("bench",)},
    "rpm": {"rpm": BIG},
    "tpm": {"tpm": BIG},
    "conc": {"concurrency": 100_000},
    "budget": {"budget_day": BIG},
}  # fmt: skip


def prepare(workdir: Path, upstream_port: int) -> dict[str, str]:
    """Both configs and a key per case; returns the keys' secrets by case."""
    for name, auth in (("off", "none"), ("keys", "keys")):
        cdir = workdir / name
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / "providers.yaml").write_text(
            f'providers:\n  fake: {{type: openai_compatible, base_url: "http://127.0.0.1:{upstream_port}", models: [fake-model]}}\n'
        )
        (cdir / "model-mappings.yaml").write_text(
            f"auth: {{mode: {auth}}}\nmodels:\n  bench: {{provider: fake, upstream: fake-model}}\n"
        )
    store = SqliteKeyStore(workdir / "keys.db")
    secrets = {case: store.create(case, **limits)[1] for case, limits in KEYS.items()}
    store.close()
    (workdir / "secrets").write_text("\n".join(f"{c} {s}" for c, s in secrets.items()))
    return secrets


def scope(secret: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(BODY)),
    ]
    if secret:
        headers.append((b"authorization", b"Bearer " + secret.encode()))
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers,
            "client": ("127.0.0.1", 1), "query_string": b""}  # fmt: skip


def gateway(workdir: Path, case: str) -> Gateway:
    plan, cfg, _ = build_plan(workdir / ("off" if case == "off" else "keys"))
    return create_app(plan, GatewaySettings(health_checks=False, keys_db=workdir / "keys.db"), cfg)


async def drive(gw: Gateway, secret: str | None, n: int) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    sc = scope(secret)
    for _ in range(n):
        await gw(sc, receive, send)
    return statuses


async def main(case: str, n: int, workdir: Path) -> None:
    secrets = dict(line.split(" ", 1) for line in (workdir / "secrets").read_text().splitlines())
    gw = gateway(workdir, case)
    await gw.startup()
    if gw.gate._task is not None:  # the store's poll and usage writes are timed, not per request:
        gw.gate._task.cancel()  # under callgrind (50x slower) they would count as request work
    secret = secrets.get(case)
    await drive(gw, secret, 200)  # warm-up: pools, caches, the 429 key's one request
    got = await drive(gw, secret, n)
    await gw.shutdown()
    want = 429 if case == "429" else 200
    if got != {want: n}:
        raise SystemExit(f"{case}: expected {n} x {want}, got {got}")


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[4])))
