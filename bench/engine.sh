#!/usr/bin/env bash
# Side-by-side benchmark of the backup engine against Litestream (issue 3).
#
# Same SeaweedFS, same ~200 MiB mail-shaped db (bench/maildb.py), same load
# (300 emails at 30/s), each tool metered through its own bench/s3proxy.
# Phases per tool, on a fresh copy of the db:
#   1. first backup: start the tool; done when uploads have been quiet for
#      $QUIET s (Litestream) or the first `mailsafe snapshot` exits.
#   2. steady state: counters reset, the load runs, then $SETTLE s more.
#   3. one-row change: counters reset, one UPDATE of one mail's `read`
#      flag (one transaction), then uploads quiet for $QUIET s: the bytes
#      one small change costs (issue 18: <= 32 KB).
#   4. stop; restore the replica to a new file, directly from SeaweedFS,
#      timed, and check the restored row count.
# CPU seconds and peak RSS come from /usr/bin/time over every process of the
# tool across phases 1-2 (and the final sync at stop). The steady window is
# also metered alone (issue 18: a sidecar lives there for weeks, and the
# first backup hid it): the tool process's CPU from /proc (utime+stime)
# when the counters are reset and after the settle, and for mailsafe the
# snapshots that hashed the whole db ("full scans", from its debug log).
# mailsafe runs as `watch` (default; BENCH_MAILSAFE_MODE=loop runs
# `snapshot` once a second instead, as issue 3 asked before `watch` existed).
#
# The first backup's CPU is the tool process's CPU when the steady window
# starts, reported on its own.
#
# Env: BENCH_MIB (200; the db size, any size: RESULTS.md gets one section
# per size), BENCH_COUNT (300), BENCH_RATE (30), SETTLE (20),
# QUIET (5), LS_FIRST_MAX (600: seconds Litestream's first backup may take
# to go quiet; past it the run goes on and the report marks Litestream's
# steady figures "not quiet"), MAILSAFE_BIN (default target/release/mailsafe, built if
# missing), BENCH_LABEL (names the RESULTS.md section), BENCH_KEEP=1 keeps
# the work dir, BENCH_LITESTREAM=0 skips Litestream (quick mailsafe-only
# iterations while profiling; its columns then read 0 and nothing is
# written to RESULTS.md), BENCH_PERF=1 records mailsafe's steady window
# with `perf record -g` (its CPU figure then includes perf's overhead) and
# prints the hottest symbols; the profile stays in $WORK/perf.data (with
# BENCH_KEEP=1). Results: bench/RESULTS.md
# (the section between the engine markers) and $WORK/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
MIB=${BENCH_MIB:-200}
COUNT=${BENCH_COUNT:-300}
RATE=${BENCH_RATE:-30}
SETTLE=${SETTLE:-20}
QUIET=${QUIET:-5}
LS_FIRST_MAX=${LS_FIRST_MAX:-600}
MODE=${BENCH_MAILSAFE_MODE:-watch}

log() { echo "[engine-bench] $*" >&2; }
# Signals the program /usr/bin/time runs (time itself would just die and
# leave it running), then waits for time to write its figures.
# Sets STOP_RC to its exit status (GNU time passes the program's on).
stop_timed() {
  local child
  child=$(ps -o pid= --ppid "$1" | head -1)
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  STOP_RC=0
  wait "$1" || STOP_RC=$?
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
ensure_litestream
MAILSAFE_BIN=${MAILSAFE_BIN:-$ROOT/target/release/mailsafe}
if [ ! -x "$MAILSAFE_BIN" ]; then
  log "building release mailsafe"
  cargo build --release -p mailsafe --bin mailsafe >&2
fi

bench_s3_start bench-litestream bench-mailsafe

# The db is cached between runs: generating it takes a while.
CACHE="$ROOT/target/bench-cache"
mkdir -p "$CACHE"
BASE="$CACHE/maildb-${MIB}.db"
if [ ! -f "$BASE" ]; then
  log "creating ${MIB} MiB mail db"
  python3 bench/maildb.py create "$BASE.tmp" --mib "$MIB" >&2
  mv "$BASE.tmp" "$BASE"
fi
DB_BYTES=$(stat -c %s "$BASE")
BASE_ROWS=$(sqlite3 "$BASE" "select count(*) from mailbox")

# Waits until the proxy has seen uploads and then none for $QUIET seconds;
# fails after MAX seconds (default 600) so a tool that never goes quiet
# cannot hold the run (and the disk its replica fills) forever.
# Both bounds are clock time (counting polls overran a 600 s cap by 40%:
# each poll also runs python).
wait_quiet() {
  local port=$1 max=${2:-600} last=-1 now since
  local deadline=$(($(date +%s) + max))
  since=$(date +%s)
  while [ "$(date +%s)" -lt "$deadline" ]; do
    now=$(stats "$port" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["bytes_in"])')
    if [ "$now" = "$last" ] && [ "$now" -gt 100000 ]; then
      [ $(($(date +%s) - since)) -ge "$QUIET" ] && return 0
    else
      since=$(date +%s)
    fi
    last=$now
    sleep 0.5
  done
  log "timed out waiting for uploads to settle (${max} s)"; return 1
}

# Sums "%e %U %S %M" lines written by /usr/bin/time: cpu seconds, max RSS KiB.
sum_time() { cat "$@" 2>/dev/null | awk 'NF==4 {cpu+=$2+$3; if ($4>rss) rss=$4} END {printf "%.2f %d\n", cpu, rss}'; }

# Row count of a restored db, or why there is none (the restore's exit code
# and last log line: a failed restore is a result, not a reason to stop).
restored_rows() {
  if [ "$2" = 0 ]; then
    sqlite3 "$1" "select count(*) from mailbox"
  else
    echo "restore FAILED (exit $2): $(tail -1 "$3" | cut -c1-300)"
  fi
}

# CPU seconds (user+system) so far of the program /usr/bin/time ($1) runs.
cpu_of() { awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$(ps -o pid= --ppid "$1" | head -1 | tr -d ' ')/stat"; }

run_load() { python3 bench/maildb.py load "$1" --count "$COUNT" --rate "$RATE" >/dev/null; }

# one_row DB PORT FILE : one UPDATE of one row, then the proxy's counters once
# uploads have been quiet for $QUIET s (at most 30 s), written to FILE.
one_row() {
  reset_stats "$2"
  python3 - "$1" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("UPDATE mailbox SET read = 1 - read WHERE id = (SELECT max(id) / 2 FROM mailbox)")
PY
  local last=-1 same=0 now
  for _ in $(seq 1 60); do
    sleep 0.5
    now=$(stats "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["bytes_in"])')
    if [ "$now" = "$last" ] && [ "$now" -gt 0 ]; then
      same=$((same + 1))
      [ $((same * 5)) -ge $((QUIET * 10)) ] && break
    else
      same=0
    fi
    last=$now
  done
  stats "$2" >"$3"
}

########## Litestream
if [ "${BENCH_LITESTREAM:-1}" = 0 ]; then
  empty='{"total":{"bytes_in":0,"bytes_out":0,"requests":0},"ops":{},"status":{}}'
  for f in first steady onerow; do echo "$empty" >"$WORK/ls.$f.json"; done
  LS_STEADY_CPU=0 LS_FIRST_CPU=0 LS_ROWS=0 LS_RESTORED_ROWS=0 LS_CPU=0 LS_RSS=0 LS_FIRST_S=0 LS_RESTORE_S=0
else
log "litestream: first backup"
mkdir -p "$WORK/ls"
cp "$BASE" "$WORK/ls/mail.db"
start_proxy ls --stats-file "$WORK/ls.proxy-exit.json"
LS_PORT=$PROXY_PORT
cat >"$WORK/ls/litestream.yml" <<YML
logging:
  level: warn
dbs:
  - path: $WORK/ls/mail.db
    replica:
      type: s3
      bucket: bench-litestream
      path: replica
      endpoint: http://127.0.0.1:$LS_PORT
      region: us-east-1
      force-path-style: true
      sync-interval: 1s
YML
T0=$(date +%s.%N)
/usr/bin/time -f "%e %U %S %M" -o "$WORK/ls/time" litestream replicate -config "$WORK/ls/litestream.yml" 2>"$WORK/ls/log" &
LS_PID=$!
PIDS+=("$LS_PID")
# At 1 GiB Litestream 0.5's first backup compacted for 24.5 min without
# going quiet (bench/RESULTS.md, session 7): past LS_FIRST_MAX the run goes
# on, and the report says its steady figures still include that work.
LS_NOT_QUIET=0
wait_quiet "$LS_PORT" "$LS_FIRST_MAX" || LS_NOT_QUIET=1
T1=$(date +%s.%N)
stats "$LS_PORT" >"$WORK/ls.first.json"
reset_stats "$LS_PORT"
LS_CPU0=$(cpu_of "$LS_PID")
log "litestream: steady state ($COUNT emails at $RATE/s, then ${SETTLE}s)"
run_load "$WORK/ls/mail.db"
sleep "$SETTLE"
stats "$LS_PORT" >"$WORK/ls.steady.json"
LS_STEADY_CPU=$(echo "$(cpu_of "$LS_PID") - $LS_CPU0" | bc)
LS_FIRST_CPU=$LS_CPU0
log "litestream: one-row change"
one_row "$WORK/ls/mail.db" "$LS_PORT" "$WORK/ls.onerow.json"
stop_timed "$LS_PID"
LS_ROWS=$(sqlite3 "$WORK/ls/mail.db" "select count(*) from mailbox")
log "litestream: restore"
R0=$(date +%s.%N)
sed "s#http://127.0.0.1:$LS_PORT#$S3#" "$WORK/ls/litestream.yml" >"$WORK/ls/restore.yml"
LS_RESTORE_RC=0
/usr/bin/time -f "%e %U %S %M" -o "$WORK/ls/restore.time" \
  litestream restore -config "$WORK/ls/restore.yml" -o "$WORK/ls/restored.db" "$WORK/ls/mail.db" 2>>"$WORK/ls/log" || LS_RESTORE_RC=$?
R1=$(date +%s.%N)
LS_RESTORED_ROWS=$(restored_rows "$WORK/ls/restored.db" "$LS_RESTORE_RC" "$WORK/ls/log")
read -r LS_CPU LS_RSS < <(sum_time "$WORK/ls/time")
LS_FIRST_S=$(echo "$T1 - $T0 - $QUIET" | bc)
LS_RESTORE_S=$(echo "$R1 - $R0" | bc)
fi

########## mailsafe
log "mailsafe ($MODE): first backup"
mkdir -p "$WORK/ms"
cp "$BASE" "$WORK/ms/mail.db"
start_proxy ms --stats-file "$WORK/ms.proxy-exit.json"
MS_PORT=$PROXY_PORT
MS=("$MAILSAFE_BIN")
REPLICA=s3://bench-mailsafe/replica
export AWS_ENDPOINT_URL=http://127.0.0.1:$MS_PORT
T0=$(date +%s.%N)
if [ "$MODE" = watch ]; then
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/ms/time.watch" \
    env MAILSAFE_LOG="${MAILSAFE_LOG:-mailsafe=debug,info}" \
    "${MS[@]}" watch --db "$WORK/ms/mail.db" --replica "$REPLICA" 2>"$WORK/ms/log" &
  MS_PID=$!
  PIDS+=("$MS_PID")
  wait_quiet "$MS_PORT"
else
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/ms/time.0" \
    "${MS[@]}" snapshot --db "$WORK/ms/mail.db" --replica "$REPLICA" >>"$WORK/ms/log" 2>&1
fi
T1=$(date +%s.%N)
stats "$MS_PORT" >"$WORK/ms.first.json"
reset_stats "$MS_PORT"
[ "$MODE" = watch ] && MS_CPU0=$(cpu_of "$MS_PID")
MS_LOG_LINES=$(wc -l <"$WORK/ms/log")
log "mailsafe: steady state"
if [ "$MODE" != watch ]; then
  (
    i=1
    while [ ! -f "$WORK/ms/stop" ]; do
      /usr/bin/time -f "%e %U %S %M" -o "$WORK/ms/time.$i" \
        "${MS[@]}" snapshot --db "$WORK/ms/mail.db" --replica "$REPLICA" >>"$WORK/ms/log" 2>&1 || true
      i=$((i + 1))
      sleep 1
    done
  ) &
  MS_PID=$!
  PIDS+=("$MS_PID")
fi
PERF_PID=
if [ -n "${BENCH_PERF:-}" ] && [ "$MODE" = watch ]; then
  perf record -q -F 499 -g -o "$WORK/perf.data" -p "$(ps -o pid= --ppid "$MS_PID" | head -1 | tr -d ' ')" 2>"$WORK/perf.log" &
  PERF_PID=$!
fi
run_load "$WORK/ms/mail.db"
sleep "$SETTLE"
stats "$MS_PORT" >"$WORK/ms.steady.json"
if [ -n "$PERF_PID" ]; then
  kill -INT "$PERF_PID"
  wait "$PERF_PID" || true
  perf report -i "$WORK/perf.data" --no-children --percent-limit 1.5 --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -40 >"$WORK/perf.txt" || true
  log "perf: hottest symbols of the steady window (self time):"
  cat "$WORK/perf.txt" >&2
fi
MS_STEADY_CPU=nan
[ "$MODE" = watch ] && MS_STEADY_CPU=$(echo "$(cpu_of "$MS_PID") - $MS_CPU0" | bc)
MS_STEADY_LOG=$(tail -n +"$((MS_LOG_LINES + 1))" "$WORK/ms/log" | sed 's/\x1b\[[0-9;]*m//g')
MS_FULL_SCANS=$(grep -c "hashing every chunk" <<<"$MS_STEADY_LOG" || true)
MS_WAL_RESETS=$(grep -c "wal reset" <<<"$MS_STEADY_LOG" || true)
MS_RESET_MAX_US=$(grep -o 'write_lock_held_us=[0-9]*' <<<"$MS_STEADY_LOG" | cut -d= -f2 | sort -n | tail -1 || true)
MS_FIRST_CPU=nan
[ "$MODE" = watch ] && MS_FIRST_CPU=$MS_CPU0
log "mailsafe: one-row change"
one_row "$WORK/ms/mail.db" "$MS_PORT" "$WORK/ms.onerow.json"
touch "$WORK/ms/stop"
# A failed final snapshot is a result: watch exits non-zero and says what is
# not in the replica (the 14:13 session-2 run went unexplained for want of it).
MS_EXIT=0
if [ "$MODE" = watch ]; then stop_timed "$MS_PID"; MS_EXIT=$STOP_RC; else wait "$MS_PID" || true; fi
MS_SNAPSHOTS_STEADY=$(grep -c "snapshot uploaded" "$WORK/ms/log" || true)
[ "$MS_EXIT" = 0 ] || log "mailsafe watch exited $MS_EXIT: $(tail -2 "$WORK/ms/log" | cut -c1-400)"
MS_ROWS=$(sqlite3 "$WORK/ms/mail.db" "select count(*) from mailbox")
log "mailsafe: restore"
export AWS_ENDPOINT_URL=$S3
R0=$(date +%s.%N)
MS_RESTORE_RC=0
/usr/bin/time -f "%e %U %S %M" -o "$WORK/ms/restore.time" \
  "${MS[@]}" restore --db "$WORK/ms/restored.db" --replica "$REPLICA" >>"$WORK/ms/log" 2>&1 || MS_RESTORE_RC=$?
R1=$(date +%s.%N)
MS_RESTORED_ROWS=$(restored_rows "$WORK/ms/restored.db" "$MS_RESTORE_RC" "$WORK/ms/log")
read -r MS_CPU MS_RSS < <(sum_time "$WORK"/ms/time.*)
MS_SNAPSHOTS=$(ls "$WORK"/ms/time.* | wc -l)
MS_FIRST_S=$(echo "$T1 - $T0" | bc)
MS_RESTORE_S=$(echo "$R1 - $R0" | bc)
[ "$MODE" = watch ] && MS_FIRST_S=$(echo "$MS_FIRST_S - $QUIET" | bc)

########## report
# BENCH_PROFILE names the build of a binary copied out of target/ (e.g. a
# "before" build kept for a side-by-side run).
case "$MAILSAFE_BIN" in */release/*) PROFILE=release ;; */debug/*) PROFILE=dev ;; *) PROFILE="$(basename "$MAILSAFE_BIN")" ;; esac
PROFILE=${BENCH_PROFILE:-$PROFILE}
BENCH_CONTEXT=$(bench_context "$PROFILE")
BENCH_CONTEXT="$BENCH_CONTEXT at the end of the run ($LOAD_START at its start)"
export BENCH_CONTEXT LS_NOT_QUIET LS_FIRST_MAX LS_STEADY_CPU MS_STEADY_CPU LS_FIRST_CPU MS_FIRST_CPU MS_FULL_SCANS MS_WAL_RESETS MS_RESET_MAX_US
export WORK DB_BYTES BASE_ROWS COUNT RATE SETTLE MODE MS_SNAPSHOTS \
  LS_CPU LS_RSS LS_FIRST_S LS_RESTORE_S LS_ROWS LS_RESTORED_ROWS \
  MS_CPU MS_RSS MS_FIRST_S MS_RESTORE_S MS_ROWS MS_RESTORED_ROWS MS_EXIT MS_SNAPSHOTS_STEADY
# One section per db size (and BENCH_LABEL, e.g. before/after a change);
# the plain 200 MiB run keeps its historical marker.
MARKER=engine-bench
if [ "$MIB" != 200 ] || [ -n "${BENCH_LABEL:-}" ]; then MARKER="engine-bench-${MIB}mib${BENCH_LABEL:+-$BENCH_LABEL}"; fi
SECTION=$(python3 bench/engine_report.py)
echo "$SECTION"
if [ "${BENCH_LITESTREAM:-1}" = 0 ]; then
  log "BENCH_LITESTREAM=0: not written to RESULTS.md (results in $WORK/results.json)"
else
  write_results_section "$MARKER" "$SECTION"
fi
