# Multi-stage build of every wxpipe binary: ingress, workers, wechat-sim, wxpipe-bench.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/ingress target/release/workers target/release/wxpipe-bench target/release/wechat-sim /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 wxpipe
COPY --from=build /out/ /usr/local/bin/
USER wxpipe
EXPOSE 8080 8081
CMD ["ingress"]
