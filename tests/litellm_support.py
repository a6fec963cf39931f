"""Test helpers for the LiteLLM engine's tests (not a test module).

* :func:`require_litellm` - the real ``litellm`` (``make litellm``) or a skip; under CI a failure.
* The stand-in ``litellm`` (``tests/fake_litellm.py``): :func:`fake_bin` writes an executable running it,
  :func:`fake_env` the environment that selects it (``AIB_LITELLM_BIN``), its mode and its record file,
  :func:`fake_events` reads what it recorded. ``STANDIN_PROVIDERS`` / ``STANDIN_MAPPINGS``: a config whose
  one model needs no server (the stand-in answers nothing but health).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from aib.engines.litellm import EngineError, find_litellm

FAKE_LITELLM = Path(__file__).resolve().with_name("fake_litellm.py")
RECORD = "record.jsonl"  # the stand-in's events, in the folder given to fake_env
STANDIN_PROVIDERS = """
    providers:
      local: {type: llamacpp, base_url: "http://127.0.0.1:9", models: [smollm2]}
"""
STANDIN_MAPPINGS = """
    models:
      smollm2: {provider: local}
"""


def require_litellm() -> None:
    """Skip when LiteLLM is not installed; under CI fail instead (CI runs ``make litellm`` first)."""
    try:
        find_litellm()
    except EngineError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs `make litellm` before the tests: {exc}")
        pytest.skip(str(exc))


def fake_bin(folder: Path) -> Path:
    """An executable ``folder/bin/litellm`` that runs tests/fake_litellm.py with this interpreter."""
    path = folder / "bin" / "litellm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_LITELLM}" "$@"\n')
    path.chmod(0o755)
    return path


def fake_env(folder: Path, mode: str = "serve", **extra: str) -> dict[str, str]:
    """This environment plus the stand-in as ``AIB_LITELLM_BIN``, in ``mode``, recording to ``folder``."""
    return {
        **os.environ,
        "AIB_LITELLM_BIN": str(fake_bin(folder)),
        "FAKE_LITELLM_MODE": mode,
        "FAKE_LITELLM_RECORD": str(folder / RECORD),
        **extra,
    }


def fake_events(folder: Path, event: str | None = None) -> list[dict[str, Any]]:
    """What the stand-ins recorded in ``folder`` (only the ``event`` kind when given), oldest first."""
    record = folder / RECORD
    if not record.exists():
        return []
    found = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return [e for e in found if event is None or e["event"] == event]
