#!/usr/bin/env bash
# Install the gateway and UI as systemd *user* services (no root needed).
#
#   deploy/systemd/install.sh              # write the units, create ~/.config/aib/env, daemon-reload
#   deploy/systemd/install.sh --enable     # ... and enable + start the gateway now
#   deploy/systemd/install.sh --check      # write nothing; verify the units with systemd-analyze
#
# The units name the repository as %h/ai-backend-unified; this script writes them to
# ${XDG_CONFIG_HOME:-~/.config}/systemd/user/ with that replaced by this checkout's real path.
# Run the services without a login session: sudo loginctl enable-linger "$USER".
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
units_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
env_file="${XDG_CONFIG_HOME:-$HOME/.config}/aib/env"
systemctl="${SYSTEMCTL:-systemctl}"
enable=false
check=false

while [[ $# -gt 0 ]]; do
  case "$1" in
    --enable) enable=true; shift ;;
    --check) check=true; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [[ "$repo" =~ [[:space:]] ]]; then
  echo "install.sh: the repository path '$repo' contains spaces; systemd needs them escaped: move it" >&2
  exit 2
fi
[[ -x "$repo/.venv/bin/aib" ]] || { echo "install.sh: $repo/.venv/bin/aib not found: run make install first" >&2; exit 1; }

render() {  # unit file -> stdout, with this checkout's path
  sed "s#%h/ai-backend-unified#$repo#g" "$1"
}

if $check; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  for unit in aib-gateway.service aib-ui.service; do render "$here/$unit" > "$tmp/$unit"; done
  export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$tmp}"  # systemd-analyze --user needs one, even without systemd
  (cd "$tmp" && systemd-analyze --user verify aib-gateway.service aib-ui.service)
  echo "units verified"
  exit 0
fi

mkdir -p "$units_dir"
for unit in aib-gateway.service aib-ui.service; do
  render "$here/$unit" > "$units_dir/$unit.tmp"
  mv "$units_dir/$unit.tmp" "$units_dir/$unit"
  echo "wrote $units_dir/$unit"
done

if [[ ! -e "$env_file" ]]; then
  mkdir -p "$(dirname "$env_file")"
  (umask 077 && cat > "$env_file" <<'ENV'
# Environment of the aib services: KEY=value lines (systemd EnvironmentFile syntax). Keep it mode 600.
# Keys named by `api_key_env` in config/providers.yaml:
# OPENAI_API_KEY=...
# ANTHROPIC_API_KEY=...
# Protect /admin/* with a bearer token:
# AIB_ADMIN_KEY=...
# AIB_LOG_FORMAT=json
ENV
  )
  echo "wrote $env_file (mode 600): put provider keys there"
fi

if command -v "$systemctl" >/dev/null && "$systemctl" --user daemon-reload 2>/dev/null; then
  echo "systemd reloaded its user units"
  if $enable; then
    "$systemctl" --user enable --now aib-gateway.service
    echo "aib-gateway enabled and started: journalctl --user -u aib-gateway -f"
  fi
else
  echo "no systemd user manager here: the units are in place for when there is one"
fi
$enable || echo "next: systemctl --user enable --now aib-gateway   (and aib-ui once the UI is installed)"
