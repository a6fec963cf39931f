"""The native gateway when upstreams fail: fallback, retries, breakers, timeouts, upstream garbage.

Most tests start the ``chain`` gateway of ``tests/integration/conftest.py``: route ``primary`` (alpha)
falls back to ``backup`` (beta), then ``last`` (gamma), three ``ScriptedUpstream`` servers whose answers
each test scripts. Streams that fail are in ``test_gateway_streaming.py``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import httpx
import pytest

from gateway_client import CHAT, REFUSED, assert_served, breaker_state, chat, post_chat
from gateway_harness import Reply, RunningGateway, ScriptedUpstream, assert_envelope, dead_url, wait_until

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- errors passed on


def test_upstream_4xx_is_passed_on_not_retried(
    routed_client: httpx.Client, up1: ScriptedUpstream, up2: ScriptedUpstream
) -> None:
    up1.enqueue(Reply.error(400, "context length exceeded"))
    r = chat(routed_client, "pair")  # a group: a 5xx would move on to up2, a 400 must not
    err = assert_envelope(r, 400)
    assert err["message"] == "context length exceeded"
    assert r.headers["x-aib-provider"] == "up1"
    up1.enqueue(Reply.text("nope", content_type="text/plain", status=404))
    err = assert_envelope(chat(routed_client, "m-one"), 404, "upstream_rejected")
    assert "up1" in err["message"] and "nope" in err["message"]
    assert len(up1.requests) == 2 and up2.requests == []


# --------------------------------------------------------------------------- fallback


def test_fallback_on_connection_refused(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(urls={"alpha": dead_url()})
    r = post_chat(gw, rid="refused-1")
    assert_served(r, "beta", 1)
    rec = gw.observer.wait_for("refused-1")
    assert [a.provider for a in rec.attempts] == ["alpha", "beta"]
    error = rec.attempts[0].error or ""
    assert "alpha" in error and REFUSED.search(error), error
    assert len(trio[1].requests) == 1


TRUNCATED = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{"id": '


FALLBACK_REPLIES: dict[str, tuple[Reply, str]] = {
    "503": (Reply.error(503, "overloaded"), "alpha answered 503: overloaded"),
    "500": (Reply.error(500), "alpha answered 500"),
    "500-empty": (Reply.text("", status=500), "alpha answered 500"),
    "502-html": (Reply.text("<html>bad gateway</html>", status=502), "alpha answered 502: <html>bad gateway"),
    "garbage-json": (Reply.garbage(), "alpha sent an unusable answer (non-JSON)"),
    "wrong-content-type": (Reply.text("<p>hi</p>"), "alpha sent an unusable answer (content type 'text/html"),
    "no-content-type": (Reply(body=b"hello", content_type=None), "alpha sent an unusable answer"),
    "json-not-object": (Reply.json([1, 2, 3]), "alpha sent an unusable answer"),
    "reset-before-headers": (Reply.reset(), "alpha broke the connection"),
    "not-http": (Reply(raw=b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), "alpha broke the connection"),
    "truncated-body": (Reply(raw=TRUNCATED), "alpha broke the connection"),
}


@pytest.mark.parametrize(("reply", "error"), list(FALLBACK_REPLIES.values()), ids=list(FALLBACK_REPLIES))
def test_fallback_on_bad_answers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], reply: Reply, error: str
) -> None:
    gw = chain()
    trio[0].enqueue(reply)
    r = post_chat(gw, rid="bad-answer")
    assert_served(r, "beta", 1)
    assert r.json()["object"] == "chat.completion"
    assert len(trio[0].requests) == 1 and len(trio[1].requests) == 1 and trio[2].requests == []
    rec = gw.observer.wait_for("bad-answer")
    assert error in (rec.attempts[0].error or ""), rec.attempts[0].error
    assert rec.attempts[1].ok and rec.status == 200


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (Reply.garbage(), 502, "upstream_bad_response"),
        (Reply.text("<html/>", content_type="text/html"), 502, "upstream_bad_response"),
        (Reply.error(503), 502, "upstream_error"),
        (Reply.reset(), 502, "upstream_connection_error"),
    ],
    ids=["garbage", "content-type", "503", "reset"],
)
def test_when_every_candidate_fails_the_error_names_the_last_provider(
    chain: Callable[..., RunningGateway],
    trio: tuple[ScriptedUpstream, ...],
    reply: Reply,
    status: int,
    code: str,
) -> None:
    gw = chain()
    for f in trio:
        f.enqueue(reply)
    err = assert_envelope(post_chat(gw), status, code)
    assert "gamma" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 1, 1]


def test_fallback_on_first_byte_timeout(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.chat(delay_s=5))
    t0 = time.monotonic()
    r = post_chat(gw, rid="slow-1")
    elapsed = time.monotonic() - t0
    assert_served(r, "beta", 1)
    assert 0.3 <= elapsed < 2.0
    rec = gw.observer.wait_for("slow-1")
    assert "did not answer within the time limit (first byte)" in (rec.attempts[0].error or "")
    assert trio[0].wait_disconnect(5)  # the gateway hung up on the slow one


def test_fallbacks_header_counts_failed_attempts(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    assert_served(post_chat(gw), "alpha", 0)
    assert_served(post_chat(gw, stream=True), "alpha", 0)
    trio[0].enqueue(Reply.error(503))
    assert_served(post_chat(gw, stream=True), "beta", 1)
    trio[0].enqueue(Reply.error(503))
    trio[1].enqueue(Reply.garbage())
    assert_served(post_chat(gw), "gamma", 2)
    trio[0].enqueue(Reply.error(503))
    trio[1].enqueue(Reply.reset())
    assert_served(post_chat(gw, stream=True), "gamma", 2)


# --------------------------------------------------------------------------- rate limits and breakers


def test_fallback_on_429_and_retry_after_opens_the_breaker(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=5)
    alpha.enqueue(Reply.error(429, "slow down", retry_after=1))
    assert_served(post_chat(gw), "beta", 1)
    b = breaker_state(gw, "alpha")
    assert b["state"] == "open" and 0 < b["retry_in_s"] <= 1.0  # after one failure: Retry-After wins
    assert "429" in b["last_error"]
    assert_served(post_chat(gw), "beta", 0)  # alpha is not even tried while open
    assert len(alpha.requests) == 1
    wait_until(lambda: breaker_state(gw, "alpha")["state"] == "half_open", 3, 0.05, "alpha half-open")
    assert_served(post_chat(gw), "alpha", 0)  # the trial request succeeds ...
    assert len(alpha.requests) == 2
    assert breaker_state(gw, "alpha")["state"] == "closed"  # ... and closes the breaker


def test_429_everywhere_is_passed_on_with_retry_after(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    for f in trio:
        f.enqueue(Reply.error(429, "rate limited", retry_after=7))
    r = post_chat(gw)
    err = assert_envelope(r, 429, "upstream_rate_limited")
    assert "gamma" in err["message"] and r.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("retry_after", "opens"),
    [("soon", False), ("1.5x", False), ("-3", False), ("HTTP-DATE", True)],
    ids=["word", "junk-number", "negative", "http-date"],
)
def test_retry_after_forms(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], retry_after: str, opens: bool
) -> None:
    if retry_after == "HTTP-DATE":  # two seconds from now, as an HTTP date
        retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)
    gw = chain(health=True)
    trio[0].enqueue(Reply.error(429, "busy", headers={"retry-after": retry_after}))
    assert_served(post_chat(gw), "beta", 1)  # never a 500, whatever the header says
    b = breaker_state(gw, "alpha")
    assert (b["state"] == "open") is opens, b
    if opens:
        assert 0 < b["retry_in_s"] <= 2.0


def test_breaker_opens_after_consecutive_failures_and_recovers(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    # the three requests below must fit in the cool-down: 0.5 s was too short on a busy machine
    gw = chain(health=True, threshold=2, cooldown_s=2.0)
    alpha.enqueue(Reply.error(500), Reply.error(500))
    assert_served(post_chat(gw), "beta", 1)
    assert (
        breaker_state(gw, "alpha")["state"] == "closed"
        and breaker_state(gw, "alpha")["consecutive_failures"] == 1
    )
    assert_served(post_chat(gw), "beta", 1)
    b = breaker_state(gw, "alpha")
    assert b["state"] == "open" and b["consecutive_failures"] == 2
    for _ in range(3):
        assert_served(post_chat(gw), "beta", 0)
    assert len(alpha.requests) == 2
    wait_until(lambda: breaker_state(gw, "alpha")["state"] == "half_open", 5, 0.05, "alpha half-open")
    assert_served(post_chat(gw), "alpha", 0)
    assert breaker_state(gw, "alpha") == {
        "state": "closed",
        "consecutive_failures": 0,
        "retry_in_s": 0.0,
        "last_error": b["last_error"],
    }


def test_failed_trial_reopens(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain(health=True, threshold=1, cooldown_s=0.3)
    alpha.enqueue(Reply.error(500), Reply.error(502))
    assert_served(post_chat(gw), "beta", 1)
    wait_until(lambda: breaker_state(gw, "alpha")["state"] == "half_open", 3, 0.05, "alpha half-open")
    assert_served(post_chat(gw), "beta", 1)  # the trial failed
    assert breaker_state(gw, "alpha")["state"] == "open"
    assert len(alpha.requests) == 2


def test_all_breakers_open_is_503_with_retry_after(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(threshold=1, cooldown_s=30)
    for f in trio:
        f.enqueue(Reply.error(500))
    assert_envelope(post_chat(gw), 502, "upstream_error")
    r = post_chat(gw)
    err = assert_envelope(r, 503, "no_healthy_deployment")
    assert "circuit open" in err["message"] and "/health" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 30
    assert [len(f.requests) for f in trio] == [1, 1, 1]


# --------------------------------------------------------------------------- bounds


def test_max_attempts_is_respected(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(max_attempts=2)
    for f in trio:
        f.enqueue(Reply.error(503))
    err = assert_envelope(post_chat(gw, rid="bounded"), 502, "upstream_error")
    assert "beta" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 1, 0]
    assert len(gw.observer.wait_for("bounded").attempts) == 2


def test_total_deadline_is_respected(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.7, total_s=1.0)
    for f in trio:
        f.enqueue(Reply.chat(delay_s=5))
    t0 = time.monotonic()
    r = post_chat(gw, rid="deadline")
    elapsed = time.monotonic() - t0
    err = assert_envelope(r, 504, "upstream_timeout")
    assert "beta" in err["message"]
    assert 0.9 <= elapsed < 1.8
    assert [len(f.requests) for f in trio] == [1, 1, 0]  # alpha 0.7 s, beta the 0.3 s left, gamma none
    rec = gw.observer.wait_for("deadline")
    assert rec.attempts[1].duration_s < 0.6


def test_client_disconnect_during_a_long_non_streaming_request_closes_the_upstream(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    """A long generation (no answer for 1.5 s) whose routed_client hangs up: the upstream is told, at once."""
    alpha = trio[0]
    gw = chain()
    alpha.enqueue(Reply(delay_s=6))
    body = {"model": "primary", "messages": CHAT}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=gw.base_url, timeout=1.5) as c:
        c.post("/v1/chat/completions", json=body, headers={"x-request-id": "gone-2"})
    # the gateway starts watching after 1 s; the routed_client left at 1.5 s; the upstream sees it well before 6 s
    assert alpha.wait_disconnect(3), "the upstream never saw the disconnect"
    rec = gw.observer.wait_for("gone-2")
    assert rec.client_disconnected
    assert rec.attempts[0].error == "client disconnected"
    assert gw.gateway.state.stats("alpha/m").inflight == 0
    assert gw.gateway.state.stats("alpha/m").breaker.current() == "closed"
    assert_served(post_chat(gw), "alpha", 0)
