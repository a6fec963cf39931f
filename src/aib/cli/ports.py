"""`aib ports`: the ports the config uses, checked against each other and against this machine.

A port is reported once per address with every user the config gives it. Two users of one address
are a conflict. Whether something listens there comes from ``psutil`` (which also names the
process) when it is installed and allowed, else from a connect and a bind attempt on loopback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Literal

from aib.config.load import LoadedConfig

Status = Literal["ok", "free", "conflict", "warning", "remote"]
LOCAL_HOSTS = frozenset({"localhost", "0.0.0.0", "::", "::1", "ip6-localhost"})


@dataclass
class PortReport:
    host: str
    port: int
    users: list[str]
    kinds: list[str] = field(repr=False)  # provider | gateway | ui, one per user
    listening: bool | None = None  # None: not checked (a remote host)
    pid: int | None = None
    process: str | None = None
    status: Status = "ok"
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        del out["kinds"]
        return out


def is_local(host: str) -> bool:
    host = host.lower()
    return host in LOCAL_HOSTS or host.startswith("127.") or host == socket.gethostname().lower()


def configured(cfg: LoadedConfig, gateway_port: int, ui_port: int) -> list[PortReport]:
    """One report per address, local hosts folded together (127.0.0.1:8000 is localhost:8000)."""
    by_addr: dict[tuple[str, int], PortReport] = {}

    def add(host: str, port: int, user: str, kind: str) -> None:
        key = ("local" if is_local(host) else host.lower(), port)
        rep = by_addr.setdefault(key, PortReport(host, port, [], []))
        rep.users.append(user)
        rep.kinds.append(kind)

    sdk: dict[tuple[str, int], list[str]] = {}
    for name, prov in cfg.providers.providers.items():
        host, port = prov.host_port
        if prov.type == "litellm_sdk":  # every litellm_sdk provider on one address shares its adapter
            sdk.setdefault((host, port), []).append(name)
            continue
        add(host, port, f"provider {name}" + ("" if prov.enabled else " (disabled)"), "provider")
    for (host, port), names in sdk.items():
        add(host, port, f"LiteLLM SDK adapter ({', '.join(names)})", "provider")
    add("localhost", gateway_port, "gateway", "gateway")
    add("localhost", ui_port, "ui", "ui")
    return sorted(by_addr.values(), key=lambda r: (not is_local(r.host), r.port))


def listeners() -> dict[int, tuple[int | None, str | None]] | None:
    """Listening TCP ports -> (pid, process name), or None when psutil cannot tell."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the test extra
        return None
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):  # pragma: no cover - e.g. AccessDenied on macOS without root
        return None
    out: dict[int, tuple[int | None, str | None]] = {}
    for c in conns:
        if c.status != psutil.CONN_LISTEN or not c.laddr:
            continue
        name = None
        if c.pid is not None:
            with contextlib.suppress(psutil.Error):
                name = psutil.Process(c.pid).name()
        if c.laddr.port not in out or out[c.laddr.port][0] is None:
            out[c.laddr.port] = (c.pid, name)
    return out


def probe(port: int, timeout: float = 0.3) -> bool:
    """Without psutil: does a connect to loopback succeed, or does a bind on the port fail?"""
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            if s.connect_ex((addr, port)) == 0:
                return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def scan(reports: list[PortReport], use_psutil: bool = True) -> list[PortReport]:
    """Fill in listening/pid/process and set each report's status and note."""
    table = listeners() if use_psutil else None
    for rep in reports:
        if len(rep.users) > 1:
            rep.status, rep.note = "conflict", "configured for " + " and ".join(rep.users)
        if not is_local(rep.host):
            rep.listening = None
            if rep.status != "conflict":
                rep.status, rep.note = "remote", "not on this machine; not checked"
            continue
        if table is not None:
            rep.listening = rep.port in table
            rep.pid, rep.process = table.get(rep.port, (None, None))
        else:
            rep.listening = probe(rep.port)
        if rep.status == "conflict":
            continue
        if "provider" in rep.kinds:
            rep.status = "ok" if rep.listening else "free"
            rep.note = "" if rep.listening else "nothing listening (server not started?)"
        elif rep.listening and not _is_aib(rep.pid):
            who = f"{rep.process} (pid {rep.pid})" if rep.pid else "another process"
            rep.status = "warning"
            rep.note = f"in use by {who}; the {rep.kinds[0]} cannot listen here"
        else:
            rep.status = "ok" if rep.listening else "free"
            rep.note = "aib is running here" if rep.listening else ""
    return reports


def _is_aib(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the test extra
        return False
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:  # the process ended, or is not ours to inspect
        return False
    # `aib serve` / `aib ui` (argv[0] or, through the interpreter, argv[1]) or `python -m aib.cli.main`
    return any(os.path.basename(a) == "aib" for a in argv[:2]) or "aib.cli.main" in argv
