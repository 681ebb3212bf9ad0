#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests
# need (scripts/setup.sh), starts one SeaweedFS S3 server for the whole run,
# checks formatting and lints, runs the Rust test suite (unit + integration
# against the real S3), then the browser tests. Exit code: 0 all passed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# One S3 server for the run; integration tests create their own buckets in it.
if [ -f scripts/s3.sh ]; then
  MAILSAFE_S3_ENV="$(mktemp)"
  export MAILSAFE_S3_ENV
  bash scripts/s3.sh start
  # shellcheck disable=SC1090
  source "$MAILSAFE_S3_ENV"
  trap 'bash scripts/s3.sh stop || true' EXIT
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
# The engine without its S3 store (no AWS SDK): what the fuzzer and any
# non-S3 user of the engine build; its file and memory store tests run.
cargo test -p mailsafe_engine --no-default-features --no-fail-fast

if [ -x tests/browser/run.sh ]; then
  tests/browser/run.sh
fi
