"""Client keys: the SQLite store (hashes only, generations, rotation, usage), model access, managing."""

from __future__ import annotations

import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aib.auth.access import Access, AccessCache
from aib.auth.keys import ClientKey, check_name, hash_secret, parse_duration
from aib.auth.manage import settings_from, since_day, usage_report
from aib.auth.store import SqliteKeyStore, Usage, default_path
from aib.limits.budgets import day_and_month
from gateway_harness import plan_from_yaml

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    s = SqliteKeyStore(tmp_path / "var" / "keys.db")
    yield s
    s.close()


def test_a_key_is_shown_once_and_stored_as_its_hash_only(store: SqliteKeyStore, tmp_path: Path) -> None:
    key, secret = store.create("alice", models=("llama3",), rpm=60, metadata={"team": "vision"})
    assert secret.startswith("sk-aib-") and len(secret) >= 39
    assert key.hash == hash_secret(secret) and key.prefix == secret[:12]
    store.close()
    raw = (tmp_path / "var" / "keys.db").read_bytes()
    assert secret.encode() not in raw and secret[12:].encode() not in raw
    assert stat.S_IMODE((tmp_path / "var" / "keys.db").stat().st_mode) == 0o600
    again = SqliteKeyStore(tmp_path / "var" / "keys.db")
    (loaded,) = again.load()
    assert loaded == key and loaded.metadata == {"team": "vision"} and loaded.models == ("llama3",)
    names = [
        r[0] for r in sqlite3.connect(tmp_path / "var" / "keys.db").execute("SELECT name FROM _migrations")
    ]
    assert names == ["m001_keys"]
    again.close()


def test_every_change_bumps_the_generation(store: SqliteKeyStore) -> None:
    g0 = store.generation()
    key, _ = store.create("bob")
    g1 = store.generation()
    assert g1 > g0
    store.add_usage([Usage(key.num, "2026-12-07", requests=1)])
    assert store.generation() == g1  # usage is not a key change
    store.revoke(key.id)
    assert store.generation() > g1


def test_revoke_by_id_or_by_name_and_find(store: SqliteKeyStore) -> None:
    a1, _ = store.create("alice")
    a2, _ = store.create("alice")
    b, _ = store.create("bob")
    assert [k.id for k in store.find("alice")] == [a1.id, a2.id]
    assert store.find(b.id) == [b]
    assert [k.id for k in store.revoke("alice")] == [a1.id, a2.id]
    assert store.revoke("alice") == []  # nothing active left
    assert {k.id: k.state() for k in store.load()} == {a1.id: "revoked", a2.id: "revoked", b.id: "active"}


def test_rotation_keeps_owner_models_and_limits_and_ends_the_old_key_after_a_grace(
    store: SqliteKeyStore,
) -> None:
    old, _ = store.create("carol", models=("m*",), tpm=1000, budget_day=5000, expires_at=time.time() + 3600)
    new, secret, ended = store.rotate(old.id, grace_s=60)
    assert new.name == "carol" and new.models == ("m*",) and new.tpm == 1000 and new.budget_day == 5000
    assert new.rotated_from == old.id and new.hash == hash_secret(secret) and new.id != old.id
    assert ended.state() == "active" and ended.state(time.time() + 61) == "revoked"
    with pytest.raises(KeyError):
        store.rotate("key_nope")
    store.revoke(new.id)
    with pytest.raises(ValueError, match="only an active key"):
        store.rotate(new.id)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rpm", 0, "rpm must be a whole number >= 1"),
        ("tpm", "10", "tpm must be a whole number"),
        ("models", ["ok", ""], "model entry ''"),
        ("metadata", {"x": "y" * 20000}, "larger than 16 KiB"),
    ],
)
def test_bad_settings_are_refused_with_the_field(
    store: SqliteKeyStore, field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.create("dave", **{field: value})


def test_names_must_make_good_metric_labels() -> None:
    assert check_name("team-a.b@lab") == "team-a.b@lab"
    for bad in ("", "-x", "a b", 'q"uote', "x" * 65):
        with pytest.raises(ValueError, match="key name"):
            check_name(bad)


def test_usage_sums_across_writers_and_feeds_budgets_and_the_report(store: SqliteKeyStore) -> None:
    now = time.time()
    day, month = day_and_month(now)
    k, _ = store.create("erin", budget_day=100_000)
    other, _ = store.create("frank")
    store.add_usage([Usage(k.num, day, 2, 10, 20, 30, 1, 0)])
    store.add_usage([Usage(k.num, day, 1, 5, 5, 10, 0, 1), Usage(k.num, "1999-01-01", 1, 1, 1, 2)])
    assert store.charged(day, month) == {k.num: (40, 40)}
    rows = {r["name"]: r for r in usage_report(store, since_day("7d", now), now)}
    assert rows["erin"]["requests"] == 3 and rows["erin"]["prompt_tokens"] == 15
    assert rows["erin"]["limited"] == 1 and rows["erin"]["errors"] == 1
    assert rows["erin"]["tokens_today"] == 40 and rows["erin"]["budget_day"] == 100_000
    assert rows["frank"]["requests"] == 0  # active, unused: listed
    assert usage_report(store)[0]["requests"] == 4  # everything: the 1999 row too
    store.revoke(other.id)
    assert "frank" not in {r["name"] for r in usage_report(store)}  # revoked and unused: not listed


def test_settings_from_user_input(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_000_000.0
    got = settings_from(
        {"name": "x", "models": "a, b*", "rpm": 5, "expires_in": "2d", "metadata": {"k": "v"}}, now
    )
    assert got == {"models": ("a", "b*"), "rpm": 5, "expires_at": now + 2 * 86400, "metadata": {"k": "v"}}
    for bad, msg in (
        ({"rpm": True}, "rpm"),
        ({"colour": "red"}, "unknown field"),
        ({"models": 3}, "models"),
        ({"expires_in": "soon"}, "not a duration"),
        ({"expires_at": now - 1}, "in the future"),
        ({"expires_in": "1d", "expires_at": now + 5}, "not both"),
    ):
        with pytest.raises(ValueError, match=msg):
            settings_from(bad, now)
    assert (
        parse_duration("90s") == 90 and parse_duration("1.5h") == 5400 and parse_duration("2w") == 14 * 86400
    )
    monkeypatch.setenv("AIB_KEYS_DB", "/x/k.db")
    assert default_path(None) == Path("/x/k.db")
    monkeypatch.delenv("AIB_KEYS_DB")
    assert default_path(Path("/srv/log/requests.db")) == Path("/srv/log/keys.db")
    assert default_path(None) == Path("var/keys.db")


def test_key_states() -> None:
    k = ClientKey("key_1", 1, "a", "sk-aib-x", "h", 0.0, expires_at=100.0)
    assert (k.state(50), k.state(100)) == ("active", "expired")
    assert ClientKey("key_1", 1, "a", "p", "h", 0.0, revoked_at=10.0).state(11) == "revoked"


# --------------------------------------------------------------------------- model access

PROVIDERS = """
providers:
  ollama: {type: ollama, base_url: "http://127.0.0.1:11434", models: [llama3.1:8b, qwen2.5-coder:7b]}
  cpp: {type: llamacpp, base_url: "http://127.0.0.1:8000", models: [small]}
"""
MAPPINGS = """
models:
  llama3.1:8b: {provider: ollama, aliases: [llama3], fallbacks: [small]}
  qwen2.5-coder:7b: {provider: ollama, aliases: [coder]}
  small: {provider: cpp}
patterns:
  - {match: "ollama/*", provider: ollama}
"""


def test_access_resolves_entries_like_routes(tmp_path: Path) -> None:
    plan, _ = plan_from_yaml(tmp_path, PROVIDERS, MAPPINGS)
    a = Access(["llama3", "ollama/*"], plan)
    assert a.allows("llama3") and a.allows("llama3.1:8b")  # an alias names its route
    assert a.allows("ollama/mistral:7b")  # a glob on the name asked for
    assert not a.allows("small")  # a fallback of an allowed route is not itself allowed
    assert not a.allows("coder") and not a.allows("qwen2.5-coder:7b") and not a.allows("nope")
    b = Access(["qwen*"], plan)
    assert b.allows("coder")  # the alias leads to a route the glob matches
    assert not b.allows("capability/code")
    assert Access(["capability/code"], plan).allows("capability/code")


def test_access_cache_follows_plan_and_key(tmp_path: Path) -> None:
    plan, _ = plan_from_yaml(tmp_path, PROVIDERS, MAPPINGS)
    cache = AccessCache()
    every = ClientKey("key_1", 1, "a", "p", "h", 0.0)
    some = ClientKey("key_2", 2, "b", "p", "h", 0.0, models=("small",))
    assert cache.allows(every, "anything", plan)
    assert cache.allows(some, "small", plan) and not cache.allows(some, "llama3", plan)
    changed = ClientKey("key_2", 2, "b", "p", "h", 0.0, models=("llama3",))
    assert cache.allows(changed, "llama3", plan) and not cache.allows(changed, "small", plan)


async def test_an_unknown_key_makes_the_gate_read_the_store_again(store: SqliteKeyStore) -> None:
    """A key made a moment ago (in another process) works at once: an unknown key reads the store once
    more, concurrent misses share that read, and a miss right after a read waits for the next one
    instead of being refused."""
    import asyncio

    from aib.auth.gate import MISS_REFRESH_S, AuthError, Gate

    gate = Gate(lambda: store)
    gate.open()
    _, first = store.create("a")  # after the gate's snapshot
    reads = 0
    real = gate.reload_keys

    def counting() -> bool:
        nonlocal reads
        reads += 1
        return real()

    gate.reload_keys = counting  # type: ignore[method-assign]
    got = await asyncio.gather(*(gate.identify_fresh(first.encode()) for _ in range(5)))
    assert {k.name for k in got} == {"a"} and reads == 1  # five misses, one read
    _, second = store.create("b")  # right after that read
    t0 = asyncio.get_running_loop().time()
    assert (await gate.identify_fresh(second.encode())).name == "b"
    assert reads == 2 and asyncio.get_running_loop().time() - t0 >= MISS_REFRESH_S * 0.9
    with pytest.raises(AuthError) as exc:  # made up: refused after one more read
        await gate.identify_fresh(b"sk-aib-made-up")
    assert exc.value.code == "invalid_api_key" and reads == 3
