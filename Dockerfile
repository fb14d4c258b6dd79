# Multi-stage build: compile with the full toolchain, ship a slim runtime.
# The build needs no database: queries are checked against the committed .sqlx/.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked --bin simplebank

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 simplebank
COPY --from=build /src/target/release/simplebank /usr/local/bin/simplebank
USER simplebank
ENV HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json MAIL_DIR=/tmp/mail
EXPOSE 8080
ENTRYPOINT ["simplebank"]
CMD ["serve"]
