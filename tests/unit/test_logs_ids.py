"""`aib logs` shows the distinguishing end of the gateway's long request ids, and `trace` accepts it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aib.cli.main import app
from aib.observe.requestlog import RequestLog
from observe_support import make_record

pytestmark = pytest.mark.unit

PREFIX = "4f2a9c1e0b7d3a5c6e8f"  # the gateway's ids: a per-process random prefix + a counter


def test_table_shows_the_end_of_ids_and_trace_finds_a_request_by_it(tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    rlog = RequestLog(db, flush_interval_s=0.01).start()
    now = time.time()
    ids = [f"{PREFIX}{n:012x}" for n in (1, 2, 0x1B)]
    for i, rid in enumerate(ids):
        rlog.request_done(make_record("llama3", request_id=rid, started_at=now - 10 + i))
    rlog.request_done(make_record("llama3", request_id="client-id-7", started_at=now))
    rlog.close()
    runner = CliRunner()
    out = runner.invoke(app, ["logs", "--db", str(db), "--limit", "10"], env={"COLUMNS": "200"}).output
    for rid in ids:
        assert "…" + rid[-12:] in out, out  # the part that differs, not the shared prefix
    assert "client-id-7" in out  # short ids are shown whole
    shown = "…" + ids[2][-12:]
    res = runner.invoke(app, ["logs", "--db", str(db), "trace", shown])
    assert res.exit_code == 0 and ids[2] in res.output, res.output
    res = runner.invoke(app, ["logs", "--db", str(db), "trace", ids[1][-8:]])  # a unique suffix
    assert res.exit_code == 0 and ids[1] in res.output, res.output
    res = runner.invoke(app, ["logs", "--db", str(db), "trace", PREFIX[:8]])  # ambiguous prefix
    assert res.exit_code == 1 and "no request" in res.output
