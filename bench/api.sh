#!/usr/bin/env bash
# API latency benchmark: fills a fresh catcher store with MESSAGES generated
# messages (default 100k, ~3 KiB each), serves the Mailpit-compatible API on
# 127.0.0.1, and measures list and search latency (p50/p99) over HTTP.
# Writes the "API latency" section of bench/RESULTS.md (replacing an older one).
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
python3 - "$out" <<'PY'
import re, sys, pathlib
section = pathlib.Path(sys.argv[1]).read_text().strip() + "\n"
res = pathlib.Path("bench/RESULTS.md")
text = res.read_text() if res.exists() else "# Benchmark results\n"
# Up to the next section or its "<!-- " marker (which must survive).
pattern = re.compile(r"^## API latency\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
text = pattern.sub(lambda _m: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
res.write_text(text)
PY
rm -f "$out"
