#!/usr/bin/env bash
# Configured ports against each other and this machine: a thin wrapper over `aib ports` (same options).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
exec "$aib" ports "$@"
