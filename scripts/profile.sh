#!/usr/bin/env bash
# Profile a running gateway under a bounded load: py-spy samples the process while wrk (or curl, when
# wrk is missing) sends chat completions for a fixed time. Nothing is restarted or changed.
#
#   scripts/profile.sh                                  # gateway on 127.0.0.1:4000, model from /v1/models, 15 s
#   scripts/profile.sh --port 4000 --model smollm2 --seconds 20 --connections 16 --out var/profile.svg
#   scripts/profile.sh --pid 12345 --format speedscope --out var/profile.json
#   scripts/profile.sh --stream                         # streaming requests instead
#
# Output: a flame graph SVG (open it in a browser) or a speedscope JSON (https://www.speedscope.app).
# Needs py-spy (pip install py-spy; it is in the bench extra) and permission to ptrace the gateway
# (same user, or root; in a container: --cap-add SYS_PTRACE). docs/observability.md explains what to look for.
set -euo pipefail

port=4000
pid=""
model=""
seconds=15
connections=8
out="var/profile.svg"
format="flamegraph"
stream=false
rate=250

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --pid) pid="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --format) format="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --stream) stream=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "profile.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! [[ "$seconds" =~ ^[0-9]+$ ]] || (( seconds < 1 || seconds > 600 )); then
  echo "profile.sh: --seconds must be 1..600" >&2; exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pyspy="$(command -v py-spy || true)"
[[ -z "$pyspy" && -x "$here/.venv/bin/py-spy" ]] && pyspy="$here/.venv/bin/py-spy"
if [[ -z "$pyspy" ]]; then
  echo "profile.sh: py-spy not found: pip install py-spy (or .venv/bin/pip install -e '.[bench]')" >&2; exit 1
fi

base="http://127.0.0.1:${port}"
if ! curl -fsS -o /dev/null "$base/health/live"; then
  echo "profile.sh: no gateway answers on $base (start one: aib serve --port $port)" >&2; exit 1
fi
if [[ -z "$pid" ]]; then
  # the process listening on the port (ss prints users:(("python",pid=123,fd=7)))
  pid="$(ss -ltnpH "sport = :${port}" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)"
  if [[ -z "$pid" ]]; then
    echo "profile.sh: cannot find the PID listening on :$port; pass --pid" >&2; exit 1
  fi
fi
if [[ -z "$model" ]]; then
  model="$(curl -fsS "$base/v1/models" | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(d[0]["id"] if d else "")')"
  [[ -n "$model" ]] || { echo "profile.sh: the gateway lists no model; pass --model" >&2; exit 1; }
fi

mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
body="$(python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "stream": sys.argv[2] == "true"}))' "$model" "$stream")"
printf '%s' "$body" > "$tmp/body.json"

echo "profiling PID $pid ($base, model $model) for ${seconds}s -> $out"
"$pyspy" record --pid "$pid" --duration "$seconds" --rate "$rate" --format "$format" --output "$out" --nonblocking &
spy=$!
sleep 1  # let py-spy attach before the load starts

if command -v wrk >/dev/null; then
  cat > "$tmp/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$tmp/body.json"); wrk.body = f:read("*a"); f:close()
EOF
  wrk -t1 -c"$connections" -d"$((seconds - 1))s" --timeout 30s -s "$tmp/post.lua" "$base/v1/chat/completions" | sed -n '1,12p'
else
  echo "(wrk not found: sequential curl load)"
  end=$((SECONDS + seconds - 1)); n=0
  while (( SECONDS < end )); do
    curl -fsS -o /dev/null -H 'content-type: application/json' --data-binary @"$tmp/body.json" "$base/v1/chat/completions" || true
    n=$((n + 1))
  done
  echo "$n requests"
fi
wait "$spy"
echo "wrote $out"
