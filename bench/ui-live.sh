#!/usr/bin/env bash
# Web UI benchmark (bench/ui-live.mjs): live latency from SMTP to the open
# page, a 1000-message burst, and a cold open/search on a 5000-message
# mailbox. Starts `mailsafe serve` (bench_binary: the release build unless
# MAILSAFE_BIN says otherwise) on free loopback ports with a temporary
# database, prints the figures as JSON and writes the ui-live section of
# bench/RESULTS.md (bench/lib.sh).
#   bench/ui-live.sh     MAILSAFE_BIN=target/debug/mailsafe bench/ui-live.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
log() { echo "[ui-live] $*" >&2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-ui-live.XXXXXX")"
trap bench_cleanup EXIT
bench_binary
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund --silent)

http_port=$(free_port)
smtp_port=$(free_port)
"$MAILSAFE_BIN" serve --max-messages 0 --db "$WORK/mail.db" --smtp "127.0.0.1:$smtp_port" \
  --listen "127.0.0.1:$http_port" >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$http_port/api/v1/messages" 2>/dev/null && break
  sleep 0.2
done
context=$(bench_context "$BENCH_BUILD")
log "running the browser against 127.0.0.1:$http_port ($context)"
result=$(MAILSAFE_UI_URL="http://127.0.0.1:$http_port" MAILSAFE_SMTP_PORT="$smtp_port" node bench/ui-live.mjs)
echo "$result"

section=$(python3 - "$result" "$context" <<'PY'
import json, sys
r, context = json.loads(sys.argv[1]), sys.argv[2]
paced, burst, full = r["paced"], r["burst"], r["full"]
print(f"""## Web UI (bench/ui-live.sh)

Headless Debian chromium against `mailsafe serve --max-messages 0`; {context}.
Latency = SMTP `250` after DATA -> row visible in an already open page (websocket push, no reload, no polling).
Rerun: `bench/ui-live.sh` (release build) or `MAILSAFE_BIN=target/debug/mailsafe bench/ui-live.sh`.

| measure | result |
| --- | --- |
| {paced['sent']} messages, one per 50 ms: SMTP->screen p50 / p95 / max | {paced['p50_ms']} ms / {paced['p95_ms']} ms / {paced['max_ms']} ms ({paced['shown']} of {paced['sent']} shown) |
| burst of {burst['messages']} on one SMTP connection | {burst['smtp_s']:.1f} s at {burst['msgs_per_s']} msg/s; newest on screen and title count right {burst['shown_after_last_ms']} ms after the last `250` |
| cold page open, {full['messages']} messages stored: first rows | {full['first_rows_ms']} ms |
| search for one message among {full['messages']} | {full['search_ms']} ms |
| open that message | {full['open_message_ms']} ms |

The browser test `new mail appears live, without reload` proves the push itself (the UI has no polling); it asserts no
latency bound, so a loaded CI machine cannot fail it: the figures live here.""")
PY
)
write_results_section ui-live "$section"
log "wrote the ui-live section of bench/RESULTS.md"
