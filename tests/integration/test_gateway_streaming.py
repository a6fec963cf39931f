"""The native gateway's streams (SSE): passed through byte for byte, falling back before the first byte,
and ending with an error event (never a retry) when the upstream breaks, stalls or stops mid-way; a client
that hangs up mid-stream closes the upstream. Shared fixtures: ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from gateway_client import CHAT, TIMEOUT, assert_served, chat, post_chat
from gateway_harness import SSE_DONE, Reply, RunningGateway, ScriptedUpstream, chat_chunk, sse_data

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- passthrough


def test_stream_passthrough(
    routed_client: httpx.Client, up1: ScriptedUpstream, routed: RunningGateway
) -> None:
    r = chat(routed_client, "m-one", stream=True, headers={"x-request-id": "pass-1"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream" and r.headers["x-aib-fallbacks"] == "0"
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    assert "".join(json.loads(d)["choices"][0]["delta"].get("content", "") for d in data[:-1]) == "Hello!"
    rec = routed.observer.wait_for("pass-1")
    assert rec.stream and rec.status == 200 and rec.error is None and rec.provider == "up1"


def test_sse_events_split_across_reads_are_forwarded_whole(
    routed_client: httpx.Client, up1: ScriptedUpstream
) -> None:
    one, two = chat_chunk("Hel"), chat_chunk("lo")
    pieces = (one[:9], one[9:] + two[:20], two[20:-1], two[-1:] + SSE_DONE[:8], SSE_DONE[8:])
    up1.enqueue(Reply(content_type="text/event-stream", chunks=pieces, chunk_delay_s=0.02))
    r = chat(routed_client, "m-one", stream=True)
    assert r.status_code == 200
    assert r.content == one + two + SSE_DONE  # the same bytes, event boundaries kept


def test_last_event_without_its_blank_line(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    up1.enqueue(Reply(content_type="text/event-stream", chunks=(chat_chunk("a"), b"data: [DONE]")))
    r = chat(routed_client, "m-one", stream=True)
    assert sse_data(r.text)[-1] == "[DONE]" and '"error"' not in r.text
    assert r.text.endswith("data: [DONE]\n\n")


# --------------------------------------------------------------------------- before the first byte: fallback

STREAM_FALLBACK_REPLIES: dict[str, tuple[Reply, str]] = {
    "503": (Reply.error(503), "alpha answered 503"),
    "json-instead-of-sse": (Reply.chat(), "with content type 'application/json'"),
    "html": (Reply.text("<html/>"), "with content type 'text/html"),
    "empty-stream": (
        Reply(content_type="text/event-stream", chunks=()),
        "alpha answered a streaming request with an empty stream",
    ),
    "reset-before-headers": (Reply.reset(), "alpha broke the connection"),
    "reset-after-headers": (Reply.sse(reset_after=0), "alpha"),
}


@pytest.mark.parametrize(
    ("reply", "error"), list(STREAM_FALLBACK_REPLIES.values()), ids=list(STREAM_FALLBACK_REPLIES)
)
def test_stream_falls_back_before_the_first_byte(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...], reply: Reply, error: str
) -> None:
    gw = chain()
    trio[0].enqueue(reply)
    r = post_chat(gw, stream=True, rid="stream-fallback")
    assert_served(r, "beta", 1)
    data = sse_data(r.text)
    assert data[-1] == "[DONE]" and not any('"error"' in d for d in data)
    assert len(trio[0].requests) == 1 and len(trio[1].requests) == 1
    rec = gw.observer.wait_for("stream-fallback")
    assert error in (rec.attempts[0].error or ""), rec.attempts[0].error


def test_stream_fallback_when_headers_come_but_no_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.sse(body_delay_s=5))
    t0 = time.monotonic()
    r = post_chat(gw, stream=True)
    assert_served(r, "beta", 1)
    assert time.monotonic() - t0 < 2.0
    assert sse_data(r.text)[-1] == "[DONE]"


# --------------------------------------------------------------------------- after the first byte: an error event


def test_stream_broken_mid_way_ends_with_an_error_event_and_no_retry(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    trio[0].enqueue(Reply.sse(texts=("a", "b", "c", "d"), reset_after=2, chunk_delay_s=0.02))
    r = post_chat(gw, stream=True, rid="broken")
    assert_served(r, "alpha", 0)
    data = sse_data(r.text)
    assert [json.loads(d)["choices"][0]["delta"]["content"] for d in data[:2]] == ["a", "b"]
    err = json.loads(data[-1])["error"]
    assert err["code"] == "stream_interrupted" and "alpha" in err["message"]
    assert "[DONE]" not in data
    assert [len(f.requests) for f in trio] == [1, 0, 0]  # exactly one upstream request
    rec = gw.observer.wait_for("broken")
    assert rec.error_code == "stream_interrupted" and len(rec.attempts) == 1


def test_truncated_stream_without_done_ends_with_an_error_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain()
    trio[0].enqueue(Reply.sse(texts=("x", "y"), done=False))
    r = post_chat(gw, stream=True)
    assert_served(r, "alpha", 0)
    data = sse_data(r.text)
    assert len(data) == 4  # x, y, finish, error
    err = json.loads(data[-1])["error"]
    assert err["code"] == "stream_interrupted" and "before [DONE]" in err["message"]
    assert [len(f.requests) for f in trio] == [1, 0, 0]


def test_stream_stalling_mid_way_ends_with_an_error_event(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    gw = chain(first_byte_s=0.3)
    trio[0].enqueue(Reply.sse(texts=("x", "y"), chunk_delay_s=3))
    t0 = time.monotonic()
    r = post_chat(gw, stream=True)
    assert time.monotonic() - t0 < 2.5
    assert_served(r, "alpha", 0)
    data = sse_data(r.text)
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "x"
    assert json.loads(data[-1])["error"]["code"] == "stream_interrupted"
    assert [len(f.requests) for f in trio] == [1, 0, 0]


def test_client_disconnect_mid_stream_closes_the_upstream(
    chain: Callable[..., RunningGateway], trio: tuple[ScriptedUpstream, ...]
) -> None:
    alpha = trio[0]
    gw = chain()
    alpha.enqueue(Reply.sse(texts=[f"t{i}" for i in range(100)], chunk_delay_s=0.05))
    body = {"model": "primary", "messages": CHAT, "stream": True}
    with (
        httpx.Client(base_url=gw.base_url, timeout=TIMEOUT) as c,
        c.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "gone-1"}) as r,
    ):
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    # the routed_client has hung up: the gateway must drop the upstream connection
    assert alpha.wait_disconnect(5), "the upstream never saw the disconnect"
    sent = alpha.requests[0]
    assert sent.disconnected and sent.chunks_sent < 100
    rec = gw.observer.wait_for("gone-1")
    assert rec.client_disconnected
    assert gw.gateway.state.stats("alpha/m").inflight == 0
    assert gw.gateway.state.stats("alpha/m").breaker.current() == "closed"
    assert_served(post_chat(gw), "alpha", 0)  # and the deployment is fine for the next request
