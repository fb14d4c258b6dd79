# Multi-stage build: compile with the full toolchain, ship a slim runtime.
# The build needs no database: queries are checked against the committed .sqlx/.
#
# Dependencies are compiled in a layer of their own, keyed on Cargo.toml and
# Cargo.lock only, so editing the code recompiles the crate and not the few
# hundred crates under it. This is done with a placeholder crate rather than
# BuildKit cache mounts (RUN --mount=type=cache): a layer works with any
# builder and travels with the image cache (--cache-from, a registry, CI's
# cache exporters), where a cache mount stays on the machine that built it,
# is not exported, and leaves the binary in the mount, to be copied out by
# hand.
FROM rust:1-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true

# 1. Dependencies: the workspace's manifests, and placeholder crates named as
#    the real ones (the service has a lib and a bin; the queue crate a lib),
#    built with the same command as below so that the second build finds
#    every dependency compiled.
COPY Cargo.toml Cargo.lock ./
COPY queue/Cargo.toml queue/
RUN mkdir src queue/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs queue/src/lib.rs \
    && cargo build --release --locked --bin simplebank \
    && rm -r src queue/src

# 2. The crates: their sources and everything their macros read at compile
#    time (sqlx: migrations/, sql/ and .sqlx/; askama: templates/; the queue's
#    Lua scripts live in queue/src).
COPY queue/src/ queue/src/
COPY src/ src/
COPY migrations/ migrations/
COPY sql/ sql/
COPY .sqlx/ .sqlx/
COPY templates/ templates/
# COPY may keep the files' own modification times, older than the
# placeholder's build: cargo would then take the crate as up to date and ship
# the placeholder. Touching the crate roots makes it rebuild the crate.
RUN touch src/main.rs src/lib.rs queue/src/lib.rs \
    && cargo build --release --locked --bin simplebank

FROM debian:bookworm-slim
# curl: for health checks (compose probes /readyz with it), and for an
# operator in the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 simplebank
COPY --from=build /src/target/release/simplebank /usr/local/bin/simplebank
# By number, so that an orchestrator can tell it is not root (Kubernetes'
# runAsNonRoot cannot check a user given by name).
USER 10001
ENV HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json MAIL_DIR=/tmp/mail
# 8080: the API (HTTP_ADDR). 9464: /healthz, /readyz and /metrics when
# ADMIN_ADDR=0.0.0.0:9464 is set, which `relay` and `worker` need, as they
# serve no API (unset by default).
EXPOSE 8080 9464
ENTRYPOINT ["simplebank"]
CMD ["serve"]
