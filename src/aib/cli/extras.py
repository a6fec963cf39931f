"""Install an optional part of the package when a command needs it (`aib ui`: the ``ui`` extra).

`make run` installs only what the gateway needs; the web UI's libraries (gradio and friends, ~370 MB)
come when `aib ui` first runs, pinned exactly as ``pyproject.toml`` pins the extra, into the same
environment as ``aib`` (``sys.executable -m pip``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable, Sequence

DIST = "ai-backend-unified"

Run = Callable[[list[str]], int]


class ExtraError(RuntimeError):
    """The extra could not be installed; the message says what to do."""


def extra_requirements(extra: str) -> list[str]:
    """The pinned requirements of ``extra`` (``gradio==6.31.0``, ...) from the installed metadata."""
    try:
        reqs = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"extra\s*==\s*[\"']" + re.escape(extra) + r"[\"']")
    return [spec.strip() for spec, _, cond in (r.partition(";") for r in reqs) if marker.search(cond)]


def missing_modules(modules: Sequence[str]) -> list[str]:
    importlib.invalidate_caches()
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _pip(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


def ensure_extra(
    extra: str, modules: Sequence[str], say: Callable[[str], None], run: Run | None = None
) -> list[str]:
    """Install ``extra`` when one of ``modules`` cannot be imported; return the ones that were missing.

    Raises :class:`ExtraError` when pip fails or the modules are still missing after it."""
    missing = missing_modules(modules)
    if not missing:
        return []
    reqs = extra_requirements(extra)
    if not reqs:
        raise ExtraError(
            f"{', '.join(missing)} missing, and the {extra} extra is unknown to this installation"
        )
    say(
        f"{', '.join(missing)} not installed: installing the {extra} extra now ({' '.join(reqs)}) into "
        f"{sys.prefix}; this happens once"
    )
    code = (run or _pip)([sys.executable, "-m", "pip", "install", *reqs])
    if code != 0:
        raise ExtraError(
            f"pip could not install the {extra} extra (exit {code}): pip install {' '.join(reqs)}"
        )
    still = missing_modules(modules)
    if still:
        raise ExtraError(f"{', '.join(still)} still missing after installing the {extra} extra")
    return missing
