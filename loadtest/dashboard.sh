#!/usr/bin/env bash
# The README's dashboard picture: a real Prometheus scrapes a node (with the shipped
# alert rules loaded) while loadtest/run.sh drives the patch-tuesday scenario at it, and
# the general ring's rollout is raised 10 → 25 → 50 → 100 % during the run with
# `update-edge admin ring set`; then loadtest/render-dashboard.py draws every panel of
# config/grafana-dashboard.json from Prometheus' answers to the dashboard's own queries.
#   loadtest/dashboard.sh OUTDIR [--duration SECONDS]   (default 120)
# Writes OUTDIR/dashboard.png, OUTDIR/alerts.json (alerts active at the end) and the
# run's own reports under OUTDIR/run. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: dashboard.sh OUTDIR [--duration SECONDS]}
DURATION=120
[ "${2:-}" = --duration ] && DURATION=${3:?}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
command -v prometheus >/dev/null || { echo "needs prometheus (Debian package prometheus)" >&2; exit 2; }
VENV="${UPDATE_EDGE_VENV:-$HOME/.cache/update-edge-venv}"
[ -x "$VENV/bin/python3" ] || python3 -m venv "$VENV"
"$VENV/bin/python3" -c 'import matplotlib' 2>/dev/null || "$VENV/bin/pip" install -q 'matplotlib==3.10.*'
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
cargo build --release --workspace --bins >&2

export PORT=${PORT:-18380}
PROM_PORT=$((PORT + 90))
WORK=$(mktemp -d)
cleanup() {
  [ -n "${RAMP_PID:-}" ] && kill "$RAMP_PID" 2>/dev/null || true
  [ -n "${PROM_PID:-}" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cat > "$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - $PWD/config/alerts.yml
scrape_configs:
  - job_name: update-edge
    static_configs:
      - targets: ["127.0.0.1:$PORT"]
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$OUT/prometheus.log" 2>&1 &
PROM_PID=$!
PROM="http://127.0.0.1:$PROM_PORT"
for _ in $(seq 100); do curl -sf "$PROM/-/ready" >/dev/null && break; sleep 0.2; done

# The rollout ramp, once the scenario starts (run.sh creates summary.md as it does); each
# step is marked on the picture, as is the end of publishing.
echo loadtest-operator-token > "$WORK/token"
: > "$WORK/marks"
(
  while [ ! -e "$OUT/run/summary.md" ]; do sleep 0.2; done
  echo "$(date +%s) load starts" >> "$WORK/marks"
  for p in 10 25 50 100; do
    echo "$(date +%s) general $p %" >> "$WORK/marks"
    "$CARGO_TARGET_DIR/release/update-edge" admin --server "http://127.0.0.1:$PORT" --token-file "$WORK/token" \
      ring set loadtest general 1.0.2 --percent "$p" >&2
    sleep "$((DURATION / 4))"
  done
) &
RAMP_PID=$!

START=$(date +%s)
loadtest/run.sh patch-tuesday "$OUT/run" -- --duration "$DURATION" --max-requests 1000000
END=$(date +%s)
curl -s "$PROM/api/v1/alerts" > "$OUT/alerts.json"
"$VENV/bin/python3" loadtest/render-dashboard.py --prometheus "$PROM" --start "$START" --end "$END" \
  --title "3 builds published, then patch-tuesday load; ring 'general' raised 10 → 100 %" \
  --marks "$WORK/marks" --out "$OUT/dashboard.png"
