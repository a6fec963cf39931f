"""Large upstream answers are checked at their ends and only ``usage`` is parsed (``proxy._skim``)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aib.gateway.proxy import _skim

pytestmark = pytest.mark.unit


def test_usage_is_read_from_a_large_embeddings_answer() -> None:
    usage = {"prompt_tokens": 12, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}
    body = orjson.dumps(
        {
            "object": "list",
            "data": [{"embedding": [0.5] * 1536, "index": i} for i in range(20)],
            "usage": usage,
        }
    )
    assert _skim(body) == {"usage": usage}


def test_braces_and_quotes_inside_strings_do_not_confuse_it() -> None:
    body = b' {"a": "}", "usage": {"note": "a\\"}{b", "n": 3}} \n'
    assert _skim(body) == {"usage": {"note": 'a"}{b', "n": 3}}


@pytest.mark.parametrize("body", [b"[1, 2]", b"garbage", b"", b'{"cut": ', b"<html>{}</html>"])
def test_anything_but_an_object_is_refused(body: bytes) -> None:
    assert _skim(body) is None


def test_an_object_without_usage_or_with_a_broken_one_has_no_usage() -> None:
    assert _skim(b'{"id": 1}') == {}
    assert _skim(b'{"usage": 3}') == {}
    assert _skim(b'{"usage": {"x": 1,}}') == {}  # invalid JSON inside: no usage rather than a guess


@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(-(2**53), 2**53), max_size=5),
    st.dictionaries(
        st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]), st.integers(0, 10**6)
    ),
)
def test_it_agrees_with_a_full_parse(extra: dict[str, object], usage: dict[str, int]) -> None:
    doc = {**{k: v for k, v in extra.items() if k != "usage"}, "usage": usage}
    assert _skim(orjson.dumps(doc)) == {"usage": orjson.loads(orjson.dumps(doc))["usage"]}
