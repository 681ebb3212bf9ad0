#!/usr/bin/env bash
# Web UI benchmark (bench/ui-live.mjs): live latency from SMTP to the open
# page, a 1000-message burst, and a cold open/search on a 5000-message
# mailbox. Starts a release `mailsafe serve` on free loopback ports with a
# temporary database and prints the figures as JSON.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build -q --release --bin mailsafe
bin="${CARGO_TARGET_DIR:-$root/target}/release/mailsafe"
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund --silent)
read -r http_port smtp_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')
tmp="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
"$bin" serve --max-messages 0 --db "$tmp/mail.db" --smtp "127.0.0.1:$smtp_port" --listen "127.0.0.1:$http_port" >"$tmp/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$http_port/api/v1/messages" 2>/dev/null && break; sleep 0.2; done
MAILSAFE_UI_URL="http://127.0.0.1:$http_port" MAILSAFE_SMTP_PORT="$smtp_port" node bench/ui-live.mjs
