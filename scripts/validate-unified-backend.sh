#!/usr/bin/env bash
# The whole check: `aib validate`, `aib generate --check`, then a running gateway's /health, if one
# answers on $AIB_GATEWAY_URL (default http://127.0.0.1:4000). Exits non-zero if any step fails.
# The config folder comes from $AIB_CONFIG_DIR (default config/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
"$aib" validate
"$aib" generate --check
url="${AIB_GATEWAY_URL:-http://127.0.0.1:4000}"
url="${url%/}"
if curl -fsS -o /dev/null --max-time 2 "$url/health/live" 2>/dev/null; then
  echo "gateway at $url /health:"
  curl -fsS --max-time 10 "$url/health"
  echo
else
  echo "no gateway answers at $url; health check skipped"
fi
