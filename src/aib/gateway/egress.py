"""How the gateway reaches an upstream: directly or through an HTTP proxy, and which TLS it trusts.

* ``proxy`` of a provider (providers.yaml): an ``http://host:port`` URL, or ``direct``; unset, the
  environment decides like curl and Python do: ``HTTPS_PROXY`` for https upstreams, ``HTTP_PROXY`` for
  http ones (lower-case names too), ``NO_PROXY`` lists hosts, domains (``.lab.example`` or
  ``lab.example``) and ``*`` that go direct. Loopback upstreams (``localhost``, 127.0.0.0/8, ``::1``)
  never go through an environment proxy: a lab's proxy cannot reach this machine's servers.
* An https upstream behind a proxy is reached through a ``CONNECT`` tunnel, with TLS end to end (the
  proxy sees only the host name); an http upstream gets its requests in absolute form
  (``POST http://host:port/v1/chat/completions``), as RFC 9112 asks of a client talking to a proxy.
* Credentials in a proxy URL (``http://user:pass@proxy:3128``) go in ``Proxy-Authorization`` and
  never in a log line or an error message (those name ``host:port`` only).
* ``tls`` of a provider: ``ca_file`` (trust this CA bundle instead of the system's) and ``verify``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

DIRECT = "direct"
MAX_CONNECT_ANSWER = 16 * 1024
P = TypeVar("P", bound=asyncio.Protocol)


MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers (GatewaySettings.upstream_max_head_bytes)
MAX_HEADERS = 100  # header lines of an answer (GatewaySettings.upstream_max_headers)


@dataclass(frozen=True, slots=True)
class Egress:
    """How a pool reaches its upstream (a provider's ``proxy`` and ``tls``) and what an answer's head
    may hold."""

    proxy: str | None = None  # None: from the environment; "direct"; or an http:// URL
    ca_file: str | None = None
    tls_verify: bool = True
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS


class ProxyError(Exception):
    """The proxy could not be reached, or refused the tunnel."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value, from the URL's user:password

    @property
    def where(self) -> str:
        """host:port, for messages (never the credentials)."""
        return f"{self.host}:{self.port}"


def parse_proxy(url: str) -> Proxy:
    """An ``http://[user:password@]host[:port]`` URL (no scheme: http); raises ValueError."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"proxy URLs must start with http:// (got {parts.scheme}://)")
    if not parts.hostname:
        raise ValueError("the proxy URL has no host")
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError("the proxy URL has a bad port") from None
    auth = None
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(cred).decode("ascii")
    return Proxy(parts.hostname, port, auth)


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def choose_proxy(url: str, setting: str | None) -> Proxy | None:
    """The proxy to reach ``url`` through (None: direct). ``setting``: the provider's ``proxy``."""
    if setting == DIRECT:
        return None
    if setting:
        return parse_proxy(setting)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()  # lower-case names first, like curl
    chosen = proxies.get(parts.scheme)
    if not chosen or no_proxy(host, proxies.get("no", "")):
        return None
    return parse_proxy(chosen)


def no_proxy(host: str, rules: str) -> bool:
    """Whether ``NO_PROXY`` (``rules``: comma-separated) sends ``host`` direct: ``*``; a name, which
    also covers its subdomains (``lab.example`` and ``.lab.example`` both match ``gpu.lab.example``);
    an IP address or network (``10.0.0.0/8``). A ``:port`` on an entry is ignored."""
    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in rules.split(","):
        rule = raw.strip().lower()
        if not rule:
            continue
        if rule == "*":
            return True
        if ip is not None:
            with contextlib.suppress(ValueError):
                if ip in ipaddress.ip_network(rule.strip("[]"), strict=False):
                    return True
            continue
        name = rule.rsplit(":", 1)[0] if rule.count(":") == 1 else rule
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def tls_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """The TLS settings of one provider: the system's CAs, or only those of ``ca_file``."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _ConnectReply(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT (a status line and headers, no body)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.buf = b""
        self.answer: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if self.answer.done():
            return
        if end >= 0:
            self.answer.set_result(self.buf[:end])
        elif len(self.buf) > MAX_CONNECT_ANSWER:
            self.answer.set_exception(
                ProxyError(f"an answer to CONNECT longer than {MAX_CONNECT_ANSWER} bytes")
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ProxyError("the proxy closed the connection during CONNECT"))


async def open_tunnel(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], P],
    proxy: Proxy,
    host: str,
    port: int,
    ctx: ssl.SSLContext,
) -> P:
    """``CONNECT host:port`` through ``proxy``, then TLS to ``host`` inside the tunnel; returns the
    protocol made by ``factory``, connected. Raises ProxyError, OSError or ssl.SSLError."""
    transport, reply = await loop.create_connection(lambda: _ConnectReply(loop), proxy.host, proxy.port)
    try:
        target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        head = f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n"
        if proxy.authorization:
            head += f"proxy-authorization: {proxy.authorization}\r\n"
        transport.write((head + "\r\n").encode("latin-1"))
        answer = await reply.answer
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or fields[1] != "200":
            raise ProxyError(f"the proxy answered CONNECT {target} with {status_line[:100]!r}")
        if len(reply.buf) > len(answer) + 4:
            raise ProxyError("the proxy sent bytes after its answer to CONNECT")
        proto = factory()
        tls = await loop.start_tls(transport, proto, ctx, server_hostname=host)
        if tls is None:  # pragma: no cover - only when the transport closed during the handshake
            raise ProxyError("the tunnel closed during the TLS handshake")
        proto.connection_made(tls)
        return proto
    except BaseException:
        transport.abort()
        raise
