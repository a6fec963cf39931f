"""Per-kind behaviour that is not visible through the gateway's own tests."""

from __future__ import annotations

import uuid

import pytest

from aib.providers import kind_for

pytestmark = pytest.mark.unit


def test_llamacpp_gets_a_uuid_request_id() -> None:
    """llama-cpp-python's server rejects (400) an x-request-id that is not a UUID."""
    kind = kind_for("llamacpp")
    given = "2f1c8a7e-9b1d-4c3a-8e5f-0a1b2c3d4e5f"
    assert kind.upstream_request_id(given) == given
    assert kind.upstream_request_id(given.replace("-", "")) == given  # 32 hex: the same UUID
    mapped = kind.upstream_request_id("req-1")
    assert uuid.UUID(mapped) and mapped != "req-1"
    assert kind.upstream_request_id("req-1") == mapped  # stable: logs can be matched
    assert kind.upstream_request_id("req-2") != mapped


@pytest.mark.parametrize("ptype", ["ollama", "vllm", "openai", "anthropic", "openai_compatible"])
def test_other_kinds_send_the_id_unchanged(ptype: str) -> None:
    assert kind_for(ptype).upstream_request_id("req-1") == "req-1"
