# Multi-stage build: same steps as .ci/run (Debian packages, then cargo), non-root runtime.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin update-edge

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/update-edge --create-home update-edge
COPY --from=build /src/target/release/update-edge /usr/local/bin/update-edge
COPY config/edge.toml /etc/update-edge/edge.toml
USER update-edge
VOLUME ["/var/lib/update-edge"]
# TUF keys: mount the online keys directory written by `update-edge keys init` (never
# the root keys) at /etc/update-edge/keys; the node refuses to start without them.
ENV UPDATE_EDGE_DATA_DIR=/var/lib/update-edge \
    UPDATE_EDGE_LISTEN=0.0.0.0:8080 \
    UPDATE_EDGE_TUF_KEYS_DIR=/etc/update-edge/keys
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/update-edge"]
CMD ["serve", "--config", "/etc/update-edge/edge.toml"]
