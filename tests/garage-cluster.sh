#!/usr/bin/env bash
# A real 3-node Garage cluster on loopback, for the S3 tests (issue 12): Garage is an
# external process here, never linked.
#   tests/garage-cluster.sh start DIR   start it, lay it out (replication factor 3), make a
#                                       key and a bucket; writes DIR/env (see below)
#   tests/garage-cluster.sh stop DIR    stop its nodes (DIR is left for inspection)
#   tests/garage-cluster.sh check DIR   PUT, GET and DELETE one object through node 1,
#                                       read back through nodes 2 and 3 (curl --aws-sigv4)
# DIR/env is shell: S3_ENDPOINT (node 1), S3_ENDPOINTS (all three), S3_REGION, S3_BUCKET,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GARAGE_CONFIGS, GARAGE_PIDS.
# The binary: $GARAGE, else the one `dev.sh setup` installs under ~/.cache.
# Ports: GARAGE_PORT_BASE (default 23900); node i uses BASE+10i .. BASE+10i+3.
set -euo pipefail
CMD=${1:?usage: garage-cluster.sh start|stop|check DIR}
DIR=${2:?usage: garage-cluster.sh start|stop|check DIR}
GARAGE=${GARAGE:-${UPDATE_EDGE_GARAGE_ROOT:-$HOME/.cache/update-edge-garage}/bin/garage}
BASE=${GARAGE_PORT_BASE:-23900}
REGION=garage
BUCKET=update-edge

g() { "$GARAGE" -c "$DIR/node1/garage.toml" "$@"; }

start() {
  [ -x "$GARAGE" ] || { echo "garage not found at $GARAGE (./dev.sh setup installs it)" >&2; exit 2; }
  mkdir -p "$DIR"; DIR=$(cd "$DIR" && pwd)
  local secret pids=() configs=() endpoints=()
  secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  for i in 1 2 3; do
    local n="$DIR/node$i" port=$((BASE + 10 * i))
    mkdir -p "$n/meta" "$n/data"
    cat > "$n/garage.toml" <<EOF
metadata_dir = "$n/meta"
data_dir = "$n/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$secret"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
EOF
    RUST_LOG=warn "$GARAGE" -c "$n/garage.toml" server >"$n/log" 2>&1 &
    pids+=($!)
    configs+=("$n/garage.toml")
    endpoints+=("http://127.0.0.1:$port")
  done
  printf '%s\n' "${pids[@]}" > "$DIR/pids"
  # Each node answers its own CLI before it is connected.
  for i in 1 2 3; do
    local ok=""
    for _ in $(seq 100); do
      "$GARAGE" -c "$DIR/node$i/garage.toml" node id -q >/dev/null 2>&1 && { ok=1; break; }
      sleep 0.2
    done
    [ -n "$ok" ] || { echo "garage node $i did not start:" >&2; cat "$DIR/node$i/log" >&2; exit 1; }
  done
  local ids=()
  for i in 1 2 3; do ids+=("$("$GARAGE" -c "$DIR/node$i/garage.toml" node id -q 2>/dev/null)"); done
  # A node's RPC port may open a moment after its CLI answers: retry the connects.
  for id in "${ids[1]}" "${ids[2]}"; do
    local connected=""
    for _ in $(seq 50); do
      g node connect "$id" >/dev/null 2>&1 && { connected=1; break; }
      sleep 0.2
    done
    [ -n "$connected" ] || { echo "garage: node 1 could not connect to $id" >&2; g node connect "$id" >&2; exit 1; }
  done
  for id in "${ids[@]}"; do g layout assign -z dc1 -c 1G "${id%@*}" >/dev/null; done
  g layout apply --version 1 >/dev/null
  # Wait until the cluster reports itself healthy with all three nodes in the layout.
  for _ in $(seq 150); do
    g status 2>/dev/null | grep -c "127.0.0.1:" | grep -q '^3$' && g bucket list >/dev/null 2>&1 && break
    sleep 0.2
  done
  local key
  key=$(g key create update-edge 2>/dev/null)
  local id secret_key
  id=$(awk -F': *' '/Key ID/ { print $2; exit }' <<<"$key")
  secret_key=$(awk -F': *' '/Secret key/ { print $2; exit }' <<<"$key")
  [ -n "$id" ] && [ -n "$secret_key" ] || { echo "no key in: $key" >&2; exit 1; }
  g bucket create "$BUCKET" >/dev/null
  g bucket allow --read --write --owner "$BUCKET" --key update-edge >/dev/null
  cat > "$DIR/env" <<EOF
S3_ENDPOINT=${endpoints[0]}
S3_ENDPOINTS="${endpoints[*]}"
S3_REGION=$REGION
S3_BUCKET=$BUCKET
AWS_ACCESS_KEY_ID=$id
AWS_SECRET_ACCESS_KEY=$secret_key
GARAGE_CONFIGS="${configs[*]}"
GARAGE_PIDS="${pids[*]}"
EOF
  echo "garage: 3 nodes, replication factor 3, bucket $BUCKET at ${endpoints[0]} (env in $DIR/env)"
}

stop() {
  [ -f "$DIR/pids" ] || return 0
  while read -r p; do kill "$p" 2>/dev/null || true; done < "$DIR/pids"
  while read -r p; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done < "$DIR/pids"
  rm -f "$DIR/pids"
}

check() {
  # shellcheck disable=SC1091
  . "$DIR/env"
  local body="$DIR/check.bin" got="$DIR/check.out" sig="aws:amz:$S3_REGION:s3"
  # S3 wants the payload's hash in a signed header; curl does not add it by itself.
  local unsigned=(-H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
  head -c 3000000 /dev/urandom > "$body"
  curl -sf "${unsigned[@]}" --aws-sigv4 "$sig" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -T "$body" "$S3_ENDPOINT/$S3_BUCKET/check/object" >/dev/null
  for e in $S3_ENDPOINTS; do
    curl -sf "${unsigned[@]}" --aws-sigv4 "$sig" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
      -o "$got" "$e/$S3_BUCKET/check/object"
    cmp -s "$body" "$got" || { echo "object read through $e differs" >&2; exit 1; }
  done
  curl -sf "${unsigned[@]}" --aws-sigv4 "$sig" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
    -X DELETE "$S3_ENDPOINT/$S3_BUCKET/check/object" >/dev/null
  rm -f "$body" "$got"
  echo "garage: object written through node 1 and read back byte-exact through all 3 nodes"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  check) check ;;
  *) echo "usage: garage-cluster.sh start|stop|check DIR" >&2; exit 2 ;;
esac
