"""The data shaping behind the web UI's analytics plots, and the figures drawn from it."""

from __future__ import annotations

from typing import Any

import pytest
from matplotlib.figure import Figure

from aib.webui import plots, shaping

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0  # a multiple of every bucket width below a day: buckets start on it


def row(ts: float, model: str = "m1", **kw: Any) -> dict[str, Any]:
    base = {
        "ts": ts,
        "model": model,
        "status": 200,
        "error": None,
        "total_ms": 100.0,
        "prompt_tokens": 3,
        "completion_tokens": 5,
    }
    return {**base, **kw}


def stat(model: str, **kw: Any) -> dict[str, Any]:
    base = {
        "model": model,
        "requests": 10,
        "errors": 1,
        "error_rate": 0.1,
        "prompt_tokens": 30,
        "completion_tokens": 50,
        "tokens_per_s": 40.0,
        "p50_ms": 100.0,
        "p95_ms": 200.0,
        "p99_ms": 300.0,
        "ttft_p50_ms": 20.0,
    }
    return {**base, **kw}


# --------------------------------------------------------------------------- ranges and buckets


def test_time_ranges_have_seconds_and_unknown_keys_say_which_exist() -> None:
    assert [shaping.range_seconds(k) for _, k in shaping.TIME_RANGES] == [
        900.0, 3600.0, 21600.0, 86400.0, 604800.0, None,
    ]  # fmt: skip
    assert shaping.since_for("1h", now=T0) == T0 - 3600
    assert shaping.since_for("all", now=T0) is None
    with pytest.raises(ValueError, match=r"unknown time range '2y': use one of 15m, 1h"):
        shaping.range_seconds("2y")


@pytest.mark.parametrize(
    ("span", "width"),
    [(1, 10), (400, 10), (401, 30), (900, 30), (3600, 120), (21600, 600), (86400, 3600), (604800, 6 * 3600)],
)
def test_bucket_width_is_the_smallest_nice_one_giving_at_most_40_buckets(span: float, width: int) -> None:
    assert shaping.pick_bucket(span) == width
    assert span / width <= shaping.TARGET_BUCKETS


def test_bucket_width_beyond_a_day_grows_in_whole_days() -> None:
    assert shaping.pick_bucket(365 * 86400) == 10 * 86400
    assert 365 * 86400 / shaping.pick_bucket(365 * 86400) <= shaping.TARGET_BUCKETS


def test_rows_are_counted_per_bucket_and_model_with_errors_tokens_and_percentiles() -> None:
    rows = [
        row(T0 + 1, total_ms=10.0),
        row(T0 + 2, total_ms=30.0),
        row(T0 + 3, "m2", status=502, error="upstream failed", total_ms=20.0, completion_tokens=None),
        row(T0 + 65, status=0, error="client went away", total_ms=50.0),
        row(T0 - 500),  # before the range: ignored
    ]
    s = shaping.bucket_rows(rows, since=T0, until=T0 + 119, bucket_s=60)
    assert s.bucket_s == 60
    assert s.starts == [T0, T0 + 60]
    assert s.requests == {"m1": [2, 1], "m2": [1, 0]}
    assert s.totals == [3, 1]
    assert s.errors == [1, 1]
    assert s.error_rate == [pytest.approx(1 / 3), 1.0]
    assert s.prompt_tokens == [9, 3]
    assert s.completion_tokens == [10, 5]
    assert s.p50_ms == [20.0, 50.0]
    assert s.p95_ms == [30.0, 50.0]
    assert not s.empty


def test_buckets_align_to_their_width_and_cover_the_data_not_the_whole_range() -> None:
    rows = [row(T0 + 130), row(T0 + 400)]
    s = shaping.bucket_rows(rows, since=T0 - 7 * 86400, until=T0 + 3600, bucket_s=120)
    assert s.starts[0] == T0 + 120  # the oldest row's bucket, a multiple of 120 s: not a week ago
    assert s.starts[-1] <= T0 + 400 < s.starts[-1] + 120  # the newest row's bucket: not "now"
    assert len(s.starts) == 3
    assert s.requests["m1"] == [1, 0, 1]
    assert s.error_rate[1] is None  # nothing to rate in an empty bucket
    assert s.p50_ms[1] is None
    picked = shaping.bucket_rows(rows, since=T0 - 7 * 86400, until=T0 + 3600)
    assert picked.bucket_s == shaping.pick_bucket(270)  # the width fits the data's span too


def test_tokens_nobody_reported_are_none_not_zero() -> None:
    rows = [row(T0, prompt_tokens=None, completion_tokens=None), row(T0 + 20, completion_tokens=None)]
    s = shaping.bucket_rows(rows, since=None, until=T0 + 20, bucket_s=10)
    assert s.prompt_tokens == [None, None, 3]
    assert s.completion_tokens == [None, None, None]


def test_unknown_model_names_count_as_one_unknown_series() -> None:
    rows = [row(T0, "typo", status=404), row(T0 + 1, "other-typo", status=404), row(T0 + 2)]
    s = shaping.bucket_rows(rows, since=None, until=T0 + 2, unknown={"typo", "other-typo"})
    assert s.requests == {shaping.UNKNOWN: [2], "m1": [1]}


def test_everything_range_starts_at_the_oldest_row() -> None:
    s = shaping.bucket_rows([row(T0), row(T0 + 7200)], since=None, until=T0 + 7200)
    assert s.bucket_s == shaping.pick_bucket(7200)
    assert s.starts[0] == T0
    assert sum(s.totals) == 2


def test_no_rows_make_an_empty_series_with_at_least_one_bucket() -> None:
    s = shaping.bucket_rows([], since=None, until=T0)
    assert s.empty
    assert len(s.starts) == 1
    assert s.requests == {}
    assert s.totals == []


def test_models_beyond_the_busiest_are_summed_as_other_models() -> None:
    rows = [row(T0, f"m{i}") for i in range(8) for _ in range(8 - i)]  # m0 busiest
    s = shaping.bucket_rows(rows, since=T0, until=T0 + 5, bucket_s=10, max_models=4)
    assert list(s.requests) == ["m0", "m1", "m2", shaping.OTHER]
    assert s.requests[shaping.OTHER] == [sum(8 - i for i in range(3, 8))]
    few = shaping.bucket_rows(rows[:15], since=T0, until=T0 + 5, bucket_s=10, max_models=4)
    assert shaping.OTHER not in few.requests  # two models only: no merging


@pytest.mark.parametrize(
    ("fields", "failed"),
    [
        ({"status": 200}, False),
        ({"status": 399}, False),
        ({"status": 404}, True),
        ({"status": 0}, True),
        ({"status": None}, True),
        ({"status": 200, "error": "stream broke"}, True),
    ],
)
def test_what_counts_as_an_error(fields: dict[str, Any], failed: bool) -> None:
    assert shaping.is_error(fields) is failed


# --------------------------------------------------------------------------- tables


def test_summary_adds_every_model() -> None:
    total = shaping.summary([stat("a"), stat("b", requests=30, errors=0, prompt_tokens=None)])
    assert total == {
        "requests": 40,
        "errors": 1,
        "error_rate": 1 / 40,
        "prompt_tokens": 30,
        "completion_tokens": 100,
        "models": 2,
        "unknown": 0,
        "unknown_requests": 0,
    }
    assert shaping.summary([])["error_rate"] is None


def test_summary_says_none_for_tokens_nobody_reported_and_counts_unknown_names() -> None:
    stats = [
        stat("a", prompt_tokens=0, completion_tokens=0, tokens_reported=False),
        stat("typo", requests=4, errors=4, not_found=4, prompt_tokens=0, completion_tokens=0, tokens_reported=False),
    ]  # fmt: skip
    total = shaping.summary(stats)
    assert total["prompt_tokens"] is None and total["completion_tokens"] is None
    assert (total["models"], total["unknown"], total["unknown_requests"]) == (1, 1, 4)


def test_unknown_names_are_grouped_and_partly_unknown_models_are_not() -> None:
    stats = [
        stat("a", not_found=0),
        stat("renamed", requests=10, not_found=3),  # routed once: still a model
        stat("typo", requests=4, errors=4, not_found=4),
        stat("tpyo", requests=2, errors=2, not_found=2),
    ]
    assert shaping.unknown_models(stats) == {"typo", "tpyo"}
    grouped = shaping.group_unknown(stats)
    assert [g["model"] for g in grouped] == ["a", "renamed", shaping.UNKNOWN]
    unknown = grouped[-1]
    assert (unknown["requests"], unknown["errors"], unknown["error_rate"], unknown["names"]) == (6, 6, 1.0, 2)
    assert unknown["p50_ms"] is None and unknown["tokens_per_s"] is None
    table = shaping.stats_table(grouped)
    assert table[-1][0] == "(unknown, 2 names)"
    assert table[-1][4:] == [shaping.DASH] * 7  # no latency, no tokens for requests nothing answered
    assert shaping.group_unknown([stat("a")]) == [stat("a")]


def test_stats_table_formats_numbers_and_marks_missing_values() -> None:
    rows = shaping.stats_table([
        stat("a", p99_ms=12345.6, prompt_tokens=1234), stat("b", tokens_per_s=None, ttft_p50_ms=None),
        stat("c", prompt_tokens=0, completion_tokens=0, tokens_reported=False),
    ])  # fmt: skip
    assert len(rows[0]) == len(shaping.STATS_HEADERS)
    assert rows[0] == ["a", 10, 1, "10.0", "100", "200", "12,346", "20", "1,234", "50", "40.0"]
    assert rows[1][7] == shaping.DASH and rows[1][10] == shaping.DASH
    assert rows[2][8:10] == [shaping.DASH, shaping.DASH]  # never reported: not 0


def test_markdown_table_escapes_pipes_and_newlines() -> None:
    text = shaping.markdown_table(["a", "b|c"], [["x|y", "line\nbreak"], ["", 3]])
    assert text.splitlines() == [
        "| a | b\\|c |",
        "|---|---|",
        "| x\\|y | line break |",
        "|   | 3 |",
    ]
    assert shaping.markdown_table(["a"], []) == ""


# --------------------------------------------------------------------------- figures


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def bars(fig: Figure) -> int:
    return sum(len(c) for ax in fig.axes for c in ax.containers)


def titles(fig: Figure) -> list[str]:
    return [ax.get_title(loc="left") for ax in fig.axes]


def traffic() -> shaping.Series:
    rows = [row(T0 + i * 30, "m1" if i % 3 else "m2", status=500 if i == 4 else 200) for i in range(20)]
    return shaping.bucket_rows(rows, since=T0, until=T0 + 900)


def test_time_figures_draw_the_series() -> None:
    s = traffic()
    req = plots.requests_over_time(s)
    assert titles(req) == ["Requests per 30 seconds"]
    assert bars(req) == len(s.starts) * 3  # two models stacked plus the error outline
    assert [t.get_text() for t in req.axes[0].get_legend().get_texts()] == ["m1", "m2", "errors"]
    tokens = plots.tokens_over_time(s)
    assert bars(tokens) == len(s.starts) * 2
    errors = plots.error_rate_over_time(s)
    (line,) = errors.axes[0].get_lines()
    assert sorted(set(line.get_ydata())) == [0.0, 100.0]  # one bucket holds the failed request alone
    latency = plots.latency_over_time(s)
    assert [ln.get_label() for ln in latency.axes[0].get_lines()] == ["p50", "p95"]
    for fig in (req, tokens, errors, latency):
        assert not texts(fig)


def test_time_figures_say_when_there_is_nothing_to_draw() -> None:
    empty = shaping.bucket_rows([], since=T0, until=T0 + 60)
    for draw in (plots.requests_over_time, plots.tokens_over_time, plots.error_rate_over_time,
                 plots.latency_over_time):  # fmt: skip
        fig = draw(empty)
        assert texts(fig) == ["no requests in this range"]
        assert bars(fig) == 0
    untokened = shaping.bucket_rows([row(T0, prompt_tokens=None, completion_tokens=None)], T0, T0 + 60)
    assert texts(plots.tokens_over_time(untokened)) == ["no token counts (the providers reported no usage)"]


def test_single_point_series_draw_without_warnings() -> None:
    """A lone bucket used to give matplotlib a zero-width date range (a UserWarning, an error here)."""
    s = shaping.bucket_rows([row(T0)], since=None, until=T0)
    assert len(s.starts) == 1
    for fig in (plots.error_rate_over_time(s), plots.latency_over_time(s), plots.requests_over_time(s)):
        fig.canvas.draw()  # the locator runs at draw time


def test_day_buckets_label_dates() -> None:
    s = shaping.bucket_rows([row(T0), row(T0 + 30 * 86400)], since=None, until=T0 + 30 * 86400)
    assert s.bucket_s == 86400
    fig = plots.requests_over_time(s)
    assert titles(fig) == ["Requests per day"]
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert labels and all(len(label) == 5 and label[2] == "-" for label in labels)  # mm-dd


def test_per_model_figures() -> None:
    stats = [stat("a"), stat("b", p50_ms=50.0, tokens_per_s=None), stat("c", p50_ms=None)]
    latency = plots.latency_by_model(stats)
    assert [t.get_text() for t in latency.axes[0].get_xticklabels()] == ["a", "b"]
    assert bars(latency) == 6
    speed = plots.speed_by_model(stats)
    assert [t.get_text() for t in speed.axes[0].get_xticklabels()] == ["a", "c"]
    assert texts(plots.latency_by_model([])) == ["no requests in this range"]
    assert texts(plots.speed_by_model([stat("a", tokens_per_s=None)])) == ["no token counts in this range"]
    many = plots.latency_by_model([stat(f"model-{i}") for i in range(6)])
    assert many.axes[0].get_xticklabels()[0].get_rotation() == 20


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10 seconds"), (60, "minute"), (120, "2 minutes"), (3600, "hour"), (10800, "3 hours"),
     (86400, "day"), (172800, "2 days")],
)  # fmt: skip
def test_bucket_width_in_words(seconds: int, text: str) -> None:
    assert plots._width_text(seconds) == text


def test_the_time_axis_spans_the_data_not_the_chosen_range() -> None:
    """A week's range with ten minutes of requests: the axis shows those ten minutes."""
    import datetime as dt

    import matplotlib.dates as mdates

    s = shaping.bucket_rows([row(T0 + 600), row(T0 + 1200)], since=T0 - 7 * 86400, until=T0 + 3600)
    for fig in (plots.requests_over_time(s), plots.latency_over_time(s), plots.tokens_over_time(s)):
        lo, hi = fig.axes[0].get_xlim()
        start, end = (mdates.num2date(v).timestamp() for v in (lo, hi))
        assert start == pytest.approx(dt.datetime.fromtimestamp(s.starts[0]).timestamp(), abs=1)
        assert start <= T0 + 600 and T0 + 1200 < end <= T0 + 1200 + s.bucket_s
