"""Access log lines (JSON and human), logging set-up, redaction, and the observe settings."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from aib.observe.logs import (
    ACCESS_LOGGER,
    AccessLogObserver,
    JsonFormatter,
    LineHandler,
    Redactor,
    access_fields,
    configure_logging,
    human_line,
)
from aib.observe.records import Attempt
from aib.observe.settings import DEFAULT_REQUEST_LOG, ObserveSettings
from observe_support import make_record

pytestmark = pytest.mark.unit


@pytest.fixture
def access_stream() -> Iterator[io.StringIO]:
    """The access logger writing JSON into a StringIO (restored afterwards)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_access_fields_carry_what_an_operator_needs() -> None:
    rec = make_record(
        "default", route="llama3", matched_by="alias", total_s=0.5, upstream_s=0.42, ttfb_s=0.05, stream=True
    )
    f = access_fields(rec, Redactor())
    assert f["event"] == "request"
    assert f["request_id"] == rec.request_id
    assert (f["model"], f["route"], f["matched_by"], f["provider"], f["upstream"]) == (
        "default",
        "llama3",
        "alias",
        "ollama",
        "default",
    )
    assert (f["status"], f["stream"], f["attempts"], f["fallbacks"]) == (200, True, 1, 0)
    assert f["total_ms"] == 500.0 and f["ttfb_ms"] == 50.0 and f["upstream_ms"] == 420.0
    assert f["overhead_ms"] == pytest.approx(80.0)
    assert (f["prompt_tokens"], f["completion_tokens"]) == (12, 30)
    assert f["error"] is None and f["error_code"] is None


def test_json_line_per_request(access_stream: io.StringIO) -> None:
    obs = AccessLogObserver()
    obs.request_done(make_record())
    obs.request_done(
        make_record(
            "nope",
            route=None,
            matched_by=None,
            provider=None,
            status=404,
            error="The model 'nope' is not configured",
            error_code="model_not_found",
        )
    )
    obs.request_done(make_record(status=502, error="vllm answered 500", error_code="upstream_error"))
    one, two, three = lines(access_stream)
    assert one["logger"] == "aib.access" and one["level"] == "info" and one["status"] == 200
    assert str(one["ts"]).endswith("Z")
    assert two["status"] == 404 and two["error_code"] == "model_not_found" and two["route"] is None
    assert three["level"] == "warning"  # 5xx


def test_human_line_is_readable() -> None:
    rec = make_record(
        "big", route="big", provider="ollama", upstream="llama3", stream=True, ttfb_s=0.0123, total_s=0.5
    )
    rec.attempts.insert(0, Attempt("vllm/big", "vllm", "big", "big", None, "down", None, 0.001, False))
    text = human_line(access_fields(rec, Redactor()))
    assert text.startswith(
        "200 chat/completions 'big' -> big:ollama/llama3 500.0ms ttfb=12.3ms tokens=12+30 fallbacks=1"
    )
    assert f"rid={rec.request_id}" in text
    err = human_line(
        access_fields(
            make_record(
                "x",
                route=None,
                provider=None,
                status=404,
                error="no such model",
                error_code="model_not_found",
                prompt_tokens=None,
                completion_tokens=None,
            ),
            Redactor(),
        )
    )
    assert "-> unresolved" in err and err.endswith("error=model_not_found: no such model")
    gone = human_line(access_fields(make_record(client_disconnected=True), Redactor()))
    assert "client-gone" in gone


def test_background_observer_writes_on_close_with_the_request_end_time(access_stream: io.StringIO) -> None:
    obs = AccessLogObserver(background=True, interval_s=5.0)
    rec = make_record(started_at=1_700_000_000.0, total_s=1.5)
    obs.request_done(rec)
    assert access_stream.getvalue() == ""  # nothing written on the request path
    obs.close()
    (line,) = lines(access_stream)
    assert line["ts"] == "2023-11-14T22:13:21.500Z"
    obs.close()  # twice is fine


def test_background_queue_is_bounded(access_stream: io.StringIO) -> None:
    obs = AccessLogObserver(background=True, interval_s=5.0, max_queue=3)
    for _ in range(10):
        obs.request_done(make_record())
    assert obs.dropped == 7
    obs.close()
    assert len(lines(access_stream)) == 3


def test_disabled_logger_costs_nothing(access_stream: io.StringIO) -> None:
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.ERROR)
    AccessLogObserver().request_done(make_record())
    assert access_stream.getvalue() == ""


def test_line_handler_holds_batched_lines_until_flush() -> None:
    stream = io.StringIO()
    h = LineHandler(stream)
    h.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("aib.test.linehandler")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(h)
    try:
        log.info("held 1", extra={"aib_batched": True})
        log.info("held 2", extra={"aib_batched": True})
        assert stream.getvalue() == ""
        log.warning("at once")  # written now, after the held lines: order kept
        assert stream.getvalue() == "held 1\nheld 2\nat once\n"
        log.info("held 3", extra={"aib_batched": True})
        h.flush()
        assert stream.getvalue().endswith("at once\nheld 3\n")
    finally:
        log.removeHandler(h)


def test_json_formatter_for_other_records() -> None:
    fmt = JsonFormatter()
    rec = logging.LogRecord(
        "aib.gateway", logging.WARNING, __file__, 1, "provider %s is down", ("vllm",), None
    )
    rec.provider = "vllm"
    rec.color_message = "\x1b[36mprovider\x1b[0m"
    out = orjson.loads(fmt.format(rec))
    assert out["msg"] == "provider vllm is down" and out["level"] == "warning" and out["provider"] == "vllm"
    assert "color_message" not in out
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec2 = logging.LogRecord("aib", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert "ValueError: bad" in orjson.loads(fmt.format(rec2))["exc"]


def test_configure_logging_replaces_plain_handlers_only() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    keep = logging.NullHandler()
    plain = logging.StreamHandler(io.StringIO())
    root.addHandler(keep)
    root.addHandler(plain)
    try:
        out = io.StringIO()
        h = configure_logging("json", "warning", stream=out)
        assert plain not in root.handlers and keep in root.handlers and h in root.handlers
        assert root.level == logging.WARNING
        logging.getLogger("aib.x").warning("hello %d", 1)
        assert orjson.loads(out.getvalue())["msg"] == "hello 1"
        out2 = io.StringIO()
        h2 = configure_logging("human", logging.INFO, stream=out2)
        assert h not in root.handlers and h2 in root.handlers
        logging.getLogger("aib.x").info("again")
        assert out2.getvalue().rstrip().endswith("INFO aib.x: again")
        with pytest.raises(ValueError, match="log format"):
            configure_logging("xml")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_redactor_removes_known_secrets_and_token_shapes() -> None:
    r = Redactor(lambda: ["s3cr3t-value-123", "ab"])
    assert r("upstream said: key s3cr3t-value-123 invalid") == "upstream said: key *** invalid"
    assert r("ab is too short to redact") == "ab is too short to redact"
    assert r("Authorization: Bearer abc.def-ghi rejected") == "Authorization: Bearer *** rejected"
    assert r("Incorrect API key provided: sk-proj-AbCdEf123456789") == "Incorrect API key provided: sk-***"
    assert r("sk-ant-api03-xyzxyzxyzxyz") == "sk-ant-***"
    assert r(None) is None and r("") == ""
    assert r.bytes(b'{"key": "s3cr3t-value-123"}') == b'{"key": "***"}'
    assert r.bytes(None) is None


def test_errors_are_redacted_in_access_lines(access_stream: io.StringIO) -> None:
    obs = AccessLogObserver(Redactor(lambda: ["topsecretkey99"]))
    obs.request_done(
        make_record(
            status=401, error="vllm answered 401: bad key topsecretkey99", error_code="upstream_rejected"
        )
    )
    assert "topsecretkey99" not in access_stream.getvalue()
    assert lines(access_stream)[0]["error"] == "vllm answered 401: bad key ***"


def test_settings_from_env() -> None:
    s = ObserveSettings.from_env({})
    assert s.request_log == DEFAULT_REQUEST_LOG and s.metrics and s.access_log and not s.log_bodies
    assert s.log_format == "human"
    env = {
        "AIB_REQUEST_LOG": "/tmp/x.db",
        "AIB_LOG_FORMAT": "JSON",
        "AIB_METRICS": "off",
        "AIB_ACCESS_LOG": "0",
        "AIB_LOG_BODIES": "yes",
        "AIB_REQUEST_LOG_RETENTION_DAYS": "2.5",
        "AIB_REQUEST_LOG_MAX_ROWS": "1000",
        "AIB_REQUEST_LOG_MAX_MB": "64",
        "AIB_LOG_LEVEL": "DEBUG",
    }
    s = ObserveSettings.from_env(env)
    assert (
        s.request_log == Path("/tmp/x.db") and s.log_format == "json" and not s.metrics and not s.access_log
    )
    assert s.log_bodies and s.retention_days == 2.5 and s.retention_rows == 1000 and s.max_db_mb == 64
    assert s.log_level == "debug"
    assert ObserveSettings.from_env({"AIB_REQUEST_LOG": "off"}).request_log is None
    assert ObserveSettings.from_env({}, queue_size=5).queue_size == 5
    with pytest.raises(ValueError, match="AIB_LOG_FORMAT"):
        ObserveSettings.from_env({"AIB_LOG_FORMAT": "xml"})
    assert (
        s.writer == "process"
        and ObserveSettings.from_env({"AIB_OBSERVE_WRITER": " Thread"}).writer == "thread"
    )
    with pytest.raises(ValueError, match="AIB_OBSERVE_WRITER='fork': use 'process' or 'thread'"):
        ObserveSettings.from_env({"AIB_OBSERVE_WRITER": "fork"})
    with pytest.raises(ValueError, match="AIB_REQUEST_LOG_MAX_ROWS='many': not a whole number"):
        ObserveSettings.from_env({"AIB_REQUEST_LOG_MAX_ROWS": "many"})
    with pytest.raises(ValueError, match="AIB_REQUEST_LOG_RETENTION_DAYS='-1': use a number > 0"):
        ObserveSettings.from_env({"AIB_REQUEST_LOG_RETENTION_DAYS": "-1"})


def test_install_observability_on_a_duck_typed_gateway(tmp_path: Path, access_stream: io.StringIO) -> None:
    from aib.observe import install_observability
    from aib.observe.metrics import MetricsObserver
    from observe_support import FakeGateway, small_plan

    gw = FakeGateway(small_plan(tmp_path))
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)  # as in a fresh process
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.WARNING)  # `aib serve --log-level warning`
    try:
        handle = install_observability(gw, ObserveSettings(request_log=None, writer="thread"))
        assert [type(o).__name__ for o in gw.observers] == ["MetricsObserver", "AccessLogObserver"]
        assert ("/metrics", "GET") in gw.routes and gw.on_shutdown == [handle.close]
        assert gw.keep_bodies is False
        gw.observers[1].request_done(make_record())
        gw.on_reload[0]("success")
        handle.close()
    finally:
        root.setLevel(old)
    assert len(lines(access_stream)) == 1  # access lines do not depend on the general log level
    assert isinstance(handle.metrics, MetricsObserver)
    assert handle.metrics.registry.get_sample_value("aib_config_reloads_total", {"result": "success"}) == 1
    off = FakeGateway(small_plan(tmp_path / "b"))
    quiet = install_observability(off, ObserveSettings(request_log=None, metrics=False, access_log=False))
    assert off.observers == [] and off.routes == {}
    quiet.reload_done("success")  # no metrics: nothing to count, no error


def test_install_observability_uses_the_writer_process_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aib.observe import install_observability
    from aib.observe.client import WriterClient
    from observe_support import FakeGateway, small_plan

    gw = FakeGateway(small_plan(tmp_path))
    gw.on_startup = []  # type: ignore[attr-defined]
    monkeypatch.setenv("AIB_TEST_VLLM_KEY", "vllm-key-123456")
    handle = install_observability(gw, ObserveSettings(request_log=tmp_path / "r.db", log_format="json"))
    writer = handle.writer
    assert isinstance(writer, WriterClient) and handle.access is writer and handle.request_log is writer
    assert gw.observers == [writer] and gw.on_startup == [writer.start]  # type: ignore[attr-defined]
    assert handle.metrics is not None and handle.metrics.before_collect == [writer.fold_metrics]
    assert writer.config["log_format"] == "json" and writer.config["access_level"] == logging.INFO
    assert writer.config["request_log"] == str(tmp_path / "r.db")
    assert tuple(writer._secrets()) == ("vllm-key-123456",)  # what the writer redacts
    assert handle.metrics is not None and handle.metrics._drop_sources == [writer.drops]
    handle.close()  # never started: nothing to stop
    assert writer.closed and handle.request_log is None
    logs_only = FakeGateway(small_plan(tmp_path / "b"))
    h2 = install_observability(logs_only, ObserveSettings(request_log=None, metrics=False))
    assert h2.writer is not None and h2.request_log is None and h2.writer.config["request_log"] is None
    h2.close()
    metrics_only = FakeGateway(small_plan(tmp_path / "c"))
    metrics_only.on_startup = []  # type: ignore[attr-defined]
    h3 = install_observability(metrics_only, ObserveSettings(request_log=None, access_log=False))
    assert h3.writer is not None and not h3.writer.ship and h3.access is None and h3.request_log is None
    assert metrics_only.on_startup == []  # type: ignore[attr-defined]  # no writer process to start
    h3.writer.request_done(make_record())  # no event loop: counted at once
    h3.writer.request_done(make_record())
    assert h3.writer.pid is None and h3.metrics is not None
    labels = {"route": "llama3", "provider": "ollama", "endpoint": "chat/completions", "status": "200"}
    assert h3.metrics.registry.get_sample_value("aib_requests_total", labels) == 2
    h3.close()


def test_a_failing_line_never_stops_the_access_log_thread(
    access_stream: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(text: str | None) -> str | None:
        raise ValueError("redactor bug")

    obs = AccessLogObserver(broken, background=True, interval_s=0.01)
    obs.request_done(make_record(status=502, error="boom"))  # the redactor fails on this one
    obs.request_done(make_record())
    obs.close()
    assert len(lines(access_stream)) == 1
    assert any("access log line failed" in r.getMessage() for r in caplog.records)


def test_lazy_names_of_the_package() -> None:
    import aib.observe

    assert aib.observe.ObserveSettings is ObserveSettings
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = aib.observe.nothing


def test_serve_says_which_variable_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from aib.cli.main import app

    monkeypatch.setenv("AIB_OBSERVE_WRITER", "fork")
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert "AIB_OBSERVE_WRITER='fork': use 'process' or 'thread'" in result.output
    assert "Traceback" not in result.output
