#!/usr/bin/env bash
# Publish to a bucket vs publish to the local store only (not a test; issue 12's figures).
# Starts a 3-node Garage cluster on loopback (tests/garage-cluster.sh) and two origins of
# the release build, one with [origin.s3] pointing at it and one without, and publishes
# a fresh random build of SIZE to each in turn, ROUNDS times (alternating, each round its
# own payload, so the bucket never already holds it). Prints each publish's seconds, the
# medians and their ratio; then the bytes the bucket took for the demo product's builds
# against the bytes the local store keeps for them (chunks deduplicated in both).
#   [UE_BIN=path] benches/s3-publish.sh [SIZE_MIB (1024)] [ROUNDS (3)]
# Loopback only; bounded by ROUNDS.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}; ROUNDS=${2:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
if [ -n "${UE_BIN:-}" ]; then BIN=$UE_BIN; else
  cargo build --release --bin update-edge >&2
  BIN="$CARGO_TARGET_DIR/release/update-edge"
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  tests/garage-cluster.sh stop "$WORK/garage" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
GARAGE_PORT_BASE=${GARAGE_PORT_BASE:-24500} tests/garage-cluster.sh start "$WORK/garage" >&2
# shellcheck disable=SC1091
. "$WORK/garage/env"

# Config of origin NAME on PORT; with a 4th argument, with the bucket.
config() {
  local name=$1 port=$2 bucket=${3:-}
  mkdir -p "$WORK/$name"
  cat > "$WORK/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
data_dir = "$WORK/$name/data"
admin_token = "bench-operator-token-0123"
[store]
# Every build fits: the last one's downloads are warm (served from memory) on both.
cache_size = "$((SIZE_MIB * (ROUNDS + 1)))MiB"
[tuf]
keys_dir = "$WORK/$name/keys"
EOF
  if [ -n "$bucket" ]; then
    cat >> "$WORK/$name.toml" <<EOF
[origin.s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
region = "$S3_REGION"
prefix = "$bucket"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
EOF
  fi
  "$BIN" keys init --keys "$WORK/$name/keys" --root-keys "$WORK/$name/root-keys" >/dev/null
}

start() {
  local name=$1 port=$2
  UPDATE_EDGE_LOG=warn,update_edge::bucket=info "$BIN" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf -X PUT -H "Authorization: Bearer bench-operator-token-0123" -d '{"name":"Bench"}' \
    "http://127.0.0.1:$port/v1/products/bench" >/dev/null
}

config local 24580; config s3 24581 bench-run
start local 24580; start s3 24581
publish() {
  local port=$1 round=$2 t0 t1 code
  t0=$(date +%s.%N)
  code=$(curl -s -o "$WORK/out" -w '%{http_code}' -X PUT -H "Authorization: Bearer bench-operator-token-0123" \
    -T "$WORK/payload" "http://127.0.0.1:$port/v1/products/bench/builds/1.0.$round?kind=os")
  t1=$(date +%s.%N)
  [ "$code" = 201 ] || { echo "publish to :$port answered $code: $(cat "$WORK/out")" >&2; exit 1; }
  echo "$t1 - $t0" | bc
}
: > "$WORK/local.t"; : > "$WORK/s3.t"
for r in $(seq "$ROUNDS"); do
  head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/payload"
  # Each publish starts on a settled machine (Garage keeps working after it answers).
  sleep "${SETTLE:-10}"; l=$(publish 24580 "$r")
  sleep "${SETTLE:-10}"; s=$(publish 24581 "$r")
  echo "round $r: local ${l}s, bucket ${s}s (of which writing to the bucket: $(grep -o 'seconds=[0-9.]*' "$WORK/s3.log" | tail -1))" >&2
  echo "$l" >> "$WORK/local.t"; echo "$s" >> "$WORK/s3.t"
done
med() { sort -g "$1" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
L=$(med "$WORK/local.t"); S=$(med "$WORK/s3.t")
echo "| publish of $SIZE_MIB MiB | median s | MB/s |"
echo "|---|---|---|"
awk -v l="$L" -v s="$S" -v m="$SIZE_MIB" 'BEGIN {
  printf "| local store only | %.2f | %.0f |\n| with the bucket | %.2f | %.0f |\n", l, m * 1.048576 / l, s, m * 1.048576 / s
  printf "\nbucket / local throughput: %.2fx\n", l / s }'

# A warm origin's download cost with and without the bucket: the last build (held
# locally by both), whole, to curl; server CPU (user + system, from /proc) per GiB
# served, alternating, DOWNLOAD_ROUNDS (9) rounds of 2 downloads each (a first download warms both).
HASH=$(sed -n 's/.*"hash":"\([0-9a-f]*\)".*/\1/p' "$WORK/out")
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
curl -sf -o /dev/null "http://127.0.0.1:24580/v1/blobs/$HASH"; curl -sf -o /dev/null "http://127.0.0.1:24581/v1/blobs/$HASH"
: > "$WORK/local.cpu"; : > "$WORK/s3.cpu"
for r in $(seq "${DOWNLOAD_ROUNDS:-9}"); do
  for side in local:24580:${PIDS[0]} s3:24581:${PIDS[1]}; do
    IFS=: read -r name port pid <<<"$side"
    t0=$(ticks "$pid")
    for _ in 1 2; do curl -sf -o /dev/null "http://127.0.0.1:$port/v1/blobs/$HASH"; done
    t1=$(ticks "$pid")
    awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v m="$SIZE_MIB" 'BEGIN { print t / hz / (2 * m / 1024) }' >> "$WORK/$name.cpu"
  done
done
LC=$(med "$WORK/local.cpu"); SC=$(med "$WORK/s3.cpu")
awk -v l="$LC" -v s="$SC" -v n="${DOWNLOAD_ROUNDS:-9}" 'BEGIN { printf "\nwarm download, server CPU s per GiB (median of %d): local-only origin %.3f, origin with the bucket %.3f: %.2fx\n", n, l, s, s / l }'

# The demo product's builds: what the bucket took against what the store keeps.
mkdir -p "$WORK/demo"
cat > "$WORK/demo.toml" <<EOF
[server]
listen = "127.0.0.1:24582"
data_dir = "$WORK/demo/data"
[tuf]
keys_dir = "$WORK/demo/keys"
[origin.s3]
bucket = "$S3_BUCKET"
endpoint = "$S3_ENDPOINT"
region = "$S3_REGION"
prefix = "demo"
access_key_id = "$AWS_ACCESS_KEY_ID"
secret_access_key = "$AWS_SECRET_ACCESS_KEY"
EOF
UPDATE_EDGE_LOG=warn "$BIN" serve --demo --config "$WORK/demo.toml" >"$WORK/demo.log" 2>&1 &
PIDS+=($!)
metric() { curl -sf http://127.0.0.1:24582/metrics | awk -v n="$1" '$1 == n { print $2 }'; }
# Written once no delta job is left and the synced sequence has held still for 5 s.
last=""; still=0
for _ in $(seq 300); do
  seq=$(metric update_edge_bucket_synced_sequence 2>/dev/null || true)
  jobs=$(curl -sf http://127.0.0.1:24582/metrics 2>/dev/null | awk '$1 ~ /^update_edge_delta_jobs\{/ { n += $2 } END { print n + 0 }' || echo 1)
  if [ -n "$seq" ] && [ "$seq" != 0 ] && [ "$seq" = "$last" ] && [ "$jobs" = 0 ]; then still=$((still + 1)); else still=0; fi
  last=$seq
  [ "$still" -ge 5 ] && break
  sleep 1
done
put=$(metric update_edge_bucket_put_bytes_total); chunks=$(metric update_edge_bucket_chunks_written_total)
stored=$(metric update_edge_store_bytes)
echo
echo "demo product: bucket took $put bytes ($chunks chunk objects, with manifests and catalog snapshots); the local store keeps $stored chunk bytes"
awk -v p="$put" -v s="$stored" 'BEGIN { printf "bucket / local dedupe: %.3fx\n", p / s }'
