"""Client keys, model access, limits and the locked admin API, through the real gateway and server with
the official `openai` and `anthropic` clients (a scripted upstream answers).
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from typer.testing import CliRunner

from aib.auth.store import SqliteKeyStore
from aib.cli.main import app
from aib.observe import ObserveSettings, install_observability
from aib.observe.requestquery import RequestLogReader
from gateway_harness import (
    Reply,
    ScriptedUpstream,
    chat_chunk,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    sse_event,
    wait_until,
)
from openai_support import PROMPT, sdk_client

pytestmark = pytest.mark.integration

ADMIN_ENV = "AIB_TEST_AUTH_ADMIN"
ADMIN = "adm-" + "7" * 30
MAPPINGS = """
    auth: {mode: keys, reserve_tokens: 50}
    models:
      m-one: {provider: up, aliases: [one]}
      m-two: {provider: up}
      secret-model: {provider: up}
    patterns:
      - {match: "up/*", provider: up}
"""


def providers(up: ScriptedUpstream) -> str:
    return f"""
    providers:
      up: {{type: openai_compatible, base_url: "{up.base_url}", models: [m-one, m-two, secret-model]}}
    """


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m-one", "m-two", "secret-model"]) as fake:
        yield fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteKeyStore]:
    s = SqliteKeyStore(tmp_path / "keys.db")
    yield s
    s.close()


@pytest.fixture
def gw(
    tmp_path: Path, up: ScriptedUpstream, store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    up.clear()
    plan = plan_from_yaml(tmp_path / "config", providers(up), MAPPINGS)
    settings = gateway_settings(keys_db=store.path, admin_key_env=ADMIN_ENV)
    with running_gateway(plan, settings) as rg:
        yield rg


def client(rg: Any, key: str) -> openai.OpenAI:
    return sdk_client(rg.base_url + "/v1", api_key=key, timeout=20)


def chat(c: openai.OpenAI, model: str = "m-one", **kw: Any) -> Any:
    kw.setdefault("max_tokens", 10)
    return c.chat.completions.with_raw_response.create(model=model, messages=PROMPT, **kw)


def test_requests_without_a_valid_key_get_401_saying_what_is_wrong(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream
) -> None:
    revoked, revoked_secret = store.create("gone")
    store.revoke(revoked.id)
    _, expired_secret = store.create("old", expires_at=time.time() + 0.5)
    time.sleep(0.6)  # the key itself expires; nothing to poll
    with httpx.Client(base_url=gw.base_url, timeout=10) as h:
        r = h.post("/v1/chat/completions", json={"model": "m-one", "messages": PROMPT})
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="aib"'
        assert (
            r.json()["error"]["code"] == "missing_api_key"
            and "aib keys create" in r.json()["error"]["message"]
        )
        assert h.get("/nowhere").status_code == 401  # with keys on, not even "unknown path" without one
        assert h.get("/health/live").status_code == 200 and h.get("/health/ready").status_code == 200
    wait_until(lambda: gw.gateway.gate.by_id.get(revoked.id) is not None, 3, what="the keys loaded")
    for secret, code in (("sk-aib-madeup", "invalid_api_key"), (revoked_secret, "revoked_api_key"),
                         (expired_secret, "expired_api_key")):  # fmt: skip
        with pytest.raises(openai.AuthenticationError) as exc:
            chat(client(gw, secret))
        assert exc.value.status_code == 401 and exc.value.code == code
        assert secret not in str(exc.value.body)
    assert gw.observer.records and all(r.status == 401 for r in gw.observer.records)
    assert not gw.gateway.inflight
    assert up.requests == []  # nothing reached the upstream


def test_a_key_works_in_each_header_clients_use(gw: Any, store: SqliteKeyStore, up: ScriptedUpstream) -> None:
    _, secret = store.create("alice")
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    up.enqueue(Reply.chat(), Reply.chat(), Reply.chat())
    body = {"model": "m-one", "messages": PROMPT}
    with httpx.Client(base_url=gw.base_url, timeout=10) as h:
        for headers in ({"authorization": f"Bearer {secret}"}, {"x-api-key": secret}, {"api-key": secret}):
            r = h.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, r.text
    assert [r.key_name for r in gw.observer.records] == ["alice"] * 3
    assert all(secret not in str(r.headers) for r in up.requests)  # a client key never goes upstream


def test_a_key_reaches_only_its_models(gw: Any, store: SqliteKeyStore, up: ScriptedUpstream) -> None:
    _, secret = store.create("bob", models=("one", "up/*"))
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    up.enqueue(Reply.chat(), Reply.chat(), Reply.chat())
    c = client(gw, secret)
    assert chat(c, "one").status_code == 200
    assert chat(c, "m-one").status_code == 200  # where its alias leads
    assert chat(c, "up/anything").status_code == 200  # a glob on a pattern's names
    for model in ("secret-model", "m-two", "not-configured"):
        with pytest.raises(openai.PermissionDeniedError) as exc:
            chat(c, model)
        msg = exc.value.body["message"]  # type: ignore[index]
        assert model in msg and "secret-model" not in msg.replace(model, "")
    assert {m.id for m in c.models.list()} == {"m-one", "one"}  # nothing beyond the key's models
    with pytest.raises(openai.PermissionDeniedError):
        c.models.retrieve("secret-model")
    assert c.models.retrieve("one").id == "one"
    # a name its glob allows but nothing serves: 404, and the hint names only what the key may use
    with pytest.raises(openai.NotFoundError) as nf:
        c.models.retrieve("up/m-on")
    assert "secret-model" not in str(nf.value.body) and "m-two" not in str(nf.value.body)


def test_over_a_rate_limit_429_with_retry_after_and_openai_headers(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream
) -> None:
    _, secret = store.create("carol", rpm=3, tpm=10_000)
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    up.enqueue(*[Reply.chat()] * 3)
    c = client(gw, secret)
    remaining = []
    for _ in range(3):
        raw = chat(c)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    with pytest.raises(openai.RateLimitError) as exc:
        chat(c)
    e = exc.value
    assert e.status_code == 429 and e.code == "requests_per_minute" and e.type == "rate_limit_exceeded"
    assert 1 <= int(e.response.headers["retry-after"]) <= 20
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(up.requests) == 3  # the refused one never reached the upstream


def usage_chunk(prompt: int, completion: int) -> bytes:
    return sse_event(
        {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
         "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}
    )  # fmt: skip


def test_streams_settle_the_token_rate_and_usage_on_what_they_used(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream
) -> None:
    key, secret = store.create("dave", tpm=400)
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    events = (chat_chunk("Hi"), chat_chunk("", finish="stop"), usage_chunk(11, 7), b"data: [DONE]\n\n")
    up.enqueue(*[Reply(content_type="text/event-stream", chunks=events)] * 4)
    c = client(gw, secret)
    for _ in range(4):  # each reserves ~60 (body/4 + max_tokens 10 + ...) and settles on 18
        with c.chat.completions.with_streaming_response.create(
            model="m-one", messages=PROMPT, max_tokens=10, stream=True, stream_options={"include_usage": True}
        ) as resp:
            assert resp.status_code == 200
            reserve_left = int(resp.headers["x-ratelimit-remaining-tokens"])
            text = resp.read().decode()
        assert '"prompt_tokens":11' in text.replace(" ", "") and "[DONE]" in text
    # 4 x 18 used: far more room left than 4 reservations would leave
    up.enqueue(Reply.chat())
    raw = chat(c, max_tokens=1)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) > 400 - 4 * 18 - 60
    assert reserve_left < 400 - 3 * 18  # while a stream ran, its reservation was held
    gw.call(gw.gateway.gate.flush())
    day = [u for u in store.usage() if u.key_num == key.num]
    assert sum(u.requests for u in day) == 5
    assert (
        sum(u.prompt_tokens for u in day) == 4 * 11 + 3 and sum(u.completion_tokens for u in day) == 4 * 7 + 5
    )


def test_requests_in_flight_are_limited(gw: Any, store: SqliteKeyStore, up: ScriptedUpstream) -> None:
    _, secret = store.create("erin", concurrency=1)
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    up.enqueue(Reply.chat(delay_s=1.5), Reply.chat())
    with httpx.Client(base_url=gw.base_url, timeout=10, headers={"authorization": f"Bearer {secret}"}) as h:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(h.post, "/v1/chat/completions", json={"model": "m-one", "messages": PROMPT})
            up.wait_requests(1)
            r = h.post("/v1/chat/completions", json={"model": "m-one", "messages": PROMPT})
            assert r.status_code == 429 and r.json()["error"]["code"] == "concurrent_requests"
            assert r.headers["retry-after"] == "1"
            assert slow.result().status_code == 200
        assert h.post("/v1/chat/completions", json={"model": "m-one", "messages": PROMPT}).status_code == 200


def test_a_daily_budget_refuses_until_midnight_utc(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream
) -> None:
    _, secret = store.create("frank", budget_day=37)
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    up.enqueue(*[Reply.chat()] * 3)  # each answer reports 8 tokens
    c = client(gw, secret)
    served = 0
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(5):
            c.chat.completions.create(model="m-one", messages=PROMPT, max_tokens=1)
            served += 1
    assert served == 2
    e = exc.value
    assert e.code == "tokens_per_day" and "37 tokens per day" in e.message
    to_midnight = 86400 - time.time() % 86400
    assert abs(int(e.response.headers["retry-after"]) - to_midnight) < 60


def test_the_admin_api_makes_and_revokes_keys_and_is_locked(gw: Any, up: ScriptedUpstream) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=gw.base_url, timeout=10) as h:
        assert h.get("/admin/keys").status_code == 401
        assert h.get("/health").status_code == 401  # the detailed health is the admin's
        made = h.post("/admin/keys", json={"name": "gina", "models": ["m-two"], "rpm": 100}, headers=admin)
        assert made.status_code == 201, made.text
        key = made.json()
        secret = key["key"]
        assert secret.startswith("sk-aib-") and "only time" in key["note"]
        listed = h.get("/admin/keys", headers=admin).json()["keys"]
        assert [k["name"] for k in listed] == ["gina"] and secret not in str(listed)
        assert "hash" not in listed[0]
        up.enqueue(Reply.chat())
        ok = h.post(
            "/v1/chat/completions", json={"model": "m-two", "messages": PROMPT}, headers={"x-api-key": secret}
        )
        assert ok.status_code == 200  # usable at once: this process reloaded its keys
        shown = h.get(f"/admin/keys/{key['id']}", headers=admin).json()
        assert shown["name"] == "gina" and shown["rpm"] == 100
        assert (
            h.post(f"/admin/keys/{key['id']}/revoke", headers=admin).json()["revoked"][0]["state"]
            == "revoked"
        )
        gone = h.post(
            "/v1/chat/completions", json={"model": "m-two", "messages": PROMPT}, headers={"x-api-key": secret}
        )
        assert gone.status_code == 401 and gone.json()["error"]["code"] == "revoked_api_key"
        bad = h.post("/admin/keys", json={"name": "x y"}, headers=admin)
        assert bad.status_code == 400 and "key name" in bad.json()["error"]["message"]
        assert h.post("/admin/keys", json={"name": "h", "rpm": 0}, headers=admin).status_code == 400
        assert h.get("/admin/keys/key_nope", headers=admin).status_code == 404
        rotated = h.post("/admin/keys/key_nope/rotate", json={"grace": "1h"}, headers=admin)
        assert rotated.status_code == 404
        usage = h.get("/admin/keys/usage?since=1d", headers=admin).json()
        assert usage["keys"] == [] or usage["keys"][0]["name"] == "gina"
        health = h.get("/health", headers=admin).json()
        assert health["auth"] == {"mode": "keys", "store": "sqlite", "keys": 1}
        metrics = h.get("/metrics", headers=admin).text
    assert ADMIN not in metrics and secret not in metrics
    # the admin key is also a client key: every model, no limit
    up.enqueue(Reply.chat())
    assert chat(client(gw, ADMIN), "secret-model").status_code == 200


def test_usage_per_key_in_metrics_and_request_log(
    tmp_path: Path, up: ScriptedUpstream, store: SqliteKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    plan = plan_from_yaml(tmp_path / "config", providers(up), MAPPINGS)
    _, secret = store.create("hana", rpm=2)
    db = tmp_path / "requests.db"
    with running_gateway(plan, gateway_settings(keys_db=store.path, admin_key_env=ADMIN_ENV)) as rg:
        handle = install_observability(
            rg.gateway, ObserveSettings(request_log=db, writer="thread", flush_interval_s=0.02)
        )
        up.enqueue(Reply.chat(), Reply.chat())
        c = client(rg, secret)
        chat(c)
        chat(c)
        with pytest.raises(openai.RateLimitError):
            chat(c)
        metrics = httpx.get(rg.base_url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
        assert handle.request_log is not None and handle.request_log.flush()
        handle.close()
    assert 'aib_key_requests_total{key="hana",status="200"} 2.0' in metrics
    assert 'aib_key_requests_total{key="hana",status="429"} 1.0' in metrics
    assert 'aib_key_limited_total{key="hana",limit="requests_per_minute"} 1.0' in metrics
    assert 'aib_key_tokens_total{key="hana",type="completion"} 10.0' in metrics
    rows = (
        sqlite3.connect(db)
        .execute("SELECT key_name, status, error_code FROM requests ORDER BY id")
        .fetchall()
    )
    assert rows == [("hana", 200, None), ("hana", 200, None), ("hana", 429, "requests_per_minute")]
    assert secret not in "\n".join(sqlite3.connect(db).iterdump())
    with RequestLogReader(db) as reader:  # what `aib logs --key`, the UI's filters read
        assert [r["status"] for r in reader.query(key="hana")] == [429, 200, 200]
        assert reader.query(key="someone-else") == []
        (per_model,) = reader.stats(key="hana")
        assert per_model["requests"] == 3 and per_model["completion_tokens"] == 10
    out = CliRunner().invoke(app, ["logs", "--db", str(db), "--key", "hana", "--json"])
    assert out.exit_code == 0 and [r["key_name"] for r in json.loads(out.stdout)] == ["hana"] * 3


def test_the_anthropic_client_sends_its_key_as_x_api_key(gw: Any, store: SqliteKeyStore) -> None:
    _, secret = store.create("ivan", models=("m-one",))
    wait_until(lambda: len(gw.gateway.gate.keys) == 1, 3, what="the new key")
    bad = anthropic.Anthropic(base_url=gw.base_url, api_key="sk-ant-wrong-key-000", max_retries=0, timeout=10)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        bad.models.retrieve("m-one")
    assert exc.value.status_code == 401 and "sk-ant-wrong-key-000" not in str(exc.value.body)
    good = anthropic.Anthropic(base_url=gw.base_url, api_key=secret, max_retries=0, timeout=10)
    assert good.models.retrieve("m-one").id == "m-one"
    with pytest.raises(anthropic.PermissionDeniedError):
        good.models.retrieve("secret-model")


def test_listening_exposed_needs_keys_and_an_admin_key(
    tmp_path: Path, up: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks read the configured host; the test server itself listens on 127.0.0.1 only."""
    monkeypatch.setenv(ADMIN_ENV, ADMIN)
    keys_plan = plan_from_yaml(tmp_path / "a", providers(up), MAPPINGS)
    open_plan = plan_from_yaml(tmp_path / "b", providers(up), MAPPINGS.replace("mode: keys", "mode: none"))
    exposed = gateway_settings(host="0.0.0.0", admin_key_env=ADMIN_ENV, keys_db=tmp_path / "k.db")
    with (
        pytest.raises(RuntimeError, match="gateway did not start"),
        running_gateway(open_plan, exposed, startup_timeout=5),
    ):
        pass
    with running_gateway(keys_plan, exposed) as rg:
        with pytest.raises(ValueError, match="mode: none"):
            rg.gateway.accept_plan(open_plan[0])  # a reload to mode none is refused on this listener
        assert rg.gateway.plan.auth.mode == "keys"
    insecure = gateway_settings(host="0.0.0.0", admin_key_env="AIB_TEST_UNSET_ADMIN", insecure_open=True)
    with running_gateway(open_plan, insecure) as rg:
        health = httpx.get(rg.base_url + "/health").json()  # no admin key: loopback may read it
        assert "--insecure-open" in health["warnings"][0] and "no admin key" in health["warnings"][0]


def test_our_own_tools_work_with_keys_on(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`aib health`, `aib monitor` and `aib doctor`'s gateway check read /health and /metrics with
    $AIB_ADMIN_KEY; without it they say the gateway wants a key."""
    handle = install_observability(
        gw.gateway, ObserveSettings(request_log=None, access_log=False, writer="thread")
    )
    runner = CliRunner()
    denied = runner.invoke(app, ["health", "-g", gw.base_url, "--json"], env={"AIB_ADMIN_KEY": ""})
    assert denied.exit_code == 1
    ok = runner.invoke(app, ["health", "-g", gw.base_url, "--json"], env={"AIB_ADMIN_KEY": ADMIN})
    assert ok.exit_code in (0, 1) and json.loads(ok.stdout)["auth"]["mode"] == "keys"
    frame = runner.invoke(app, ["monitor", "-g", gw.base_url, "--once", "--json", "--interval", "0.2"],
                          env={"AIB_ADMIN_KEY": ADMIN})  # fmt: skip
    assert frame.exit_code == 0, frame.output
    assert "error" not in json.loads(frame.stdout) or not json.loads(frame.stdout)["error"]
    from aib.ops.doctor import check_gateway

    monkeypatch.setenv("AIB_ADMIN_KEY", ADMIN)
    assert check_gateway(gw.base_url, gw.gateway.plan).status != "fail"
    handle.close()


def test_limits_survive_a_reload(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream, tmp_path: Path
) -> None:
    _, secret = store.create("ivy", rpm=3)
    up.enqueue(Reply.chat(), Reply.chat())
    c = client(gw, secret)
    assert chat(c).headers["x-ratelimit-remaining-requests"] == "2"
    new_plan, _ = plan_from_yaml(
        tmp_path / "new",
        providers(up),
        MAPPINGS.replace("m-two:", "m-three: {provider: up, upstream: m-two}\n      m-two:"),
    )
    gw.call(_swap(gw.gateway, new_plan))
    assert "m-three" in gw.gateway.plan.groups
    assert chat(c).headers["x-ratelimit-remaining-requests"] == "1"  # the same bucket


async def _swap(gateway: Any, plan: Any) -> None:
    gateway.accept_plan(plan)
    gateway.set_plan(plan)


def test_every_door_asks_for_the_same_keys_in_its_own_error_shape(
    gw: Any, store: SqliteKeyStore, up: ScriptedUpstream
) -> None:
    """Anthropic Messages, Ollama and OpenAI Responses clients: the same keys, models and limits, and
    every refusal in the shape their SDK reads."""
    import ollama

    _, secret = store.create("jo", models=("m-one",), rpm=100)
    # Anthropic: x-api-key; a bad key is an AuthenticationError with Anthropic's body
    bad = anthropic.Anthropic(base_url=gw.base_url, api_key="sk-ant-nope-123456", max_retries=0, timeout=10)
    with pytest.raises(anthropic.AuthenticationError) as exc:
        bad.messages.create(model="m-one", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["type"] == "error" and exc.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    good = anthropic.Anthropic(base_url=gw.base_url, api_key=secret, max_retries=0, timeout=10)
    up.enqueue(Reply.chat("Hello from m-one."))
    msg = good.messages.create(model="m-one", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "Hello from m-one."  # type: ignore[union-attr]
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        good.messages.create(model="secret-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    # Ollama: a bearer header; errors as {"error": "..."}
    with (
        pytest.raises(ollama.ResponseError) as oexc,
        ollama.Client(host=gw.base_url, timeout=10) as anonymous,
    ):
        anonymous.list()
    assert oexc.value.status_code == 401 and "Missing API key" in oexc.value.error
    with ollama.Client(host=gw.base_url, timeout=10, headers={"authorization": f"Bearer {secret}"}) as oc:
        assert [m.model for m in oc.list().models] == ["m-one", "one"]  # its models (and their aliases) only
        up.enqueue(Reply.chat("Hi from Ollama's door."))
        assert (
            oc.chat(model="m-one", messages=[{"role": "user", "content": "hi"}]).message.content
            == "Hi from Ollama's door."
        )
    # OpenAI Responses: the same key, the rate headers too
    up.enqueue(Reply.chat("Hi from Responses."))
    raw = client(gw, secret).responses.with_raw_response.create(model="m-one", input="hi")
    assert (
        raw.parse().output_text == "Hi from Responses." and raw.headers["x-ratelimit-limit-requests"] == "100"
    )
    assert [r.key_name for r in gw.observer.records if r.status == 200] == ["jo", "jo", "jo"]
    assert {r.door for r in gw.observer.records if r.status == 200} == {"anthropic", "ollama", "responses"}
