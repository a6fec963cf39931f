#!/usr/bin/env bash
# The response cache of a running gateway (Redis or memory), shown every INTERVAL seconds (default 5):
# a thin wrapper over `aib cache stats --watch` (same options: --gateway URL, --json, --count N).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
exec "$aib" cache stats --watch "${INTERVAL:-5}" "$@"
