"""`aib logs`, `aib logs trace`, `aib logs stats` on a request log written by the real writer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.observe.records import Attempt
from aib.observe.requestlog import RequestLog
from observe_support import make_record

pytestmark = pytest.mark.unit

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "requests.db"
    rlog = RequestLog(path, flush_interval_s=0.01).start()
    now = time.time()
    for i in range(5):
        rlog.request_done(
            make_record("llama3", request_id=f"ok-{i}", total_s=0.1 * (i + 1), started_at=now - 100 + i)
        )
    fallback = [
        Attempt("vllm/big", "vllm", "big", "big", 503, "vllm answered 503: overloaded", 0.01, 0.012, False),
        Attempt("ollama/llama3", "ollama", "llama3", "llama3", 200, None, 0.2, 0.4, True),
    ]
    rlog.request_done(
        make_record(
            "big",
            route="big",
            upstream="llama3",
            request_id="fb-1",
            attempts=fallback,
            stream=True,
            started_at=now - 50,
        )
    )
    rlog.request_done(
        make_record(
            "big",
            route="big",
            provider="vllm",
            status=502,
            error="vllm answered 500",
            error_code="upstream_error",
            request_id="err-1",
            started_at=now - 40,
        )
    )
    rlog.request_done(
        make_record(
            "old",
            route=None,
            provider=None,
            status=404,
            error="unknown",
            error_code="model_not_found",
            request_id="old-1",
            started_at=now - 3 * 86400,
        )
    )
    rlog.close()
    return path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["logs", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_tail_lists_recent_requests_oldest_first(db: Path) -> None:
    code, out = run("--db", str(db))
    assert code == 0, out
    assert "8 requests" in out
    assert out.index("ok-0") < out.index("err-1")  # oldest first, like tail
    assert "vllm/big" in out or "ollama/llama3" in out
    assert "(+1 failed)" in out and "model_not_found" in out


def test_tail_filters(db: Path) -> None:
    code, out = run("--db", str(db), "--model", "big", "--json")
    assert code == 0
    assert [r["request_id"] for r in orjson.loads(out)] == ["fb-1", "err-1"]
    code, out = run("--db", str(db), "--status", "5xx", "--json")
    assert [r["request_id"] for r in orjson.loads(out)] == ["err-1"]
    code, out = run("--db", str(db), "--since", "1h", "--json")
    assert "old-1" not in {r["request_id"] for r in orjson.loads(out)}
    code, out = run("--db", str(db), "--limit", "2", "--json")
    assert [r["request_id"] for r in orjson.loads(out)] == ["err-1", "old-1"]
    code, out = run("--db", str(db), "--provider", "vllm", "--json")
    assert [r["request_id"] for r in orjson.loads(out)] == ["err-1"]
    code, out = run("--db", str(db), "--route", "big", "--json")
    assert len(orjson.loads(out)) == 2


def test_bad_input_and_missing_database(db: Path, tmp_path: Path) -> None:
    code, out = run("--db", str(db), "--since", "yesterday")
    assert code == 2 and "duration" in out
    code, out = run("--db", str(db), "--status", "teapot")
    assert code == 2 and "status" in out
    code, out = run("--db", str(tmp_path / "nothing.db"))
    assert code == 1 and "no request log" in out


def test_db_from_environment(db: Path) -> None:
    result = runner.invoke(app, ["logs", "--json"], env={"AIB_REQUEST_LOG": str(db)})
    assert result.exit_code == 0 and len(orjson.loads(result.output)) == 8


def test_follow_prints_new_requests(db: Path) -> None:
    def add_later() -> None:
        time.sleep(0.3)
        rlog = RequestLog(db, flush_interval_s=0.01).start()
        rlog.request_done(make_record("llama3", request_id="late-1"))
        rlog.close()

    t = threading.Thread(target=add_later)
    t.start()
    code, out = run(
        "--db", str(db), "--follow", "--for", "1.2", "--interval", "0.05", "--json", "--limit", "1"
    )
    t.join()
    assert code == 0
    ids = [orjson.loads(line)["request_id"] for line in out.splitlines()]
    assert ids == ["old-1", "late-1"]


def test_follow_table_mode_ends(db: Path) -> None:
    code, _ = run("--db", str(db), "--follow", "--for", "0.1", "--interval", "0.05", "--model", "none-such")
    assert code == 0


def test_trace_shows_route_attempts_and_timings(db: Path) -> None:
    code, out = run("--db", str(db), "trace", "fb-1")
    assert code == 0, out
    for text in (
        "fb-1",
        "big (exact",
        "ollama as 'llama3'",
        "2 upstream attempts",
        "vllm/big",
        "503",
        "overloaded",
        "fallbacks",
    ):
        assert text in out, (text, out)
    code, out = run("--db", str(db), "trace", "fb-1", "--json")
    t = orjson.loads(out)
    assert [a["ok"] for a in t["attempts"]] == [0, 1] and t["fallbacks"] == 1
    code, out = run("--db", str(db), "trace", "err-1")
    assert code == 0 and "upstream_error" in out and "no upstream" not in out
    code, out = run("--db", str(db), "trace", "old-1")
    assert code == 0 and "not resolved" in out and "no upstream answered" in out
    code, out = run("--db", str(db), "trace", "missing")
    assert code == 1 and "no request 'missing'" in out


def test_stats_per_model(db: Path) -> None:
    code, out = run("--db", str(db), "stats", "--since", "1d")
    assert code == 0, out
    assert "llama3" in out and "big" in out and "old" not in out.split("requests since")[1]
    code, out = run("--db", str(db), "stats", "--since", "1w", "--json")
    data = orjson.loads(out)
    by = {m["model"]: m for m in data["models"]}
    assert by["llama3"]["requests"] == 5 and by["llama3"]["p50_ms"] == 300.0
    assert by["big"]["error_rate"] == 0.5
    code, out = run("--db", str(db), "stats", "--model", "nothing")
    assert code == 1 and "no requests" in out
    code, out = run("--db", str(db), "stats", "--since", "1s")
    assert code == 0 and "no requests" in out
