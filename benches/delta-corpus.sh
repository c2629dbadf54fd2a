#!/usr/bin/env bash
# Delta benchmark (not a test): update-edge against the anchors (bsdiff 4.3, xdelta3 -9,
# zstd -19 and -3 --patch-from) on the corpus pairs, and update-edge on a generated
# large pair. Prints one markdown table. Every tool run in the same go, on this machine.
#   benches/delta-corpus.sh CORPUS_DIR [--big SIZE_MIB] [--no-anchors] [--anchors-on-big] [--repeat N] [--pairs "a b"] [--bsdiff-from DIR]
# --bsdiff-from DIR: for a pair with DIR/NAME.bsdiff (a patch bsdiff 4.3 made from these
# inputs earlier; its output depends on the inputs only) and DIR/NAME.bsdiff.time ("wall
# cpu peak_rss_kib" of that run), take those instead of running bsdiff again (hours on
# the 600 MB image); the patch is still applied with bspatch and checked in this run.
# --bsdiff-timeout SECS: bsdiff runs under timeout; a pair it does not finish is reported
# so, and its ratios to bsdiff are left out.
# Pairs: every NAME.old/NAME.new in CORPUS_DIR unless --pairs names them.
# update-edge's own diff and apply run N times each (default 3; the shared machine is
# noisy) and the median-wall run is reported; the anchors, 5-50x slower, run once. Ends with the ratios
# the delta issue's acceptance is stated in.
# CORPUS_DIR comes from ../shared/corpus/fetch-pairs.sh; the big pair is generated there.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:?usage: delta-corpus.sh CORPUS_DIR [--big SIZE_MIB] [--no-anchors] [--anchors-on-big]}
shift
BSDIFF_EARLIER=""; BSDIFF_DNF=""
BIG=0; ANCHORS=1; ANCHORS_BIG=0; PAIRS=""; REPEAT=3
while [ $# -gt 0 ]; do
  case $1 in
    --big) BIG=$2; shift ;;
    --no-anchors) ANCHORS=0 ;;
    --anchors-on-big) ANCHORS_BIG=1 ;;
    --pairs) PAIRS=$2; PAIRS_SET=1; shift ;;  # e.g. --pairs "" for the big pair only
    --repeat) REPEAT=$2; shift ;;
    --bsdiff-from) BSDIFF_FROM=$2; shift ;;
    --bsdiff-timeout) BSDIFF_TIMEOUT=$2; shift ;;
  esac
  shift
done
# Default: every pair fetch-pairs.sh made (NAME.old beside NAME.new), the image too.
if [ -z "${PAIRS_SET:-}" ] && [ -z "$PAIRS" ]; then
  for f in "$CORPUS"/*.old; do
    n=$(basename "$f" .old)
    [ "$n" != big ] && [ -s "$CORPUS/$n.new" ] && PAIRS="$PAIRS $n"
  done
fi
for tool in bsdiff bspatch xdelta3 zstd; do
  command -v $tool >/dev/null || { echo "needs $tool (./dev.sh setup installs it)" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"
# UE=path benchmarks that binary instead (a before/after comparison).
if [ -z "${UE:-}" ]; then
  cargo build --release --bin update-edge >&2
  UE="$CARGO_TARGET_DIR/release/update-edge"
fi
OUT=$(mktemp -d)
# Patches are applied with update-edge-device, the binary devices run, built as it
# ships: without the node's storage engine (`--no-default-features`), so a run pays its
# ~2 ms start, not the node binary's ~6 ms of RocksDB loading. UE_DEVICE=path applies
# with that binary instead (the node binary, for one: `UE_DEVICE=$UE`).
if [ -z "${UE_DEVICE:-}" ]; then
  cargo build --release --no-default-features --bin update-edge-device >&2
  # A copy: a later default build relinks the one in the target dir with RocksDB.
  UE_DEVICE="$OUT/update-edge-device"
  cp "$CARGO_TARGET_DIR/release/update-edge-device" "$UE_DEVICE"
fi
# Every tool's apply writes to memory (tmpfs) when the machine has one: the apply
# figures are then the tools', not the disk's. update-edge syncs its output to disk
# before renaming it into place (the other tools do not), which on this machine's disk
# costs 0-140 ms per pair, more than the apply itself at times.
SHM=$( [ -d /dev/shm ] && [ -w /dev/shm ] && mktemp -d -p /dev/shm || echo "$OUT")
APPLIED="$SHM/applied"
trap 'rm -rf "$OUT" "$SHM"' EXIT
ROWS=()
declare -A SIZE WALL

# measure CMD... ; sets globals wall (s, from the shell's clock: /usr/bin/time's %e has
# 10 ms steps, a quarter of a 5 MB pair's apply), and cpu and rss from /usr/bin/time
measure() {
  local tf="$OUT/time" start=$EPOCHREALTIME
  /usr/bin/time -f "%e %U %S %M" -o "$tf" "$@" >/dev/null 2>"$OUT/stderr" || { echo "failed: $*" >&2; cat "$OUT/stderr" >&2; return 1; }
  local end=$EPOCHREALTIME
  read -r _ user sys rss < "$tf"
  wall=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f", e - s }')
  cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
  rss_mib=$((rss / 1024))
}

row() { # tool pair patchfile apply_cmd...
  local tool=$1 pair=$2 patch=$3; shift 3
  local size; size=$(stat -c %s "$patch")
  local dwall=$wall dcpu=$cpu drss=$rss_mib
  # update-edge's own apply: the median-wall run of REPEAT (each a fresh process, its
  # previous output removed first) and the largest peak RSS; the anchors once.
  local runs=() maxrss=0 i n=1
  [ "$1" = "$UE_DEVICE" ] && n=$REPEAT
  for i in $(seq "$n"); do
    rm -f "$APPLIED"
    measure "$@"
    runs+=("$wall"); [ "$rss_mib" -gt "$maxrss" ] && maxrss=$rss_mib
  done
  wall=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( (n + 1) / 2 ))p")
  rss_mib=$maxrss
  local new="$CORPUS/$pair.new"; [ "$pair" = big ] && new="$CORPUS/big.new"
  local ok=ok; cmp -s "$APPLIED" "$new" || ok=MISMATCH
  local mbs; mbs=$(awk -v b="$(stat -c %s "$new")" -v w="$wall" 'BEGIN { printf "%.0f", b / 1e6 / (w > 0 ? w : 0.01) }')
  ROWS+=("| $pair | $tool | $size | $dwall | $dcpu | $drss | $wall | $mbs | $rss_mib | $ok |")
  SIZE[$pair/$tool]=$size; WALL[$pair/$tool]=$dwall
  echo "${ROWS[-1]}" >&2
  rm -f "$APPLIED" "$patch"
}

run_pair() {
  local pair=$1 anchors=$2 limit=${3:-2GiB}
  local old="$CORPUS/$pair.old" new="$CORPUS/$pair.new"
  # Median of REPEAT runs (by wall time); peak RSS is the largest seen.
  local runs=() maxrss=0 i
  for i in $(seq "$REPEAT"); do
    measure "$UE" delta diff "$old" "$new" -o "$OUT/ue.patch" --memory-limit "$limit"
    runs+=("$wall $cpu"); [ "$rss_mib" -gt "$maxrss" ] && maxrss=$rss_mib
    echo "update-edge diff $pair run $i: ${wall}s wall, ${cpu}s CPU" >&2
  done
  read -r wall cpu < <(printf '%s\n' "${runs[@]}" | sort -n | sed -n "$(( (REPEAT + 1) / 2 ))p")
  rss_mib=$maxrss
  row "update-edge" "$pair" "$OUT/ue.patch" "$UE_DEVICE" delta apply "$old" "$OUT/ue.patch" -o "$APPLIED"
  [ "$anchors" = 1 ] || return 0
  measure "$UE" delta diff "$old" "$new" -o "$OUT/uent.patch" --memory-limit "$limit" --no-transform
  row "update-edge --no-transform" "$pair" "$OUT/uent.patch" "$UE_DEVICE" delta apply "$old" "$OUT/uent.patch" -o "$APPLIED"
  measure "$UE" delta diff "$old" "$new" -o "$OUT/ue40.patch" --memory-limit "$limit" --format bsdiff40
  row "update-edge --format bsdiff40 (stock bspatch)" "$pair" "$OUT/ue40.patch" bspatch "$old" "$APPLIED" "$OUT/ue40.patch"
  if [ -n "${BSDIFF_FROM:-}" ] && [ -s "$BSDIFF_FROM/$pair.bsdiff" ] && [ -s "$BSDIFF_FROM/$pair.bsdiff.time" ]; then
    cp "$BSDIFF_FROM/$pair.bsdiff" "$OUT/bs.patch"
    read -r wall cpu rss < "$BSDIFF_FROM/$pair.bsdiff.time"
    rss_mib=$((rss / 1024))
    BSDIFF_EARLIER="$BSDIFF_EARLIER $pair"
    echo "bsdiff 4.3 on $pair: patch and times from $BSDIFF_FROM (an earlier run)" >&2
  elif [ -n "${BSDIFF_TIMEOUT:-}" ] && ! measure timeout "$BSDIFF_TIMEOUT" bsdiff "$old" "$new" "$OUT/bs.patch" 2>/dev/null; then
    ROWS+=("| $pair | bsdiff 4.3 | did not finish in $BSDIFF_TIMEOUT s | | | | | | | |")
    BSDIFF_DNF="$BSDIFF_DNF $pair"
    echo "${ROWS[-1]}" >&2
  else
    [ -n "${BSDIFF_TIMEOUT:-}" ] || measure bsdiff "$old" "$new" "$OUT/bs.patch"
  fi
  [[ " $BSDIFF_DNF " == *" $pair "* ]] || row "bsdiff 4.3" "$pair" "$OUT/bs.patch" bspatch "$old" "$APPLIED" "$OUT/bs.patch"
  measure xdelta3 -9 -f -e -s "$old" "$new" "$OUT/xd.patch"
  row "xdelta3 -9" "$pair" "$OUT/xd.patch" xdelta3 -f -d -s "$old" "$OUT/xd.patch" "$APPLIED"
  measure zstd -q -f -19 --long=31 --patch-from="$old" "$new" -o "$OUT/z19.patch"
  row "zstd -19 --long=31 --patch-from" "$pair" "$OUT/z19.patch" zstd -q -f -d --long=31 --patch-from="$old" "$OUT/z19.patch" -o "$APPLIED"
  measure zstd -q -f -3 --long=31 --patch-from="$old" "$new" -o "$OUT/z3.patch"
  row "zstd -3 --long=31 --patch-from" "$pair" "$OUT/z3.patch" zstd -q -f -d --long=31 --patch-from="$old" "$OUT/z3.patch" -o "$APPLIED"
}

for p in $PAIRS; do run_pair "$p" "$ANCHORS"; done
if [ "$BIG" -gt 0 ]; then
  python3 benches/gen-pair.py "$CORPUS" "$BIG" >&2
  run_pair big "$ANCHORS_BIG" 2GiB
fi

echo
[ "$SHM" = "$OUT" ] || echo "Apply output went to $(dirname "$SHM") (tmpfs) for every tool."
echo "| pair | tool | patch bytes | diff wall s | diff CPU s | diff peak RSS MiB | apply wall s | apply MB/s (output) | apply peak RSS MiB | round trip |"
echo "|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
if [ "$ANCHORS" = 1 ] && [ -n "$PAIRS" ]; then
  echo
  echo "| pair | size / bsdiff | size / update-edge bytes only (--no-transform) | diff wall / bsdiff | diff wall / zstd -19 --patch-from |"
  echo "|---|---|---|---|---|"
  for p in $PAIRS; do
    [[ " $BSDIFF_DNF " == *" $p "* ]] && { echo "| $p | bsdiff did not finish in $BSDIFF_TIMEOUT s | | | |"; continue; }
    awk -v s="${SIZE[$p/update-edge]}" -v bs="${SIZE[$p/bsdiff 4.3]}" -v w="${WALL[$p/update-edge]}" \
        -v nt="${SIZE[$p/update-edge --no-transform]}" \
        -v bw="${WALL[$p/bsdiff 4.3]}" -v zw="${WALL[$p/zstd -19 --long=31 --patch-from]}" -v p="$p" \
        'BEGIN { printf "| %s | %.3f | %.3f | %.3f | %.3f |\n", p, s / bs, s / nt, w / bw, w / zw }'
  done
fi
if [ -n "$BSDIFF_EARLIER" ]; then
  echo
  echo "bsdiff 4.3's patch and diff times for:$BSDIFF_EARLIER came from an earlier run ($BSDIFF_FROM); its patch was applied and checked in this one."
fi
