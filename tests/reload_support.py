"""Helpers for the hot-reload tests (not a test module).

* :class:`LoadGenerator` - bounded concurrent traffic (count and time) against a gateway from a
  background thread, keeping every request's outcome (status, provider header, error).
* :func:`reloading_gateway` - ``running_gateway`` on a config folder with ``install_reload`` wired in.
* :func:`wait_for_reload` - block until the controller recorded a reload matching a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE, sources_hash
from aib.gateway.app import Gateway
from aib.gateway.settings import GatewaySettings
from aib.reload import ReloadResult, ReloadService, install_reload
from gateway_harness import RunningGateway, gateway_settings, running_gateway, wait_until


@dataclass
class Outcome:
    request_id: str
    stream: bool
    status: int = 0
    provider: str = ""
    error: str = ""
    started: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


class LoadGenerator:
    """``concurrency`` workers sending chat requests until stopped, ``max_s`` or ``max_requests``.

    Every ``stream_every``-th request streams (and must end with ``data: [DONE]``).
    """

    def __init__(
        self,
        base_url: str,
        model: str = "m",
        concurrency: int = 32,
        max_s: float = 10.0,
        max_requests: int = 100_000,
        stream_every: int = 4,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.concurrency = concurrency
        self.max_s = max_s
        self.max_requests = max_requests
        self.stream_every = stream_every
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._n = 0
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name="reload-load", daemon=True
        )

    def __enter__(self) -> LoadGenerator:
        self._thread.start()
        wait_until(lambda: len(self.outcomes) >= self.concurrency, 10.0, what="the load to start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_s + 30)
        assert not self._thread.is_alive(), "the load generator did not stop"

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    async def _main(self) -> None:
        deadline = time.monotonic() + self.max_s
        conn = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(self._worker(session, deadline) for _ in range(self.concurrency)))

    async def _worker(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline and self._n < self.max_requests:
            self._n += 1
            n = self._n
            out = Outcome(f"load-{n:07d}", stream=n % self.stream_every == 0, started=time.monotonic())
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": out.stream,
            }
            try:
                async with session.post(
                    f"{self.base_url}/v1/chat/completions",
                    data=orjson.dumps(body),
                    headers={"content-type": "application/json", "x-request-id": out.request_id},
                ) as resp:
                    out.status = resp.status
                    out.provider = resp.headers.get("x-aib-provider", "")
                    raw = await resp.read()
                    if resp.status != 200:
                        out.error = raw[:300].decode(errors="replace")
                    elif out.stream and not raw.rstrip().endswith(b"data: [DONE]"):
                        out.error = f"stream cut short: {raw[-100:]!r}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                out.error = f"{type(exc).__name__}: {exc}"
            out.seconds = time.monotonic() - out.started
            self.outcomes.append(out)


# --------------------------------------------------------------------------- configs


def provider_yaml(providers: dict[str, str], models: tuple[str, ...] = ("m",), **extra: str) -> str:
    """providers.yaml with openai_compatible providers ``name: base_url`` serving ``models``."""
    lines = ["providers:"]
    for name, url in providers.items():
        opts = "".join(f", {k}: {v}" for k, v in extra.items())
        lines.append(
            f'  {name}: {{type: openai_compatible, base_url: "{url}", models: [{", ".join(models)}]{opts}}}'
        )
    return "\n".join(lines) + "\n"


def mappings_yaml(routes: dict[str, str], critical: bool = False) -> str:
    """model-mappings.yaml routing ``model: provider``."""
    lines = ["defaults:", "  breaker: {failure_threshold: 1000, cooldown_s: 1}", "models:"]
    for model, prov in routes.items():
        lines.append(f"  {model}: {{provider: {prov}{', critical: true' if critical else ''}}}")
    return "\n".join(lines) + "\n"


def write(config_dir: Path, providers: str | None = None, mappings: str | None = None) -> str:
    """Write the given files (plain truncating writes, as an editor without atomic save does)."""
    if providers is not None:
        (config_dir / PROVIDERS_FILE).write_text(textwrap.dedent(providers))
    if mappings is not None:
        (config_dir / MAPPINGS_FILE).write_text(textwrap.dedent(mappings))
    return version_of(config_dir)


def version_of(config_dir: Path) -> str:
    return sources_hash((config_dir / PROVIDERS_FILE).read_bytes(), (config_dir / MAPPINGS_FILE).read_bytes())


# --------------------------------------------------------------------------- the gateway


@contextlib.contextmanager
def reloading_gateway(config_dir: Path, **settings: Any) -> Iterator[tuple[RunningGateway, ReloadService]]:
    """The gateway on ``config_dir`` with hot reload (watcher on, short debounce unless given)."""
    values: dict[str, Any] = {"watch_config": True, "reload_debounce_ms": 100, "reload_verify_timeout_s": 3.0}
    values.update(settings)
    gs: GatewaySettings = gateway_settings(**values)
    holder: dict[str, ReloadService] = {}

    def setup(gw: Gateway) -> None:
        holder["service"] = install_reload(gw, config_dir)

    with running_gateway(config_dir, gs, setup=setup) as rg:
        service = holder["service"]
        if service.watcher is not None:
            wait_until(lambda: service.watcher is not None and service.watcher.running, what="the watcher")
        yield rg, service


def wait_for_reload(
    service: ReloadService,
    match: Callable[[ReloadResult], bool],
    timeout: float = 10.0,
    what: str = "a reload",
) -> ReloadResult:
    found: list[ReloadResult] = []

    def seen() -> bool:
        found[:] = [r for r in list(service.controller.history) if match(r)]
        return bool(found)

    wait_until(seen, timeout, what=what)
    return found[-1]
