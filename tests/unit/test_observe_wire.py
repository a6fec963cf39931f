"""The wire form of a record (what the writers consume) and its framing on the writer's pipe."""

from __future__ import annotations

import enum
import marshal

import pytest

from aib.observe.records import Attempt
from aib.observe.wire import (
    ATTEMPTS,
    BATCH,
    CACHE,
    CACHE_LOOKUP_S,
    CONFIG,
    DOOR,
    ERROR,
    HEADER_SIZE,
    KEY_NAME,
    MODEL,
    PROMPT_TOKENS,
    PROMPT_TRUNCATED,
    REQUEST_BODY,
    REQUEST_ID,
    SECRETS,
    STATUS,
    FrameReader,
    fallbacks,
    frame,
    overhead_s,
    to_wire,
)
from observe_support import make_record

pytestmark = pytest.mark.unit


def test_to_wire_keeps_every_field_a_writer_needs() -> None:
    rec = make_record("m", status=502, error="boom", prompt_tokens=3, request_body=b"{}")
    rec.key_name = "team-a"
    rec.door, rec.prompt_truncated = "anthropic", True
    rec.cache, rec.cache_lookup_s = "miss", 0.0002
    rec.attempts.insert(0, Attempt("x/m", "x", "m", "m", None, "refused", None, 0.001, False))
    w = to_wire(rec)
    assert len(w) == 28
    assert (w[KEY_NAME], w[DOOR], w[PROMPT_TRUNCATED]) == ("team-a", "anthropic", True)
    assert (w[CACHE], w[CACHE_LOOKUP_S]) == ("miss", 0.0002)
    assert (w[REQUEST_ID], w[MODEL], w[STATUS], w[ERROR], w[PROMPT_TOKENS]) == (
        rec.request_id,
        "m",
        502,
        "boom",
        3,
    )
    assert w[REQUEST_BODY] == b"{}"
    assert w[ATTEMPTS][0] == ("x/m", "x", "m", None, "refused", None, 0.001, False)
    assert fallbacks(w) == rec.fallbacks == 1
    assert overhead_s(w) == pytest.approx(rec.overhead_s)
    assert to_wire(make_record(provider=None))[ATTEMPTS] == ()  # no attempt
    three = make_record()
    three.attempts *= 3
    assert len(to_wire(three)[ATTEMPTS]) == 3


def test_frames_survive_any_split_of_the_stream() -> None:
    batch = [to_wire(make_record(request_id=f"r{i}", error="lone \udcff surrogate")) for i in range(50)]
    data = frame(CONFIG, {"access": True}) + frame(SECRETS, ("k1", "k2")) + frame(BATCH, batch)
    for step in (1, 7, HEADER_SIZE, 4096, len(data)):
        reader = FrameReader()
        got = []
        for i in range(0, len(data), step):
            got += reader.feed(data[i : i + step])
        assert [k for k, _ in got] == [CONFIG, SECRETS, BATCH]
        assert got[2][1] == batch and reader.buffered == 0


def test_values_marshal_cannot_take_are_sent_as_plain_values() -> None:
    class Odd:
        def __repr__(self) -> str:
            return "<odd>"

    class Level(enum.IntEnum):
        HIGH = 3

    payload = [("a", Odd(), Level.HIGH, {"k": Odd()}, [Odd()], (1.5, None, True, b"x"))]
    with pytest.raises(ValueError):
        marshal.dumps(payload)
    [(kind, got)] = FrameReader().feed(frame(BATCH, payload))
    assert kind == BATCH
    assert got == [("a", "<odd>", 3, {"k": "<odd>"}, ["<odd>"], (1.5, None, True, b"x"))]
    assert type(got[0][2]) is int
