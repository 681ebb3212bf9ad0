#!/usr/bin/env bash
# API latency benchmark: fills a fresh catcher store with MESSAGES generated
# messages (default 100k, ~3 KiB each), serves the Mailpit-compatible API on
# 127.0.0.1, and measures list and search latency (p50/p99) over HTTP.
# Writes the api-latency section of bench/RESULTS.md (bench/lib.sh).
# Targets: list p99 <= 10 ms, search p99 <= 50 ms at 100k messages.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES="${MESSAGES:-100000}"
REQUESTS="${REQUESTS:-100}"
PROFILE="${PROFILE:-release}"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" -p mailsafe_catcher --example api_bench
out="$(mktemp)"
"target/$([ "$PROFILE" = release ] && echo release || echo debug)/examples/api_bench" "$MESSAGES" "$REQUESTS" | tee "$out"
# shellcheck source=bench/lib.sh
source bench/lib.sh
section="$(sed -n '1p' "$out")

$(bench_context "$PROFILE"), \`bench/api.sh\` with MESSAGES=$MESSAGES REQUESTS=$REQUESTS.
$(sed '1d' "$out")"
write_results_section api-latency "$section"
rm -f "$out"
