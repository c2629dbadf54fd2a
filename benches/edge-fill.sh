#!/usr/bin/env bash
# Edge-tier benchmark (not a test): one origin and, per round, a fresh edge in front of
# it, on loopback, release builds, the same 256 MiB payload. Per round:
#   - direct: WARM (8) whole downloads from the origin (its cache warm after round 1);
#   - cold 1 MiB range: time to first byte at a fresh edge (its first request: the blob's
#     manifest and the range's first chunk in one upstream round trip) vs the same range
#     at the origin, then RANGES (7) more cold ranges at that edge (chunks only; median);
#   - cold fill: whole download through another fresh edge (every chunk from the origin);
#   - warm: WARM more whole downloads from the edge, edge CPU seconds per GiB, beside the
#     origin's CPU per GiB for WARM downloads of its own over loopback (with LINK, from
#     its side of the link).
# Prints a markdown table of medians over the rounds and the ratios the acceptance
# names.   benches/edge-fill.sh [ROUNDS]
#
# LINK=RATE (for example LINK=1gbit; needs root and iproute2): the origin runs in its own
# network namespace behind a veth pair shaped to RATE each way (tc tbf), the way an
# edge sits near its devices and far from the origin. Direct downloads and the edge's
# fills cross that link; the client-to-edge hop stays on loopback. Without LINK all
# three processes share loopback and the machine's cores, so the figures compare CPU
# cost rather than a network-bound deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WARM=${WARM:-8}
RANGES=${RANGES:-7}
SIZE=$((256 << 20))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
# BIN=path benchmarks that binary instead (a before/after comparison in one go).
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin update-edge >&2
  BIN="$CARGO_TARGET_DIR/release/update-edge"
fi
WORK=$(mktemp -d)
NS=ue-bench-origin
cleanup() {
  kill "${O_PID:-}" "${E_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"
  if [ -n "${LINK:-}" ]; then ip netns del $NS 2>/dev/null || true; ip link del ue-bench0 2>/dev/null || true; fi
}
trap cleanup EXIT
O_PORT=18281; E_PORT=18282; TOKEN=bench-replication-token
O_HOST=127.0.0.1; IN_NS=()
if [ -n "${LINK:-}" ]; then
  [ "$(id -u)" = 0 ] || { echo "LINK needs root (network namespace and tc)" >&2; exit 1; }
  ip netns del $NS 2>/dev/null || true; ip link del ue-bench0 2>/dev/null || true
  ip netns add $NS
  ip link add ue-bench0 type veth peer name ue-bench1
  ip link set ue-bench1 netns $NS
  ip addr add 10.231.0.1/30 dev ue-bench0; ip link set ue-bench0 up
  ip netns exec $NS ip addr add 10.231.0.2/30 dev ue-bench1
  ip netns exec $NS ip link set ue-bench1 up; ip netns exec $NS ip link set lo up
  tc qdisc add dev ue-bench0 root tbf rate "$LINK" burst 1mb latency 50ms
  ip netns exec $NS tc qdisc add dev ue-bench1 root tbf rate "$LINK" burst 1mb latency 50ms
  O_HOST=10.231.0.2; IN_NS=(ip netns exec $NS)
  echo "origin behind a $LINK link (tbf each way)" >&2
fi
O="http://$O_HOST:$O_PORT"; E="http://127.0.0.1:$E_PORT"

head -c $SIZE /dev/urandom > "$WORK/payload.bin"
"$BIN" keys init --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
"$BIN" keys add-edge bench --out "$WORK/edge.pk8" --keys "$WORK/keys" --root-keys "$WORK/root-keys" >/dev/null
HASH=$("$BIN" blob put "$WORK/payload.bin" --data "$WORK/origin" 2>/dev/null)
UPDATE_EDGE_TUF_KEYS_DIR="$WORK/keys" UPDATE_EDGE_CACHE_SIZE=1GiB UPDATE_EDGE_REPLICATION_TOKEN=$TOKEN UPDATE_EDGE_LOG=warn \
  "${IN_NS[@]}" "$BIN" serve --data "$WORK/origin" --listen $O_HOST:$O_PORT &
O_PID=$!
for _ in $(seq 100); do curl -sf "$O/readyz" >/dev/null && break; sleep 0.1; done

ticks() { read -r -a f < "/proc/$1/stat"; echo $((f[13] + f[14])); }
HZ=$(getconf CLK_TCK)
# A fresh edge (empty data dir) in front of the origin, ready (catalog replicated).
start_edge() {
  if [ -n "${E_PID:-}" ]; then kill "$E_PID"; wait "$E_PID" 2>/dev/null || true; fi
  rm -rf "$WORK/edge"
  UPDATE_EDGE_TUF_KEYS_DIR="$WORK/none" UPDATE_EDGE_CACHE_SIZE=1GiB UPDATE_EDGE_UPSTREAM=$O UPDATE_EDGE_UPSTREAM_TOKEN=$TOKEN UPDATE_EDGE_LOG=warn \
    "$BIN" serve --data "$WORK/edge" --listen 127.0.0.1:$E_PORT --config <(printf '[tuf]\ndirector_key = "%s"\n[edge]\nprefetch_rate = 0\n' "$WORK/edge.pk8") &
  E_PID=$!
  for _ in $(seq 200); do curl -s "$E/readyz" | grep -q '"ready":true' && break; sleep 0.1; done
}
# Waits until process PID has used no CPU for 0.5 s (at most 30 s): what it was doing
# (starting up, finishing a fill) stays out of what is measured next.
settle() {
  local before now
  before=$(ticks "$1")
  for _ in $(seq 60); do
    sleep 0.5; now=$(ticks "$1")
    [ "$now" = "$before" ] && return
    before=$now
  done
}
get() { curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}\n' "$@"; }
echo "round direct_s ttfb_origin_s ttfb_edge_s cold_fill_s warm_s origin_cpu_per_gib edge_cpu_per_gib fill_edge_cpu_s fill_origin_cpu_s more_ttfb_origin_s more_ttfb_edge_s" > "$WORK/rounds.txt"
for r in $(seq "$ROUNDS"); do
  # WARM downloads per side (2 GiB), so a CPU tick (10 ms) is under 5 % of what is measured.
  c0=$(ticks $O_PID)
  direct=0
  for _ in $(seq $WARM); do
    read -r _ t n < <(get "$O/v1/blobs/$HASH")
    [ "$n" = "$SIZE" ] || { echo "direct download incomplete: $n" >&2; exit 1; }
    direct=$(awk -v a="$direct" -v b="$t" 'BEGIN { print a + b }')
  done
  direct=$(awk -v a="$direct" -v n=$WARM 'BEGIN { print a / n }')
  c1=$(ticks $O_PID)
  if [ -n "${LINK:-}" ]; then
    # The origin's serving CPU from a client on its side of the link, over loopback as
    # the edge's warm downloads are: a download across the veth pair leaves the client's
    # receive work in softirq off the origin's threads, one over loopback runs part of
    # it in the sender's, so the two paths do not compare.
    c0=$(ticks $O_PID)
    for _ in $(seq $WARM); do
      read -r _ _ n < <("${IN_NS[@]}" curl -s -o /dev/null -w '%{time_starttransfer} %{time_total} %{size_download}\n' "$O/v1/blobs/$HASH")
      [ "$n" = "$SIZE" ] || { echo "origin-side download incomplete: $n" >&2; exit 1; }
    done
    c1=$(ticks $O_PID)
  fi
  start_edge
  settle $E_PID # its start (store open, catalog replication) done
  off=$(( (RANDOM * 32768 + RANDOM) % (SIZE - (1 << 20)) ))
  range="$off-$((off + (1 << 20) - 1))"
  read -r ttfb_o _ _ < <(get -r "$range" "$O/v1/blobs/$HASH")
  read -r ttfb_e _ n < <(get -r "$range" "$E/v1/blobs/$HASH")
  [ "$n" = $((1 << 20)) ] || { echo "edge range incomplete: $n" >&2; exit 1; }
  : > "$WORK/ranges.txt"
  for _ in $(seq "$RANGES"); do
    off=$(( (RANDOM * 32768 + RANDOM) % (SIZE - (1 << 20)) ))
    range="$off-$((off + (1 << 20) - 1))"
    read -r to _ _ < <(get -r "$range" "$O/v1/blobs/$HASH")
    read -r te _ n < <(get -r "$range" "$E/v1/blobs/$HASH")
    [ "$n" = $((1 << 20)) ] || { echo "edge range incomplete: $n" >&2; exit 1; }
    echo "$to $te" >> "$WORK/ranges.txt"
  done
  read -r more_o more_e < <(python3 -c 'import statistics as s, sys; r = [l.split() for l in open(sys.argv[1])]; print(s.median(float(x[0]) for x in r), s.median(float(x[1]) for x in r))' "$WORK/ranges.txt")
  start_edge
  f0=$(ticks $E_PID); g0=$(ticks $O_PID)
  read -r _ cold n < <(get "$E/v1/blobs/$HASH")
  f1=$(ticks $E_PID); g1=$(ticks $O_PID)
  [ "$n" = "$SIZE" ] || { echo "cold fill incomplete: $n" >&2; exit 1; }
  # The fill's aftermath (the blob's promotion, its whole-blob hash; RocksDB's flush)
  # finishes off the measured path.
  settle $E_PID
  e0=$(ticks $E_PID)
  warm=0
  for _ in $(seq $WARM); do
    read -r _ t _ < <(get "$E/v1/blobs/$HASH")
    warm=$(awk -v a="$warm" -v b="$t" 'BEGIN { print a + b }')
  done
  warm=$(awk -v a="$warm" -v n=$WARM 'BEGIN { print a / n }')
  e1=$(ticks $E_PID)
  awk -v r="$r" -v d="$direct" -v to="$ttfb_o" -v te="$ttfb_e" -v c="$cold" -v w="$warm" -v n=$WARM \
      -v oc=$((c1 - c0)) -v ec=$((e1 - e0)) -v fe=$((f1 - f0)) -v fo=$((g1 - g0)) -v mo="$more_o" -v me="$more_e" -v hz="$HZ" -v gib=$((SIZE >> 30 > 0 ? SIZE >> 30 : 1)) -v size="$SIZE" \
      'BEGIN { g = size / 2^30; printf "%d %.3f %.5f %.5f %.3f %.3f %.3f %.3f %.2f %.2f %.5f %.5f\n", r, d, to, te, c, w, oc / hz / (n * g), ec / hz / (n * g), fe / hz, fo / hz, mo, me }' >> "$WORK/rounds.txt"
  kill $E_PID; wait $E_PID 2>/dev/null || true; E_PID=
done
cat "$WORK/rounds.txt" >&2
python3 - "$WORK/rounds.txt" "$SIZE" "$(nproc)" "${LINK:-}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
size = int(sys.argv[2])
cores, link = int(sys.argv[3]), sys.argv[4]
col = lambda i: statistics.median(float(r[i]) for r in rows)
direct, ttfb_o, ttfb_e, cold, warm, ocpu, ecpu = (col(i) for i in range(1, 8))
mbs = lambda s: size / s / 1e6
print(f"| measure ({len(rows)} rounds, medians) | origin | edge | edge / origin |")
print("|---|---|---|---|")
print(f"| whole 256 MiB, MB/s (origin direct; edge cold fill) | {mbs(direct):.0f} | {mbs(cold):.0f} | {mbs(cold)/mbs(direct):.2f} |")
print(f"| time to first byte, cold 1 MiB range (edge's first request), ms | {ttfb_o*1e3:.2f} | {ttfb_e*1e3:.2f} | {ttfb_e/ttfb_o:.2f} |")
mo, me = col(10), col(11)
print(f"| time to first byte, further cold 1 MiB ranges (median of medians), ms | {mo*1e3:.2f} | {me*1e3:.2f} | {me/mo:.2f} |")
print(f"| warm whole-file CPU s per GiB | {ocpu:.3f} | {ecpu:.3f} | {ecpu/ocpu:.2f} |")
print(f"| warm edge whole-file MB/s | | {mbs(warm):.0f} | |")
print(f"| cold fill: CPU s of the edge / of the origin | {col(9):.2f} | {col(8):.2f} | |")
if not link:
    # On one machine the fill is bound by CPU, not by a link: what a fill at 0.8x the
    # direct download's rate may spend, in all three processes, against what it took.
    budget = cores * direct / 0.8
    print(f"\ncold fill at 0.8x direct leaves {cores} cores x {direct / 0.8:.3f} s = {budget:.2f} CPU-s"
          f" for edge, origin and client; this fill's edge and origin took {col(8) + col(9):.2f}")
PY
