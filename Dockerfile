# The onceflow image: one binary, `onceflow`, running `onceflow run` by default
# (`docker run IMAGE produce …` runs the load generator instead).
#
# Stages: the workspace manifests (for a cached dependency fetch), a Rust
# build stage with the C toolchain librdkafka's build needs, and a small
# Debian runtime stage that holds the binary and only the shared libraries it
# links. Needs BuildKit (the default builder of Docker and of
# `docker compose build`) for the cache mount of the build stage.

# ---------------------------------------------------------------------------
# Manifests only: every Cargo.toml and Cargo.lock of the build context, each
# crate given empty stub targets so that cargo can resolve the workspace.
# This stage re-runs on every source change, but its result only changes when
# a manifest or the lock file does, so the `cargo fetch` layer below stays
# cached while only code changes. Found by name, not listed, so that new
# workspace members need no change here.
# Base images pinned to a release (a floating tag changes the build under
# the same Dockerfile); bump them deliberately.
FROM rust:1.95.0-bookworm AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name Cargo.toml ! -name Cargo.lock -delete \
 && find . -type d -empty -delete \
 && find . -name Cargo.toml -execdir sh -c 'mkdir -p src && touch src/lib.rs src/main.rs' \;

# ---------------------------------------------------------------------------
FROM rust:1.95.0-bookworm AS build
# librdkafka is compiled from source by rdkafka-sys (its configure script and
# make, linked statically) and links the system zlib and OpenSSL (TLS to
# Kafka and PostgreSQL): build-essential, zlib1g-dev, libssl-dev and
# pkg-config (listed so the build does not depend on what the rust image
# happens to hold).
# Package versions are not pinned: Debian stable only ships security fixes,
# and a pinned version vanishes from its mirrors when the next fix lands.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential zlib1g-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*

# Dependency fetch in a directory of its own: the stubs never mix with the
# real sources, and the downloaded crates land in $CARGO_HOME, which the real
# build below reuses.
WORKDIR /deps
COPY --from=manifests /src ./
RUN cargo fetch --locked

# The whole source. The target directory is a BuildKit cache mount, so a code
# change recompiles onceflow's own crates, not librdkafka and every
# dependency; the binary is copied out of the mount in the same step.
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/src/target,id=onceflow-target \
    cargo build --release --locked -p onceflow \
 && install -D -m 0755 target/release/onceflow /out/onceflow

# ---------------------------------------------------------------------------
FROM debian:12.12-slim AS runtime
# What the binary links dynamically (read off `ldd target/release/onceflow`):
# libz (zlib1g: rdkafka's default `libz` feature), libssl and libcrypto
# (libssl3: TLS to Kafka, PostgreSQL and https OTLP endpoints), libgcc_s
# (libgcc-s1), libm and libc. librdkafka itself is static; it links neither
# libcurl nor Cyrus SASL (GSSAPI is not built). ca-certificates: the roots
# TLS endpoints are verified against unless a CA file is named. curl: the
# health check below. (Unpinned versions: see the build stage.)
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      zlib1g libssl3 libgcc-s1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin onceflow

COPY --from=build /out/onceflow /usr/local/bin/onceflow
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Fail the image build, not the first start, if a library the binary needs is
# missing from this stage (e.g. after a dependency starts linking OpenSSL).
RUN if ldd /usr/local/bin/onceflow | grep 'not found'; then \
      echo 'onceflow links a library this image lacks (see above)' >&2; exit 1; \
    fi

# The image's own settings, as a file (not ENV: an environment variable
# would silently win over the `http_addr` of a config file a user mounts):
# listen on every interface of the container (the built-in default,
# 127.0.0.1, is unreachable from outside it). A file of your own replaces
# this one (mount it here, or point ONCEFLOW_CONFIG elsewhere); environment
# variables still win over either.
COPY deploy/image/onceflow.toml /etc/onceflow/onceflow.toml
ENV ONCEFLOW_CONFIG=/etc/onceflow/onceflow.toml
# A writable directory for the SQLite store (`sqlite:///var/lib/onceflow/onceflow.db`),
# owned by the user the process runs as; a volume, so the file outlives the
# container.
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/onceflow
VOLUME /var/lib/onceflow
WORKDIR /var/lib/onceflow

USER 10001:10001

# /metrics, /healthz and /readyz.
EXPOSE 9464

# /healthz answers 200 while no supervisor has given up and the pipeline is
# not wedged. The port follows ONCEFLOW_HTTP_ADDR when it is set, else the
# image's file (9464).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/bin/sh", "-c", "addr=${ONCEFLOW_HTTP_ADDR:-0.0.0.0:9464}; curl -fsS -o /dev/null http://127.0.0.1:${addr##*:}/healthz || exit 1"]

ENTRYPOINT ["onceflow"]
CMD ["run"]
