#!/usr/bin/env bash
# Rollback drill against a running gateway (the seed's name): a thin wrapper over `aib rollback --drill`.
# It writes a config with a syntax error (must be rejected), then one whose critical model sits on a dead
# provider (must be rolled back automatically), and always restores the original files. Run it on the
# gateway's machine; it edits the config folder the gateway reports. Exit 0 when every step passed.
# Gateway: --gateway URL or $AIB_GATEWAY_URL (default http://127.0.0.1:4000); admin key: $AIB_ADMIN_KEY.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
exec "$aib" rollback --drill "$@"
