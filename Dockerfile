# syntax=docker/dockerfile:1
#
# One image for every role: `serve` (the catcher), `restore`, `watch`, `cron`,
# `prune`, ... are subcommands of the same binary, chosen by the container's
# args. Build (from the repository root):
#
#   docker build -t mailsafe:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/mailsafe:0.1.0 --push .
#
# The build fetches only crates (crates.io) besides the two base images; the
# lock file is honoured (--locked). BuildKit cache mounts keep the registry and
# target dir between builds, so a source change rebuilds only our crates.

ARG RUST_VERSION=1.95

# ---- build: full toolchain, gcc for the bundled SQLite / zstd / aws-lc ----
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# .cargo/config.toml comes along: it enables SQLite's sqlite_dbpage table,
# which snapshots depend on.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mailsafe \
 && install -D -m 0755 target/release/mailsafe /out/mailsafe \
 && strip /out/mailsafe \
 && mkdir -p /out/data

# ---- runtime: glibc + libgcc + CA certificates, no shell, no package manager.
# Same Debian release as the builder, so the glibc the binary links against is
# the one it runs on. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mailsafe /usr/local/bin/mailsafe
# A writable default location for the db when no volume is mounted (plain
# `docker run`); in Kubernetes an emptyDir is mounted over it.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
USER 65532:65532
ENV MP_DATABASE=/data/mailsafe.db \
    MAILSAFE_DB=/data/mailsafe.db
# SMTP, HTTP API + web UI, `watch --listen` metrics/health.
EXPOSE 1025 8025 9090
# mailsafe handles SIGTERM itself (final snapshot), so it runs as PID 1
# directly, without a shell in between to swallow the signal.
ENTRYPOINT ["/usr/local/bin/mailsafe"]
CMD ["serve"]
