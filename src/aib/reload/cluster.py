"""Reloads when ``aib serve --workers N`` runs several gateway processes (see :mod:`aib.gateway.workers`).

Worker 0 is the *leader*: it alone watches the files, keeps backups, verifies, rolls back and answers
the admin reload endpoints. Whenever it applies a new configuration it *publishes* the exact bytes in
force (``config.marshal`` in the run folder, replaced atomically) and tells the supervisor (SIGUSR1),
which tells every other worker (SIGHUP). A *follower* then loads the published bytes, never the files
on disk, so every worker serves what the leader verified even while an editor is still saving. A
follower forwards ``/admin/reload``, ``/admin/rollback`` and ``/admin/reloads`` to the leader over
the leader's unix socket (``leader.sock``), so the answer is the one reload that really ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import marshal
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from aib.reload.sources import Sources, from_bytes

PUBLISHED = "config.marshal"
LEADER_SOCKET = "leader.sock"
FORWARD_HEADERS = (b"authorization", b"x-admin-key", b"content-type")
CLIENT_HEADER = b"x-aib-forwarded-for"  # the real client of a forwarded admin request (history)


@dataclass(frozen=True)
class Cluster:
    """Where this worker stands among its siblings."""

    run_dir: Path
    leader: bool
    supervisor_pid: int

    @property
    def published(self) -> Path:
        return self.run_dir / PUBLISHED

    @property
    def leader_socket(self) -> Path:
        return self.run_dir / LEADER_SOCKET

    def publish(self, src: Sources) -> None:
        """Leader: make ``src`` the configuration every follower loads, then have them load it."""
        assert src.providers is not None and src.mappings is not None
        tmp = self.published.with_name(f".{PUBLISHED}.{os.getpid()}")
        tmp.write_bytes(marshal.dumps((src.providers, src.mappings, tuple(src.names))))
        os.replace(tmp, self.published)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.supervisor_pid, signal.SIGUSR1)

    def read_published(self) -> Sources | None:
        """Follower: what the leader published (None: nothing yet, or unreadable)."""
        try:
            providers, mappings, names = marshal.loads(self.published.read_bytes())
        except (OSError, EOFError, ValueError, TypeError):
            return None
        return from_bytes(providers, mappings, tuple(names))


async def forward_to_leader(
    cluster: Cluster,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    client: str,
    timeout_s: float,
) -> tuple[int, bytes, bytes]:
    """Send one admin request to the leader; ``(status, content type, body)``. Raises OSError or
    TimeoutError when the leader cannot be reached or does not answer in time."""
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target), b"host: aib-leader", b"connection: close"]
    lines += [b"%s: %s" % (k, v) for k, v in headers if k in FORWARD_HEADERS]
    lines += [
        b"%s: %s" % (CLIENT_HEADER, client.encode("latin-1", "replace")),
        b"content-length: %d" % len(body),
    ]
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(cluster.leader_socket))
        try:
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
            raw = await reader.read()  # the leader closes the connection after its answer
        finally:
            writer.close()
    head, sep, payload = raw.partition(b"\r\n\r\n")
    if not sep:
        raise OSError("the leader closed the connection without a complete answer")
    status_line, *header_lines = head.split(b"\r\n")
    ctype = b"application/json"
    for line in header_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            ctype = value.strip()
    return int(status_line.split(b" ", 2)[1]), ctype, payload
