#!/usr/bin/env bash
# Runs cargo-fuzz targets in fuzz/ for a fixed time each and fails if any
# target crashes, hangs (libFuzzer's -timeout) or goes past its RSS limit.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 60 s, every target
#
# Prints each target's final libFuzzer stats (execs, execs/s, coverage) and a
# summary line per target. FUZZ_SANITIZER picks cargo-fuzz's sanitizer
# (default `none`: the targets are safe Rust whose properties are panics,
# hangs and memory, and without ASan they run several times more execs).
# Installs cargo-fuzz and the nightly toolchain when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
sanitizer="${FUZZ_SANITIZER:-none}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

cd fuzz
if [ "$#" -gt 0 ]; then targets="$*"; else targets=$(cargo +nightly fuzz list); fi
for t in $targets; do
  # Only restore_parse needs the backup engine (without its S3 store, so
  # never the AWS SDK); the catcher targets build without it.
  features=(--no-default-features)
  [ "$t" = restore_parse ] && features=()
  echo "[fuzz] $t for ${secs}s" >&2
  mkdir -p "corpus/$t"
  # Committed seeds (fuzz/seeds/<target>, including regressions) are read as
  # a second corpus; fuzz/dict/<target>.dict gives libFuzzer the protocol's
  # words so it reaches deep states quickly.
  extra=()
  [ -d "seeds/$t" ] && extra+=("seeds/$t")
  dict=()
  [ -f "dict/$t.dict" ] && dict+=("-dict=dict/$t.dict")
  log="$(mktemp)"
  # -timeout: one input taking over 10 s counts as a hang;
  # -rss_limit_mb: memory must stay bounded whatever the input.
  if ! cargo +nightly fuzz run -s "$sanitizer" "${features[@]}" "$t" "corpus/$t" "${extra[@]}" -- \
    "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 2>&1 | tee "$log" >&2; then
    echo "[fuzz] $t FAILED (see fuzz/artifacts/$t)" >&2
    rm -f "$log"
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  echo "[fuzz] $t: ${secs}s, ${execs:-?} execs (${rate:-?}/s), coverage ${cov:-?}, no crash" >&2
  rm -f "$log"
done
echo "[fuzz] all targets ran ${secs}s without a crash" >&2
