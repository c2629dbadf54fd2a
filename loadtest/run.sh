#!/usr/bin/env bash
# Run a load-test scenario against a fresh update-edge node on loopback.
#   loadtest/run.sh SCENARIO OUTDIR [--baseline nginx] [--sweep "R1 R2 ..."] [--payload-mib N]
#                   [--edges N] [--cold] [-- extra update-edge-loadtest flags, e.g. --rate 500 --duration 20 --http2]
# Builds release binaries, starts a node with a temp data dir, seeds product "loadtest"
# with builds 1.0.0, 1.0.1, 1.0.2 (waits for the 1.0.1 -> 1.0.2 delta), scrapes /metrics
# before and after, records the node's CPU seconds and peak RSS, runs the scenario, and
# stops the node. --baseline nginx also serves the same payload files with nginx
# (sendfile on) and drives the same download traffic at both (or, for steady-checks,
# measures nginx's small-file rps with wrk), writing baseline.md with ratios.
# --sweep runs the scenario at each arrival rate and reports the highest rate whose
# check p99 stays <= 20 ms. --edges N puts N cold edges (pre-seeding off) in front of the
# origin, runs the scenario through them (one generator per edge, the arrival rate split
# between them) and writes edges.md: per artifact, what the edges served against what
# left the origin. --cold gives the nodes a 1 MiB chunk cache, so downloads read RocksDB
# (through the page cache) instead of memory. Everything targets 127.0.0.1 and stops by
# itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:?usage: run.sh SCENARIO OUTDIR [--baseline nginx] [--sweep "R..."] [--payload-mib N] [-- loadtest flags]}
OUT=${2:?usage: run.sh SCENARIO OUTDIR ...}
shift 2
BASELINE=""; SWEEP=""; PAYLOAD_MIB=64; EDGES=0; CACHE=1GiB; EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --baseline) BASELINE=$2; shift 2 ;;
    --sweep) SWEEP=$2; shift 2 ;;
    --payload-mib) PAYLOAD_MIB=$2; shift 2 ;;
    --edges) EDGES=$2; shift 2 ;;
    --cold) CACHE=1MiB; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -f "$SCENARIO" ] || SCENARIO="loadtest/scenarios/$SCENARIO.toml"
NAME=$(basename "$SCENARIO" .toml)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
cargo build --release --workspace --bins >&2
BIN="$CARGO_TARGET_DIR/release"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
PORT=${PORT:-18380}; NG_PORT=$((PORT + 1)); TOKEN=loadtest-operator-token
EDGE_PIDS=(); EDGE_URLS=()
cleanup() {
  for p in "${EDGE_PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  [ -n "${NODE_PID:-}" ] && kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
URL="http://127.0.0.1:$PORT"

# Payloads: 1.0.0 unrelated, 1.0.1 random, 1.0.2 = 1.0.1 with realistic edits.
mkdir -p "$WORK/payload"
python3 benches/gen-pair.py "$WORK/payload" "$PAYLOAD_MIB" 7 >&2
head -c $((PAYLOAD_MIB << 20)) /dev/urandom > "$WORK/payload/v100"

"$BIN/update-edge" keys init --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
for i in $(seq "$EDGES"); do
  "$BIN/update-edge" keys add-edge "edge-$i" --out "$WORK/edge-$i.pk8" --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
done
# The whole simulated fleet comes from 127.0.0.1: no per-address check limit.
printf '[catalog]\ncheck_rate_per_ip = 0\n' > "$WORK/origin.toml"
UPDATE_EDGE_TUF_KEYS_DIR="$WORK/keys" UPDATE_EDGE_ADMIN_TOKEN=$TOKEN UPDATE_EDGE_CACHE_SIZE=$CACHE UPDATE_EDGE_LOG=warn \
  UPDATE_EDGE_REPLICATION_TOKEN=$TOKEN \
  "$BIN/update-edge" serve --config "$WORK/origin.toml" --data "$WORK/data" --listen "127.0.0.1:$PORT" >"$OUT/node.log" 2>&1 &
NODE_PID=$!
for _ in $(seq 100); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done
op() { curl -sf -H "Authorization: Bearer $TOKEN" "$@"; }
op -X PUT "$URL/v1/products/loadtest" -d '{"name":"Load test device"}' >/dev/null
op -X PUT "$URL/v1/products/loadtest/builds/1.0.0?kind=os" --data-binary @"$WORK/payload/v100" >/dev/null
op -X PUT "$URL/v1/products/loadtest/builds/1.0.1?kind=os" --data-binary @"$WORK/payload/big.old" >/dev/null
op -X PUT "$URL/v1/products/loadtest/builds/1.0.2?kind=os" --data-binary @"$WORK/payload/big.new" >/dev/null
PERCENT=100; [ "$NAME" = steady-checks ] && PERCENT=1
op -X PUT "$URL/v1/products/loadtest/rings/general" -d "{\"version\":\"1.0.2\",\"percent\":$PERCENT}" >/dev/null
op -X PUT "$URL/v1/products/loadtest/rings/preview" -d '{"version":"1.0.2","percent":100}' >/dev/null
echo "waiting for the 1.0.1 -> 1.0.2 delta..." >&2
for _ in $(seq 600); do
  curl -sf "$URL/v1/check" -d '{"product":"loadtest","device_id":"probe","version":"1.0.1","ring":"preview"}' | grep -q '"type":"delta"' && break
  sleep 0.5
done
# Then until no delta job is queued or running (the other pairs publishing scheduled),
# so the node's CPU seconds below measure the scenario, not background deltas.
echo "waiting for the delta queue to drain..." >&2
for _ in $(seq 1200); do
  curl -sf "$URL/metrics" | awk '/^update_edge_delta_jobs\{/ { n += $2; seen = 1 } END { exit !(seen && n == 0) }' && break
  sleep 0.5
done

# Edges: fresh data dirs, pre-seeding off (cold: every byte they serve first comes from
# the origin on demand).
for i in $(seq "$EDGES"); do
  port=$((PORT + 10 + i))
  printf '[tuf]\ndirector_key = "%s"\n[edge]\nprefetch_rate = 0\n[catalog]\ncheck_rate_per_ip = 0\n' "$WORK/edge-$i.pk8" > "$WORK/edge-$i.toml"
  UPDATE_EDGE_UPSTREAM=$URL UPDATE_EDGE_UPSTREAM_TOKEN=$TOKEN UPDATE_EDGE_CACHE_SIZE=$CACHE UPDATE_EDGE_LOG=warn \
    UPDATE_EDGE_TUF_KEYS_DIR="$WORK/no-keys" UPDATE_EDGE_ADMIN_TOKEN=$TOKEN \
    "$BIN/update-edge" serve --config "$WORK/edge-$i.toml" --data "$WORK/edge-$i" --listen "127.0.0.1:$port" >"$OUT/edge-$i.log" 2>&1 &
  EDGE_PIDS+=($!); EDGE_URLS+=("http://127.0.0.1:$port")
done
for u in "${EDGE_URLS[@]}"; do
  for _ in $(seq 200); do curl -s "$u/readyz" | grep -q '"ready":true' && break; sleep 0.1; done
  curl -s "$u/readyz" | grep -q '"director_key_authorised":true' || { echo "edge $u not ready" >&2; exit 1; }
done

cpu_secs() { local t=0; for p in "$@"; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done; awk -v t=$t -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }
metric() { awk -v n="$1" '$1 == n { print $2 }' "$2"; }

run_scenario() { # OUTDIR TARGET [flags]
  local dir=$1 target=$2; shift 2
  mkdir -p "$dir"
  "$BIN/update-edge-loadtest" --target "$target" --scenario "$SCENARIO" --out "$dir" "$@" "${EXTRA[@]}" | tee "$dir/summary.md"
}

curl -s "$URL/metrics" > "$OUT/metrics-before.txt"
CPU0=$(cpu_secs $NODE_PID)
# Node RSS once a second while the scenario runs (VmHWM also counts the seeding), and
# its anonymous part: the node's own memory, without the page cache RocksDB maps
# (store.mmap_reads), which the kernel reclaims like any page cache.
( while kill -0 "$NODE_PID" 2>/dev/null; do awk '/VmRSS|RssAnon/ { printf "%s ", $2 } END { print "" }' "/proc/$NODE_PID/status"; sleep 1; done ) > "$OUT/node-rss-kib.txt" 2>/dev/null &
RSS_SAMPLER=$!
if [ -n "$SWEEP" ]; then
  echo "| arrival rate /s | checks/s | p50 ms | p99 ms | p99.9 ms | errors |" > "$OUT/sweep.md"
  echo "|---|---|---|---|---|---|" >> "$OUT/sweep.md"
  BEST=0
  for r in $SWEEP; do
    run_scenario "$OUT/rate-$r" "$URL" --rate "$r" >&2
    read -r cps p50 p99 p999 errs < <(python3 -c "import json,sys; d=json.load(open('$OUT/rate-$r/report.json')); print(d['checks_per_sec'], d['check_p50_ms'], d['check_p99_ms'], d['check_p999_ms'], d['errors'])")
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %s |\n' "$r" "$cps" "$p50" "$p99" "$p999" "$errs" >> "$OUT/sweep.md"
    if awk -v p="$p99" -v e="$errs" 'BEGIN { exit !(p <= 20 && e == 0) }'; then BEST=$r; fi
  done
  echo "highest arrival rate with check p99 <= 20 ms and 0 errors: $BEST/s" | tee -a "$OUT/sweep.md"
elif [ "$EDGES" -gt 0 ]; then
  RATE=$(awk -F= '$1 ~ /^rate *$/ { gsub(/[ #].*/, "", $2); print $2 + 0 }' <(sed 's/ *= */=/' "$SCENARIO"))
  for i in $(seq "$EDGES"); do curl -s "${EDGE_URLS[$((i - 1))]}/metrics" > "$OUT/edge-$i-metrics-before.txt"; done
  E_CPU0=$(cpu_secs "${EDGE_PIDS[@]}")
  gens=()
  for i in $(seq "$EDGES"); do
    run_scenario "$OUT/edge-$i" "${EDGE_URLS[$((i - 1))]}" --rate "$(awk -v r="$RATE" -v n="$EDGES" 'BEGIN { print r / n }')" >"$OUT/edge-$i.summary" &
    gens+=($!)
  done
  for g in "${gens[@]}"; do wait "$g"; done
  E_CPU1=$(cpu_secs "${EDGE_PIDS[@]}")
  for i in $(seq "$EDGES"); do cat "$OUT/edge-$i.summary"; curl -s "${EDGE_URLS[$((i - 1))]}/metrics" > "$OUT/edge-$i-metrics-after.txt"; done
else
  run_scenario "$OUT" "$URL"
fi
CPU1=$(cpu_secs $NODE_PID)
curl -s "$URL/metrics" > "$OUT/metrics-after.txt"
RSS_KB=$(awk '/VmHWM/ { print $2 }' "/proc/$NODE_PID/status")
kill "$RSS_SAMPLER" 2>/dev/null || true
RUN_RSS_KB=$(awk '{ print $1 }' "$OUT/node-rss-kib.txt" | sort -n | tail -1)
RUN_ANON_KB=$(awk '{ print $2 }' "$OUT/node-rss-kib.txt" | sort -n | tail -1)
SERVED=$(awk -v a="$(metric update_edge_bytes_served_total "$OUT/metrics-after.txt")" -v b="$(metric update_edge_bytes_served_total "$OUT/metrics-before.txt")" 'BEGIN { printf "%.0f", a - b }')
cat > "$OUT/node.json" <<JSON
{"cpu_seconds": $(awk -v a="$CPU1" -v b="$CPU0" 'BEGIN { printf "%.2f", a - b }'), "peak_rss_bytes": $((RSS_KB * 1024)), "scenario_peak_rss_bytes": $((${RUN_RSS_KB:-0} * 1024)), "scenario_peak_anon_rss_bytes": $((${RUN_ANON_KB:-0} * 1024)), "bytes_served": $SERVED}
JSON
echo "node: $(cat "$OUT/node.json")" | tee "$OUT/node.md"

if [ "$EDGES" -gt 0 ]; then
  # One copy of each artifact: the full 1.0.2 payload and the 1.0.1 -> 1.0.2 delta.
  curl -sf "$URL/v1/check" -d '{"product":"loadtest","device_id":"probe","version":"1.0.1","ring":"preview"}' > "$WORK/probe.json"
  python3 - "$OUT" "$EDGES" "$WORK/probe.json" "$(awk -v a="$E_CPU1" -v b="$E_CPU0" 'BEGIN { print a - b }')" <<'PY' | tee "$OUT/edges.md"
import json, sys
out, n, probe, edge_cpu = sys.argv[1], int(sys.argv[2]), json.load(open(sys.argv[3])), float(sys.argv[4])
def series(path):
    d = {}
    for line in open(path):
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try: d[k] = float(v)
            except ValueError: pass
    return d
def delta(before, after, key): return after.get(key, 0) - before.get(key, 0)
ob, oa = series(f"{out}/metrics-before.txt"), series(f"{out}/metrics-after.txt")
origin_egress = delta(ob, oa, "update_edge_bytes_served_total")
sizes = {("os" if a["type"] == "full" else "delta"): a["size"] for a in probe["update"]["artifacts"]}
served, filled = {}, {}
for i in range(1, n + 1):
    b, a = series(f"{out}/edge-{i}-metrics-before.txt"), series(f"{out}/edge-{i}-metrics-after.txt")
    for kind in sizes:
        served[kind] = served.get(kind, 0) + delta(b, a, f'update_edge_artifact_bytes_served_total{{kind="{kind}"}}')
        filled[kind] = filled.get(kind, 0) + delta(b, a, f'update_edge_upstream_artifact_bytes_total{{kind="{kind}"}}')
print(f"origin + {n} edge(s), cold edges; edges' CPU during the run: {edge_cpu:.2f} s")
print()
print("| artifact | size | bytes the edges served | bytes filled from the origin | filled / one copy |")
print("|---|---|---|---|---|")
one_copy = 0
for kind, size in sizes.items():
    if served[kind] > 0:
        one_copy += size
    print(f"| {kind} | {size} | {served[kind]:.0f} | {filled[kind]:.0f} | {filled[kind] / size:.3f} |")
print()
print(f"origin egress (all bytes it served): {origin_egress:.0f} = {origin_egress / one_copy:.3f} x one copy of each artifact served ({one_copy} bytes); edges served {sum(served.values()):.0f} bytes ({sum(served.values()) / max(origin_egress, 1):.1f} x what left the origin)")
PY
fi

if [ "$BASELINE" = nginx ]; then
  command -v nginx >/dev/null || { echo "baseline needs nginx" >&2; exit 2; }
  mkdir -p "$WORK/www"
  H1=$(b3sum --no-names "$WORK/payload/big.new")
  ln "$WORK/payload/big.new" "$WORK/www/$H1"
  head -c 1024 /dev/urandom > "$WORK/www/small"
  chmod 755 "$WORK" "$WORK/payload"; chmod -R a+rX "$WORK/www"
  . benches/nginx-baseline.sh
  start_nginx "$WORK" "$NG_PORT"
  NG_PIDS=$(nginx_pids "$WORK")
  SIZE=$(stat -c %s "$WORK/payload/big.new")
  echo "[{\"url\":\"$URL/v1/blobs/$H1\",\"size\":$SIZE,\"blake3\":\"$H1\"}]" > "$WORK/ue.json"
  echo "[{\"url\":\"http://127.0.0.1:$NG_PORT/$H1\",\"size\":$SIZE,\"blake3\":\"$H1\"}]" > "$WORK/ng.json"
  {
    echo "| server | download MB/s | server CPU s | CPU s per GiB | errors | verified |"
    echo "|---|---|---|---|---|---|"
  } > "$OUT/baseline.md"
  if [ "$NAME" = steady-checks ]; then
    command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 2; }
    wrk -t2 -c64 -d10s "http://127.0.0.1:$NG_PORT/small" > "$OUT/nginx-small-file.txt"
    echo "nginx small-file (1 KiB) rps, wrk -t2 -c64 -d10s: $(awk '/Requests\/sec/ { print $2 }' "$OUT/nginx-small-file.txt")" | tee -a "$OUT/baseline.md"
  else
    for side in update-edge nginx; do
      if [ $side = update-edge ]; then pids=$NODE_PID; list="$WORK/ue.json"; target=$URL; else pids=$NG_PIDS; list="$WORK/ng.json"; target="http://127.0.0.1:$NG_PORT"; fi
      c0=$(cpu_secs $pids)
      run_scenario "$OUT/static-$side" "$target" --static-artifacts "$list" >&2
      c1=$(cpu_secs $pids)
      python3 - "$OUT/static-$side/report.json" "$side" "$c0" "$c1" >> "$OUT/baseline.md" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); cpu = float(sys.argv[4]) - float(sys.argv[3])
gib = d["download_bytes"] / 2**30
print(f"| {sys.argv[2]} | {d['download_bytes_per_sec']/1e6:.1f} | {cpu:.2f} | {cpu/gib if gib else 0:.3f} | {d['errors']} | {d['verified']} |")
PY
    done
  fi
  cat "$OUT/baseline.md"
fi
