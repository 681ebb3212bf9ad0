#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time each (default 60 s,
# or $1 seconds) and fails if any target crashes, hangs (libFuzzer's
# -timeout) or leaks past its RSS limit. Installs cargo-fuzz and the nightly
# toolchain when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

cd fuzz
targets=$(cargo +nightly fuzz list)
for t in $targets; do
  echo "[fuzz] $t for ${secs}s" >&2
  mkdir -p "corpus/$t"
  # -timeout: one input taking over 10 s counts as a hang;
  # -rss_limit_mb: memory must stay bounded whatever the input.
  cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1
done
echo "[fuzz] all targets ran ${secs}s without a crash" >&2
