# Multi-stage build: compile in the Rust image, run in a small Debian image as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin deja

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/deja --create-home deja
COPY --from=build /src/target/release/deja /usr/local/bin/deja
COPY proxy.toml /etc/deja/proxy.toml
# The cache lives on a volume so it survives container restarts.
VOLUME ["/var/lib/deja"]
WORKDIR /var/lib/deja
USER deja
# Inside a container the listeners must accept connections from outside the loopback. The
# admin listener serves probes to anyone and everything else only with DEJA_ADMIN__TOKEN.
ENV DEJA_SERVER__LISTEN=0.0.0.0:8080 \
    DEJA_ADMIN__LISTEN=0.0.0.0:8081 \
    CANDLE_NUM_THREADS=1 \
    DEJA_CACHE__DIR=/var/lib/deja/cache
EXPOSE 8080 8081
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/deja", "--config", "/etc/deja/proxy.toml"]
