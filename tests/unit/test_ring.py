"""The consistent-hash ring: adding or losing a member moves only that member's share of keys."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aib.routing.ring import POINTS_PER_MEMBER, Ring, position

pytestmark = pytest.mark.unit

names = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}/m[0-9]", fullmatch=True), min_size=2, max_size=8, unique=True
)
keys = st.lists(st.binary(min_size=1, max_size=24), min_size=50, max_size=200, unique=True)


def owners(ring: Ring, ks: list[bytes]) -> dict[bytes, str]:
    out = {}
    for k in ks:
        i = ring.owner(k)
        assert i is not None
        out[k] = ring.members[i]
    return out


@settings(max_examples=60, deadline=None)
@given(names, keys)
def test_adding_a_member_moves_only_keys_to_it(members: list[str], ks: list[bytes]) -> None:
    before = owners(Ring(members[:-1]), ks)
    after = owners(Ring(members), ks)
    new = members[-1]
    moved = [k for k in ks if before[k] != after[k]]
    assert all(after[k] == new for k in moved)  # nothing moves between old members


@settings(max_examples=60, deadline=None)
@given(names, keys, st.data())
def test_losing_a_member_moves_only_its_keys(
    members: list[str], ks: list[bytes], data: st.DataObject
) -> None:
    gone = data.draw(st.integers(0, len(members) - 1))
    ring = Ring(members)
    allowed = set(range(len(members))) - {gone}
    before = owners(ring, ks)
    for k in ks:
        i = ring.owner(k, allowed)
        assert i is not None
        after = ring.members[i]
        if before[k] != members[gone]:
            assert after == before[k]  # keys of the others stay put
        else:
            assert after != members[gone]


@settings(max_examples=60, deadline=None)
@given(names, st.binary(min_size=1, max_size=32))
def test_walk_meets_every_member_once(members: list[str], key: bytes) -> None:
    ring = Ring(members)
    order = list(ring.walk(key))
    assert sorted(order) == list(range(len(members)))
    assert order[0] == ring.owner(key)


def test_positions_do_not_depend_on_the_process() -> None:
    """BLAKE2b, not hash(): the same position in every worker and after every restart."""
    assert position(b"session-1") == int.from_bytes(
        hashlib.blake2b(b"session-1", digest_size=8).digest(), "big"
    )
    r1, r2 = Ring(["a/m", "b/m", "c/m"]), Ring(["a/m", "b/m", "c/m"])
    assert [r1.owner(b"k%d" % i) for i in range(100)] == [r2.owner(b"k%d" % i) for i in range(100)]


def test_shares_are_roughly_even_and_follow_weights() -> None:
    ks = [b"key-%d" % i for i in range(6000)]
    even = Counter(Ring(["a/m", "b/m", "c/m"]).owner(k) for k in ks)
    assert all(1500 < n < 2500 for n in even.values()), even  # 2000 each, give or take the points' spread
    weighted = Counter(Ring(["a/m", "b/m"], [3.0, 1.0]).owner(k) for k in ks)
    assert 0.65 < weighted[0] / len(ks) < 0.85, weighted  # 3:1


def test_weight_zero_still_has_a_point_and_bad_weights_are_refused() -> None:
    ring = Ring(["a/m", "b/m"], [1.0, 0.0])
    assert len(ring._points) == POINTS_PER_MEMBER + 1
    assert sorted(ring.walk(b"x")) == [0, 1]
    with pytest.raises(ValueError):
        Ring(["a/m", "b/m"], [1.0])
    assert list(Ring([]).walk(b"x")) == [] and Ring([]).owner(b"x") is None
