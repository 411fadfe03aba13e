# The logdb image: every binary (logdb — operator and local mode —, logdb-storage,
# logdb-compute, logdb-config) on a small non-root base. The chart runs it with a read-only root
# file system; processes write only to their mounted volumes.
#
#   docker build -t ghcr.io/logdb/logdb:0.1.0 .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# No system protoc: proto files compile with protox (pure Rust).
RUN cargo build --release --locked --bin logdb --bin logdb-storage --bin logdb-compute --bin logdb-config \
 && mkdir /out \
 && cp target/release/logdb target/release/logdb-storage target/release/logdb-compute target/release/logdb-config /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["logdb"]
