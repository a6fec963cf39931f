"""Upstreams behind a proxy (issue #13, item 7), through a real proxy: Debian's ``tinyproxy`` (``make
sysdeps``) on 127.0.0.1, and for https a loopback TLS upstream whose certificate a test CA signed
(``trustme``). The provider's ``proxy`` setting sends it there (the environment's HTTPS_PROXY and
HTTP_PROXY never apply to loopback upstreams; tests/unit/test_egress.py covers that choice).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import trustme

from aib.devtools.llamacpp import free_port
from gateway_harness import (
    HOST,
    Reply,
    ScriptedUpstream,
    gateway_settings,
    plan_from_yaml,
    running_gateway,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.integration

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MAPPINGS = """
    defaults:
      breaker: {failure_threshold: 1000, cooldown_s: 1}
      retries: {max_attempts: 1}
    models:
      m: {provider: up}
"""


class Tinyproxy(NamedTuple):
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def lines(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tinyproxy]:
    binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    if not Path(binary).exists():
        pytest.fail("tinyproxy is not installed: `make sysdeps` installs it (Makefile APT_PACKAGES)")
    folder = tmp_path_factory.mktemp("tinyproxy")
    port = free_port()
    log = folder / "tinyproxy.log"
    conf = folder / "tinyproxy.conf"
    # no ConnectPort line: CONNECT may reach any port (the test upstream's is random)
    conf.write_text(
        f'Port {port}\nListen {HOST}\nTimeout 30\nLogFile "{log}"\nLogLevel Connect\n'
        f'PidFile "{folder / "tinyproxy.pid"}"\nMaxClients 50\nAllow 127.0.0.1\n'
    )
    proc = subprocess.Popen(
        [binary, "-d", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, f"tinyproxy exited: {log.read_text() if log.exists() else ''}"
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                return True
            return False

        wait_until(listening, 10, 0.05, "tinyproxy to listen")
        yield Tinyproxy(port, log)
    finally:
        stop_process(proc, timeout=5)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "lab-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_up(ca: trustme.CA) -> Iterator[ScriptedUpstream]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    with ScriptedUpstream(models=["m"], tls=ctx) as fake:
        yield fake


@pytest.fixture(scope="module")
def up() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(models=["m"]) as fake:
        yield fake


def provider(url: str, extra: str = "") -> str:
    return f"providers:\n  up:\n    type: openai_compatible\n    base_url: {url}\n    models: [m]\n{extra}"


@contextlib.contextmanager
def gateway_for(tmp_path: Path, providers_yaml: str) -> Iterator[httpx.Client]:
    plan = plan_from_yaml(tmp_path, providers_yaml, MAPPINGS)
    with (
        running_gateway(plan, gateway_settings()) as gw,
        httpx.Client(base_url=gw.base_url, timeout=20, trust_env=False) as c,
    ):
        yield c


def test_an_http_upstream_is_reached_through_the_proxy(
    tmp_path: Path, up: ScriptedUpstream, tinyproxy: Tinyproxy
) -> None:
    up.clear()
    with gateway_for(tmp_path, provider(up.base_url, f"    proxy: {tinyproxy.url}\n")) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
        stream = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status_code == 200, resp.text
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    assert "tinyproxy" in up.requests[0].headers.get("via", "")  # it came through the proxy
    # in absolute form, as a client must address a proxy (RFC 9112 3.2.2)
    assert f"POST {up.base_url}/v1/chat/completions HTTP/1.1" in tinyproxy.lines()


def test_an_https_upstream_is_reached_through_a_connect_tunnel(
    tmp_path: Path, tls_up: ScriptedUpstream, tinyproxy: Tinyproxy, ca_file: Path
) -> None:
    tls_up.clear()
    tls = f"    proxy: {tinyproxy.url}\n    tls: {{ca_file: {ca_file}}}\n"
    with gateway_for(tmp_path, provider(tls_up.base_url, tls)) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
        stream = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"]
    assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
    assert f"CONNECT localhost:{tls_up.port} HTTP/1.1" in tinyproxy.lines()
    assert "via" not in tls_up.requests[0].headers  # a tunnel: the proxy never saw the request


def test_an_untrusted_certificate_behind_the_proxy_is_a_502(
    tmp_path: Path, tls_up: ScriptedUpstream, tinyproxy: Tinyproxy
) -> None:
    """Without the lab's CA the test certificate is refused; `verify: false` accepts it."""
    with gateway_for(tmp_path / "a", provider(tls_up.base_url, f"    proxy: {tinyproxy.url}\n")) as client:
        refused = client.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 502
    assert "certificate verify failed" in refused.json()["error"]["message"]
    assert f"through the proxy {HOST}:{tinyproxy.port}" in refused.json()["error"]["message"]
    off = f"    proxy: {tinyproxy.url}\n    tls: {{verify: false}}\n"
    with gateway_for(tmp_path / "b", provider(tls_up.base_url, off)) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_dead_or_refusing_proxy_is_a_clear_502(
    tmp_path: Path, tls_up: ScriptedUpstream, tinyproxy: Tinyproxy, ca_file: Path
) -> None:
    dead = f"http://{HOST}:{free_port()}"
    with gateway_for(tmp_path / "a", provider(tls_up.base_url, f"    proxy: {dead}\n")) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    assert f"through the proxy {dead.removeprefix('http://')}" in resp.json()["error"]["message"]
    # tinyproxy refuses a tunnel to a port nothing listens on: its answer is named
    gone = f"https://localhost:{free_port()}"
    tls = f"    proxy: {tinyproxy.url}\n    tls: {{ca_file: {ca_file}}}\n"
    with gateway_for(tmp_path / "b", provider(gone, tls)) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 502
    assert "the proxy answered CONNECT" in resp.json()["error"]["message"]


def test_the_provider_setting_beats_the_environment(
    tmp_path: Path, up: ScriptedUpstream, tinyproxy: Tinyproxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY names a dead proxy; the provider's own `proxy` is used instead."""
    monkeypatch.setenv("HTTP_PROXY", f"http://{HOST}:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://{HOST}:{free_port()}")
    monkeypatch.setenv("no_proxy", "")  # and nothing exempts the upstream (loopback is, by our rule)
    up.clear()
    up.enqueue(Reply.chat("via the provider's proxy"))
    with gateway_for(tmp_path, provider(up.base_url, f"    proxy: {tinyproxy.url}\n")) as client:
        resp = client.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and "tinyproxy" in up.requests[0].headers.get("via", "")
