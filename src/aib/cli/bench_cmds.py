"""`aib bench`: direct vs native engine vs LiteLLM against the instant fake upstream, in one run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from aib.cli.common import EXIT_PROBLEM, JsonOpt, UnusedConfigDirOpt, console, err_console, fail, print_json


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="About a minute: one round, fewer requests.")
    ] = False,
    no_litellm: Annotated[bool, typer.Option("--no-litellm", help="Measure direct and native only.")] = False,
    rounds: Annotated[
        int | None,
        typer.Option(min=1, max=5, help="Rounds of direct + native (best of). Default 2, quick 1."),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            min=0.5, max=30, help="Seconds of load per concurrency for native and direct (default 3)."
        ),
    ] = None,
    requests: Annotated[
        int | None, typer.Option(min=20, max=20000, help="Sequential requests per engine (default 2000).")
    ] = None,
    streams: Annotated[
        int | None, typer.Option(min=5, max=2000, help="Sequential streams per engine (default 200).")
    ] = None,
    loader: Annotated[
        str, typer.Option(help="auto (wrk when installed), wrk, or python (asyncio, in this process).")
    ] = "auto",
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where gateway_bench.json, .md and .png go.")
    ] = Path("bench/results"),
    workers: Annotated[
        int,
        typer.Option(min=1, max=16, help="Also measure `aib serve --workers N` (1: do not). Default 2."),
    ] = 2,
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Do not draw the PNG chart.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 when a target fails.")] = False,
    as_json: JsonOpt = False,
    config_dir: UnusedConfigDirOpt = None,
) -> None:
    """Measure what each engine adds over calling the upstream directly, on this machine.

    Starts the instant fake upstream, then `aib serve` (native) and `aib serve --engine litellm` on free
    ports of 127.0.0.1, each measured against the fake in the same run: added latency p50/p99, req/s and
    errors at concurrency 32/64/128, time to first token and per-chunk cost of streams, RSS, time to
    ready. Prints the figures with ratios and the targets; writes JSON, Markdown and a PNG chart.
    About 3-4 minutes (--quick: ~1). Every process it starts is stopped before it returns.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from aib.benchmark import report
    from aib.benchmark.runner import BenchOptions, run_bench, steps

    if loader not in ("auto", "wrk", "python"):
        fail(f"--loader {loader!r}: use auto, wrk or python", 2)
    opts = BenchOptions.quick() if quick else BenchOptions()
    native = opts.native
    if duration is not None:
        native = replace(native, duration_s=duration)
    if requests is not None:
        native = replace(native, seq_n=requests, seq_warmup=min(native.seq_warmup, max(10, requests // 5)))
    if streams is not None:
        native = replace(
            native, stream_n=streams, stream_warmup=min(native.stream_warmup, max(2, streams // 5))
        )
    opts = replace(
        opts,
        native=native,
        litellm=not no_litellm,
        loader=loader,
        rounds=rounds or opts.rounds,
        workers=workers,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("starting", total=steps(opts))

        def phase(text: str) -> None:
            progress.update(task, description=text, advance=1)

        try:
            result = run_bench(opts, phase)
        except RuntimeError as exc:
            fail(f"benchmark could not run: {exc}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [report.write_json(result, out_dir / "gateway_bench.json")]
    (out_dir / "gateway_bench.md").write_text(report.markdown(result))
    written.append(out_dir / "gateway_bench.md")
    if not no_chart:
        written.append(report.write_chart(result, out_dir / "gateway_bench.png"))
    if as_json:
        print_json(result)
    else:
        wide = Console(highlight=False, width=max(console.width, 120))
        wide.print(report.figures_table(result))
        wide.print(report.targets_table(result))
        for note in result["notes"]:
            console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
        console.print("wrote " + ", ".join(str(p) for p in written))
    failed_engine = any(e["error"] for e in result["engines"].values())
    failed_target = any(v["status"] == "fail" for v in result["verdicts"])
    if failed_engine or (check and failed_target):
        raise typer.Exit(EXIT_PROBLEM)
