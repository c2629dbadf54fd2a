# syntax=docker/dockerfile:1
# Multi-stage build: same steps as .ci/run (Debian packages, then cargo), non-root runtime.
# BuildKit cache mounts keep the cargo registry and the target directory between builds,
# so a source change recompiles our crate, not RocksDB's C++ (~20 minutes on 2 cores).
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends build-essential libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin update-edge \
 && cp target/release/update-edge /usr/local/bin/update-edge

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/update-edge --create-home update-edge
COPY --from=build /usr/local/bin/update-edge /usr/local/bin/update-edge
# Listen address, data and keys directories are in this file, not in ENV: a config file
# mounted over it wins, and an environment variable only where the operator sets one.
COPY config/container.toml /etc/update-edge/edge.toml
USER 10001
VOLUME ["/var/lib/update-edge"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=6s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/update-edge", "health", "--config", "/etc/update-edge/edge.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/update-edge"]
CMD ["serve", "--config", "/etc/update-edge/edge.toml"]
