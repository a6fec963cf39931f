#!/usr/bin/env bash
# Run a real Prometheus (the Debian package) as a plain foreground process against a running gateway,
# with monitoring/prometheus.yml and monitoring/alerts.yml. No Docker needed. Ctrl-C stops it.
#
#   scripts/run-prometheus.sh                       # gateway 127.0.0.1:4000, Prometheus on 127.0.0.1:9090
#   scripts/run-prometheus.sh --gateway 127.0.0.1:4100 --port 9191 --data var/prometheus --interval 5s
#   scripts/run-prometheus.sh --check               # only validate the config and rules (promtool)
#
# Installs the `prometheus` package with apt-get when it is missing (root or sudo). Data goes to
# var/prometheus (kept between runs). Grafana is not in Debian: use monitoring/docker-compose.yml for
# it, or Prometheus' own graph page at http://127.0.0.1:9090/graph.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gateway="127.0.0.1:4000"
port=9090
data="$here/var/prometheus"
interval=""
retention="15d"
check=false

while [[ $# -gt 0 ]]; do
  case "$1" in
    --gateway) gateway="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --retention) retention="$2"; shift 2 ;;
    --check) check=true; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run-prometheus.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  sudo=""
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "run-prometheus.sh: install prometheus as root: apt-get install prometheus" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "installing the Debian prometheus package (apt-get)..."
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
fi

# Copy the config and the rules next to each other, pointing the gateway job at --gateway.
conf="$(mktemp -d)"
trap 'rm -rf "$conf"' EXIT
cp "$here/monitoring/alerts.yml" "$conf/alerts.yml"
sed -e "s/\"127.0.0.1:4000\"/\"${gateway}\"/" "$here/monitoring/prometheus.yml" > "$conf/prometheus.yml"
if [[ -n "$interval" ]]; then
  sed -i -e "s/^  scrape_interval: .*/  scrape_interval: ${interval}/" -e "s/^  evaluation_interval: .*/  evaluation_interval: ${interval}/" "$conf/prometheus.yml"
fi
promtool check config "$conf/prometheus.yml"
if $check; then
  promtool test rules "$here/monitoring/alerts_test.yml"
  exit 0
fi

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "run-prometheus.sh: 127.0.0.1:$port is taken (a prometheus service from the package?). Use --port." >&2
  exit 1
fi
if ! curl -fsS -o /dev/null "http://${gateway}/metrics" 2>/dev/null; then
  echo "note: no gateway answers on http://${gateway}/metrics yet (start it: aib serve); Prometheus keeps trying."
fi
mkdir -p "$data"
echo "Prometheus on http://127.0.0.1:${port} scraping the gateway at ${gateway}; data in ${data}. Ctrl-C stops."
# not exec: the EXIT trap removes the temporary config once Prometheus has stopped
prometheus \
  --config.file="$conf/prometheus.yml" \
  --storage.tsdb.path="$data" \
  --storage.tsdb.retention.time="$retention" \
  --web.listen-address="127.0.0.1:${port}" \
  --web.enable-lifecycle &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
wait "$pid" || true
wait "$pid" 2>/dev/null || true
