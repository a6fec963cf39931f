"""The LiteLLM SDK adapter's HTTP side, in process: requests in, LiteLLM keyword arguments out, SDK
exceptions to OpenAI envelopes with the right status, streams to SSE, health, disconnects.

LiteLLM itself is replaced by a stand-in module (``sdk_support.StandIn``); the real SDK in the real
adapter process is tested in tests/contract/test_sdk_adapter_anthropic.py. Loading LiteLLM where it is
not installed (this venv) is the real thing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from aib.config.litellm_sdk import CONFIG_HEADER, NOT_INSTALLED, TOKEN_ENV, TOKEN_HEADER, SdkOptions
from aib.engines.sdk_adapter import Adapter, bind, load_litellm, main
from aib.engines.sdk_calls import error_from_exception, scrub
from sdk_support import StandIn, standin_error

pytestmark = pytest.mark.unit

KEY = "sk-ant-unit-SECRET-123"
TOKEN = "gateway-token-unit"
OPTS = SdkOptions(
    provider="claude",
    model="anthropic/{model}",
    api_base="http://127.0.0.1:9/anthropic",
    api_key_env="AIB_TEST_KEY",
    timeout_s=30.0,
    params={"top_k": 3},
    models=("haiku",),
)
CHAT = {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}


def headers(opts: SdkOptions | None = OPTS, key: str | None = KEY) -> dict[str, str]:
    out = {TOKEN_HEADER: TOKEN}
    if opts is not None:
        out[CONFIG_HEADER] = opts.to_header()
    if key is not None:
        out["authorization"] = f"Bearer {key}"
    return out


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
def lm() -> StandIn:
    return StandIn()


@pytest.fixture
async def client(lm: StandIn) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=Adapter(lm, token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://adapter") as c:
        yield c


def envelope(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return dict(err)


# --------------------------------------------------------------------------- requests in, kwargs out


async def test_chat_calls_acompletion_with_the_providers_settings(
    client: httpx.AsyncClient, lm: StandIn
) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.2}, headers=headers())
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "haiku" and body["choices"][0]["message"]["content"] == "Hello"
    kind, kwargs = lm.calls[-1]
    assert kind == "chat"
    assert kwargs == {
        "model": "anthropic/haiku",
        "messages": CHAT["messages"],
        "temperature": 0.2,
        "top_k": 3,
        "api_key": KEY,
        "api_base": "http://127.0.0.1:9/anthropic",
        "timeout": 30.0,
        "num_retries": 0,
        "drop_params": True,
    }


async def test_completions_and_embeddings_without_v1(client: httpx.AsyncClient, lm: StandIn) -> None:
    resp = await client.post("/completions", json={"model": "haiku", "prompt": "hi"}, headers=headers())
    assert resp.status_code == 200 and lm.calls[-1][0] == "text"
    resp = await client.post("/v1/embeddings", json={"model": "haiku", "input": "hi"}, headers=headers())
    assert resp.status_code == 200 and resp.json()["data"][0]["embedding"] == [0.5]
    kind, kwargs = lm.calls[-1]
    assert kind == "embedding" and "drop_params" not in kwargs and kwargs["input"] == "hi"


@pytest.mark.parametrize(
    ("body", "hdrs", "status", "code"),
    [
        ({**CHAT, "api_base": "http://evil"}, headers(), 400, "unsupported_parameter"),
        ({**CHAT, "mock_response": "x"}, headers(), 400, "unsupported_parameter"),
        ({"messages": CHAT["messages"]}, headers(), 400, "missing_required_parameter"),
        ({"model": "haiku"}, headers(), 400, "missing_required_parameter"),
        (CHAT, headers(opts=None), 400, "missing_provider_options"),
        (CHAT, {CONFIG_HEADER: "%%%", TOKEN_HEADER: TOKEN}, 400, "bad_provider_options"),
        (CHAT, {**headers(), TOKEN_HEADER: "guess"}, 401, "adapter_token"),
        (CHAT, headers(key=None), 401, "missing_api_key"),
        (
            {**CHAT, "model": "sonnet"},
            headers(SdkOptions("claude", {"haiku": "anthropic/h"})),
            404,
            "model_not_found",
        ),
    ],
)
async def test_bad_requests_get_an_envelope_and_never_reach_litellm(
    client: httpx.AsyncClient, lm: StandIn, body: dict[str, Any], hdrs: dict[str, str], status: int, code: str
) -> None:
    err = envelope(await client.post("/v1/chat/completions", json=body, headers=hdrs), status, code)
    assert lm.calls == []
    if code == "unsupported_parameter":
        assert err["param"] in ("api_base", "mock_response") and "messages" in err["message"]
    if code == "missing_api_key":
        assert "AIB_TEST_KEY is not set" in err["message"]


async def test_a_body_that_is_not_a_json_object(client: httpx.AsyncClient) -> None:
    envelope(
        await client.post("/v1/chat/completions", content=b"{nope", headers=headers()), 400, "invalid_json"
    )
    envelope(await client.post("/v1/chat/completions", json=[1], headers=headers()), 400, "invalid_json")


async def test_unknown_paths_and_methods(client: httpx.AsyncClient) -> None:
    token = {TOKEN_HEADER: TOKEN}
    envelope(await client.get("/v1/chat/completions", headers=token), 405, "method_not_allowed")
    envelope(await client.post("/v1/models", headers=token), 405, "method_not_allowed")
    envelope(await client.get("/v1/files", headers=token), 404, "unknown_url")


async def test_without_a_token_in_its_environment_the_adapter_answers_anyone(
    lm: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert Adapter(lm).token == "from-env"
    monkeypatch.delenv(TOKEN_ENV)
    open_adapter = Adapter(lm)  # run by hand: no gateway, no token
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=open_adapter), base_url="http://a") as c:
        hdrs = {k: v for k, v in headers().items() if k != TOKEN_HEADER}
        assert (await c.post("/v1/chat/completions", json=CHAT, headers=hdrs)).status_code == 200


# --------------------------------------------------------------------------- SDK exceptions


@pytest.mark.parametrize(
    ("name", "status_code", "message", "status", "code"),
    [
        (
            "RateLimitError",
            429,
            'litellm.RateLimitError: AnthropicException - {"type": "error", "error": '
            '{"type": "rate_limit_error", "message": "slow down"}}',
            429,
            "rate_limit_exceeded",
        ),
        (
            "InternalServerError",
            500,
            'litellm.InternalServerError: AnthropicError - b\'{"type": "error", '
            '"error": {"type": "overloaded_error", "message": "Overloaded"}}\'',
            503,
            "upstream_overloaded",
        ),
        ("ServiceUnavailableError", 503, "busy", 503, "upstream_overloaded"),
        ("Timeout", 408, "litellm.Timeout: timed out", 504, "upstream_timeout"),
        (
            "APIConnectionError",
            500,
            "litellm.APIConnectionError: connection refused",
            502,
            "upstream_unreachable",
        ),
        ("AuthenticationError", 401, "invalid x-api-key", 401, "invalid_api_key"),
        ("PermissionDeniedError", 403, "no access", 403, "permission_denied"),
        ("NotFoundError", 404, "model: nope", 404, "model_not_found"),
        ("ContextWindowExceededError", 400, "too long", 400, "context_length_exceeded"),
        ("ContentPolicyViolationError", 400, "refused", 400, "content_policy_violation"),
        ("UnprocessableEntityError", 422, "bad", 422, "invalid_request"),
        (
            "InternalServerError",
            500,
            "litellm.InternalServerError: AnthropicException - boom",
            502,
            "upstream_error",
        ),
        ("ValueError", None, "something odd", 500, "adapter_error"),
    ],
)
async def test_sdk_exceptions_map_to_openai_envelopes(
    client: httpx.AsyncClient,
    lm: StandIn,
    name: str,
    status_code: int | None,
    message: str,
    status: int,
    code: str,
) -> None:
    lm.raise_next = standin_error(name, message, status_code, retry_after="7")
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers())
    err = envelope(resp, status, code)
    assert err["message"].startswith(f"claude ({name}): ")
    assert "litellm." not in err["message"]
    if status in (429, 503):
        assert resp.headers["retry-after"] == "7"
    if name == "RateLimitError":
        assert err["message"].endswith("rate_limit_error: slow down")


async def test_keys_are_scrubbed_from_error_messages(client: httpx.AsyncClient, lm: StandIn) -> None:
    lm.raise_next = standin_error("BadRequestError", f"bad key {KEY} at https://x/v1?key={KEY}&a=1", 400)
    err = envelope(
        await client.post("/v1/chat/completions", json=CHAT, headers=headers()), 400, "invalid_request"
    )
    assert KEY not in err["message"] and "[redacted]" in err["message"]
    assert scrub("https://h/?token=abc&x=1", ()) == "https://h/?token=[redacted]&x=1"


def test_retry_after_from_the_response_when_litellm_has_no_headers() -> None:
    exc = standin_error("RateLimitError", "slow", 429)
    exc.litellm_response_headers = None  # type: ignore[assignment]
    exc.response = httpx.Response(429, headers={"retry-after": "3"})  # type: ignore[attr-defined]
    assert error_from_exception(exc, OPTS, ()).retry_after == "3"


# --------------------------------------------------------------------------- streams


def sse(text: str) -> list[str]:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


async def test_stream_is_openai_sse_with_a_usage_chunk_and_done(
    client: httpx.AsyncClient, lm: StandIn
) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers())
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    events = sse(resp.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[:2]) == "Hello"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5
    assert lm.calls[-1][1]["stream_options"] == {"include_usage": True}
    assert lm.last_stream is not None and lm.last_stream.closed


async def test_stream_error_before_the_first_chunk_is_a_status(
    client: httpx.AsyncClient, lm: StandIn
) -> None:
    lm.stream_error = (0, standin_error("RateLimitError", "slow down", 429))
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers())
    envelope(resp, 429, "rate_limit_exceeded")


async def test_stream_error_mid_stream_is_an_error_event_without_done(
    client: httpx.AsyncClient, lm: StandIn
) -> None:
    lm.stream_error = (
        1,
        standin_error("InternalServerError", '{"error": {"type": "overloaded_error", "message": "x"}}', 500),
    )
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers())
    assert resp.status_code == 200
    events = sse(resp.text)
    assert "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "upstream_overloaded"


# --------------------------------------------------------------------------- health, models, loading


async def test_health_checks_the_options_without_calling_the_upstream(
    client: httpx.AsyncClient, lm: StandIn
) -> None:
    resp = await client.get("/health", headers=headers())
    assert resp.status_code == 200 and resp.json()["provider"] == "claude"
    resp = await client.get("/health", headers={TOKEN_HEADER: TOKEN})
    assert resp.json()["status"] == "ok"  # no options: the adapter itself
    err = envelope(await client.get("/health", headers=headers(key=None)), 401, "missing_api_key")
    assert "AIB_TEST_KEY" in err["message"]
    typo = SdkOptions("claude", "antropic/{model}", models=("haiku",))
    err = envelope(await client.get("/health", headers=headers(typo)), 400, "unknown_litellm_provider")
    assert "'antropic/haiku'" in err["message"]
    assert lm.calls == []


async def test_live_ready_and_models(client: httpx.AsyncClient) -> None:
    live = (await client.get("/health/live")).json()
    assert live["service"] == "aib-sdk-adapter" and live["litellm"] == "loaded" and live["inflight"] == 0
    assert (await client.get("/health/ready")).status_code == 200
    models = (await client.get("/v1/models", headers=headers())).json()
    assert [m["id"] for m in models["data"]] == ["haiku"]
    assert (await client.get("/models", headers={TOKEN_HEADER: TOKEN})).json()["data"] == []
    envelope(await client.get("/v1/models"), 401, "adapter_token")  # only live and ready are open


async def test_while_loading_and_when_litellm_is_missing() -> None:
    adapter = Adapter(token=TOKEN)  # nothing loaded yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=adapter), base_url="http://a") as c:
        resp = await c.post("/v1/chat/completions", json=CHAT, headers=headers())
        envelope(resp, 503, "adapter_starting")
        assert resp.headers["retry-after"] == "2"
        assert (await c.get("/health/ready")).status_code == 503
        assert (await c.get("/health/live")).json()["litellm"] == "loading"
        adapter.load()  # the real loader: LiteLLM is not installed in this venv
        for resp in (
            await c.get("/health", headers={TOKEN_HEADER: TOKEN}),
            await c.post("/v1/embeddings", json={}, headers=headers()),
        ):
            err = envelope(resp, 503, "adapter_not_installed")
            assert err["message"].startswith(NOT_INSTALLED) and "No module named 'litellm'" in err["message"]
        assert (await c.get("/health/ready")).status_code == 200  # settled: the gateway may probe
        assert (await c.get("/health/live")).json()["litellm"] == "missing"


def test_loading_a_module_quiets_litellm_and_sets_the_offline_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stand_in = StandIn()
    adapter = Adapter(loader=lambda: stand_in)
    adapter.load()
    assert adapter.litellm is stand_in and adapter.version == "stand-in" and adapter.settled.is_set()
    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    with pytest.raises(ModuleNotFoundError):
        load_litellm()
    import os

    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


# --------------------------------------------------------------------------- raw ASGI: lifespan, disconnect


class Conversation:
    """Drives the app with raw ASGI messages: a request body, then (optionally) a hang-up."""

    def __init__(self, body: bytes, hang_up_after: float | None) -> None:
        self.body, self.hang_up_after = body, hang_up_after
        self.sent: list[dict[str, Any]] = []
        self._gave_body = False

    async def receive(self) -> dict[str, Any]:
        if not self._gave_body:
            self._gave_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await asyncio.sleep(self.hang_up_after if self.hang_up_after is not None else 3600)
        return {"type": "http.disconnect"}

    async def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


def scope(path: str) -> dict[str, Any]:
    hdrs = [(k.encode(), v.encode()) for k, v in headers().items()]
    return {"type": "http", "method": "POST", "path": path, "headers": hdrs}


async def test_a_client_hang_up_cancels_the_litellm_call(lm: StandIn) -> None:
    lm.hang = True
    adapter = Adapter(lm, token=TOKEN)
    talk = Conversation(orjson.dumps(CHAT), hang_up_after=0.05)
    await asyncio.wait_for(adapter(scope("/v1/chat/completions"), talk.receive, talk.send), 5)
    assert talk.sent == []  # nothing answered: the client is gone
    assert adapter.inflight == 0 and adapter.served == 1


async def test_a_hang_up_while_the_body_arrives() -> None:
    adapter = Adapter(StandIn(), token=TOKEN)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        raise AssertionError("nothing is sent to a client that left")

    await adapter(scope("/v1/chat/completions"), receive, send)
    assert adapter.inflight == 0


async def test_lifespan_starts_loading_in_the_background() -> None:
    stand_in = StandIn()
    adapter = Adapter(loader=lambda: stand_in)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg["type"])

    await adapter({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert await asyncio.to_thread(adapter.settled.wait, 5) and adapter.litellm is stand_in
    await adapter({"type": "websocket"}, receive, send)  # ignored


def test_a_port_in_use_exits_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["--host", "127.0.0.1", "--port", str(port)])
        assert info.value.code == 3
        assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err
    finally:
        sock.close()
