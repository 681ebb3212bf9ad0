#!/usr/bin/env bash
# Runs the web UI tests in headless Debian Chromium: builds the binary, starts
# `mailsafe serve` on free loopback ports with a temporary database, runs the
# node tests against it, and stops it. Screenshots land in
# tests/browser/artifacts/. Exit code: that of `node --test`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

# Build with the same package and target selection as `cargo test --workspace`
# (scripts/test.sh runs that first): a narrower selection resolves dependency
# features differently and would rebuild half the dependency graph.
cargo build -q --workspace --all-targets
bin="${CARGO_TARGET_DIR:-$root/target}/debug/mailsafe"

if [ ! -d "$here/node_modules/playwright-core" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi

# Two free ports, chosen by the kernel.
read -r http_port smtp_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')

tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

export MAILSAFE_BIN="$bin"
"$bin" serve --db "$tmp/mail.db" --smtp "127.0.0.1:$smtp_port" --listen "127.0.0.1:$http_port" \
  >"$tmp/server.log" 2>&1 &
server_pid=$!

export MAILSAFE_UI_URL="http://127.0.0.1:$http_port"
export MAILSAFE_SMTP_PORT="$smtp_port"
for i in $(seq 150); do
  if curl -fsS --noproxy '*' -o /dev/null "$MAILSAFE_UI_URL/api/v1/messages" 2>/dev/null; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "mailsafe serve exited:" >&2; cat "$tmp/server.log" >&2; exit 1
  fi
  if [ "$i" = 150 ]; then echo "mailsafe serve did not answer on $MAILSAFE_UI_URL" >&2; cat "$tmp/server.log" >&2; exit 1; fi
  sleep 0.2
done

cd "$here"
status=0
# --test-timeout bounds each file as a whole (node 20 runs a file as one
# test): 300 s, for spam.test.mjs, whose spamd compiles its rules first
# (10 s at load 13 here; it may wait up to 180 s).
node --test --test-concurrency=1 --test-timeout=300000 ./*.test.mjs || status=$?
if [ "$status" != 0 ]; then
  echo "--- server log ---" >&2; tail -50 "$tmp/server.log" >&2
fi
exit "$status"
