#!/usr/bin/env bash
# Builds the fuzz targets and runs each for a given time:
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target)
#   RUNS=10000000 fuzz/run.sh 1800        (each stops at RUNS executions or SECONDS)
# Needs the nightly toolchain and cargo-fuzz (`./dev.sh setup` installs cargo-fuzz).
# The corpus in fuzz/corpus/TARGET is read, never written: new inputs go to a temp dir
# (KEEP=1 merges them into the corpus afterwards, minimized). A crash fails the run and
# leaves the input in fuzz/artifacts/TARGET/. Prints one line per target: executions,
# coverage (edges) and features reached.
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
export CARGO_TARGET_DIR="${UPDATE_EDGE_FUZZ_TARGET_DIR:-$HOME/.cache/update-edge-fuzz-target}"
if [ $# -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo +nightly fuzz list); fi
cargo +nightly fuzz build -O >&2
status=0
for t in "${TARGETS[@]}"; do
  new=$(mktemp -d)
  log=$(mktemp)
  mkdir -p "corpus/$t"
  if cargo +nightly fuzz run -O "$t" "$new" "corpus/$t" -- \
      -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      ${RUNS:+-runs=$RUNS} -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see fuzz/artifacts/$t/)"
    status=1
    tail -40 "$log" >&2
  fi
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  printf '%-14s %s  executions %s  %s  new inputs %s\n' "$t" "$result" "${execs:-?}" "${cov:-cov: ?}" "$(ls "$new" | wc -l)"
  if [ "${KEEP:-0}" = 1 ] && [ "$result" = ok ]; then
    cargo +nightly fuzz cmin -O "$t" "$new" >/dev/null 2>&1 || true
    cp -n "$new"/* "corpus/$t/" 2>/dev/null || true
  fi
  rm -rf "$new" "$log"
done
exit $status
