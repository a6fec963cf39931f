#!/usr/bin/env bash
# The whole-backend check: a thin wrapper over `aib doctor` (same options, passed on as given).
# One line per check - config, generated LiteLLM file, ports, every provider, the running gateway's
# /health, the request log, Prometheus when asked - then a verdict; exit 1 when something is broken
# (with --strict, also on warnings). Where the seed script hard-coded its targets, pass them on:
#   -c/--config-dir DIR   (or $AIB_CONFIG_DIR; default config/)
#   -g/--gateway URL      (or $AIB_GATEWAY_URL; default http://127.0.0.1:4000)
#   --prometheus URL      (or $AIB_PROMETHEUS_URL)   --ui-port N   --strict   --json
# $AIB_BIN picks the aib to run (default: the repo's .venv, then PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
aib="${AIB_BIN:-$root/.venv/bin/aib}"
[[ -x "$aib" ]] || aib="$(command -v aib)" || { echo "aib not found: pip install -e . (or set AIB_BIN)" >&2; exit 127; }
exec "$aib" doctor "$@"
