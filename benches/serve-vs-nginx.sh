#!/usr/bin/env bash
# Side-by-side download benchmark (not a test): the same 256 MiB payload served by
# update-edge (release build) and by nginx (sendfile on), driven by the same wrk runs.
# Prints a markdown table: whole-file MB/s, random 1 MiB and 4 KiB range rps, and server
# CPU seconds per GiB served (from /proc, summed over the server's processes).
# The whole-file row is a fixed amount of work (WHOLE_GETS downloads of the payload by
# curl, one after another; default 8 = 2 GiB): a timed wrk run of 256 MiB responses
# counts only what it read before its deadline while the server's CPU covers what it
# had already sent, which made that row vary by 25 % between runs of the same binary.
#   [UE_BIN=path/to/update-edge] benches/serve-vs-nginx.sh [DURATION_SECONDS] [--cold]
# --cold also runs update-edge a second time with a 1 MiB chunk cache, so that every
# read misses it and goes to RocksDB (nginx and both update-edge runs read through the
# page cache alike), and prints the ratios to nginx for both: hot, then cold.
# Loopback only; every wrk run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=10; COLD=""
for a in "$@"; do
  case $a in
    --cold) COLD=1 ;;
    [0-9]*) DUR=$a ;;
    *) echo "usage: serve-vs-nginx.sh [DURATION_SECONDS] [--cold]" >&2; exit 2 ;;
  esac
done
SIZE=$((256 << 20))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
NEEDS="wrk nginx"; [ -n "$COLD" ] && NEEDS="$NEEDS b3sum"
for t in $NEEDS; do command -v $t >/dev/null || { echo "needs $t (apt-get install -y $t)" >&2; exit 2; }; done
# UE_BIN: a given update-edge binary (A/B runs of two builds); otherwise this tree's.
if [ -n "${UE_BIN:-}" ]; then BIN=$UE_BIN; else
  cargo build --release --bin update-edge >&2
  BIN="$CARGO_TARGET_DIR/release/update-edge"
fi
WORK=$(mktemp -d)
cleanup() {
  [ -n "${UE_PID:-}" ] && kill "$UE_PID" 2>/dev/null && wait "$UE_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

chmod 755 "$WORK"
head -c $SIZE /dev/urandom > "$WORK/payload.bin"
HASH=$("$BIN" blob put "$WORK/payload.bin" --data "$WORK/data" 2>/dev/null)
mkdir -p "$WORK/www"; ln "$WORK/payload.bin" "$WORK/www/$HASH"; chmod -R a+rX "$WORK/www"

UE_PORT=18181; NG_PORT=18182
"$BIN" keys init --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
start_ue() { # CACHE_SIZE
  UPDATE_EDGE_TUF_KEYS_DIR="$WORK/keys" UPDATE_EDGE_CACHE_SIZE=$1 UPDATE_EDGE_LOG=warn "$BIN" serve --data "$WORK/data" --listen 127.0.0.1:$UE_PORT &
  UE_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$UE_PORT/readyz" >/dev/null && break; sleep 0.1; done
}
stop_ue() { kill "$UE_PID"; wait "$UE_PID" 2>/dev/null || true; }
start_ue 1GiB
. benches/nginx-baseline.sh
start_nginx "$WORK" "$NG_PORT"

cat > "$WORK/range.lua" <<'LUA'
local size = tonumber(os.getenv("SIZE"))
local len = tonumber(os.getenv("LEN"))
math.randomseed(os.time())
request = function()
  local off = math.random(0, size - len)
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. off .. "-" .. (off + len - 1) })
end
LUA

cpu_ticks() { local t=0; for p in "$@"; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] + f[14])); done; echo $t; }
to_bytes() { awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u); m = 1;
  if (u == "KB") m = 1024; else if (u == "MB") m = 1048576; else if (u == "GB") m = 1073741824; else if (u == "TB") m = 1099511627776;
  printf "%.0f", n * m }'; }

# whole PIDS URL -> the same fields as run, for WHOLE_GETS whole downloads by curl
whole() {
  local pids=$1 url=$2 n=${WHOLE_GETS:-8}
  curl -sf -o /dev/null "$url" # warm up, as run does
  local before after t0 t1 i
  before=$(cpu_ticks $pids); t0=$(date +%s.%N)
  for i in $(seq "$n"); do
    [ "$(curl -sf -o /dev/null -w '%{size_download}' "$url")" = "$SIZE" ] || { echo "whole download from $url failed or was short" >&2; exit 1; }
  done
  t1=$(date +%s.%N); after=$(cpu_ticks $pids)
  awk -v n="$n" -v s="$SIZE" -v t0="$t0" -v t1="$t1" -v a="$after" -v b="$before" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%d %.3f %.0f %.2f\n", n, t1 - t0, n * s, (a - b) / hz }'
}

# run NAME URL WRK_ARGS... -> prints "rps bytes cpu_seconds"
run() {
  local pids=$1 url=$2; shift 2
  local before after out
  # warm up (fills update-edge's cache and the page cache for nginx)
  wrk -t1 -c1 -d2s "$url" >/dev/null 2>&1 || true
  before=$(cpu_ticks $pids)
  out=$(wrk "$@" "$url")
  after=$(cpu_ticks $pids)
  if echo "$out" | grep -q "Non-2xx"; then echo "WARNING: $url answered errors: $(echo "$out" | grep Non-2xx)" >&2; fi
  local reqs read secs
  reqs=$(echo "$out" | awk '/requests in/ { print $1 }')
  secs=$(echo "$out" | awk '/requests in/ { gsub(/s,/, "", $4); print $4 }')
  read=$(echo "$out" | awk '/requests in/ { print $5 }')
  local bytes; bytes=$(to_bytes "$read")
  local hz; hz=$(getconf CLK_TCK)
  echo "$reqs $secs $bytes $(awk -v a="$after" -v b="$before" -v hz="$hz" 'BEGIN { printf "%.2f", (a - b) / hz }')"
}

declare -A R
SERVERS=(update-edge nginx)
[ -n "$COLD" ] && SERVERS=(update-edge update-edge-cold nginx)
for server in "${SERVERS[@]}"; do
  case $server in
    update-edge) pids=$UE_PID; url="http://127.0.0.1:$UE_PORT/v1/blobs/$HASH" ;;
    update-edge-cold) stop_ue; start_ue 1MiB; pids=$UE_PID; url="http://127.0.0.1:$UE_PORT/v1/blobs/$HASH" ;;
    nginx) pids=$(nginx_pids "$WORK"); url="http://127.0.0.1:$NG_PORT/$HASH" ;;
  esac
  R[$server,whole]=$(whole "$pids" "$url")
  R[$server,r1m]=$(SIZE=$SIZE LEN=$((1 << 20)) run "$pids" "$url" -t2 -c32 -d${DUR}s -s "$WORK/range.lua")
  R[$server,r4k]=$(SIZE=$SIZE LEN=4096 run "$pids" "$url" -t2 -c64 -d${DUR}s -s "$WORK/range.lua")
done

echo
echo "| test | server | requests/s | MB/s | server CPU s | CPU s per GiB | CPU s per 1,000 requests |"
echo "|---|---|---|---|---|---|---|"
for t in whole r1m r4k; do
  for server in "${SERVERS[@]}"; do
    read -r reqs secs bytes cpu <<<"${R[$server,$t]}"
    awk -v t=$t -v s=$server -v r="$reqs" -v sec="$secs" -v b="$bytes" -v c="$cpu" 'BEGIN {
      printf "| %s | %s | %.0f | %.0f | %.2f | %.3f | %.3f |\n", t, s, r / sec, b / sec / 1e6, c, (b > 0 ? c / (b / 1073741824) : 0), (r > 0 ? c / r * 1000 : 0) }'
  done
done
echo
for server in "${SERVERS[@]}"; do
  [ "$server" = nginx ] && continue
  for t in whole r1m r4k; do
    read -r ru su bu cu <<<"${R[$server,$t]}"; read -r rn sn bn cn <<<"${R[nginx,$t]}"
    awk -v s=$server -v t=$t -v ru="$ru" -v su="$su" -v rn="$rn" -v sn="$sn" -v bu="$bu" -v cu="$cu" -v bn="$bn" -v cn="$cn" 'BEGIN {
      printf "%s %s: rps ratio to nginx %.2f, CPU-per-GiB ratio %.2f, requests-per-CPU-second ratio %.2f\n", s, t, (ru/su)/(rn/sn), (cu/(bu/1073741824))/(cn/(bn/1073741824)), (ru/cu)/(rn/cn) }'
  done
done
if [ -n "$COLD" ]; then
  # The floor of a verifying cold read: every byte it serves is read from the page
  # cache and hashed with blake3 on one thread, whatever else it does (nginx's sendfile
  # does neither). b3sum over the payload, 4 times per run, median of 3 runs.
  floor=$(for _ in 1 2 3; do /usr/bin/time -f "%U %S" b3sum --num-threads 1 "$WORK/payload.bin" "$WORK/payload.bin" "$WORK/payload.bin" "$WORK/payload.bin" 2>&1 >/dev/null | awk -v s=$SIZE '{ printf "%.3f\n", ($1 + $2) / (4 * s / 1073741824) }'; done | sort -n | sed -n 2p)
  read -r rn sn bn cn <<<"${R[nginx,whole]}"
  awk -v f="$floor" -v bn="$bn" -v cn="$cn" 'BEGIN {
    printf "read + blake3 alone (b3sum, 1 thread): %.3f CPU s per GiB = %.2fx nginx whole-file CPU per GiB\n", f, f / (cn / (bn / 1073741824)) }'
fi
