"""Where a stream's ``[DONE]`` event ends (``aib.gateway.sse.done_end``): the gateway ends the client's answer there."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aib.gateway.sse import done_end

pytestmark = pytest.mark.unit


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_the_done_event_is_found_at_the_start_in_the_middle_and_with_crlf() -> None:
    assert done_end(b"data: [DONE]\n\n") == 14
    body = event({"choices": []}) + b"data: [DONE]\n\n"
    assert done_end(body) == len(body)
    assert done_end(body + b": a comment after it\n\n") == len(body)
    crlf = b'data: {"a": 1}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert done_end(crlf) == len(crlf)
    assert done_end(b"data: [DONE]") == 12  # a last event without its blank line (the stream's tail)


def test_no_done_event_is_zero() -> None:
    assert done_end(b"") == 0
    assert done_end(event({"choices": [{"delta": {"content": "hi"}}]})) == 0
    assert done_end(b"event: ping\n\n") == 0


@given(st.text())
def test_content_that_mentions_done_never_ends_a_stream(text: str) -> None:
    """Inside a JSON data line a newline is escaped, so no content can look like the event."""
    body = event({"choices": [{"delta": {"content": f"{text}\ndata: [DONE]\n\n{text}"}}]})
    assert done_end(body) == 0
