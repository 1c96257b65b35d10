# Every wxpipe binary (ingress, workers, wechat-sim, wxpipe-bench) in one runtime image.
#
# Where the binaries come from (build argument BINARIES):
#   build     (the default) compiled here, in the rust:1-bookworm stage below;
#   prebuilt  taken from target/image/ of the build context, put there by
#             `scripts/compose-check` from `cargo build --release` on the host, where no Rust
#             image can be pulled. The runtime stage is the same either way.
# Only the stage BINARIES names is built (BuildKit, buildah/podman).
ARG BINARIES=build

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/ingress target/release/workers target/release/wxpipe-bench target/release/wechat-sim /out/

FROM scratch AS prebuilt
COPY target/image/ /out/

FROM ${BINARIES} AS binaries

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 wxpipe
COPY --from=binaries /out/ /usr/local/bin/
USER wxpipe
EXPOSE 8080 8081
CMD ["ingress"]
