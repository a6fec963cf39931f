"""The response cache (memory backend) through the real gateway and server: what is a hit, a miss, a
bypass; streams replayed to the official openai client; what is never stored; per-key scope; the
request log, /metrics and /admin/cache. A scripted upstream answers and counts what reaches it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from aib.auth.store import SqliteKeyStore
from aib.cache.entry import OVERHEAD
from aib.observe import ObserveSettings, install_observability
from gateway_harness import (
    SSE_DONE,
    Reply,
    ScriptedUpstream,
    chat_chunk,
    chat_completion,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_data,
    sse_event,
    wait_until,
)
from openai_support import PROMPT, assert_clean_sse, sdk_client

pytestmark = pytest.mark.integration

MAPPINGS = """
    defaults:
      cache: {enabled: false}
    models:
      cached: {provider: up, cache: {enabled: true, ttl_s: 60}}
      also-cached: {provider: up, aliases: [cached-alias], cache: {enabled: true}}
      always: {provider: up, cache: {enabled: true, when: always}}
      plain: {provider: up}
      tiny: {provider: up, cache: {enabled: true, when: always}, params: {max_tokens: 7}}
    cache: {backend: memory, max_entry_bytes: 2048}
"""


def providers(up: ScriptedUpstream) -> str:
    return f"""
    providers:
      up: {{type: openai_compatible, base_url: "{up.base_url}", models: [cached, also-cached, always, plain, tiny]}}
    """


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(["cached", "also-cached", "always", "plain", "tiny"]).serve_in_thread() as u:
        yield u


@pytest.fixture
def gw(up: ScriptedUpstream, tmp_path: Path) -> Iterator[Any]:
    up.clear()
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), MAPPINGS)
    with running_gateway(plan, gateway_settings()) as g:
        yield g


def chat(
    base: str, model: str = "cached", headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    payload = {"model": model, "messages": PROMPT, "temperature": 0, **body}
    return httpx.post(f"{base}/v1/chat/completions", json=payload, headers=headers or {}, timeout=10)


def test_second_identical_request_is_a_hit_without_an_upstream_call(gw: Any, up: ScriptedUpstream) -> None:
    up.enqueue(Reply.chat("first answer"))
    a = chat(gw.base_url)
    assert a.status_code == 200 and a.headers["x-aib-cache"] == "miss"
    key = a.headers["x-aib-cache-key"]
    assert len(key) == 32
    b = chat(gw.base_url)
    assert b.status_code == 200 and b.headers["x-aib-cache"] == "hit"
    assert b.headers["x-aib-cache-key"] == key
    assert b.json() == a.json() and b.json()["choices"][0]["message"]["content"] == "first answer"
    assert b.headers["x-aib-provider"] == "up" and b.headers["x-aib-model"] == "cached"
    assert int(b.headers["age"]) >= 0
    assert len(up.requests) == 1  # the hit never reached the upstream
    rec = gw.observer.wait_for(b.headers["x-request-id"])
    assert (rec.cache, rec.status, rec.route, rec.provider) == ("hit", 200, "cached", None)
    assert rec.cache_lookup_s is not None and rec.cache_lookup_s < 0.05
    assert (rec.prompt_tokens, rec.completion_tokens) == (0, 0)  # a hit costs no tokens
    assert gw.observer.wait_for(a.headers["x-request-id"]).cache == "miss"


def test_what_changes_the_answer_changes_the_key(gw: Any, up: ScriptedUpstream) -> None:
    base = chat(gw.base_url)
    variants = [
        chat(gw.base_url, max_tokens=5),
        chat(gw.base_url, seed=1),
        chat(gw.base_url, messages=[{"role": "user", "content": "Say bye."}]),
        chat(gw.base_url, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        chat(gw.base_url, response_format={"type": "json_object"}),
        chat(gw.base_url, top_p=0.5),
        chat(gw.base_url, model="also-cached"),  # another route
    ]
    keys = {base.headers["x-aib-cache-key"], *(v.headers["x-aib-cache-key"] for v in variants)}
    assert len(keys) == 1 + len(variants)
    assert all(v.headers["x-aib-cache"] == "miss" for v in variants)
    # the same route under an alias, the `user` field and the stream flag do not split the key
    alias = chat(gw.base_url, model="also-cached")
    assert alias.headers["x-aib-cache"] == "hit"
    via_alias = chat(gw.base_url, model="cached-alias")
    assert via_alias.headers["x-aib-cache"] == "hit"
    assert via_alias.headers["x-aib-cache-key"] == alias.headers["x-aib-cache-key"]
    assert chat(gw.base_url, user="someone").headers["x-aib-cache"] == "hit"


def test_non_deterministic_requests_bypass_unless_the_route_caches_always(
    gw: Any, up: ScriptedUpstream
) -> None:
    for _ in range(2):
        r = httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "cached", "messages": PROMPT, "temperature": 0.7},
            timeout=10,
        )
        assert r.headers["x-aib-cache"] == "bypass" and "x-aib-cache-key" not in r.headers
    assert len(up.requests) == 2
    seeded = [chat(gw.base_url, temperature=0.7, seed=42) for _ in range(2)]  # a seed is deterministic
    assert [r.headers["x-aib-cache"] for r in seeded] == ["miss", "hit"]
    hot = [
        httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "always", "messages": PROMPT, "temperature": 1.2},
            timeout=10,
        )
        for _ in range(2)
    ]
    assert [r.headers["x-aib-cache"] for r in hot] == ["miss", "hit"]
    plain = chat(gw.base_url, model="plain")
    assert "x-aib-cache" not in plain.headers  # a route that does not cache says nothing
    assert gw.observer.wait_for(plain.headers["x-request-id"]).cache is None


def test_cache_control_no_cache_refreshes_and_no_store_stays_away(gw: Any, up: ScriptedUpstream) -> None:
    up.enqueue(Reply.chat("old"), Reply.chat("new"), Reply.chat("private"))
    assert chat(gw.base_url).json()["choices"][0]["message"]["content"] == "old"
    fresh = chat(gw.base_url, headers={"Cache-Control": "no-cache"})
    assert (
        fresh.headers["x-aib-cache"] == "miss" and fresh.json()["choices"][0]["message"]["content"] == "new"
    )
    again = chat(gw.base_url)
    assert again.headers["x-aib-cache"] == "hit" and again.json()["choices"][0]["message"]["content"] == "new"
    private = chat(gw.base_url, headers={"Cache-Control": "no-store"})
    assert private.headers["x-aib-cache"] == "bypass"
    assert private.json()["choices"][0]["message"]["content"] == "private"
    assert chat(gw.base_url).json()["choices"][0]["message"]["content"] == "new"  # no-store wrote nothing
    assert len(up.requests) == 3


def test_a_cached_answer_replays_as_a_stream_to_the_openai_client(gw: Any, up: ScriptedUpstream) -> None:
    up.enqueue(Reply.chat("Streamed from the cache."))
    client = sdk_client(gw.base_url + "/v1")
    first = client.chat.completions.create(model="cached", messages=PROMPT, temperature=0)
    with client.chat.completions.stream(
        model="cached", messages=PROMPT, temperature=0, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "Streamed from the cache."
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.model_dump() == first.usage.model_dump()  # type: ignore[union-attr]
    assert len(up.requests) == 1
    raw = httpx.post(
        f"{gw.base_url}/v1/chat/completions",
        json={"model": "cached", "messages": PROMPT, "temperature": 0, "stream": True},
        timeout=10,
    )
    assert raw.headers["x-aib-cache"] == "hit"
    events = assert_clean_sse(raw)
    assert not any('"usage":{' in e for e in events)  # usage only when asked


def test_a_streamed_answer_is_stored_whole_and_served_to_plain_clients(gw: Any, up: ScriptedUpstream) -> None:
    usage = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
             "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}  # fmt: skip
    events = [chat_chunk(t) for t in ("Once ", "upon ", "a time.")] + [chat_chunk("", finish="stop")]
    up.enqueue(Reply(content_type="text/event-stream", chunks=(*events, sse_event(usage), SSE_DONE)))
    client = sdk_client(gw.base_url + "/v1")
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="cached", messages=PROMPT, temperature=0, stream=True)
        if c.choices
    )
    assert text == "Once upon a time."
    hit = client.chat.completions.with_raw_response.create(model="cached", messages=PROMPT, temperature=0)
    assert hit.headers["x-aib-cache"] == "hit"
    answer = hit.parse()
    assert (
        answer.choices[0].message.content == "Once upon a time." and answer.choices[0].finish_reason == "stop"
    )
    assert answer.object == "chat.completion"
    # the client did not ask for usage (the gateway did, and hid it from the stream); the stored answer has it
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3)
    assert len(up.requests) == 1


def test_only_complete_successful_answers_are_stored(gw: Any, up: ScriptedUpstream) -> None:
    """An error, a stream cut short, a stream without [DONE], an unfinished tool call, a stream whose
    upstream sent an error event, and an answer over max_entry_bytes are served but never stored."""
    unfinished_call = {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "cached",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"city": "Par'},
                        }
                    ],
                },
                "finish_reason": "length",
            }
        ],
    }
    cases: list[tuple[str, Reply, dict[str, Any]]] = [
        ("4xx", Reply.error(400, "bad prompt"), {}),
        ("cut", Reply.sse(["a", "b", "c"], reset_after=2), {"stream": True}),
        ("no-done", Reply.sse(["a"], done=False), {"stream": True}),
        ("tool", Reply.json(unfinished_call), {}),
        (
            "error-event",
            Reply(
                content_type="text/event-stream",
                chunks=(chat_chunk("x"), sse_event({"error": {"message": "boom"}}), SSE_DONE),
            ),
            {"stream": True},
        ),
        ("big", Reply.chat("x" * 4000), {}),
    ]
    for i, (name, reply, extra) in enumerate(cases):
        up.enqueue(reply)
        messages = [{"role": "user", "content": f"case {name}"}]
        with (
            httpx.stream(
                "POST",
                f"{gw.base_url}/v1/chat/completions",
                json={"model": "cached", "messages": messages, "temperature": 0, **extra},
                timeout=10,
            ) as r,
            contextlib.suppress(httpx.HTTPError),
        ):  # the cut stream
            r.read()
        assert r.headers.get("x-aib-cache") in ("miss", None), name  # an upstream 4xx keeps its headers
        up.enqueue(Reply.chat(f"second {name}"))
        again = chat(gw.base_url, messages=messages)
        assert again.headers["x-aib-cache"] == "miss", name
        assert again.json()["choices"][0]["message"]["content"] == f"second {name}", name
        assert len(up.requests) == 2 * (i + 1), name
    assert gw.gateway.cache.memory is not None and gw.gateway.cache.memory.stored_bytes > 0


def test_a_finished_tool_call_is_stored(gw: Any, up: ScriptedUpstream) -> None:
    events = [
        sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "cached",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
                       {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]},
                       "finish_reason": None}]}),
        sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "cached",
                   "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                                "finish_reason": None}]}),
        sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "cached",
                   "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
                                "finish_reason": None}]}),
        sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "cached",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        SSE_DONE,
    ]  # fmt: skip
    up.enqueue(Reply(content_type="text/event-stream", chunks=tuple(events)))
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    client = sdk_client(gw.base_url + "/v1")
    list(
        client.chat.completions.create(
            model="cached", messages=PROMPT, temperature=0, tools=tools, stream=True
        )
    )  # type: ignore[arg-type]
    hit = client.chat.completions.with_raw_response.create(
        model="cached",
        messages=PROMPT,
        temperature=0,
        tools=tools,  # type: ignore[arg-type]
    )
    assert hit.headers["x-aib-cache"] == "hit"
    call = hit.parse().choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (  # type: ignore[union-attr]
        "call_1",
        "weather",
        {"city": "Paris"},
    )
    assert hit.parse().choices[0].finish_reason == "tool_calls"


def test_embeddings_and_text_completions_cache(gw: Any, up: ScriptedUpstream) -> None:
    emb = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
           "model": "cached", "usage": {"prompt_tokens": 2, "total_tokens": 2}}  # fmt: skip
    up.enqueue(Reply.json(emb))
    r = [
        httpx.post(f"{gw.base_url}/v1/embeddings", json={"model": "cached", "input": "hi"}, timeout=10)
        for _ in range(2)
    ]
    assert [x.headers["x-aib-cache"] for x in r] == ["miss", "hit"]  # embeddings are deterministic
    assert r[1].json() == emb
    comp = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "cached",
            "choices": [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}  # fmt: skip
    up.enqueue(Reply.json(comp))
    body = {"model": "cached", "prompt": "hello", "temperature": 0}
    assert httpx.post(f"{gw.base_url}/v1/completions", json=body, timeout=10).headers["x-aib-cache"] == "miss"
    streamed = sdk_client(gw.base_url + "/v1").completions.create(
        model="cached", prompt="hello", temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == " world"
    assert len(up.requests) == 2


def test_route_params_are_part_of_the_key(up: ScriptedUpstream, tmp_path: Path) -> None:
    """A reload that changes a route's params does not serve answers made under the old ones."""
    up.clear()
    plan = plan_from_yaml(tmp_path / "a", providers(up), MAPPINGS)
    plan2 = plan_from_yaml(tmp_path / "b", providers(up), MAPPINGS.replace("max_tokens: 7", "max_tokens: 9"))
    with running_gateway(plan, gateway_settings()) as g:
        assert chat(g.base_url, model="tiny").headers["x-aib-cache"] == "miss"
        assert up.requests[-1].json["max_tokens"] == 7
        assert chat(g.base_url, model="tiny").headers["x-aib-cache"] == "hit"
        g.gateway.set_plan(plan2[0])
        assert chat(g.base_url, model="tiny").headers["x-aib-cache"] == "miss"
        assert up.requests[-1].json["max_tokens"] == 9


def test_entries_are_scoped_per_client_key_unless_the_route_shares(
    up: ScriptedUpstream, tmp_path: Path
) -> None:
    up.clear()
    mappings = """
        auth: {mode: keys}
        models:
          mine: {provider: up, cache: {enabled: true}}
          ours: {provider: up, cache: {enabled: true, scope: shared}}
    """
    prov = f"""
    providers:
      up: {{type: openai_compatible, base_url: "{up.base_url}", models: [mine, ours]}}
    """
    store = SqliteKeyStore(tmp_path / "keys.db")
    _, alice = store.create("alice")
    _, alice2 = store.create("alice")
    _, bob = store.create("bob")
    plan = plan_from_yaml(tmp_path / "cfg", prov, mappings)
    with running_gateway(plan, gateway_settings(keys_db=tmp_path / "keys.db")) as g:

        def ask(secret: str, model: str) -> str:
            r = chat(g.base_url, model=model, headers={"Authorization": f"Bearer {secret}"})
            assert r.status_code == 200, r.text
            return str(r.headers["x-aib-cache"])

        assert [ask(alice, "mine"), ask(alice, "mine"), ask(alice2, "mine"), ask(bob, "mine")] == [
            "miss", "hit", "hit", "miss",  # alice's two keys share her name's entries; bob has his own
        ]  # fmt: skip
        assert [ask(alice, "ours"), ask(bob, "ours")] == ["miss", "hit"]
    store.close()


def test_lru_by_bytes_evicts_the_least_recently_used(up: ScriptedUpstream, tmp_path: Path) -> None:
    up.clear()
    size = len(orjson.dumps(chat_completion("y" * 600))) + OVERHEAD  # what one entry counts
    mappings = MAPPINGS.replace("max_entry_bytes: 2048", f"max_entry_bytes: 2048, max_bytes: {3 * size + 10}")
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), mappings)
    with running_gateway(plan, gateway_settings()) as g:

        def ask(n: int) -> str:
            up.enqueue(Reply.chat("y" * 600))
            return str(
                chat(g.base_url, messages=[{"role": "user", "content": str(n)}]).headers["x-aib-cache"]
            )

        assert [ask(1), ask(2), ask(3)] == ["miss", "miss", "miss"]  # three fit
        assert ask(1) == "hit"  # 1 is now the most recently used
        assert ask(4) == "miss"  # evicts 2, the least recently used
        assert [ask(1), ask(3), ask(2)] == ["hit", "hit", "miss"]
        stats = g.call(g.gateway.cache.stats())
        assert stats["evictions"] == 2 and stats["bytes"] == 3 * size and stats["entries"] == 3


def test_request_log_metrics_and_admin_cache(up: ScriptedUpstream, tmp_path: Path) -> None:
    up.clear()
    db = tmp_path / "requests.db"
    plan = plan_from_yaml(tmp_path / "cfg", providers(up), MAPPINGS)
    observe = ObserveSettings(request_log=db, access_log=False, log_format="json")

    def setup(gw: Any) -> None:
        install_observability(gw, observe)

    with running_gateway(plan, gateway_settings(), setup=setup) as g:
        up.enqueue(Reply.chat("logged"))
        ids = [chat(g.base_url).headers["x-request-id"] for _ in range(2)]
        ids.append(httpx.post(f"{g.base_url}/v1/chat/completions",
                              json={"model": "cached", "messages": PROMPT, "temperature": 1}, timeout=10).headers["x-request-id"])  # fmt: skip
        metrics = httpx.get(f"{g.base_url}/metrics", timeout=10).text
        assert 'aib_cache_requests_total{result="hit",route="cached"} 1.0' in metrics
        assert 'aib_cache_requests_total{result="miss",route="cached"} 1.0' in metrics
        assert 'aib_cache_requests_total{result="bypass",route="cached"} 1.0' in metrics
        assert "aib_cache_lookup_seconds_count 2.0" in metrics
        assert "aib_cache_entries 1.0" in metrics and "aib_cache_stored_total 1.0" in metrics
        stats = httpx.get(f"{g.base_url}/admin/cache", timeout=10).json()
        assert (
            stats["backend"] == "memory"
            and stats["entries"] == 1
            and stats["routes"]["cached"]["entries"] == 1
        )
        key = chat(g.base_url).headers["x-aib-cache-key"]
        entry = httpx.get(f"{g.base_url}/admin/cache/entries/{key}", timeout=10).json()
        assert entry["route"] == "cached" and entry["answer"]["choices"][0]["message"]["content"] == "logged"
        assert httpx.get(f"{g.base_url}/admin/cache/entries/{'0' * 32}", timeout=10).status_code == 404
        flushed = httpx.post(f"{g.base_url}/admin/cache/flush", json={"route": "plain"}, timeout=10).json()
        assert flushed["flushed"] == 0
        flushed = httpx.post(f"{g.base_url}/admin/cache/flush", json={"route": "cached"}, timeout=10).json()
        assert flushed["flushed"] == 1
        assert chat(g.base_url).headers["x-aib-cache"] == "miss"
    wait_until(lambda: db.exists(), 5)
    con = sqlite3.connect(db)
    deadline = time.monotonic() + 5
    rows: dict[str, Any] = {}
    while time.monotonic() < deadline and len(rows) < 3:
        rows = dict(con.execute("SELECT request_id, cache FROM requests").fetchall())
        time.sleep(0.05)
    assert [rows[i] for i in ids] == ["miss", "hit", "bypass"]
    con.close()


def test_a_client_that_leaves_during_a_hit_is_recorded(gw: Any, up: ScriptedUpstream) -> None:
    chat(gw.base_url)
    r = chat(gw.base_url)
    assert r.headers["x-aib-cache"] == "hit"
    data = sse_data(
        httpx.post(
            f"{gw.base_url}/v1/chat/completions",
            json={"model": "cached", "messages": PROMPT, "temperature": 0, "stream": True,
                  "stream_options": {"include_usage": True}},
            timeout=10,
        ).text
    )  # fmt: skip
    assert data[-1] == "[DONE]" and '"usage":{' in data[-2]
    with pytest.raises(openai.NotFoundError):
        sdk_client(gw.base_url + "/v1").chat.completions.create(model="nope", messages=PROMPT, temperature=0)
