"""What the web UI shows: reply metadata, chat turns, traces, history rows, health, error sentences."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from aib.observe.requestlog import RequestLog
from aib.webui import analytics, chat, compare, health, history, status
from aib.webui.context import LOG_OFF, LogProblem, UIContext
from aib.webui.gateway import Cancel, GatewayDown, ReplyMeta, build_messages, explain, root_url
from observe_support import make_record

pytestmark = pytest.mark.unit

GW = "http://127.0.0.1:4000"
REQ = httpx2.Request("POST", GW + "/v1/chat/completions")


def status_error(status: int, body: Any, code: str | None = None) -> openai.APIStatusError:
    cls = {404: openai.NotFoundError, 400: openai.BadRequestError, 401: openai.AuthenticationError}.get(
        status, openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(f"Error code: {status}", response=httpx2.Response(status, request=REQ), body=body)


# --------------------------------------------------------------------------- gateway side


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://127.0.0.1:4000", GW),
        ("http://127.0.0.1:4000/", GW),
        (" http://127.0.0.1:4000/v1/ ", GW),
        ("https://gw.lab:443/v1", "https://gw.lab:443"),
    ],
)
def test_gateway_urls_are_normalised(url: str, root: str) -> None:
    assert root_url(url) == root


def test_a_url_without_scheme_is_refused_with_an_example() -> None:
    with pytest.raises(
        ValueError, match=r"'127.0.0.1:4000' is not a gateway URL: use e.g. http://127.0.0.1:4000"
    ):
        root_url("127.0.0.1:4000")


NOT_FOUND = {"message": "The model 'x' is not configured on this gateway.", "code": "model_not_found"}


@pytest.mark.parametrize(
    ("exc", "sentence"),
    [
        (openai.APIConnectionError(request=REQ), f"The gateway at {GW} does not answer: is it running?"),
        (GatewayDown("refused"), f"The gateway at {GW} does not answer: is it running?"),
        (openai.APITimeoutError(request=REQ), f"The gateway at {GW} did not answer in time for 'm1': "),
        (status_error(404, NOT_FOUND), "Model not found: The model 'x' is not configured on this gateway."),
        (status_error(404, {"error": NOT_FOUND}), "Model not found: The model 'x' is not configured"),
        (status_error(404, {"message": "Unknown path '/v2'"}), f"The gateway at {GW} answered 404 (Unknown path"),
        (status_error(401, {"message": "bad key"}), "The gateway refused the request for 'm1' (401): bad key"),
        (status_error(503, {"message": "every provider is down"}), "No provider is available for 'm1': every"),
        (status_error(502, {"message": "llama_a: connection reset"}), "The provider failed for 'm1' (502): llama_a"),
        (status_error(502, "<html>bad gateway</html>"), "The provider failed for 'm1' (502): Error code: 502"),
        (status_error(400, {"message": "messages: required"}), "The gateway rejected the request for 'm1' (400)"),
        (openai.APIError("x", REQ, body={"message": "llama_a broke the stream"}),
         "The provider failed mid-reply for 'm1': llama_a broke the stream"),
        (RuntimeError("boom"), "Unexpected error for 'm1': RuntimeError: boom"),
    ],
)  # fmt: skip
def test_errors_become_sentences(exc: BaseException, sentence: str) -> None:
    text = explain(exc, GW, "m1")
    assert text.startswith(sentence), text
    assert "Traceback" not in text


def test_messages_carry_the_system_prompt_the_turns_and_the_new_question() -> None:
    turns = [{"role": "user", "content": "a", "extra": "x"}, {"role": "assistant", "content": "b"}]
    assert build_messages("  Be brief. ", turns, "c") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert build_messages("   ", [], "c") == [{"role": "user", "content": "c"}]


def test_cancel_closes_what_registered_even_after_it_was_set() -> None:
    closed: list[str] = []
    c = Cancel()
    c.on_cancel(lambda: closed.append("a"))
    c.on_cancel(lambda: (_ for _ in ()).throw(RuntimeError("already closed")))  # complaints are ignored
    assert not c.is_set()
    c.set()
    assert c.is_set() and closed == ["a"]
    c.on_cancel(lambda: closed.append("late"))  # registered after the stop: closed at once
    assert closed == ["a", "late"]


def test_a_new_run_stops_the_previous_one_of_the_same_session(tmp_path: Path) -> None:
    ctx = UIContext(GW, tmp_path / "x.db")
    try:
        first = ctx.begin("s:chat")
        second = ctx.begin("s:chat")
        assert first.is_set() and not second.is_set()
        ctx.end("s:chat", first)  # a stale end does not forget the new run
        assert ctx.stop("s:chat") and second.is_set()
        assert not ctx.stop("s:chat")
    finally:
        ctx.close()


# --------------------------------------------------------------------------- reply metadata and turns


def test_reply_metadata_line() -> None:
    meta = ReplyMeta("m1", provider="llama_a", upstream="smollm2", request_id="abc", fallbacks=2, ttft_s=0.25,
                     total_s=1.25, prompt_tokens=7, completion_tokens=20, finish_reason="length")  # fmt: skip
    assert meta.tokens_per_s == pytest.approx(20.0)
    assert chat.meta_text(meta) == (
        "m1 → llama_a/smollm2 · 2 fallbacks · first token 0.25 s · total 1.25 s · 7 → 20 tokens · "
        "20.0 tok/s · cut at max tokens · id abc"
    )
    rough = ReplyMeta(
        "m1", ttft_s=None, total_s=12.5, completion_tokens=9, tokens_estimated=True, stopped=True
    )
    assert rough.tokens_per_s is None
    assert chat.meta_text(rough) == "m1 · first token \u2013 · total 12.5 s · ~9 tokens · stopped"
    failed = ReplyMeta("m1", total_s=0.04, error="Model not found: x", request_id="r1")
    assert chat.meta_text(failed) == "m1 · failed after 0.04 s · id r1"


def test_turns_on_screen_and_sent_to_the_model() -> None:
    turns: list[chat.Turn] = [
        {"user": "q1", "reply": "a1", "meta": "m1 · total 1 s", "ok": True},
        {"user": "q2", "reply": "", "meta": "m1 · failed", "ok": False, "error": "The provider failed."},
        {"user": "q3", "reply": "half", "meta": "", "ok": False, "error": "Broke mid-reply."},
        {"user": "q4", "reply": "", "meta": "m1 · waiting…", "ok": False},
    ]
    shown = chat.display(turns)
    assert [m["role"] for m in shown] == ["user", "assistant"] * 4
    assert shown[1]["content"] == "a1\n\n<sub>m1 · total 1 s</sub>"
    assert shown[3]["content"] == "⚠ The provider failed.\n\n<sub>m1 · failed</sub>"
    assert shown[5]["content"] == "half\n\n⚠ Broke mid-reply."
    assert shown[7]["content"] == "…\n\n<sub>m1 · waiting…</sub>"
    assert chat.conversation(turns) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    ]
    assert chat.session_key(None, "chat") == "local:chat"


def test_compare_columns_show_progress_then_results() -> None:
    class FakeStream:
        def __init__(self) -> None:
            self.text = ""
            self.meta = ReplyMeta("m1")

    s = FakeStream()
    col = compare.Column("m1", s)  # type: ignore[arg-type]
    dash = "\u2013"
    assert (col.body(), col.meta(), col.figures()) == ("…", "waiting for the first token…", [dash] * 3)
    s.text, s.meta.ttft_s = "Hel", 0.5
    assert (col.body(), col.meta(), col.figures()) == ("Hel", "streaming…", ["0.50 s", dash, dash])
    col.done, s.meta.total_s, s.meta.completion_tokens = True, 2.5, 10
    assert col.figures() == ["0.50 s", "2.50 s", "5.0"]
    assert col.stats() == "| first token | total | tokens/s |\n|---|---|---|\n| 0.50 s | 2.50 s | 5.0 |"
    s.meta.error = "The provider failed."
    assert (col.body(), col.meta()) == ("Hel\n\n⚠ The provider failed.", "failed after 2.50 s")
    s.text, s.meta.error = "", None
    assert col.body() == "*(no text)*"
    assert compare.check_models([" a ", "b", "a"]) == (["a", "b"], None)


# --------------------------------------------------------------------------- the header: gateway and models


def test_models_whose_provider_is_down_say_so_in_their_label_and_the_header() -> None:
    report = {"providers": {"a": {"status": "healthy"}, "b": {"status": "unhealthy"},
                            "c": {"status": "degraded"}, "d": {"status": "disabled"}, "e": {"status": "unknown"}}}  # fmt: skip
    down = status.down_providers(report)
    assert down == {"b": "unhealthy", "d": "disabled"}  # degraded still answers; unknown is not known down
    catalog = [("m1", "a"), ("m2", "b"), ("g", "aib:group"), ("m4", "d"), ("m3", "c")]
    choices, marked = status.model_choices(catalog, down)
    assert choices == [("m1", "m1"), ("m2 (⚠ b is unhealthy)", "m2"), ("g", "g"),
                       ("m4 (⚠ d is disabled)", "m4"), ("m3", "m3")]  # fmt: skip
    assert marked == ["m2", "m4"]
    assert (
        status.header_line(GW, catalog, marked)
        == f"Gateway {GW} · **up** · 5 models · ⚠ provider down for m2, m4"
    )
    assert status.header_line(GW, catalog[:1], []) == f"Gateway {GW} · **up** · 1 model"
    assert status.header_line(GW, [], []).endswith(
        "**up**, but it lists no models: check its configuration (`aib models`)."
    )
    assert status.down_providers(None) == {}


# --------------------------------------------------------------------------- history and traces


def trace(**kw: Any) -> dict[str, Any]:
    base = {
        "request_id": "r1", "ts": 1_800_000_000.0, "endpoint": "chat/completions", "model": "m1",
        "route": "m1", "matched_by": "alias", "rule": "alias 'one' of 'm1'", "provider": "up", "upstream": "m1",
        "status": 200, "stream": 1, "ttfb_ms": 12.5, "total_ms": 250.0, "overhead_ms": 0.4, "prompt_tokens": 3,
        "completion_tokens": 5, "fallbacks": 1, "error": None, "error_code": None, "plan_version": "v7",
        "client_disconnected": 0,
        "attempts": [
            {"n": 1, "target": "dead/m0", "route": "m1", "status": None, "error": "cannot connect | refused\nx",
             "ttfb_ms": None, "duration_ms": 1.0, "ok": 0},
            {"n": 2, "target": "up/m1", "route": "m1", "status": 200, "error": None, "ttfb_ms": 12.0,
             "duration_ms": 240.0, "ok": 1},
        ],
    }  # fmt: skip
    return {**base, **kw}


def test_trace_shows_the_route_decision_attempts_and_timings() -> None:
    text = history.trace_markdown(trace())
    assert text.startswith("### Request `r1` · ok (200)\n")
    assert "· streamed" in text
    assert "**Route decision**: matched by *alias* (alias 'one' of 'm1') → route `m1` · plan v7" in text
    assert "**Answered by**: up/m1" in text
    assert "**Timings**: first byte 12.5 ms · total 250 ms · gateway overhead 0.4 ms" in text
    assert "**Tokens**: 3 in · 5 out" in text
    assert " · key " not in text
    assert " · model **m1** · streamed · key **alice**" in history.trace_markdown(trace(key_name="alice"))
    assert "**Attempts** (2, 1 failed before the answer)" in text
    assert "| 1 | dead/m0 | m1 | \u2013 | \u2013 | 1.0 | cannot connect \\| refused x |" in text
    assert "| 2 | up/m1 | m1 | 200 | 12.0 | 240 | ok |" in text
    assert "*Bodies are not stored (the gateway stores them only with AIB_LOG_BODIES=1).*" in text


def test_trace_of_a_request_nothing_answered() -> None:
    text = history.trace_markdown(
        trace(
            route=None,
            provider=None,
            status=404,
            attempts=[],
            error="unknown model",
            error_code="model_not_found",
            client_disconnected=1,
            stream=0,
            prompt_tokens=None,
        )
    )
    assert text.startswith("### Request `r1` · failed (404)")
    assert "the client went away" in text and "not streamed" in text
    assert "**Route decision**: no route matched" in text
    assert "**Answered by**: nobody" in text
    assert "**Error** (model_not_found): unknown model" in text
    assert "No upstream was tried." in text
    assert "**Tokens**: \u2013 in · 5 out" in text
    assert history.trace_markdown(None, "zz").startswith("No request with id 'zz' in the request log")


def test_trace_bodies_are_fenced_so_they_cannot_break_out_and_long_ones_are_cut() -> None:
    body = "say ```rm -rf``` please " + "x" * 5000
    text = history.trace_markdown(trace(request_body=body, response_body=None))
    assert "**Request body**\n\n````\nsay ```rm -rf```" in text
    assert f"… ({len(body) - history.BODY_CHARS:,} more characters)\n````" in text
    assert "**Response body**\n\n```\n\n```" in text


def test_history_rows_and_search() -> None:
    rows = [
        trace(),
        trace(request_id="r2", model="m2", provider=None, upstream=None, status=502, stream=0,
              prompt_tokens=None, completion_tokens=None, ttfb_ms=None, error="dead is unreachable " * 20),
    ]  # fmt: skip
    table = history.table_rows(rows)
    assert len(table[0]) == len(history.HEADERS) == len(history.WIDTHS)
    assert table[0][1:] == ["r1", "m1", "up/m1", 200, "yes", "12.5", "250", "3/5", 1, ""]
    assert table[1][3] == "\u2013" and table[1][6] == "\u2013" and table[1][8] == "\u2013"
    # one line, cut: the whole error is in the trace
    assert table[1][10].endswith("…") and len(table[1][10]) == history.ERROR_CHARS
    assert history.clip("a\nb  c", 10) == "a b c"
    assert max(len(h) for h in history.HEADERS) <= 10  # short headers: one line each
    long_id = "0123456789abcdef0123456789abcdef"
    assert history.short_id(long_id) == "…456789abcdef" and history.short_id("r1") == "r1"
    assert history.matches(rows[1], "UNREACHABLE m2")
    assert history.matches(rows[1], "502")
    assert not history.matches(rows[0], "unreachable")


# --------------------------------------------------------------------------- health


def test_health_view_reads_states_breakers_and_errors() -> None:
    report = {
        "status": "degraded",
        "healthy_providers": 1,
        "inflight": 2,
        "plan_version": "v3",
        "uptime_s": 61.2,
        "providers": {
            "a": {"type": "llamacpp", "status": "healthy", "last_probe_latency_ms": 3.6, "last_checked": 990.0,
                  "last_error": None, "discovered_models": ["x", "y"],
                  "breakers": {"a/x": {"state": "closed"}, "a/y": {"state": "half_open"}}},
            "b": {"type": "vllm", "status": "unhealthy", "last_probe_latency_ms": None, "last_checked": 700.0,
                  "last_error": None, "discovered_models": [],
                  "breakers": {"b/z": {"state": "open", "retry_in_s": 12.4, "last_error": "502 from b"}}},
            "c": {"type": "ollama", "status": "disabled", "last_checked": None, "breakers": {}},
        },
    }  # fmt: skip
    line, rows = health.health_view(report, now=1000.0)
    assert line == "Gateway **degraded**: 1 of 2 providers healthy · 2 in flight · plan v3 · up 61 s"
    assert rows[0] == ["**a**", "llamacpp", "healthy", "4", "10 s ago", "1 half-open", "x, y", ""]
    assert rows[1] == [
        "**b**",
        "vllm",
        "**unhealthy**",
        "\u2013",
        "5 min ago",
        "1 open (retry in 12 s)",
        "\u2013",
        "502 from b",
    ]
    assert rows[2][2:6] == ["**disabled**", "\u2013", "never", "\u2013"]
    off, _ = health.health_view({"status": "unknown", "providers": {}, "health_checks": False})
    assert off == "Health checks are off on this gateway: provider states are unknown."


# --------------------------------------------------------------------------- the request log


def test_request_log_problems_become_sentences(tmp_path: Path) -> None:
    ctx = UIContext(GW, tmp_path / "requests.db")
    try:
        with pytest.raises(LogProblem, match=r"^No request log yet: no request log at .*requests.db"):
            ctx.read_log(lambda r: r.query())
        (tmp_path / "requests.db").write_bytes(b"this is not a database" * 100)
        with pytest.raises(
            LogProblem, match=r"^The request log .*requests.db cannot be read: file is not a database"
        ):
            ctx.read_log(lambda r: r.query())
    finally:
        ctx.close()
    off = UIContext(GW, None)
    with pytest.raises(LogProblem, match=r"^The request log is off"):
        off.read_log(lambda r: r.query())
    off.close()


def test_request_log_is_read_while_the_gateway_writes_it(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "requests.db", flush_interval_s=0.01).start()
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            log.request_done(make_record("m1"))
            stop.wait(0.002)

    writer = threading.Thread(target=write)
    writer.start()
    ctx = UIContext(GW, tmp_path / "requests.db")
    try:
        assert log.flush(5)
        seen = [ctx.read_log(lambda r: len(r.query(limit=10_000))) for _ in range(20)]
        assert seen == sorted(seen) and seen[-1] > 0  # a read-only reader never blocks the writer
    finally:
        stop.set()
        writer.join()
        log.close()
        ctx.close()
    with sqlite3.connect(tmp_path / "requests.db") as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone()[0] >= seen[-1]


# --------------------------------------------------------------------------- client keys, unknown models


@pytest.fixture
def keyed_log(tmp_path: Path) -> Path:
    """A request log with two client keys, requests without a key, an unknown model and a provider
    that never reported tokens."""
    log = RequestLog(tmp_path / "requests.db", flush_interval_s=0.01).start()
    try:
        for key, model, extra in (
            ("alice", "m1", {}),
            ("alice", "m1", {}),
            ("bob", "m2", {"prompt_tokens": None, "completion_tokens": None}),
            (None, "m1", {}),
            ("bob", "typo", {"status": 404, "route": None, "provider": None, "error": "unknown model",
                             "error_code": "model_not_found", "prompt_tokens": None, "completion_tokens": None}),
        ):  # fmt: skip
            log.request_done(make_record(model, key_name=key, **extra))
        assert log.flush(5)
    finally:
        log.close()
    return tmp_path / "requests.db"


def test_history_filters_by_client_key_and_lists_the_keys_seen(keyed_log: Path) -> None:
    ctx = UIContext(GW, keyed_log)
    try:
        rows, _, _, keys = history.search(ctx, "", None, "any", "1h")
        assert len(rows) == 5 and keys == ["alice", "bob"]
        rows, note, _, _ = history.search(ctx, "", None, "any", "1h", "bob")
        assert sorted(r[2] for r in rows) == ["m2", "typo"] and note.startswith("2 requests match.")
        assert len(history.search(ctx, "", None, "any", "1h", history.ALL_KEYS)[0]) == 5
        assert history.search(ctx, "", None, "any", "1h", "carol")[0] == []
    finally:
        ctx.close()


def test_analytics_filters_by_client_key_groups_unknown_names_and_dashes_unreported_tokens(
    keyed_log: Path,
) -> None:
    ctx = UIContext(GW, keyed_log)
    try:
        every = analytics.load(ctx, "1h", analytics.ALL_MODELS, analytics.ALL_KEYS)
        assert every["keys"] == ["alice", "bob"]
        assert every["models"] == ["m1", "m2"]  # "typo" is no model
        assert [s["model"] for s in every["stats"]] == ["m1", "m2", "(unknown)"]
        assert "1 request for 1 unknown model name (404), shown as (unknown)" in every["summary"]
        bob = analytics.load(ctx, "1h", None, "bob")
        assert bob["summary"].startswith("**2 requests** (last hour, key bob) · errors 1 (50.0 %) · ")
        assert "tokens \u2013 in / \u2013 out" in bob["summary"]  # bob's provider never reported tokens
        m2 = next(line for line in bob["table"].splitlines() if line.startswith("| m2 |"))
        assert m2.endswith("| \u2013 | \u2013 | \u2013 |")  # tokens in, out, tokens/s: unknown, not 0
        assert set(bob["series"].requests) == {"m2", "(unknown)"}
        out = analytics.refresh(ctx, "1h", "m1", "alice")
        assert out[0].startswith("**2 requests** (last hour, m1, key alice)")
        assert out[-1] == {"__type__": "update", "choices": ["All keys", "alice", "bob"], "value": "alice"}
    finally:
        ctx.close()


def test_analytics_without_a_request_log_is_one_sentence() -> None:
    ctx = UIContext(GW, None)
    try:
        out = analytics.refresh(ctx, "1h", None, None)
        assert out[0] == f"⚠ {LOG_OFF}"
        assert out[1] == {"__type__": "update", "visible": False}  # the plots' box: hidden
        assert "AIB_REQUEST_LOG" in LOG_OFF and "--db" in LOG_OFF and LOG_OFF.count(". ") == 0
    finally:
        ctx.close()
