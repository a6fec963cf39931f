"""The HTTP edge limits as settings: GatewaySettings fields, their AIB_* variables, ServerLimits."""

from __future__ import annotations

import pytest

from aib.gateway.httpconn import origin_form
from aib.gateway.httpserver import ServerLimits
from aib.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit


def test_defaults_are_the_server_defaults() -> None:
    assert GatewaySettings().server_limits() == ServerLimits()


def test_each_limit_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "AIB_KEEPALIVE_S": "7",
        "AIB_HEAD_TIMEOUT_S": "11",
        "AIB_BODY_TIMEOUT_S": "12.5",
        "AIB_WRITE_TIMEOUT_S": "13",
        "AIB_MAX_CONNECTIONS": "14",
        "AIB_MAX_PIPELINE": "15",
        "AIB_MAX_HEAD_BYTES": "16000",
        "AIB_MAX_HEADERS": "17",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIB_MAX_MODEL_CHARS", "18")
    monkeypatch.setenv("AIB_UPSTREAM_MAX_HEAD_BYTES", "19000")
    monkeypatch.setenv("AIB_UPSTREAM_MAX_HEADERS", "20")
    s = GatewaySettings()
    assert s.server_limits() == ServerLimits(7.0, 11.0, 12.5, 13.0, 14, 15, 16000, 17)
    assert (s.max_model_chars, s.upstream_max_head_bytes, s.upstream_max_headers) == (18, 19000, 20)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIB_MAX_PIPELINE", "many", "AIB_MAX_PIPELINE='many': give a whole number"),
        ("AIB_MAX_CONNECTIONS", "0", "give a number above 0"),
        ("AIB_WRITE_TIMEOUT_S", "soon", "give a number of seconds"),
        ("AIB_BODY_TIMEOUT_S", "-1", "above 0"),
    ],
)
def test_a_bad_value_says_which_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        GatewaySettings()


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"http://host/v1/models", b"/v1/models"),
        (b"http://host:4000/v1/models?x=1", b"/v1/models?x=1"),
        (b"https://host", b"/"),
        (b"http://host?x=1", b"/?x=1"),
        (b"*", b"*"),
    ],
)
def test_absolute_form_targets_become_origin_form(target: bytes, path: bytes) -> None:
    assert origin_form(target) == path
