"""The native gateway over real HTTP: the endpoints around inference.

``/v1/models`` and ``/models`` (list and detail), request ids (kept, generated, replaced when unusable) and
the health endpoints (``/health`` from cached state, ``/health/live``, ``/health/ready``). Shared fixtures:
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gateway_client import TIMEOUT, chat
from gateway_harness import (
    ScriptedUpstream,
    assert_envelope,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_list(routed_client: httpx.Client, path: str) -> None:
    r = routed_client.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list"
    owners = {m["id"]: m["owned_by"] for m in body["data"]}
    for m in body["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int)
    assert owners["m-one"] == "up1" and owners["one"] == "up1" and owners["first"] == "up1"
    assert owners["m-two"] == "up2" and owners["coder"] == "up1" and owners["embedder"] == "up2"
    assert owners["pair"] == "aib:group"
    assert owners["llama3.2:latest"] == "ollama"  # discovered
    assert owners["nomic-embed-text:latest"] == "up2"  # configured, not duplicated by discovery
    assert len(owners) == len(body["data"])


@pytest.mark.parametrize(
    ("path", "owner"),
    [
        ("/v1/models/m-one", "up1"),
        ("/models/one", "up1"),
        ("/v1/models/pair", "aib:group"),
        ("/v1/models/llama3.2:latest", "ollama"),
        ("/v1/models/up2/special", "up1"),
    ],
)
def test_model_detail(routed_client: httpx.Client, path: str, owner: str) -> None:
    r = routed_client.get(path)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["id"] == path.split("/models/", 1)[1] and body["owned_by"] == owner and body["object"] == "model"
    )


def test_model_detail_unknown(routed_client: httpx.Client) -> None:
    err = assert_envelope(routed_client.get("/v1/models/m-onee"), 404, "model_not_found", "model")
    assert "m-one" in err["message"]
    assert_envelope(routed_client.get("/models/nothing-like-it"), 404, "model_not_found")


# --------------------------------------------------------------------------- request ids


def test_request_id_round_trip(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    r = chat(routed_client, "m-one", headers={"x-request-id": "req-abc-123"})
    assert r.headers["x-request-id"] == "req-abc-123"
    assert up1.requests[-1].headers["x-request-id"] == "req-abc-123"
    r = chat(routed_client, "m-one", stream=True, headers={"x-request-id": "req-stream-9"})
    assert r.headers["x-request-id"] == "req-stream-9"
    assert up1.requests[-1].headers["x-request-id"] == "req-stream-9"


def test_request_id_generated(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    r1, r2 = chat(routed_client, "m-one"), chat(routed_client, "m-one")
    rid = r1.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid != r2.headers["x-request-id"]
    assert up1.requests[0].headers["x-request-id"] == rid
    assert re.fullmatch(r"[0-9a-f]{32}", assert_envelope_id(chat(routed_client, "unknown-x")))


@pytest.mark.parametrize("bad", ["x" * 129, "caf\u00e9", "tab\there"])
def test_unusable_request_id_is_replaced(
    routed_client: httpx.Client, up1: ScriptedUpstream, bad: str
) -> None:
    """Too long, non-ASCII or with control characters: a fresh id everywhere, never a truncated one."""
    r = chat(routed_client, "m-one", headers={"x-request-id": bad.encode("utf-8")})  # type: ignore[dict-item]
    rid = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert up1.requests[-1].headers["x-request-id"] == rid
    assert re.fullmatch(
        r"[0-9a-f]{32}",
        assert_envelope_id(chat(routed_client, "unknown-x", headers={"x-request-id": "y" * 200})),
    )


def assert_envelope_id(r: httpx.Response) -> str:
    assert r.status_code == 404
    return r.headers["x-request-id"]


# --------------------------------------------------------------------------- health


def test_health_endpoints(routed_client: httpx.Client) -> None:
    assert routed_client.get("/health/live").json() == {"status": "alive"}
    r = routed_client.get("/health/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    r = routed_client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy" and body["healthy_providers"] == 3
    for name in ("up1", "up2", "ollama"):
        p = body["providers"][name]
        assert p["status"] == "healthy" and p["healthy"] is True and p["last_checked"]
    assert "llama3.2:latest" in body["providers"]["ollama"]["discovered_models"]


def test_health_does_not_call_upstreams(routed_client: httpx.Client, up1: ScriptedUpstream) -> None:
    probes = up1.probes
    for _ in range(5):
        assert routed_client.get("/health").status_code == 200
    assert up1.probes == probes


def test_health_without_background_checks(tmp_path: Path, up1: ScriptedUpstream) -> None:
    plan = plan_from_yaml(
        tmp_path,
        f"providers:\n  p: {{type: openai_compatible, base_url: '{up1.base_url}', models: [m]}}",
        "models: {m: {provider: p}}",
    )
    with running_gateway(plan, gateway_settings(health_checks=False)) as gw:
        r = httpx.get(gw.base_url + "/health", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["status"] == "unknown" and r.json()["health_checks"] is False
