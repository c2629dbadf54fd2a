#!/usr/bin/env bash
# Cost of the access log (not a test): a demo node (release build) answering update
# checks at about 4,000 a second (wrk, 11 connections each pausing 2 ms between
# requests, distinct device ids), once with `log.access` on and once off, alternating,
# ROUNDS times. Prints the node's CPU seconds per 1,000 checks for each run and the
# median ratio on/off. stderr goes to a file, as journald or a log shipper would take it.
#   benches/access-log-cost.sh [ROUNDS]     (CONNS=N changes the rate)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
CONNS=${CONNS:-11}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin update-edge >&2
  BIN="$CARGO_TARGET_DIR/release/update-edge"
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
W=$(mktemp -d)
P=
trap 'kill $P 2>/dev/null || true; rm -rf "$W"' EXIT
cat > "$W/check.lua" <<'LUA'
request = function()
  local body = '{"product":"demo-device","device_id":"dev-' .. math.random(1, 1000000) .. '","version":"1.0.2"}'
  return wrk.format("POST", "/v1/check", {["Content-Type"] = "application/json"}, body)
end
delay = function()
  return 2
end
LUA
printf '[catalog]\ncheck_rate_per_ip = 0\n' > "$W/node.toml"
ticks() { read -r -a f < "/proc/$1/stat"; echo $((f[13] + f[14])); }
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for access in true false; do
    D="$W/d-$round-$access"; mkdir -p "$D"
    (cd "$D" && UPDATE_EDGE_LOG_ACCESS=$access exec "$BIN" serve --demo --config "$W/node.toml" --data "$D/data" --listen 127.0.0.1:18093 >"$D/log" 2>&1) &
    P=$!
    for _ in $(seq 100); do curl -sf 127.0.0.1:18093/readyz >/dev/null && break; sleep 0.2; done
    for _ in $(seq 300); do grep -q 'demo product' "$D/log" && break; sleep 0.2; done
    # The demo's delta jobs finish first (they would use the same cores).
    for _ in $(seq 600); do
      curl -s 127.0.0.1:18093/metrics | awk '/^update_edge_delta_jobs\{/ { n += $2; seen = 1 } END { exit !(seen && n == 0) }' && break
      sleep 0.5
    done
    c0=$(ticks $P)
    out=$(wrk -t2 -c"$CONNS" -d10s -s "$W/check.lua" http://127.0.0.1:18093)
    c1=$(ticks $P)
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    kill $P; wait $P 2>/dev/null || true; P=
    echo "$round $access $(echo "$out" | awk '/Requests\/sec/ {print $2}') $(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$HZ" 'BEGIN { printf "%.4f", c / hz / n * 1000 }') $(grep -c 'update_edge::access' "$D/log" || true)" >> "$W/runs.txt"
    rm -rf "$D"
  done
done
echo "round access checks_per_s cpu_s_per_1000_checks access_lines"
cat "$W/runs.txt"
python3 - "$W/runs.txt" <<'PY'
import statistics as s, sys
rows = [l.split() for l in open(sys.argv[1])]
on = [float(r[3]) for r in rows if r[1] == "true"]
off = [float(r[3]) for r in rows if r[1] == "false"]
rate = s.median(float(r[2]) for r in rows)
print(f"median {rate:.0f} checks/s; CPU per 1,000 checks: on {s.median(on):.4f} s, off {s.median(off):.4f} s, on/off {s.median(on) / s.median(off):.3f}")
PY
