"""Test helpers for config folders (not a test module).

* :func:`write_files` - ``providers.yaml`` and ``model-mappings.yaml`` into a folder, byte for byte (line
  numbers in expected error messages stay right); ``gateway_harness.write_config`` dedents first.
* :func:`copy_examples` - the fully commented example files of ``config/examples`` as a config folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from aib.config.load import MAPPINGS_FILE, PROVIDERS_FILE

EXAMPLES = Path(__file__).resolve().parents[1] / "config" / "examples"


def write_files(config_dir: Path, providers: str | bytes, mappings: str | bytes) -> Path:
    """Write both files exactly as given into ``config_dir`` (created if missing); return the folder."""
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in ((PROVIDERS_FILE, providers), (MAPPINGS_FILE, mappings)):
        (config_dir / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return config_dir


def copy_examples(config_dir: Path) -> Path:
    """``config/examples/*.example.yaml`` as the two config files of ``config_dir``; return the folder."""
    config_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "providers.example.yaml", config_dir / PROVIDERS_FILE)
    shutil.copy(EXAMPLES / "model-mappings.example.yaml", config_dir / MAPPINGS_FILE)
    return config_dir
