#!/usr/bin/env bash
# Issue-13 acceptance load (not a test): a release node with default limits, then
#  1. 10,000 connections sending half a header plus 200 never-reading HTTP/2 streams on
#     50 connections, while a normal client downloads a 64 MiB build (throughput before
#     and during, node RSS);
#  2. a flood of checks from 100,000 made-up device ids from 127.0.0.1 at 10x the
#     configured per-address rate, while a legitimate device on 127.0.0.2 checks (p99
#     before and during), then the device records held against their cap.
#   benches/hostile-load.sh [RATE_PER_IP=100] [FLOOD_SECS=100]
# Loopback only; every phase is bounded and stops by itself. Prints JSON per phase.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-100}
SECS=${2:-100}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
cargo build --release --bin update-edge >&2
BIN="$CARGO_TARGET_DIR/release/update-edge"
WORK=$(mktemp -d)
cleanup() { kill "${PID:-}" 2>/dev/null || true; wait "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
TOKEN=hostile-load-operator-token
PORT=18491; URL="http://127.0.0.1:$PORT"
"$BIN" keys init --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
printf '[catalog]\ncheck_rate_per_ip = %s\ncheck_burst_per_ip = %s\nmax_devices = 5000\n' "$RATE" "$RATE" > "$WORK/node.toml"
UPDATE_EDGE_TUF_KEYS_DIR="$WORK/keys" UPDATE_EDGE_ADMIN_TOKEN=$TOKEN UPDATE_EDGE_LOG=warn \
  "$BIN" serve --config "$WORK/node.toml" --data "$WORK/data" --listen "127.0.0.1:$PORT" &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
head -c $((64 << 20)) /dev/urandom > "$WORK/build.img"
curl -sf -H "Authorization: Bearer $TOKEN" -X PUT "$URL/v1/products/gw" -d '{"name":"gw"}' >/dev/null
HASH=$(curl -sf -H "Authorization: Bearer $TOKEN" -X PUT "$URL/v1/products/gw/builds/1.0.0" --data-binary @"$WORK/build.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')
export NODE_PID=$PID
echo "== 10,000 half headers + 200 never-reading h2 streams (default limits)"
python3 benches/hostile-load.py slow "$URL" "$HASH" $((64 << 20))
curl -sf "$URL/healthz" >/dev/null && echo "healthz ok after phase 1"
echo "== check flood: 100,000 made-up ids at $((RATE * 10))/s from 127.0.0.1 (limit $RATE/s per address)"
python3 benches/hostile-load.py flood "$URL" $((RATE * 10)) "$SECS"
sleep 2
curl -sf "$URL/healthz" >/dev/null && echo "healthz ok after phase 2"
curl -sf "$URL/metrics" | grep -E '^update_edge_(device_records|device_records_expired_total|checks_total|connections_open) '"|"'^update_edge_checks_total'
