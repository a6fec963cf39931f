"""Which proxy an upstream is reached through (``aib.gateway.egress``), and how the config says it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from aib.config.errors import ConfigError
from aib.gateway.egress import Egress, Proxy, choose_proxy, no_proxy, parse_proxy
from aib.gateway.httpclient import ConnectError, Pool
from gateway_harness import plan_from_yaml

pytestmark = pytest.mark.unit

ENV = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_https_and_http_upstreams_use_their_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://secure.lab:3128")
    monkeypatch.setenv("HTTP_PROXY", "plain.lab:8080")  # no scheme: http, like curl
    assert choose_proxy("https://api.openai.com", None) == Proxy("secure.lab", 3128)
    assert choose_proxy("http://gpu.lab.example:8000", None) == Proxy("plain.lab", 8080)


def test_loopback_never_goes_through_an_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.lab:3128")
    for url in ("http://127.0.0.1:11434", "http://localhost:8000", "http://[::1]:8000", "http://127.0.1.1:1"):
        assert choose_proxy(url, None) is None, url
    # the provider's own setting still applies (a test bench, an SSH tunnel)
    assert choose_proxy("http://127.0.0.1:11434", "http://proxy.lab:3128") == Proxy("proxy.lab", 3128)


def test_direct_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.lab:3128")
    assert choose_proxy("https://api.anthropic.com", "direct") is None
    assert choose_proxy("https://api.anthropic.com", "http://other:1") == Proxy("other", 1)


@pytest.mark.parametrize(
    ("host", "rules", "bypass"),
    [
        ("api.openai.com", "", False),
        ("gpu.lab.example", "lab.example", True),
        ("gpu.lab.example", ".lab.example", True),
        ("lab.example", ".lab.example", True),
        ("notlab.example", "lab.example", False),
        ("gpu.lab.example", "other.example, lab.example:8000", True),
        ("api.openai.com", "*", True),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("10.1.2.3", "10.1.2.3", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("GPU.Lab.Example", "lab.example", True),
    ],
)
def test_no_proxy_rules(host: str, rules: str, bypass: bool) -> None:
    assert no_proxy(host, rules) is bypass


def test_no_proxy_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.lab:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert choose_proxy("https://llm.internal.example", None) is None
    assert choose_proxy("https://api.openai.com", None) == Proxy("proxy.lab", 3128)


def test_credentials_become_proxy_authorization_and_stay_out_of_messages() -> None:
    proxy = parse_proxy("http://alice:s%40cret@proxy.lab:3128")
    assert proxy.authorization == "Basic " + base64.b64encode(b"alice:s@cret").decode()
    assert proxy.where == "proxy.lab:3128" and "cret" not in repr(proxy.where)
    with pytest.raises(ValueError, match="http://"):
        parse_proxy("https://proxy.lab:3128")
    with pytest.raises(ValueError, match="bad port"):
        parse_proxy("http://proxy.lab:99999")


def test_requests_to_an_http_upstream_through_a_proxy_are_in_absolute_form() -> None:
    pool = Pool("http://gpu.lab.example:8000/v1", egress=Egress(proxy="http://bob:pw@proxy.lab:3128"))
    head = pool.request_head("POST", "/chat/completions", {"content-type": "application/json"})
    assert head.startswith(b"POST http://gpu.lab.example:8000/v1/chat/completions HTTP/1.1\r\n")
    assert b"host: gpu.lab.example:8000\r\n" in head
    assert b"proxy-authorization: Basic " + base64.b64encode(b"bob:pw") + b"\r\n" in head
    tunnelled = Pool("https://api.openai.com/v1", egress=Egress(proxy="http://bob:pw@proxy.lab:3128"))
    head = tunnelled.request_head("POST", "/chat/completions", {})
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"proxy-authorization" not in head


async def test_a_bad_proxy_in_the_environment_fails_each_request_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.lab:1080")
    pool = Pool("https://api.openai.com/v1")
    with pytest.raises(ConnectError, match="proxy URLs must start with http://"):
        await pool.request(pool.request_head("POST", "/x", {}), b"{}")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://proxy.lab:3128", "http://host:port URL or `direct`"),
        ("http://u:p@proxy.lab:3128", "no credentials in the file"),
        ("http://proxy.lab:0x", "bad port"),
    ],
)
def test_the_proxy_setting_is_checked(tmp_path: Path, value: str, message: str) -> None:
    providers = f"providers:\n  up:\n    type: openai\n    proxy: '{value}'\n    models: [m]\n"
    with pytest.raises(ConfigError, match=message):
        plan_from_yaml(tmp_path, providers, "models:\n  m: {provider: up}\n")


def test_tls_settings_reach_the_plan(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "lab-ca.pem").write_text("not checked here")
    providers = (
        "providers:\n  up:\n    type: openai\n    proxy: direct\n    tls: {ca_file: certs/lab-ca.pem}\n"
        "    models: [m]\n"
    )
    plan, _ = plan_from_yaml(tmp_path, providers, "models:\n  m: {provider: up}\n")
    info = plan.providers["up"]
    assert info.proxy == "direct" and info.tls_verify is True
    assert info.ca_file == str((tmp_path / "certs" / "lab-ca.pem").resolve())


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    providers = "providers:\n  up:\n    type: openai\n    tls: {ca_file: nowhere.pem}\n    models: [m]\n"
    with pytest.raises(ConfigError, match="no such file"):
        plan_from_yaml(tmp_path, providers, "models:\n  m: {provider: up}\n")
