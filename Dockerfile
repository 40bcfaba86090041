# Rosetta for CPUs: a multi-stage build into a small, non-root runtime image.
# (No container runtime is available where Rosetta is developed: this file is kept simple
# and is not built by the test suite.)
#
#   docker build -t rosetta .
#   docker run -p 8080:8080 rosetta serve --listen 0.0.0.0:8080
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rosetta --features mistralrs \
    && cp target/release/rosetta /rosetta

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --home-dir /var/lib/rosetta --create-home rosetta \
    && mkdir -p /var/cache/rosetta && chown rosetta:rosetta /var/cache/rosetta
COPY --from=build /rosetta /usr/local/bin/rosetta
USER 10001:10001
ENV XDG_CACHE_HOME=/var/cache
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rosetta"]
CMD ["serve", "--listen", "0.0.0.0:8080"]
