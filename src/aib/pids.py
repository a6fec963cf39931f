"""Whether a process ID runs: one answer for every layer (the gateway's workers, their metrics, the CLI)."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
