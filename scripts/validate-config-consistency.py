#!/usr/bin/env python3
"""Check config/ (both files, cross-file references): a thin wrapper over `aib validate` (same options)."""

import os
import shutil
import sys
from pathlib import Path

venv_aib = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "aib"
aib = os.environ.get("AIB_BIN") or (str(venv_aib) if os.access(venv_aib, os.X_OK) else shutil.which("aib"))
if not aib:
    sys.exit("aib not found: pip install -e . (or set AIB_BIN)")
os.execv(aib, [aib, "validate", *sys.argv[1:]])
