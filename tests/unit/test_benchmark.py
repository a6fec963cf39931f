"""The benchmark's statistics, targets, wrk parsing and report (no processes, no network)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from aib.benchmark import report
from aib.benchmark.client import Samples, http_request, stream_check
from aib.benchmark.load import Loader, parse_wrk, wrk_ms, wrk_script
from aib.benchmark.runner import BODY, MODEL, BenchOptions, clean_env, steps, write_bench_config
from aib.benchmark.stats import TARGETS, best_of, evaluate, pct, ratio
from aib.config.compile import build_plan

pytestmark = pytest.mark.unit

WRK_OUT = """Running 3s test @ http://127.0.0.1:4000/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.01ms  812.00us  20.10ms   90.00%
    Req/Sec    21.30k     1.20k   23.00k    80.00%
  Latency Distribution
     50%    2.90ms
     75%    3.10ms
     90%    3.50ms
     99%    1.20s
  63900 requests in 3.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  21300.50
Transfer/sec:     13.33MB
"""


def test_pct_nearest_rank() -> None:
    vals = sorted(float(i) for i in range(1, 101))
    assert pct(vals, 0.5) == 51.0 and pct(vals, 0.99) == 100.0 and pct(vals, 0.0) == 1.0
    assert math.isnan(pct([], 0.5))


def test_ratio() -> None:
    assert ratio(10, 4) == 2.5
    assert ratio(1, 0) is None and ratio(None, 1) is None and ratio(float("nan"), 1) is None


def test_best_of_keeps_the_best_per_metric() -> None:
    rounds = [
        {
            "added_p50_us": 200.0,
            "rps_c64": 9000.0,
            "errors_c128": 1.0,
            "rss_mb": 40.0,
            "ready_s": float("nan"),
        },
        {"added_p50_us": 180.0, "rps_c64": 9500.0, "errors_c128": 2.0, "rss_mb": 42.0, "ready_s": 0.6},
    ]
    best = best_of(rounds)
    assert best == {
        "added_p50_us": 180.0,
        "rps_c64": 9500.0,
        "errors_c128": 3.0,
        "rss_mb": 40.0,
        "ready_s": 0.6,
    }
    assert math.isnan(best_of([{"x": float("nan")}])["x"])


def figures(**native: float) -> dict[str, dict[str, float]]:
    base = {
        "added_p50_us": 200.0,
        "rps_c32": 9000.0,
        "rps_c64": 9000.0,
        "errors_c128": 0.0,
        "ttft_added_us": 300.0,
        "rss_mb": 45.0,
        "ready_s": 0.6,
    }
    return {
        "direct": {"rps_c64": 20000.0, "rss_mb": 25.0},
        "native": {**base, **native},
        "native_w": {**base, "rps_c64": 12000.0, "rss_mb": 90.0},
        "litellm": {"added_p50_us": 45000.0, "rps_c32": 25.0, "ttft_added_us": 40000.0, "rss_mb": 450.0},
    }


def test_every_target_passes_on_good_figures() -> None:
    verdicts = evaluate(figures())
    assert len(verdicts) == len(TARGETS) == 14
    assert [v.status for v in verdicts] == ["pass"] * 14
    assert len({v.label for v in verdicts}) == 14  # a label names one target
    by_label = {v.label: v for v in verdicts}
    assert by_label["req/s at c32 ≥ 30x LiteLLM's"].limit == 750.0
    assert by_label["req/s at c64 ≥ 40 % of direct"].limit == 8000.0
    assert by_label["added latency p50 ≤ 1/100 of LiteLLM's"].limit == 450.0
    assert by_label["--workers: req/s at c64 ≥ 40 % of direct"].measured == 12000.0


@pytest.mark.parametrize(
    ("native", "failing"),
    [
        ({"added_p50_us": 301.0}, {"added latency p50 ≤ 0.3 ms"}),
        ({"added_p50_us": 460.0}, {"added latency p50 ≤ 0.3 ms", "added latency p50 ≤ 1/100 of LiteLLM's"}),
        ({"rps_c64": 7999.0}, {"req/s at c64 ≥ 40 % of direct"}),
        ({"errors_c128": 1.0}, {"errors at c128 = 0"}),
        ({"rss_mb": 113.0}, {"RSS ≤ 100 MB", "RSS ≤ 1/4 of LiteLLM's"}),
        ({"ready_s": 1.6}, {"ready ≤ 1.5 s"}),
        ({"ttft_added_us": 2001.0}, {"added TTFT ≤ 1 ms", "added TTFT ≤ 1/20 of LiteLLM's"}),
    ],
)
def test_a_missed_target_fails(native: dict[str, float], failing: set[str]) -> None:
    verdicts = evaluate(figures(**native))
    assert {v.label for v in verdicts if v.status == "fail"} == failing


def test_targets_without_litellm_are_not_applicable() -> None:
    best = figures()
    del best["litellm"]
    status = {v.label: v.status for v in evaluate(best)}
    assert status["RSS ≤ 1/4 of LiteLLM's"] == "n/a"
    assert status["errors at c128 = 0"] == "pass"  # a native figure against a constant
    assert status["RSS ≤ 100 MB"] == "pass"


def test_workers_targets_read_the_workers_run() -> None:
    best = figures()
    best["native_w"]["rps_c64"] = 7000.0
    status = {v.label: v.status for v in evaluate(best)}
    assert status["--workers: req/s at c64 ≥ 40 % of direct"] == "fail"
    assert status["req/s at c64 ≥ 40 % of direct"] == "pass"  # the single process is judged apart
    del best["native_w"]
    status = {v.label: v.status for v in evaluate(best)}
    assert status["--workers: RSS ≤ 100 MB"] == "n/a"


# --------------------------------------------------------------------------- wrk and the client


def test_parse_wrk() -> None:
    res = parse_wrk(WRK_OUT)
    assert res == {
        "rps": 21300.5,
        "requests": 63900.0,
        "lat_p50_ms": 2.9,
        "lat_p99_ms": 1200.0,
        "errors": 12.0,  # 7 non-2xx + read 2 + timeout 3
    }


def test_parse_wrk_without_errors_and_garbage() -> None:
    clean = "\n".join(line for line in WRK_OUT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    assert parse_wrk(clean)["errors"] == 0.0
    with pytest.raises(RuntimeError, match="no Requests/sec"):
        parse_wrk("wrk: connection refused")


@pytest.mark.parametrize(
    ("text", "ms"), [("812.00us", 0.812), ("1.5ms", 1.5), ("2.00s", 2000.0), ("1.00m", 60000.0)]
)
def test_wrk_ms(text: str, ms: float) -> None:
    assert wrk_ms(text) == pytest.approx(ms)
    assert math.isnan(wrk_ms("fast"))


def test_wrk_script_and_loader_kinds(tmp_path: Path) -> None:
    script = wrk_script(tmp_path / "post.lua", BODY).read_text()
    assert 'wrk.method = "POST"' in script and json.dumps(BODY.decode()) in script
    assert Loader(BODY, tmp_path, "python").name.startswith("python")
    with pytest.raises(ValueError, match="use auto, wrk or python"):
        Loader(BODY, tmp_path, "ab")


def test_http_request_bytes() -> None:
    req = http_request(b'{"a":1}', 4000)
    assert req.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n")
    assert req.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


def test_stream_check() -> None:
    check = stream_check(3)
    good = b"data: {}\n\ndata: {}\n\ndata: [DONE]\n\n"
    check(200, good)
    for status, body in ((500, good), (200, b"data: {}\n\ndata: [DONE]\n\n"), (200, b"data: {}\n\n" * 5)):
        with pytest.raises(RuntimeError, match="bad stream"):
            check(status, body)


def test_samples_summary() -> None:
    s = Samples(1, totals_us=[300.0, 100.0, 200.0], firsts_us=[30.0, 10.0, 20.0], sent=4)
    assert s.summary() == {"n": 3, "p50_us": 200.0, "p99_us": 300.0, "mean_us": 200.0}
    assert s.summary(stream=True) == {"n": 3, "ttft_p50_us": 20.0, "ttft_p99_us": 30.0, "total_p50_us": 200.0}


# --------------------------------------------------------------------------- runner pieces


def test_bench_config_is_valid_and_routes_the_model(tmp_path: Path) -> None:
    plan, _cfg, warnings = build_plan(write_bench_config(tmp_path / "cfg", 9001))
    assert warnings == []
    res = plan.resolve(MODEL)
    assert res is not None and res.chain[0].targets[0].upstream == "fake-model"
    assert plan.providers["fake"].api_base == "http://127.0.0.1:9001/v1"


def test_clean_env_drops_aib_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIB_REQUEST_LOG", "off")
    monkeypatch.setenv("AIB_LITELLM_BIN", "/x/litellm")
    env = clean_env()
    assert "AIB_REQUEST_LOG" not in env and env["AIB_LITELLM_BIN"] == "/x/litellm"


def test_options() -> None:
    full, quick = BenchOptions(), BenchOptions.quick()
    assert full.rounds == 3 and quick.rounds == 1
    assert quick.native.seq_n < full.native.seq_n and quick.budget_s < full.budget_s
    assert full.native.concurrency == (32, 64, 128) and full.litellm_sizes.concurrency == (32, 128)
    assert full.workers == 2
    assert steps(full) == 39 and steps(BenchOptions(litellm=False, rounds=1)) == 12
    assert steps(BenchOptions(litellm=False, rounds=1, workers=1)) == 7


# --------------------------------------------------------------------------- report


def result(with_litellm: bool = True) -> dict[str, Any]:
    best = figures()
    best["direct"].update(p50_us=50.0, ready_s=0.1, rps_c32=40000.0)
    if not with_litellm:
        del best["litellm"]
    engines = {name: {"rounds": [], "best": b, "error": None} for name, b in best.items()}
    return {
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "python": "3.11.7", "loader": "wrk -t1"},
        "elapsed_s": 42.0,
        "engines": engines,
        "best": best,
        "verdicts": [v.as_dict() for v in evaluate(best)],
        "notes": ["a note"],
    }


def test_figure_rows_with_ratios() -> None:
    headers, rows = report.figure_rows(result())
    assert headers == ["", "direct", "native", "native --workers", "LiteLLM", "native vs LiteLLM"]
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label["added latency p50, µs"] == ["", "+200", "+200", "+45,000", "225x"]
    assert by_label["req/s at concurrency 32"] == ["40,000", "9,000", "9,000", "25", "360x"]
    assert by_label["RSS after load, MB"] == ["25.0", "45.0", "90.0", "450.0", "10x"]
    assert by_label["ready after start, s"][:2] == ["0.10", "0.60"]
    assert by_label["errors at concurrency 128"][-1] == ""  # no ratio for error counts


def test_figure_rows_without_litellm() -> None:
    headers, rows = report.figure_rows(result(with_litellm=False))
    assert headers == ["", "direct", "native", "native --workers"]
    assert all(len(r) == 4 for r in rows)


def test_advantage_below_ten_has_a_decimal() -> None:
    best = {"native": {"rss_mb": 100.0}, "litellm": {"rss_mb": 450.0}}
    row = next(r for r in report.ROWS if r.key == "rss_mb")
    assert report.advantage(row, best) == "4.5x"
    assert report.advantage(row, {"native": {"rss_mb": 100.0}}) == ""


def test_tables_markdown_json_and_chart(tmp_path: Path) -> None:
    res = result()
    assert report.figures_table(res).row_count == len(report.ROWS)
    assert report.targets_table(res).row_count == 14
    md = report.markdown(res)
    assert md.startswith("aib bench: 2 CPU (Test CPU)")
    assert "| added latency p50, µs |  | +200 | +200 | +45,000 | 225x |" in md
    assert (
        "| vs direct | --workers: req/s at c64 ≥ 40 % of direct | 12,000 req/s | ≥ 8,000 req/s | PASS |" in md
    )
    assert "| vs direct | ready ≤ 1.5 s | 0.60 s | ≤ 1.50 s | PASS |" in md
    assert md.rstrip().endswith("- a note")
    path = report.write_json(res, tmp_path / "out" / "r.json")
    assert json.loads(path.read_text())["best"]["native"]["rps_c64"] == 9000.0
    png = report.write_chart(res, tmp_path / "out" / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_streams_per_core() -> None:
    from aib.benchmark.runner import derived

    assert derived({"cpu_us_per_chunk": 100.0}) == {"streams_per_core": pytest.approx(1e6 / 3000)}
    assert derived({"cpu_us_per_chunk": 0.0}) == {} and derived({}) == {}
    assert derived({"cpu_us_per_chunk": float("nan")}) == {}
