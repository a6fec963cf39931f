#!/usr/bin/env bash
# Reload the configuration of the running gateway (the seed's name): a thin wrapper over `aib reload`.
# The gateway validates both files, shows the diff, backs up the files in force, swaps without dropping
# a request, probes new providers and regenerates config/litellm-unified.yaml. Exit 0 applied or
# unchanged, 1 rolled back or failed, 2 invalid files (the old configuration keeps serving).
# Gateway: --gateway URL or $AIB_GATEWAY_URL (default http://127.0.0.1:4000); admin key: $AIB_ADMIN_KEY.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
exec "$aib" reload "$@"
