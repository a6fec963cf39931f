"""One ``aib bench`` run: the instant fake upstream, then each engine in front of it, measured against
calling the fake directly, pair by pair.

Everything is a separate process on 127.0.0.1, started and stopped here by PID:

* the fake (``python -m aib.devtools.fake_openai``: 8 chunks per stream, 1 ms apart);
* the native engine as users run it (``aib serve`` on a free port; default request log, access log and
  metrics; its own working folder), then the same with ``--workers N`` (``native_w``, default 2);
* the LiteLLM engine (``aib serve --engine litellm``) when LiteLLM is installed, unless ``litellm=False``.

Per engine: time from start to the first answered request; sequential latency over one keep-alive
connection, interleaved in blocks with the same requests sent direct (so noise hits both); the same
for streams (time to first token, whole stream, and CPU per chunk); req/s, errors and latency at
fixed concurrency for a bounded time; RSS after load. Native and direct run ``rounds`` times (best of);
LiteLLM once (it is ~100x slower, so noise does not matter there).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from aib.benchmark.client import first_ok, paired, stream_check
from aib.benchmark.load import Loader
from aib.benchmark.procs import (
    Proc,
    cpu_busy_s,
    free_port,
    machine_info,
    own_cpu_s,
    spawn,
    wait_idle,
    wait_quiet,
    wait_ready,
)
from aib.benchmark.stats import best_of, evaluate

FAKE_CHUNKS, FAKE_DELAY_MS = 8, 1.0
STREAM_EVENTS = FAKE_CHUNKS + 2  # content chunks, the finish event, [DONE]
MODEL = "bench"
BODY = orjson.dumps(
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        "max_tokens": 16,
        "temperature": 0.2,
    }
)
STREAM_BODY = orjson.dumps({**orjson.loads(BODY), "stream": True})
TOKENS_PER_S = 30  # a typical streaming rate of one answer from a GPU-served 7-8B model
PACKAGES = ("ai-backend-unified", "uvloop", "httptools", "orjson", "psutil")
Phase = Callable[[str], None]


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement one engine gets."""

    seq_n: int = 2000
    seq_warmup: int = 300
    stream_n: int = 200
    stream_warmup: int = 25
    block: int = 25
    max_seq_s: float = 30.0
    duration_s: float = 3.0
    concurrency: tuple[int, ...] = (32, 64, 128)
    load_timeout_s: float = 5.0
    ready_timeout_s: float = 30.0


NATIVE = Sizes()
LITELLM = Sizes(
    seq_n=200,
    seq_warmup=20,
    stream_n=40,
    stream_warmup=5,
    block=10,
    duration_s=10.0,
    concurrency=(32, 128),
    load_timeout_s=30.0,
    ready_timeout_s=240.0,
)


@dataclass(frozen=True)
class BenchOptions:
    rounds: int = 3
    litellm: bool = True
    loader: str = "auto"
    settle_s: float = 2.0  # at most this long, wait for a quiet machine before each engine
    budget_s: float = 300.0  # no new round starts after this
    native: Sizes = NATIVE
    litellm_sizes: Sizes = LITELLM
    direct_concurrency: tuple[int, ...] = (32, 64, 128)
    workers: int = 2  # also measure `aib serve --workers N` ("native_w"); 1: not

    @classmethod
    def quick(cls) -> BenchOptions:
        """About a minute: one round, fewer requests, shorter loads."""
        return cls(
            rounds=1,
            settle_s=1.0,
            budget_s=90.0,
            native=replace(NATIVE, seq_n=500, seq_warmup=100, stream_n=50, duration_s=2.0),
            litellm_sizes=replace(LITELLM, seq_n=60, seq_warmup=10, stream_n=15, duration_s=5.0),
        )


@dataclass
class EngineRun:
    name: str
    rounds: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    log: str | None = None  # the engine's log file (kept when it failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "best": best_of(self.rounds) if self.rounds else {},
            "error": self.error,
        }


def aib_command() -> list[str]:
    exe = Path(sys.executable).parent / "aib"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from aib.cli.main import app; app()"]


def clean_env() -> dict[str, str]:
    """Our environment without AIB_* settings (the gateway runs on its defaults), but where LiteLLM is."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AIB_") or k == "AIB_LITELLM_BIN"}


def write_bench_config(folder: Path, upstream_port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "providers.yaml").write_text(
        "providers:\n  fake:\n    type: openai_compatible\n"
        f"    base_url: http://127.0.0.1:{upstream_port}\n    models: [fake-model]\n"
    )
    (folder / "model-mappings.yaml").write_text(
        f"models:\n  {MODEL}: {{provider: fake, upstream: fake-model}}\n"
    )
    return folder


class Bench:
    """State of one run; :func:`run_bench` drives it."""

    def __init__(self, opts: BenchOptions, workdir: Path, phase: Phase) -> None:
        self.opts = opts
        self.workdir = workdir
        self.phase = phase
        self.loader = Loader(BODY, workdir, opts.loader)
        self.env = clean_env()
        self.fake: Proc | None = None
        self.up_port = 0
        self.config_dir = workdir / "config"
        self.direct = EngineRun("direct")
        self.fake_ready_s = float("nan")
        self.direct_seq: dict[str, float] = {}  # direct's side of the last engine's pairs

    # ---------------------------------------------------------------- processes

    def start_fake(self) -> None:
        self.up_port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "aib.devtools.fake_openai",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.up_port),
        ]
        cmd += ["--chunks", str(FAKE_CHUNKS), "--chunk-delay-ms", str(FAKE_DELAY_MS)]
        self.fake = spawn("fake_openai", cmd, self.env, self.workdir)
        self.fake_ready_s = wait_ready(self.fake, lambda: first_ok(self.up_port, BODY), 20)
        write_bench_config(self.config_dir, self.up_port)

    def start_engine(self, engine: str, sizes: Sizes) -> tuple[Proc, int, float]:
        port = free_port()
        cmd = [*aib_command(), "serve", "-c", str(self.config_dir), "--port", str(port)]
        if engine == "native_w":
            cmd += ["--workers", str(self.opts.workers)]
        if engine == "litellm":
            cmd += ["--engine", "litellm", "--litellm-direct"]  # LiteLLM itself, not behind aib's front
        cwd = self.workdir / f"{engine}-cwd"  # the request log (var/requests.db) lands here
        cwd.mkdir(exist_ok=True)
        proc = spawn(
            f"{engine}-{int(time.time() * 1000)}",
            cmd,
            self.env,
            self.workdir,
            cwd=cwd,
            exclude_root=engine == "litellm",
        )
        interval = 0.1 if engine == "litellm" else 0.01
        try:
            ready_s = wait_ready(proc, lambda: first_ok(port, BODY, 10), sizes.ready_timeout_s, interval)
        except BaseException:
            proc.stop()
            raise
        return proc, port, ready_s

    # ---------------------------------------------------------------- measurements

    def load(self, port: int, conns: int, sizes: Sizes, target: Proc, prefix: str = "") -> dict[str, float]:
        """Warm up at ``conns``, then measure for ``sizes.duration_s``; with the target's CPU per request."""
        assert self.fake is not None
        self.loader(port, conns, min(1.0, sizes.duration_s / 2), sizes.load_timeout_s)
        wait_idle(target, max_s=sizes.load_timeout_s)  # what the warm-up left in flight is done
        procs = [self.fake, target] if target is not self.fake else [self.fake]
        cpu0, own0, busy0, t0 = target.cpu_s(), own_cpu_s(procs), cpu_busy_s(), time.monotonic()
        res = self.loader(port, conns, sizes.duration_s, sizes.load_timeout_s)
        wall = time.monotonic() - t0
        foreign = (cpu_busy_s() - busy0) - (own_cpu_s(procs) - own0)
        c = f"_c{conns}"
        return {
            f"rps{c}": res["rps"],
            f"errors{c}": res["errors"],
            f"lat_p50_ms{c}": res["lat_p50_ms"],
            f"lat_p99_ms{c}": res["lat_p99_ms"],
            f"cpu_us_per_req{c}": (target.cpu_s() - cpu0) / max(1.0, res["requests"]) * 1e6,
            f"foreign_cpu_pct{c}": max(0.0, foreign / (wall * (os.cpu_count() or 1)) * 100),
            # every process of the machine (load generator, fake, engine, ...): what one request costs
            # the machine, so ncpu / this is the most the machine can serve
            f"machine_us_per_req{c}": (cpu_busy_s() - busy0) / max(1.0, res["requests"]) * 1e6,
        }

    def measure_direct_load(self) -> None:
        assert self.fake is not None
        self.phase("direct: load")
        m: dict[str, float] = {"rss_mb": 0.0, "ready_s": self.fake_ready_s}
        wait_quiet(self.opts.settle_s, procs=[self.fake])
        for conns in self.opts.direct_concurrency:
            m.update(self.load(self.up_port, conns, self.opts.native, self.fake))
        m["rss_mb"] = self.fake.rss_mb()
        self.direct.rounds.append(m)

    def measure_engine(self, engine: str, sizes: Sizes) -> dict[str, float]:
        assert self.fake is not None
        self.phase(f"{engine}: start")
        wait_quiet(self.opts.settle_s, procs=[self.fake])
        proc, port, ready_s = self.start_engine(engine, sizes)
        m: dict[str, float] = {"ready_s": ready_s}
        try:
            self.phase(f"{engine}: sequential latency")
            cpu0 = proc.cpu_s()
            d, t = paired(
                (self.up_port, port),
                sizes.seq_n,
                sizes.seq_warmup,
                BODY,
                max_s=sizes.max_seq_s,
                block=sizes.block,
            )
            cpu_req = (proc.cpu_s() - cpu0) / max(1, t.sent) * 1e6
            ds, ts = d.summary(), t.summary()
            m.update(n_seq=ts["n"], p50_us=ts["p50_us"], p99_us=ts["p99_us"], cpu_us_per_req_seq=cpu_req)
            m.update(added_p50_us=ts["p50_us"] - ds["p50_us"], added_p99_us=ts["p99_us"] - ds["p99_us"])
            self.direct_seq = {"p50_us": ds["p50_us"], "p99_us": ds["p99_us"]}

            self.phase(f"{engine}: streams")
            cpu0 = proc.cpu_s()
            check = stream_check(FAKE_CHUNKS + 1)
            sd, st = paired(
                (self.up_port, port),
                sizes.stream_n,
                sizes.stream_warmup,
                STREAM_BODY,
                check=check,
                max_s=sizes.max_seq_s,
                block=sizes.block,
            )
            cpu_stream = (proc.cpu_s() - cpu0) / max(1, st.sent) * 1e6
            sds, sts = sd.summary(stream=True), st.summary(stream=True)
            m.update(
                n_stream=sts["n"], ttft_p50_us=sts["ttft_p50_us"], stream_total_p50_us=sts["total_p50_us"]
            )
            m.update(ttft_added_us=sts["ttft_p50_us"] - sds["ttft_p50_us"])
            m.update(stream_added_us=sts["total_p50_us"] - sds["total_p50_us"])
            m["cpu_us_per_chunk"] = max(0.0, cpu_stream - cpu_req) / STREAM_EVENTS
            self.direct_seq.update(ttft_p50_us=sds["ttft_p50_us"], stream_total_p50_us=sds["total_p50_us"])

            self.phase(f"{engine}: load")
            m["rss_idle_mb"] = proc.rss_mb()
            for conns in sizes.concurrency:
                m.update(self.load(port, conns, sizes, proc))
            m["rss_mb"] = proc.rss_mb()
        finally:
            self.phase(f"{engine}: stop")
            proc.stop()
        return m

    def run_engine(self, run: EngineRun, sizes: Sizes) -> None:
        try:
            m = self.measure_engine(run.name, sizes)
        except Exception as exc:  # one broken engine must not sink the run
            run.error = f"{type(exc).__name__}: {exc}"
            return
        run.rounds.append(m)
        if run.name == "native" and self.direct.rounds:  # direct's sequential figures come from its pairs
            self.direct.rounds[-1].update(self.direct_seq)


def derived(figures: dict[str, float]) -> dict[str, float]:
    """What the figures mean for a lab: streams one core can pass at ``TOKENS_PER_S`` tokens per second
    each (CPU per chunk is the cost that grows with concurrent streams)."""
    per_chunk = figures.get("cpu_us_per_chunk")
    if per_chunk is None or not per_chunk > 0:
        return {}
    return {"streams_per_core": 1e6 / (TOKENS_PER_S * per_chunk)}


def litellm_problem() -> str | None:
    """Why the LiteLLM engine cannot run here, or None."""
    from aib.engines.litellm import EngineError, find_litellm

    try:
        find_litellm()
    except EngineError as exc:
        return str(exc)
    return None


def steps(opts: BenchOptions) -> int:
    """How many phases a run reports (for a progress bar)."""
    return opts.rounds * (11 if opts.workers > 1 else 6) + (5 if opts.litellm else 0) + 1


def run_bench(opts: BenchOptions, phase: Phase = lambda _: None) -> dict[str, Any]:
    """The whole run; returns everything measured, the best figures, the verdicts and the machine."""
    t_start = time.monotonic()
    info = machine_info(PACKAGES)
    workdir = Path(tempfile.mkdtemp(prefix="aib-bench-"))
    bench = Bench(opts, workdir, phase)
    native, litellm = EngineRun("native"), EngineRun("litellm")
    native_w = EngineRun("native_w")
    notes: list[str] = [] if opts.litellm else ["LiteLLM: skipped (--no-litellm)"]
    failed = False
    try:
        phase("fake upstream: start")
        bench.start_fake()
        for rnd in range(opts.rounds):
            if rnd and time.monotonic() - t_start > opts.budget_s:
                break
            bench.measure_direct_load()
            bench.run_engine(native, opts.native)
            if opts.workers > 1:
                bench.run_engine(native_w, opts.native)
            if rnd == 0 and opts.litellm:
                problem = litellm_problem()
                if problem is None:
                    bench.run_engine(litellm, opts.litellm_sizes)
                else:
                    notes.append(f"LiteLLM: not measured: {problem}")
        runs = (native, native_w, litellm)
        failed = any(r.error is not None for r in runs)
        notes += [f"{r.name} failed: {r.error}" for r in runs if r.error]
        if failed:
            notes.append(f"logs of the processes kept in {workdir}")
    finally:
        if bench.fake is not None:
            bench.fake.stop()
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
    engines = {"direct": bench.direct, "native": native}
    if opts.workers > 1:
        engines["native_w"] = native_w
    if opts.litellm:
        engines["litellm"] = litellm
    best = {name: best_of(r.rounds) for name, r in engines.items() if r.rounds}
    for figures in best.values():
        figures.update(derived(figures))
    info["loadavg_end"] = os.getloadavg()
    info["loader"] = bench.loader.name
    return {
        "machine": info,
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "options": _jsonable(opts),
        "fake_upstream": {"chunks": FAKE_CHUNKS, "chunk_delay_ms": FAKE_DELAY_MS},
        "engines": {name: r.as_dict() for name, r in engines.items()},
        "best": best,
        "verdicts": [v.as_dict() for v in evaluate(best)],
        "notes": notes,
    }


def _jsonable(opts: BenchOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(opts)
