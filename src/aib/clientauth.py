"""The keys the project's own clients send (`aib health`, `monitor`, `doctor`, `ui`, `reload`, `keys
--gateway`, `demo`): read from the environment, never from a file of the repository.

* ``$AIB_API_KEY``: a client key for the API (chat, models), when the gateway runs with
  ``auth: {mode: keys}``; the admin key works as one too.
* ``$AIB_ADMIN_KEY``: the admin key, for ``/admin/*``, the detailed ``/health`` and ``/metrics``.

On a loopback gateway with no keys (``make demo``, ``make run``) neither is needed.
"""

from __future__ import annotations

import os

ADMIN_PATHS = ("/health", "/metrics", "/admin")


def admin_key() -> str | None:
    return os.environ.get("AIB_ADMIN_KEY") or None


def client_key() -> str | None:
    return os.environ.get("AIB_API_KEY") or admin_key()


def headers_for(path: str) -> dict[str, str]:
    """The authorization header for a request to ``path`` (``{}`` when no key is set)."""
    admin = path == "/health" or path.startswith(("/metrics", "/admin"))
    key = admin_key() if admin else client_key()
    return {"authorization": f"Bearer {key}"} if key else {}
