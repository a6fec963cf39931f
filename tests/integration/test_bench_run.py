"""`aib bench` for real at reduced size (direct vs native against the fake upstream, ~15 s), and the
load generators and measuring client against the fake. No speed is asserted: only that every figure
was measured, written, and that every process the run started is gone."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from aib.benchmark.client import first_ok, paired, stream_check
from aib.benchmark.load import Loader, run_pyload
from aib.benchmark.runner import BODY, STREAM_BODY
from aib.cli.main import app
from aib.devtools.llamacpp import free_port
from gateway_harness import fake_openai_process

pytestmark = pytest.mark.integration


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_bench_quick_without_litellm(tmp_path: Path) -> None:
    before = children()
    args = ["bench", "--quick", "--no-litellm", "--requests", "100", "--streams", "10", "--duration", "1"]
    args += ["--workers", "2"]
    res = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "added latency p50" in res.output and "Targets (native engine)" in res.output
    assert "skipped (--no-litellm)" in res.output
    assert children() - before == set()  # the fake and `aib serve` were stopped

    result = json.loads((tmp_path / "gateway_bench.json").read_text())
    assert set(result["engines"]) == {"direct", "native", "native_w"}
    for name in ("native", "native_w"):  # one process, then `--workers 2`
        native = result["best"][name]
        for key in ("ready_s", "added_p50_us", "ttft_added_us", "cpu_us_per_chunk", "rss_mb"):
            assert math.isfinite(native[key]), key
        for c in (32, 64, 128):
            assert native[f"rps_c{c}"] > 0 and native[f"errors_c{c}"] == 0
            assert result["best"]["direct"][f"rps_c{c}"] > 0
            assert native[f"machine_us_per_req_c{c}"] > native[f"cpu_us_per_req_c{c}"] > 0
        assert native["n_seq"] == 100 and native["n_stream"] == 10
    native = result["best"]["native"]
    assert 0 < native["rss_mb"] < 1000 and native["ready_s"] < 30
    status = {v["label"]: v["status"] for v in result["verdicts"]}
    assert status["RSS ≤ 1/4 of LiteLLM's"] == "n/a"
    assert {status["RSS ≤ 100 MB"], status["ready ≤ 1.5 s"]} <= {"pass", "fail"}
    assert (tmp_path / "gateway_bench.png").stat().st_size > 10_000
    assert "| added latency p50, µs |" in (tmp_path / "gateway_bench.md").read_text()


def test_bench_rejects_a_bad_loader() -> None:
    res = CliRunner().invoke(app, ["bench", "--loader", "ab"])
    assert res.exit_code == 2 and "use auto, wrk or python" in res.output


def test_python_loader_and_pairs_against_the_fake(tmp_path: Path) -> None:
    with fake_openai_process("--chunks", "3") as a, fake_openai_process("--chunks", "3") as b:
        res = run_pyload(a.port, 4, 0.5, BODY)
        assert res["requests"] > 0 and res["errors"] == 0 and res["rps"] > 0
        assert 0 < res["lat_p50_ms"] <= res["lat_p99_ms"]
        d, t = paired((a.port, b.port), 20, 5, BODY, block=7)
        assert (len(d.totals_us), len(t.totals_us), d.sent, t.sent) == (20, 20, 25, 25)
        _sd, st = paired((a.port, b.port), 6, 2, STREAM_BODY, check=stream_check(4), block=4)
        assert st.summary(stream=True)["ttft_p50_us"] <= st.summary(stream=True)["total_p50_us"]
        with pytest.raises(RuntimeError, match="bad stream"):
            paired((a.port,), 1, 0, STREAM_BODY, check=stream_check(50))
        assert first_ok(a.port, BODY)


def test_python_loader_counts_refused_connections() -> None:
    res = run_pyload(free_port(), 2, 0.2, BODY)
    assert res["requests"] == 0 and res["errors"] > 0


def test_wrk_loader_against_the_fake(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:  # make test installs it (APT_PACKAGES)
        (pytest.fail if os.environ.get("CI") else pytest.skip)("wrk is not installed: apt-get install -y wrk")
    loader = Loader(BODY, tmp_path, "wrk")
    with fake_openai_process() as fake:
        res = loader(fake.port, 8, 1)
    assert loader.name == "wrk -t1" and res["requests"] > 0 and res["errors"] == 0


def test_bench_reports_an_engine_that_does_not_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native engine exits at once and LiteLLM is missing: both are said, logs are kept, exit 1."""
    from aib.benchmark import runner

    monkeypatch.setattr(runner, "aib_command", lambda: [sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setenv("AIB_LITELLM_BIN", str(tmp_path / "no-litellm"))
    before = children()
    args = [
        "bench",
        "--quick",
        "--duration",
        "0.5",
        "--loader",
        "python",
        "--no-chart",
        "--out-dir",
        str(tmp_path),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1, res.output
    assert children() - before == set()
    result = json.loads((tmp_path / "gateway_bench.json").read_text())
    assert "exited with code 3" in result["engines"]["native"]["error"]
    notes = "\n".join(result["notes"])
    assert "LiteLLM: not measured" in notes and "no-litellm is not an executable file" in notes
    kept = Path(notes.rsplit("logs of the processes kept in ", 1)[1].strip())
    assert kept.is_dir() and (kept / "fake_openai.log").exists()
    shutil.rmtree(kept)
    assert not (tmp_path / "gateway_bench.png").exists()
    assert {v["status"] for v in result["verdicts"]} == {"n/a"}


def test_bench_script_is_the_same_command() -> None:
    script = Path(__file__).resolve().parents[2] / "bench" / "gateway_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Measure what each engine adds" in done.stdout and "--no-litellm" in done.stdout
