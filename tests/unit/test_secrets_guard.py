"""Secrets masked in bytes, texts and log records; who may call the admin API; exposed listeners."""

from __future__ import annotations

import io
import logging

import pytest

from aib.gateway.guard import admin_verdict, exposure_problem, from_loopback, is_loopback_host
from aib.secrets import Scrubber, install_log_filter

pytestmark = pytest.mark.unit

KEY = "sk-live-0123456789abcdef"


def test_scrubber_masks_every_known_value_longest_first() -> None:
    s = Scrubber([KEY, KEY[:10], "unused", ""])
    assert s.values == (KEY, KEY[:10])  # short placeholders are not secrets
    body = f'{{"error": "bad key {KEY} (prefix {KEY[:10]}), unused"}}'
    assert s.text(body) == '{"error": "bad key *** (prefix ***), unused"}'
    assert s.bytes(body.encode()) == b'{"error": "bad key *** (prefix ***), unused"}'
    same = b"nothing secret here"
    assert s.bytes(same) is same  # untouched bytes are not copied
    s.update([])
    assert s.text(body) == body


def test_the_log_filter_masks_messages_arguments_and_exceptions() -> None:
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    try:
        install_log_filter(Scrubber([KEY]))
        f = install_log_filter(Scrubber([KEY]))  # a second gateway replaces the first filter
        assert sum(1 for x in handler.filters if type(x) is type(f)) == 1
        log = logging.getLogger("aib.test.secrets")
        log.warning("probe failed: %s", f"401 Incorrect API key provided: {KEY}")
        try:
            raise ValueError(f"upstream said {KEY}")
        except ValueError:
            log.exception("boom")
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert KEY not in text
    assert "probe failed: 401 Incorrect API key provided: ***" in text
    assert "ValueError: upstream said ***" in text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True), ("::ffff:127.0.0.1", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("gateway.lab", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def scope(client: tuple[str, int] | None, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"client": client, "headers": list(headers)}


def test_the_admin_api_needs_the_key_or_loopback_without_one() -> None:
    local, remote = ("127.0.0.1", 5000), ("10.1.2.3", 5000)
    assert admin_verdict(scope(local), None) is None
    assert admin_verdict(scope(None), None) is None  # the workers' unix socket
    assert admin_verdict(scope(remote), None) == "remote"
    # a proxy on this machine connects from loopback for everyone: what it forwards is remote
    assert not from_loopback(scope(local, (b"x-forwarded-for", b"10.9.9.9")))
    assert admin_verdict(scope(local, (b"forwarded", b"for=10.9.9.9")), None) == "remote"
    assert admin_verdict(scope(local), "adm-secret") == "key"  # with a key set, loopback needs it too
    assert admin_verdict(scope(remote, (b"authorization", b"Bearer adm-secret")), "adm-secret") is None
    assert admin_verdict(scope(remote, (b"x-admin-key", b"adm-secret")), "adm-secret") is None
    assert admin_verdict(scope(remote, (b"authorization", b"Bearer adm-secreT")), "adm-secret") == "key"


def test_an_exposed_listener_needs_keys_and_an_admin_key() -> None:
    assert exposure_problem("127.0.0.1", "none", False) is None
    none = exposure_problem("0.0.0.0", "none", True)
    assert none is not None and "auth: {mode: keys}" in none and "--insecure-open" in none
    no_admin = exposure_problem("0.0.0.0", "keys", False)
    assert no_admin is not None and "AIB_ADMIN_KEY" in no_admin
    assert exposure_problem("0.0.0.0", "keys", True) is None


def test_proxy_credentials_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from aib.secrets import proxy_secrets

    monkeypatch.setenv("HTTPS_PROXY", "http://lab%40user:s3cr%2Ft-passw0rd@proxy.lab:3128")
    monkeypatch.setenv("http_proxy", "proxy.lab:3128")  # no credentials: nothing to hide
    got = proxy_secrets()
    assert got == ["s3cr/t-passw0rd", "bGFiQHVzZXI6czNjci90LXBhc3N3MHJk"]
