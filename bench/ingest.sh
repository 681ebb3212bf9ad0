#!/usr/bin/env bash
# SMTP ingest benchmark: Postfix's smtp-source (10 sessions, 4 KiB messages,
# 20k messages) against mailsafe and against maildev (npm) in one run, on
# this machine. Prints msgs/s for each and writes them to bench/RESULTS.md
# (section smtp-ingest, through bench/lib.sh).
#
# Durability: mailsafe answers 250 only after the message's transaction is
# committed with SQLite synchronous=FULL in WAL mode (an fsync per commit),
# and concurrent sessions share commits (group commit), so every message the
# benchmark counts as sent is on disk. maildev keeps mail in memory/files
# without fsync, so the comparison favours maildev.
#
# mailsafe runs with its defaults, like Mailpit's: MP_MAX_MESSAGES=500, so
# count pruning runs once 500 are stored (in bulk, every ~50 messages; set
# MP_MAX_MESSAGES=0 to measure without pruning; the section says which was used). The writer's
# stage timers (batches, mean batch, time in inserts/pruning/commit) are
# logged at debug level and summed into the section.
#
# Usage: bench/ingest.sh            (MESSAGES=20000 SESSIONS=10 SIZE=4096)
#        MAILDEV_MESSAGES=2000 bench/ingest.sh   (shorter maildev run; msgs/s
#        is a rate, so a smaller count still measures it)
#        MAILSAFE_BIN=path/to/mailsafe PROFILE_LABEL="dev build" bench/ingest.sh
#                                           (skip the build; say which profile)
#        BASELINE_BIN=/tmp/old-mailsafe BASELINE_LABEL="main abc123" bench/ingest.sh
#                                           (the same run with another binary first:
#                                           before/after; RESULTS_SECTION=name writes
#                                           to another section of RESULTS.md)
#        WEBHOOK_BENCH=1 MESSAGES=5000 bench/ingest.sh   (ingest without and with
#                                           a webhook receiver answering in 2 s)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=bench/lib.sh
source bench/lib.sh

MESSAGES="${MESSAGES:-20000}"
SESSIONS="${SESSIONS:-10}"
SIZE="${SIZE:-4096}"
MAILDEV_MESSAGES="${MAILDEV_MESSAGES:-$MESSAGES}"
MAX_MESSAGES="${MP_MAX_MESSAGES:-500}"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
if [ -n "$(git status --porcelain -- crates src Cargo.toml Cargo.lock 2>/dev/null)" ]; then commit="$commit+changes"; fi

log() { echo "[ingest] $*" >&2; }

command -v smtp-source >/dev/null 2>&1 || bash scripts/setup.sh

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "nothing listens on port $1"; return 1
}

# Runs smtp-source against port $1 with $2 messages; prints msgs/s and
# leaves smtp-source's own CPU seconds (user + system, from bash's `times`
# for the subshell's children) in $work/client_cpu.
blast() {
  local port=$1 count=$2 start end cpu
  start=$(date +%s.%N)
  cpu=$(
    smtp-source -s "$SESSIONS" -l "$SIZE" -m "$count" -c \
      -f sender@example.com -t rcpt@example.com "127.0.0.1:$port" >/dev/null
    times
  )
  end=$(date +%s.%N)
  python3 - "$cpu" >"$work/client_cpu" <<'PY'
import re, sys
# `times` prints the shell's own CPU, then its children's (smtp-source).
children = sys.argv[1].strip().splitlines()[-1]
print(sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([0-9.]+)s", children)))
PY
  python3 -c "print(f'{$count/($end-$start):.0f}')"
}

# cpu_seconds PID : the process's user + system CPU so far (/proc/PID/stat).
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

bin="${MAILSAFE_BIN:-}"
label="${PROFILE_LABEL:-release build}"
load_before=$(cut -d' ' -f1 /proc/loadavg)
if [ -z "$bin" ]; then
  log "building mailsafe (release)"
  cargo build --release --bin mailsafe >&2
  bin="$root/target/release/mailsafe"
fi

# WEBHOOK_BENCH=1: SMTP ingest without and with a webhook receiver that
# answers each POST after 2 s (issue 15: within 10%), alternating ROUNDS
# times; MP_WEBHOOK_LIMIT=0 (a request per message, the worst case: the
# queue fills and the rest is dropped). Writes section smtp-ingest-webhook.
if [ -n "${WEBHOOK_BENCH:-}" ]; then
  hook_port=$(free_port)
  python3 - "$hook_port" >"$work/hook.log" 2>&1 <<'PY' &
import sys, time, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
count = 0
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with lock:
            count += 1
        time.sleep(2)
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(str(count).encode())
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  pids+=($!)
  wait_port "$hook_port"
  # One mailsafe run with the given extra environment; prints msgs/s.
  run_once() {
    local sp hp pid rate
    sp=$(free_port); hp=$(free_port)
    rm -f "$work/wh.db"*
    env MP_MAX_MESSAGES="$MAX_MESSAGES" "$@" "$bin" serve --db "$work/wh.db" \
      --smtp "127.0.0.1:$sp" --listen "127.0.0.1:$hp" 2>>"$work/wh.log" &
    pid=$!
    wait_port "$sp"
    rate=$(blast "$sp" "$MESSAGES")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$rate"
  }
  ROUNDS="${ROUNDS:-3}"
  without=(); with=()
  for r in $(seq 1 "$ROUNDS"); do
    without+=("$(run_once MAILSAFE_LOG=warn)")
    with+=("$(run_once MAILSAFE_LOG=warn MP_WEBHOOK_URL="http://127.0.0.1:$hook_port/hook" MP_WEBHOOK_LIMIT=0)")
    log "round $r: without ${without[-1]} msgs/s, with a 2 s webhook ${with[-1]} msgs/s"
  done
  posts=$(curl -s "http://127.0.0.1:$hook_port/count")
  summary=$(python3 - "${without[*]}" "${with[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"{ma:.0f}|{mb:.0f}|{(mb - ma) / ma * 100:+.1f}")
PY
)
  IFS='|' read -r med_without med_with delta <<<"$summary"
  section=$(cat <<EOF
## SMTP ingest with a slow webhook receiver

\`WEBHOOK_BENCH=1 bench/ingest.sh\`, $(bench_context "$label") (load average $load_before at the start),
\`MP_MAX_MESSAGES=$MAX_MESSAGES\`, Postfix \`smtp-source -s $SESSIONS -l $SIZE\`, $MESSAGES messages a run,
$ROUNDS rounds alternating without and with \`MP_WEBHOOK_URL\` pointing at a receiver on 127.0.0.1 that answers
each POST after 2 s, \`MP_WEBHOOK_LIMIT=0\` (a request per message, the worst case). The receiver got $posts
requests over all rounds: 4 run at once and 128 wait, the rest are dropped and counted, never waited for.

| run | msgs/s (each round) | median |
|---|---|---|
| no webhook | ${without[*]} | $med_without |
| webhook answering in 2 s | ${with[*]} | $med_with |

Change with the webhook: **${delta}%** (target: within 10%).
EOF
)
  write_results_section smtp-ingest-webhook "$section"
  echo "$section"
  exit 0
fi

# ingest_run BIN NAME : one mailsafe run of $MESSAGES messages on a fresh
# db; prints one table row (rate, committed, kept, peak RSS, bytes the
# process wrote per message: WAL frames and checkpoints, from /proc's wchar;
# the server's and smtp-source's CPU per message, which unlike msgs/s do not
# depend on what else the machine runs) and logs the writer's summed stage
# timers, commits per message and bytes written per commit.
ingest_run() {
  local run_bin=$1 name=$2 smtp_port http_port pid rate accepted stored rss_kb w0 w1 wkib stages
  local c0 c1 server_ms client_ms ceiling
  smtp_port=$(free_port); http_port=$(free_port)
  rm -f "$work/bench.db"*
  MP_MAX_MESSAGES="$MAX_MESSAGES" MAILSAFE_LOG="info,mailsafe_catcher::storage::writer=debug" \
    "$run_bin" serve --db "$work/bench.db" \
    --smtp "127.0.0.1:$smtp_port" --listen "127.0.0.1:$http_port" 2>"$work/mailsafe.log" &
  pid=$!
  pids+=("$pid")
  wait_port "$smtp_port"
  log "$name: $MESSAGES messages, $SESSIONS sessions, $SIZE bytes"
  w0=$(awk '/^wchar/{print $2}' "/proc/$pid/io")
  c0=$(cpu_seconds "$pid")
  rate=$(blast "$smtp_port" "$MESSAGES")
  c1=$(cpu_seconds "$pid")
  w1=$(awk '/^wchar/{print $2}' "/proc/$pid/io")
  wkib=$(python3 -c "print(f'{($w1-$w0)/$MESSAGES/1024:.1f}')")
  # CPU per message, and the rate the cores could sustain if the server and
  # smtp-source had them to themselves: cores / (server + client CPU per message).
  read -r server_ms client_ms ceiling < <(python3 -c "
s = ($c1 - $c0) / $MESSAGES; c = $(cat "$work/client_cpu") / $MESSAGES
print(f'{s*1000:.3f} {c*1000:.3f} {$(nproc) / (s + c):.0f}')")
  log "$name: server CPU $server_ms ms/msg, smtp-source CPU $client_ms ms/msg: at most $ceiling msgs/s on $(nproc) cores"
  # Accepted (committed) since start, and how many the mailbox holds after pruning.
  accepted=$(curl -s "http://127.0.0.1:$http_port/api/v1/info" | python3 -c 'import json,sys; print(json.load(sys.stdin)["RuntimeStats"]["SMTPAccepted"])' 2>/dev/null || echo "?")
  stored=$(curl -s "http://127.0.0.1:$http_port/api/v1/messages?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo "?")
  if [ "$stored" = "?" ]; then
    stored=$(sqlite3 "$work/bench.db" "select count(*) from mailbox" 2>/dev/null || echo "?")
  fi
  log "$name: $rate msgs/s, $accepted accepted, $stored kept, $wkib KiB written per message"
  rss_kb=$(awk '/VmHWM/{print $2}' "/proc/$pid/status" 2>/dev/null || echo "?")
  # Stop mailsafe so the writer logs its last stage timers, then sum them.
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  stages=$(python3 - "$work/mailsafe.log" "$((w1 - w0))" <<'PY'
import re, sys
tot = {}
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "writer stages" not in line:
        continue
    for k, v in re.findall(r'(\w+)="?([0-9.]+)"?', line.split("writer stages", 1)[1]):
        tot[k] = tot.get(k, 0.0) + float(v)
if not tot.get("batches"):
    print("no writer timings logged")
else:
    b = tot["batches"]
    print(f"{tot['jobs']:.0f} jobs in {b:.0f} batches (mean {tot['jobs']/b:.1f}); per batch: "
          f"inserts {tot['apply_ms']/b:.2f} ms, pruning {tot['prune_ms']/b:.2f} ms, "
          f"commit incl. FTS5 flush and fsync {tot['commit_ms']/b:.2f} ms; "
          f"{tot.get('short_waits', 0):.0f} batches waited for jobs that did not come; "
          f"{b/tot['jobs']:.2f} commits (WAL fsyncs) per message, "
          f"{int(sys.argv[2])/b/1024:.0f} KiB written per commit")
PY
)
  log "$name writer: $stages"
  echo "| $name | $MESSAGES ($accepted committed, $stored kept, peak RSS ${rss_kb} KiB) | $wkib | $server_ms | $client_ms | $ceiling | $rate |"
  echo "$name's writer: $stages." >>"$work/stages"
  echo "$rate" >"$work/rate"
}

# BASELINE_BIN=path: the same run with another binary first (before/after).
rows=""
if [ -n "${BASELINE_BIN:-}" ]; then
  rows=$(ingest_run "$BASELINE_BIN" "mailsafe, baseline (${BASELINE_LABEL:-$BASELINE_BIN})")$'\n'
fi
rows+=$(ingest_run "$bin" "mailsafe")
mailsafe_rate=$(cat "$work/rate")
stages=$(cat "$work/stages")

log "installing maildev under bench/node_modules"
if [ ! -x bench/node_modules/.bin/maildev ]; then
  (cd bench && npm install --no-audit --no-fund --silent --no-save maildev >&2)
fi
md_smtp=$(free_port); md_web=$(free_port)
bench/node_modules/.bin/maildev --ip 127.0.0.1 --smtp "$md_smtp" --web "$md_web" --silent >"$work/maildev.log" 2>&1 &
pids+=($!)
wait_port "$md_smtp"
log "maildev: $MAILDEV_MESSAGES messages"
maildev_rate=$(blast "$md_smtp" "$MAILDEV_MESSAGES")
log "maildev: $maildev_rate msgs/s"
maildev_version=$(node -p 'require("./bench/node_modules/maildev/package.json").version' 2>/dev/null || echo "?")

ratio=$(python3 -c "print(f'{$mailsafe_rate/max($maildev_rate,1):.1f}')")
cores=$(nproc)
section=$(cat <<EOF
## SMTP ingest${BASELINE_BIN:+, before and after}

\`bench/ingest.sh\`, $(bench_context "$label") (load average $load_before at the start),
\`MP_MAX_MESSAGES=$MAX_MESSAGES\` (500 is the default: pruning runs once 500 are stored):
Postfix \`smtp-source -s $SESSIONS -l $SIZE\` (a new connection per message) on the same machine,
messages acknowledged with 250 per second (mailsafe: each one committed to SQLite, synchronous=FULL, WAL, group commit).
$stages

CPU per message is the process's user + system time over the run (\`/proc/PID/stat\`); unlike msgs/s it does not
depend on what else the machine runs. "Cores allow" is $(nproc) / (server + smtp-source CPU per message): the most
msgs/s these two processes could reach with the cores to themselves.

| server | messages | KiB written per message | server CPU ms/msg | smtp-source CPU ms/msg | cores allow msgs/s | msgs/s |
|---|---|---|---|---|---|---|
$rows
| maildev $maildev_version (npm) | $MAILDEV_MESSAGES | | | | | $maildev_rate |

mailsafe / maildev: **${ratio}x** (targets: ≥ 20x and ≥ 2,000 msgs/s).
EOF
)
write_results_section "${RESULTS_SECTION:-smtp-ingest}" "$section"
echo "$section"
