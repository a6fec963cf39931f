"""The native gateway over real HTTP: what a client can get wrong, and the clear error it gets back.

Bad JSON bodies, missing and mistyped fields, bodies over the limit, unknown paths, wrong methods, a client
that hangs up while sending its body. Every error is the OpenAI envelope and nothing reaches an upstream.
The gateway and its upstreams are the ``routed`` fixtures of ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway_client import CHAT, chat
from gateway_harness import RunningGateway, ScriptedUpstream, assert_envelope

pytestmark = pytest.mark.integration

PREFIXES = ["/v1", ""]
BAD_BODIES: list[tuple[str, str, bytes, int, str | None, str | None]] = [
    # id, endpoint, body, status, code, param
    ("empty", "chat/completions", b"", 400, "invalid_request", None),
    ("not-json", "chat/completions", b"{model: m-one", 400, "invalid_json", None),
    ("not-utf8", "chat/completions", b"\xff\xfe\x00{", 400, "invalid_json", None),
    ("array", "chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("string", "chat/completions", b'"m-one"', 400, "invalid_json", None),
    ("too-deep", "chat/completions", b"[" * 2000 + b"]" * 2000, 400, "invalid_json", None),
    ("no-model", "chat/completions", b'{"messages": []}', 400, "missing_required_parameter", "model"),
    (
        "null-model",
        "chat/completions",
        b'{"model": null, "messages": []}',
        400,
        "missing_required_parameter",
        "model",
    ),
    ("int-model", "chat/completions", b'{"model": 5, "messages": []}', 400, "invalid_type", "model"),
    ("list-model", "chat/completions", b'{"model": ["m-one"], "messages": []}', 400, "invalid_type", "model"),
    ("empty-model", "chat/completions", b'{"model": "", "messages": []}', 400, "invalid_type", "model"),
    # a pattern would copy these into the x-aib-model header: an invalid header used to drop the connection
    (
        "newline-model",
        "chat/completions",
        b'{"model": "up2/a\\nb", "messages": []}',
        400,
        "invalid_value",
        "model",
    ),
    (
        "nul-model",
        "chat/completions",
        b'{"model": "up2/a\\u0000b", "messages": []}',
        400,
        "invalid_value",
        "model",
    ),
    ("no-messages", "chat/completions", b'{"model": "m-one"}', 400, "missing_required_parameter", "messages"),
    (
        "str-messages",
        "chat/completions",
        b'{"model": "m-one", "messages": "hi"}',
        400,
        "invalid_type",
        "messages",
    ),
    (
        "str-stream",
        "chat/completions",
        b'{"model": "m-one", "messages": [], "stream": "yes"}',
        400,
        "invalid_type",
        "stream",
    ),
    ("int-prompt", "completions", b'{"model": "m-one", "prompt": 5}', 400, "invalid_type", "prompt"),
    ("no-prompt", "completions", b'{"model": "m-one"}', 400, "missing_required_parameter", "prompt"),
    ("dict-input", "embeddings", b'{"model": "embedder", "input": {}}', 400, "invalid_type", "input"),
    (
        "stream-embeddings",
        "embeddings",
        b'{"model": "embedder", "input": "x", "stream": true}',
        400,
        "invalid_value",
        "stream",
    ),
    (
        "unknown-model",
        "chat/completions",
        b'{"model": "no-such-model", "messages": []}',
        404,
        "model_not_found",
        "model",
    ),
    (
        "unknown-capability",
        "chat/completions",
        b'{"model": "capability/telepathy", "messages": []}',
        404,
        "model_not_found",
        "model",
    ),
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code", "param"),
    [c[1:] for c in BAD_BODIES],
    ids=[c[0] for c in BAD_BODIES],
)
def test_bad_request_bodies(
    routed_client: httpx.Client,
    up1: ScriptedUpstream,
    prefix: str,
    endpoint: str,
    body: bytes,
    status: int,
    code: str,
    param: str | None,
) -> None:
    r = routed_client.post(
        f"{prefix}/{endpoint}",
        content=body,
        headers={"content-type": "application/json", "x-request-id": "bad-1"},
    )
    assert_envelope(r, status, code, param)
    assert r.headers["x-request-id"] == "bad-1"
    assert up1.requests == []  # nothing reached an upstream


@pytest.mark.parametrize("prefix", PREFIXES)
def test_body_over_the_limit(routed_client: httpx.Client, up1: ScriptedUpstream, prefix: str) -> None:
    big = json.dumps({"model": "m-one", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    err = assert_envelope(
        routed_client.post(f"{prefix}/chat/completions", content=big), 413, "request_too_large"
    )
    assert "4096" in err["message"]

    def chunked() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000

    assert_envelope(
        routed_client.post(f"{prefix}/chat/completions", content=chunked()), 413, "request_too_large"
    )
    # just under the limit is fine
    ok = json.dumps({"model": "m-one", "messages": [{"role": "user", "content": "x" * 3000}]})
    assert routed_client.post(f"{prefix}/chat/completions", content=ok).status_code == 200
    assert len(up1.requests) == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/chat/completions"),
        ("POST", "/v1/chat"),
        ("GET", "/"),
        ("POST", "/v1/assistants"),
        ("GET", "/admin/nothing"),
    ],
)
def test_unknown_path(routed_client: httpx.Client, method: str, path: str) -> None:
    assert_envelope(routed_client.request(method, path), 404, "unknown_url")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("GET", "/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
        ("DELETE", "/v1/embeddings", "POST"),
        ("POST", "/v1/models", "GET"),
        ("POST", "/models", "GET"),
        ("DELETE", "/v1/models/m-one", "GET"),
        ("PUT", "/models/m-one", "GET"),
        ("POST", "/health", "GET"),
        ("POST", "/health/live", "GET"),
        ("POST", "/admin/route", "GET"),
    ],
)
def test_wrong_method(routed_client: httpx.Client, method: str, path: str, allow: str) -> None:
    r = routed_client.request(method, path, json={"model": "m-one", "messages": CHAT})
    assert_envelope(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow


def test_trailing_slash_is_tolerated(routed_client: httpx.Client) -> None:
    assert chat(routed_client, "m-one", "/v1/chat/completions/").status_code == 200
    assert routed_client.get("/v1/models/").status_code == 200


def test_client_gone_while_sending_the_body(
    routed: RunningGateway, routed_client: httpx.Client, up1: ScriptedUpstream
) -> None:
    with socket.create_connection(("127.0.0.1", routed.port), timeout=5) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nx-request-id: half-body\r\n"
            b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"model": "m-one"'
        )
        time.sleep(0.1)
    rec = routed.observer.wait_for("half-body")
    assert rec.client_disconnected and rec.attempts == []
    assert up1.requests == []
