#!/usr/bin/env python3
"""Write config/litellm-unified.yaml from config/: a thin wrapper over `aib generate` (same options)."""

import os
import shutil
import sys
from pathlib import Path

venv_aib = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "aib"
aib = os.environ.get("AIB_BIN") or (str(venv_aib) if os.access(venv_aib, os.X_OK) else shutil.which("aib"))
if not aib:
    sys.exit("aib not found: pip install -e . (or set AIB_BIN)")
os.execv(aib, [aib, "generate", *sys.argv[1:]])
