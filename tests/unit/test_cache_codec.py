"""The cache's pure parts: keys, Cache-Control, stream assembly and replay (judged by the openai SDK's
own stream accumulator and by round trips on generated answers), entries, the memory store, and the
cache and Redis settings of the config."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from aib.cache.assemble import StreamAssembler, check_answer
from aib.cache.entry import OVERHEAD, Entry, decode, encode
from aib.cache.keys import SHARED, cache_control, cache_key, deterministic
from aib.cache.memory import MemoryStore
from aib.cache.replay import stream_of
from aib.config.compile import build_plan
from aib.config.errors import ConfigError
from aib.config.plan import RouteCache
from aib.config.schema import CacheRule, RedisSettings
from aib.gateway.stores import restart_needed
from config_support import write_files

pytestmark = pytest.mark.unit

RULE = RouteCache(60.0, False, False, b'["r",{}]')
BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


# --------------------------------------------------------------------------- keys


def test_deterministic_means_temperature_zero_or_a_seed_or_embeddings() -> None:
    assert deterministic("chat/completions", {"temperature": 0}, {})
    assert deterministic("chat/completions", {"temperature": 0.0}, {})
    assert deterministic("chat/completions", {"temperature": 0.9, "seed": 3}, {})
    assert deterministic("completions", {}, {"temperature": 0})  # from the route's params
    assert deterministic("embeddings", {}, {})
    assert not deterministic("chat/completions", {}, {})  # the API's default temperature is 1
    assert not deterministic("chat/completions", {"temperature": 0.2}, {"temperature": 0})
    assert not deterministic("chat/completions", {"temperature": False}, {})
    assert not deterministic("chat/completions", {"temperature": "0"}, {})


def test_the_key_covers_the_answer_and_nothing_else() -> None:
    k = cache_key("chat/completions", BASE, RULE, SHARED)
    assert len(k) == 32 and int(k, 16) >= 0
    same = [
        {**BASE, "stream": True, "stream_options": {"include_usage": True}},
        {**BASE, "model": "an-alias"},
        {**BASE, "user": "someone"},
        dict(reversed(list(BASE.items()))),
    ]
    assert {cache_key("chat/completions", p, RULE, SHARED) for p in same} == {k}
    different = [
        {**BASE, "temperature": 0.5},
        {**BASE, "messages": [{"role": "user", "content": "hi!"}]},
        {**BASE, "tools": []},
        {**BASE, "response_format": {"type": "json_object"}},
        {**BASE, "max_tokens": 3},
        {**BASE, "some_future_field": 1},
    ]
    keys = {cache_key("chat/completions", p, RULE, SHARED) for p in different}
    assert len(keys) == len(different) and k not in keys
    assert cache_key("completions", BASE, RULE, SHARED) != k
    assert cache_key("chat/completions", BASE, RULE, "alice") != k
    other = RouteCache(60.0, False, False, b'["r",{"max_tokens":5}]')
    assert cache_key("chat/completions", BASE, other, SHARED) != k


def test_route_salt_is_the_name_and_the_params() -> None:
    rule = CacheRule(enabled=True)
    a = RouteCache.compile(rule, "r", {"b": 1, "a": 2})
    b = RouteCache.compile(rule, "r", {"a": 2, "b": 1})
    assert a is not None and b is not None and a.salt == b.salt
    assert RouteCache.compile(rule, "s", {"a": 2, "b": 1}).salt != a.salt  # type: ignore[union-attr]
    assert RouteCache.compile(CacheRule(enabled=False), "r", {}) is None
    c = RouteCache.compile(CacheRule(enabled=True, when="always", scope="shared", ttl_s=5), "r", {})
    assert c is not None and (c.always, c.shared, c.ttl_s) == (True, True, 5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (True, True)),
        (b"", (True, True)),
        (b"max-age=0", (True, True)),
        (b"no-cache", (False, True)),
        (b"No-Cache, max-age=0", (False, True)),
        (b"no-store", (False, False)),
        (b"no-cache, no-store", (False, False)),
    ],
)
def test_cache_control(header: bytes | None, expected: tuple[bool, bool]) -> None:
    assert cache_control(header) == expected


# --------------------------------------------------------------------------- assemble and replay


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


TOOL_STREAM = [
    chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], system_fingerprint="fp"),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                                  "function": {"name": "get", "arguments": '{"q": '}}]}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}},
                                                 {"index": 1, "id": "call_b", "type": "function",
                                                  "function": {"name": "put", "arguments": "{}"}}]}, "finish_reason": None}]),
    chunk([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    chunk([], usage={"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}),
    b"data: [DONE]\n\n",
]  # fmt: skip


def test_a_streamed_tool_call_folds_into_the_whole_answer() -> None:
    asm = StreamAssembler("chat/completions", 10_000)
    asm.feed(b"".join(TOOL_STREAM[:2]))  # events arrive in any grouping
    for ev in TOOL_STREAM[2:]:
        asm.feed(ev)
    whole = orjson.loads(asm.answer() or b"null")
    assert whole["object"] == "chat.completion" and whole["system_fingerprint"] == "fp"
    msg = whole["choices"][0]["message"]
    assert msg["content"] == "" and whole["choices"][0]["finish_reason"] == "tool_calls"
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [
        ("call_a", "get", '{"q": "x"}'),
        ("call_b", "put", "{}"),
    ]
    assert whole["usage"]["total_tokens"] == 14


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ([chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}])], "[DONE]"),
        ([chunk([{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]), b"data: [DONE]\n\n"], "finish"),
        ([b'data: {"error": {"message": "x"}}\n\n', b"data: [DONE]\n\n"], "error"),
        ([b"data: {nope\n\n"], "not JSON"),
        ([b"data: [DONE]\n\n"], "no choices"),
        (
            [
                chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": '{"a'}}]},
                        "finish_reason": "length"}]),
                b"data: [DONE]\n\n",
            ],
            "tool call",
        ),
        ([chunk([{"index": 0, "delta": {"content": "x" * 500}, "finish_reason": "stop"}]), b"data: [DONE]\n\n"], "too large"),
    ],
)  # fmt: skip
def test_streams_that_may_not_be_stored(events: list[bytes], why: str) -> None:
    asm = StreamAssembler("chat/completions", 400)
    for ev in events:
        asm.feed(ev)
    assert asm.answer() is None
    assert asm.broken is not None and why in asm.broken


def test_crlf_events_and_text_completions() -> None:
    asm = StreamAssembler("completions", 10_000)
    for text, fin in (("Hel", None), ("lo", None), ("", "length")):
        body = {"id": "t", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": fin}]}  # fmt: skip
        asm.feed(b"data: " + orjson.dumps(body) + b"\r\n\r\n")
    asm.feed(b"data: [DONE]\r\n\r\n")
    whole = orjson.loads(
        asm.answer({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}) or b"null"
    )
    assert whole["object"] == "text_completion" and whole["choices"][0]["text"] == "Hello"
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 2


def sdk_final(events: bytes, tools: Any = None) -> Any:
    """What the openai SDK's own accumulator builds from a stream's events."""
    state = ChatCompletionStreamState(**({"input_tools": tools} if tools else {}))
    for line in events.decode().split("\n"):
        if line.startswith("data: {"):
            state.handle_chunk(ChatCompletionChunk.model_validate_json(line[6:]))
    return state.current_completion_snapshot  # (get_final_completion refuses a `length` finish)


def test_a_replayed_stream_is_what_the_sdk_expects() -> None:
    asm = StreamAssembler("chat/completions", 10_000)
    asm.feed(b"".join(TOOL_STREAM))
    stored = asm.answer()
    assert stored is not None
    replay = stream_of(stored, "chat/completions", include_usage=True)
    assert replay.endswith(b"data: [DONE]\n\n")
    final = sdk_final(replay)
    whole = orjson.loads(stored)
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for c in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert final.choices[0].finish_reason == "tool_calls" and final.usage.total_tokens == 14
    assert b'"usage"' not in stream_of(stored, "chat/completions", include_usage=False)


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
answers = st.builds(
    lambda contents, fin, refusal: {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c, **({"refusal": refusal} if refusal else {})},
                "logprobs": None,
                "finish_reason": fin,
            }
            for i, c in enumerate(contents)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    },
    st.lists(texts, min_size=1, max_size=3),
    st.sampled_from(["stop", "length"]),
    st.one_of(st.none(), texts.filter(bool)),
)


@settings(max_examples=60, deadline=None)
@given(answers)
def test_replay_then_assemble_gives_the_answer_back(answer: dict[str, Any]) -> None:
    stored = orjson.dumps(answer)
    replay = stream_of(stored, "chat/completions", include_usage=True)
    asm = StreamAssembler("chat/completions", 1 << 20)
    asm.feed(replay)
    again = orjson.loads(asm.answer() or b"null")
    assert again == answer
    final = sdk_final(replay)  # the SDK agrees on every choice's text
    assert [c.message.content for c in final.choices] == [c["message"]["content"] for c in answer["choices"]]


def test_check_answer() -> None:
    ok = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"}]}
    assert check_answer("chat/completions", ok) is None
    assert check_answer("chat/completions", []) == "not a JSON object"
    assert check_answer("chat/completions", {"error": {}}) == "an error"
    assert check_answer("chat/completions", {"choices": []}) == "no choices"
    assert check_answer("embeddings", {"data": [{"embedding": [1]}]}) is None
    assert check_answer("embeddings", {"data": []}) == "no embeddings"
    call = {
        "choices": [{"message": {"tool_calls": [{"function": {"name": "f"}}]}, "finish_reason": "tool_calls"}]
    }
    assert check_answer("chat/completions", call) == "a tool call without arguments"


# --------------------------------------------------------------------------- entries and memory


def entry(route: str = "r", size: int = 10, ttl: float = 60.0, now: float = 1000.0) -> Entry:
    return Entry(b"x" * size, route, "chat/completions", SHARED, now, now + ttl, "p", "u", 1, 2)


def test_entries_round_trip_and_garbage_is_refused() -> None:
    e = entry(size=50)
    back = decode(encode(e))
    assert back.meta() == e.meta() and back.body == e.body
    for raw in (b"no newline", b"{bad json\nbody", b"[1]\nbody", b'{"route": "r"}\nbody'):
        with pytest.raises(ValueError, match="not a cache entry"):
            decode(raw)


def test_memory_store_is_lru_by_bytes_with_expiry() -> None:
    one = OVERHEAD + 100
    m = MemoryStore(3 * one)
    for k in "abc":
        m.put(k, entry(size=100))
    assert len(m) == 3 and m.bytes == 3 * one
    assert m.get("a", 1001.0) is not None  # a is now the most recent
    m.put("d", entry(size=100))
    assert m.get("b", 1001.0) is None and m.evictions == 1
    m.put("e", entry(size=10 * one))  # larger than the whole cache: not kept, nothing evicted
    assert len(m) == 3 and m.evictions == 1
    m.put("a", entry(size=50))  # replaced in place
    assert m.bytes == 2 * one + OVERHEAD + 50
    assert m.get("c", 2000.0) is None and m.expired == 1  # past its time
    m.put("x", entry(route="other"))
    assert m.flush("other") == 1 and m.flush() == 2 and m.bytes == 0
    stats = m.stats()
    assert stats["entries"] == 0 and stats["evictions"] == 1 and stats["backend"] == "memory"


# --------------------------------------------------------------------------- config


def mappings(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


PROVIDERS = "providers:\n  up: {type: openai_compatible, base_url: 'http://127.0.0.1:9', models: [m]}\n"


def test_redis_stores_need_a_redis_section(tmp_path: Path) -> None:
    cfg = write_files(tmp_path, PROVIDERS, mappings("""
        auth: {store: redis}
        cache: {backend: redis}
        models: {m: {provider: up}}
    """))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        build_plan(cfg)
    text = str(err.value)
    assert "auth.store: redis needs a `redis:` section" in text and "cache.backend: redis needs" in text


def test_a_redis_section_nobody_uses_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIB_TEST_REDIS_PW", raising=False)
    cfg = write_files(tmp_path, PROVIDERS, mappings("""
        redis: {url: "redis://127.0.0.1:6379/0", password_env: AIB_TEST_REDIS_PW}
        defaults: {cache: {enabled: true}}
        models: {m: {provider: up, cache: {enabled: false}}}
    """))  # fmt: skip
    plan, _, warnings = build_plan(cfg)
    messages = " ".join(w.message for w in warnings)
    assert "is not used" in messages and "$AIB_TEST_REDIS_PW is not set" in messages
    assert plan.caches and plan.groups["m"].cache is None  # defaults on, the route off
    assert plan.resolve("m") is not None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"url": "redis://:secret@127.0.0.1:6379"}, "password_env"),
        ({"url": "http://127.0.0.1:6379"}, "redis://, rediss:// or unix://"),
        ({"url": "redis://"}, "no host"),
        ({"url": "unix://"}, "socket's path"),
        ({"url": "unix:///tmp/r.sock", "cluster": True}, "over TCP"),
        ({"cluster": True, "sentinel": {"master": "m", "nodes": ["h:1"]}}, "not both"),
        ({"sentinel": {"master": "m", "nodes": ["no-port"]}}, "pattern"),
    ],
)
def test_bad_redis_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisSettings(**settings)


def test_store_settings_change_only_with_a_restart(tmp_path: Path) -> None:
    def plan(extra: str) -> Any:
        cfg = write_files(
            tmp_path / str(abs(hash(extra))), PROVIDERS, mappings(f"models: {{m: {{provider: up}}}}\n{extra}")
        )
        return build_plan(cfg)[0]

    base = plan("")
    assert restart_needed(base, plan("defaults: {cache: {enabled: true}}")) is None  # route policies reload
    assert "cache changed" in (restart_needed(base, plan("cache: {max_bytes: 2048}")) or "")
    both = restart_needed(base, plan("auth: {store: redis}\nredis: {url: 'redis://127.0.0.1:1/0'}"))
    assert both is not None and "redis, auth.store changed" in both
