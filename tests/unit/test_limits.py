"""Limits: GCRA arithmetic, the limiter on one process's and on shared counters, budgets.

The property tests drive the limiter with any interleaving of requests from any number of workers
(sharing one counters file) on a fake clock, and check that no key ever gets more than its limits
allow: requests and tokens in any window, requests in flight, tokens per day.
"""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aib.auth.keys import ClientKey
from aib.limits import gcra
from aib.limits.budgets import Budgets, next_day, next_month
from aib.limits.limiter import Limiter, LimitExceeded, Ticket, duration
from aib.limits.slots import CAPACITY, LocalSlots, SharedSlots

pytestmark = pytest.mark.unit

T0 = 1_000_000.0  # a monotonic time far from zero
NOON = float(calendar.timegm((2026, 12, 7, 12, 0, 0)))


def key(num: int = 1, **limits: int) -> ClientKey:
    return ClientKey(
        id=f"key_{num}", num=num, name=f"k{num}", prefix="sk-aib-x", hash="h", created_at=0.0, **limits
    )


# --------------------------------------------------------------------------- GCRA


def test_a_full_bucket_takes_the_limit_at_once_then_refills_at_the_rate() -> None:
    interval, window = 60 / 10, 60.0  # 10 per minute
    tat = 0.0
    for _ in range(10):
        tat, wait = gcra.take(tat, T0, 1, interval, window)
        assert wait == 0.0
    _, wait = gcra.take(tat, T0, 1, interval, window)
    assert wait == pytest.approx(interval)  # the next one in 6 s
    assert gcra.remaining(tat, T0, interval, window) == 0
    assert gcra.reset_after(tat, T0) == pytest.approx(60.0)
    assert gcra.remaining(tat, T0 + 12, interval, window) == 2
    tat, wait = gcra.take(tat, T0 + interval, 1, interval, window)
    assert wait == 0.0


def test_a_cost_above_the_window_passes_on_a_full_bucket_only() -> None:
    interval, window = 60 / 100, 60.0  # 100 tokens per minute
    tat, wait = gcra.take(0.0, T0, 500, interval, window)
    assert wait == 0.0 and tat == pytest.approx(T0 + 60)  # charged as the whole minute
    _, wait = gcra.take(tat, T0 + 1, 500, interval, window)
    assert wait == pytest.approx(59.0)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 50),
    events=st.lists(st.tuples(st.floats(0, 20), st.integers(1, 50)), min_size=1, max_size=120),
)
def test_gcra_never_admits_more_than_limit_plus_rate_times_span(
    limit: int, events: list[tuple[float, int]]
) -> None:
    interval, window = 60.0 / limit, 60.0
    tat, now = 0.0, T0
    admitted: list[tuple[float, int]] = []
    for dt, cost in events:
        now += dt
        cost = min(cost, limit)
        tat, wait = gcra.take(tat, now, cost, interval, window)
        if wait == 0.0:
            admitted.append((now, cost))
        else:  # what it says is true: after the wait it passes
            assert gcra.take(tat, now + wait, cost, interval, window)[1] == 0.0
    for i, (t_i, _) in enumerate(admitted):
        total = 0
        for t_j, c in admitted[i:]:
            total += c
            assert total <= limit + limit * (t_j - t_i) / window + 1e-6


def test_duration_reads_like_openai() -> None:
    assert [duration(x) for x in (0, 0.02, 0.9994, 1, 1.2, 59.5, 60, 360, 3723)] == [
        "0ms", "20ms", "999ms", "1s", "2s", "1m0s", "1m0s", "6m0s", "1h2m3s",
    ]  # fmt: skip


# --------------------------------------------------------------------------- the limiter


def test_refusals_name_the_limit_and_carry_retry_after_and_rate_headers() -> None:
    lim = Limiter(LocalSlots(), Budgets(NOON))
    k = key(rpm=2, tpm=1000)
    t = lim.admit(k, 100, T0, NOON)
    names = dict(t.headers)
    assert names[b"x-ratelimit-limit-requests"] == b"2"
    assert names[b"x-ratelimit-remaining-requests"] == b"1"
    assert names[b"x-ratelimit-reset-requests"] == b"30s"
    assert names[b"x-ratelimit-limit-tokens"] == b"1000"
    assert names[b"x-ratelimit-remaining-tokens"] == b"900"
    assert names[b"x-ratelimit-reset-tokens"] == b"6s"
    lim.admit(k, 100, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 100, T0 + 1, NOON)
    e = exc.value
    assert e.code == "requests_per_minute" and "2 requests per minute" in e.message
    assert dict(e.headers)[b"retry-after"] == b"29"
    assert dict(e.headers)[b"x-ratelimit-remaining-requests"] == b"0"


def test_tokens_reserved_are_settled_on_the_real_usage() -> None:
    lim = Limiter(LocalSlots(), Budgets(NOON))
    k = key(tpm=1000)
    t = lim.admit(k, 900, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 200, T0, NOON)
    assert exc.value.code == "tokens_per_minute" and "reserves 200" in exc.value.message
    lim.settle(t, 100, T0)  # it used 100 of its 900
    t2 = lim.admit(k, 800, T0, NOON)
    assert dict(t2.headers)[b"x-ratelimit-remaining-tokens"] == b"100"
    lim.settle(t2, 1200, T0)  # used more than it reserved: a debt the next requests wait for
    with pytest.raises(LimitExceeded):
        lim.admit(k, 1, T0 + 1, NOON)


def test_concurrency_counts_requests_until_they_settle() -> None:
    lim = Limiter(LocalSlots(), Budgets(NOON))
    k = key(concurrency=2)
    a, b = lim.admit(k, 0, T0, NOON), lim.admit(k, 0, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 0, T0, NOON)
    assert exc.value.code == "concurrent_requests"
    lim.settle(a, 0)
    lim.settle(a, 0)  # settling twice frees one place, not two
    c = lim.admit(k, 0, T0, NOON)
    with pytest.raises(LimitExceeded):
        lim.admit(k, 0, T0, NOON)
    for t in (b, c):
        lim.settle(t, 0)


def test_a_refused_request_takes_nothing() -> None:
    lim = Limiter(LocalSlots(), Budgets(NOON))
    k = key(rpm=10, tpm=100, concurrency=5)
    lim.admit(k, 90, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 20, T0, NOON)
    assert exc.value.code == "tokens_per_minute"
    # the token refusal used up neither a request nor a place in flight nor tokens
    headers = dict(lim.admit(k, 10, T0, NOON).headers)
    assert headers[b"x-ratelimit-remaining-requests"] == b"8"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"0"
    assert lim.slots.begin(k.num)[2] == 2


def test_budgets_refuse_until_the_next_utc_day_and_month() -> None:
    b = Budgets(NOON)
    lim = Limiter(LocalSlots(), b)
    k = key(budget_day=1000, budget_month=1500)
    t = lim.admit(k, 600, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 500, T0, NOON)  # 600 reserved + 500 > 1000
    assert exc.value.code == "tokens_per_day"
    assert exc.value.retry_after_s == pytest.approx(next_day(NOON) - NOON)
    lim.settle(t, 300)
    lim.settle(lim.admit(k, 500, T0, NOON), 500)  # 800 used today
    tomorrow = next_day(NOON) + 60
    lim.settle(lim.admit(k, 600, T0, tomorrow), 600)  # a new day: 600 today, 1400 this month
    with pytest.raises(LimitExceeded) as exc:
        lim.admit(k, 200, T0, tomorrow)
    assert exc.value.code == "tokens_per_month"
    assert exc.value.retry_after_s == pytest.approx(next_month(tomorrow) - tomorrow)


def test_budgets_count_the_store_totals_and_what_is_on_its_way() -> None:
    b = Budgets(NOON)
    b.refreshed(b.day, {1: (900, 900)})  # another process already used 900 today
    assert b.check(1, 1000, None, 101, NOON) == ("tokens_per_day", pytest.approx(next_day(NOON) - NOON))
    b.settle(1, 0, 50)  # this process charged 50
    b.take_pending()  # ... and is writing it to the store
    assert b.used(1) == (950, 950)
    b.refreshed(b.day, {1: (950, 950)})  # the totals now include it
    assert b.used(1) == (950, 950)
    b.settle(1, 0, 10)
    b.take_pending()
    b.forget_flush()  # the write failed: still counted here
    assert b.used(1) == (960, 960)


# --------------------------------------------------------------------------- shared counters


def test_shared_slots_are_one_set_of_counters_for_every_worker(tmp_path: Path) -> None:
    path = tmp_path / "limits"
    w0, w1 = SharedSlots(path, 0, 2), SharedSlots(path, 1, 2)
    l0, l1 = Limiter(w0, Budgets(NOON)), Limiter(w1, Budgets(NOON))
    k = key(7, rpm=3, concurrency=2)
    t0 = l0.admit(k, 0, T0, NOON)
    t1 = l1.admit(k, 0, T0, NOON)
    with pytest.raises(LimitExceeded) as exc:
        l0.admit(k, 0, T0, NOON)
    assert exc.value.code == "concurrent_requests"
    l1.settle(t1, 0)
    l0.admit(k, 0, T0, NOON)  # the third request this minute, on worker 0
    l0.settle(t0, 0)
    with pytest.raises(LimitExceeded) as exc:  # a fourth, on worker 1: the rate is shared
        l1.admit(k, 0, T0, NOON)
    assert exc.value.code == "requests_per_minute"
    # a restarted worker 1 forgets its own in-flight counts; worker 0's one request stays
    l1.admit(key(8, concurrency=5), 0, T0, NOON)
    again = SharedSlots(path, 1, 2)
    assert again.begin(7)[2] == 1.0
    again.commit(7, [0.0, 0.0, 1.0])
    assert again.begin(8)[2] == 0.0
    again.commit(8, [0.0, 0.0, 0.0])
    for s in (w0, w1, again):
        s.close()


def test_a_slot_is_taken_over_by_a_later_key_with_the_same_place(tmp_path: Path) -> None:
    s = SharedSlots(tmp_path / "limits", 0, 1)
    lim = Limiter(s, Budgets(NOON))
    lim.admit(key(5, rpm=1), 0, T0, NOON)
    with pytest.raises(LimitExceeded):
        lim.admit(key(5, rpm=1), 0, T0, NOON)
    lim.admit(key(5 + CAPACITY, rpm=1), 0, T0, NOON)  # another key: starts empty
    s.close()


def test_shared_slots_refuse_more_workers_than_they_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 64 workers"):
        SharedSlots(tmp_path / "limits", 64, 65)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workers=st.integers(1, 3),
    rpm=st.integers(1, 20),
    tpm=st.integers(50, 2000),
    conc=st.integers(1, 4),
    budget=st.integers(100, 5000),
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),  # which worker
            st.sampled_from(["admit", "settle"]),
            st.floats(0, 15),  # seconds since the last step
            st.integers(1, 400),  # tokens reserved
            st.floats(0, 1),  # share of the reservation really used
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_no_key_ever_exceeds_its_limits_over_any_interleaving(
    tmp_path_factory: pytest.TempPathFactory,
    workers: int,
    rpm: int,
    tpm: int,
    conc: int,
    budget: int,
    steps: list[tuple[int, str, float, int, float]],
) -> None:
    path = tmp_path_factory.mktemp("slots") / "limits"
    budgets = Budgets(NOON)  # budgets are per process; one process here, so they are exact
    slots = [SharedSlots(path, i, workers) for i in range(workers)]
    limiters = [Limiter(s, budgets) for s in slots]
    k = key(3, rpm=rpm, tpm=tpm, concurrency=conc, budget_day=budget)
    now = T0
    open_tickets: list[tuple[int, Ticket, float, int]] = []  # (worker, ticket, admitted at, will use)
    admitted: list[tuple[float, int]] = []  # (when, tokens finally used)
    used_today = 0
    try:
        for w, op, dt, reserve, share in steps:
            w %= workers
            now += dt
            if op == "settle" and open_tickets:
                owner, t, at, use = open_tickets.pop(w % len(open_tickets))
                limiters[owner].settle(t, use, now)  # a request ends in the worker that admitted it
                admitted.append((at, use))
                used_today += use
                continue
            reserve = min(reserve, tpm)
            try:
                t = limiters[w].admit(k, reserve, now, NOON)
            except LimitExceeded as exc:
                assert exc.code in (
                    "concurrent_requests",
                    "requests_per_minute",
                    "tokens_per_minute",
                    "tokens_per_day",
                )
                continue
            open_tickets.append((w, t, now, int(reserve * share)))
            assert len(open_tickets) <= conc  # in flight, across workers
        for owner, t, at, use in open_tickets:  # the rest end now
            limiters[owner].settle(t, use, now)
            admitted.append((at, use))
            used_today += use
        assert used_today <= budget
        admitted.sort()
        for i, (t_i, _) in enumerate(admitted):
            tokens = 0
            for n, (t_j, use) in enumerate(admitted[i:], 1):
                tokens += use
                assert n <= rpm + rpm * (t_j - t_i) / 60 + 1e-6
                assert tokens <= tpm + tpm * (t_j - t_i) / 60 + 1e-6
    finally:
        for s in slots:
            s.close()


def test_local_and_shared_slots_agree(tmp_path: Path) -> None:
    """The same requests give the same answers on one process's counters and on shared ones."""
    seq = [(0.0, 50), (0.5, 200), (1.0, 900), (2.0, 10), (2.5, 10), (30.0, 500), (31.0, 500)]
    out = []
    for slots in (LocalSlots(), SharedSlots(tmp_path / "limits", 0, 1)):
        lim = Limiter(slots, Budgets(NOON))
        k = key(9, rpm=3, tpm=1000)
        got = []
        for dt, cost in seq:
            try:
                got.append(dict(lim.admit(k, cost, T0 + dt, NOON).headers)[b"x-ratelimit-remaining-tokens"])
            except LimitExceeded as exc:
                got.append(exc.code.encode())
        out.append(got)
    assert out[0] == out[1]
    assert b"tokens_per_minute" in out[0] and b"requests_per_minute" in out[0]
