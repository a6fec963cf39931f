"""Who may call what: the admin key, loopback-only answers, and whether a listener is exposed.

* ``/admin/*``, the detailed ``GET /health`` and ``/metrics`` need the admin key (``$AIB_ADMIN_KEY``,
  compared in constant time); with no admin key set they answer only on loopback (and on the unix
  socket workers use among themselves). ``/health/live`` and ``/health/ready`` stay open for load
  balancers.
* :func:`exposure_problem`: ``auth.mode: none`` is allowed only while every listener is loopback, and
  any other listener needs an admin key, unless the operator said ``--insecure-open``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the port on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def from_loopback(scope: dict[str, Any]) -> bool:
    """The request came from this machine: a loopback peer, or a unix socket (no peer address), and
    no proxy forwarded it (a TLS terminator on this machine connects from loopback for everyone)."""
    client = scope.get("client")
    if client and not is_loopback_host(str(client[0])):
        return False
    return not any(k in (b"x-forwarded-for", b"forwarded") for k, _ in scope["headers"])


def presented_admin_key(scope: dict[str, Any]) -> bytes | None:
    """The key a request presents for the admin API: ``Authorization: Bearer``, else ``x-admin-key``."""
    auth = admin = None
    for k, v in scope["headers"]:
        if k == b"authorization":
            auth = v[7:].strip() if v[:7].lower() == b"bearer " else v.strip()
        elif k == b"x-admin-key":
            admin = v.strip()
    return auth or admin


def admin_verdict(scope: dict[str, Any], admin_key: str | None) -> str | None:
    """None when the request may use the admin API, else why not: ``key`` (a wrong or missing admin
    key) or ``remote`` (no admin key is set and the request is not from loopback)."""
    if admin_key is None:
        return None if from_loopback(scope) else "remote"
    given = presented_admin_key(scope)
    if given is not None and hmac.compare_digest(given, admin_key.encode()):
        return None
    return "key"


def exposure_problem(host: str, mode: str, admin_key_set: bool) -> str | None:
    """Why listening on ``host`` with ``auth.mode: mode`` is unsafe (None: it is not)."""
    if is_loopback_host(host):
        return None
    if mode != "keys":
        return (
            f"refusing to listen on {host} with `auth: {{mode: none}}`: anyone who reaches this port "
            "could spend every provider key. Set `auth: {mode: keys}` in model-mappings.yaml, create "
            "client keys with `aib keys create NAME`, and set AIB_ADMIN_KEY; or pass --insecure-open "
            "to accept the risk."
        )
    if not admin_key_set:
        return (
            f"refusing to listen on {host} without an admin key: the admin API would answer only on "
            "loopback and nobody could manage this gateway remotely, and /health and /metrics would be "
            "closed. Set AIB_ADMIN_KEY (a long random value); or pass --insecure-open."
        )
    return None
