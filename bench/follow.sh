#!/usr/bin/env bash
# Lag of `mailsafe restore --follow` (issue 16): how long after a snapshot
# is in the replica a reader of the followed copy sees it, and after the
# commit. One SeaweedFS (scripts/s3.sh), a WAL db of BENCH_MIB MiB
# (incompressible rows), a follower polling every FOLLOW_INTERVAL; then
# ROUNDS times: commit 10 rows, `mailsafe snapshot`, and poll the copy (a
# fresh read-only SQLite open every 10 ms) until it has them.
#
# Env: BENCH_MIB (20), ROUNDS (10), FOLLOW_INTERVAL (1s, and 100ms in the
# same run), MAILSAFE_BIN (default target/release/mailsafe, built if
# missing), BENCH_KEEP=1 keeps the work dir. Results: the follow-bench
# section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_MIB=${BENCH_MIB:-20}
ROUNDS=${ROUNDS:-10}
log() { echo "[follow-bench] $*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-follow-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
bench_binary
profile=$BENCH_BUILD

bench_s3_start bench-follow
export AWS_ENDPOINT_URL="$S3"
context=$(bench_context "$profile")

rows=""
for interval in ${FOLLOW_INTERVAL:-1s 100ms}; do
  url="s3://bench-follow/f-$interval"
  db="$WORK/app-$interval.db"
  copy="$WORK/copy-$interval.db"
  python3 - "$db" "$BENCH_MIB" <<'PY'
import sqlite3, sys, os
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=wal")
db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
for _ in range(int(sys.argv[2])):
    db.executemany("INSERT INTO t(body) VALUES (?)", [(os.urandom(4000),)] * 256)
    db.commit()
PY
  "$MAILSAFE_BIN" snapshot --db "$db" --replica "$url" >/dev/null
  "$MAILSAFE_BIN" restore --follow --follow-interval "$interval" --db "$copy" --replica "$url" 2>"$WORK/follow-$interval.log" &
  PIDS+=($!)
  log "interval $interval: ${BENCH_MIB} MiB db, $ROUNDS rounds"
  out=$(python3 - "$db" "$copy" "$MAILSAFE_BIN" "$url" "$ROUNDS" <<'PY'
import sqlite3, subprocess, sys, time, os
db_path, copy, binary, url, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
def count():
    try:
        c = sqlite3.connect(f"file:{copy}?mode=ro", uri=True, timeout=10)
        n = c.execute("SELECT count(*) FROM t").fetchone()[0]
        c.close()
        return n
    except sqlite3.Error:
        return None
db = sqlite3.connect(db_path)
want = db.execute("SELECT count(*) FROM t").fetchone()[0]
deadline = time.time() + 120
while count() != want:
    if time.time() > deadline: sys.exit("the first restore never arrived")
    time.sleep(0.05)
after_snapshot, after_commit = [], []
for _ in range(rounds):
    db.executemany("INSERT INTO t(body) VALUES (?)", [(os.urandom(4000),)] * 10)
    db.commit()
    committed = time.time()
    subprocess.run([binary, "snapshot", "--db", db_path, "--replica", url], check=True, stdout=subprocess.DEVNULL)
    snapped = time.time()
    want += 10
    deadline = time.time() + 60
    while count() != want:
        if time.time() > deadline: sys.exit("the copy fell behind for 60 s")
        time.sleep(0.01)
    seen = time.time()
    after_snapshot.append(seen - snapped)
    after_commit.append(seen - committed)
def p(v, q): return sorted(v)[min(len(v) - 1, int(q * len(v)))]
print(f"{p(after_snapshot, .5):.2f} s / {max(after_snapshot):.2f} s | {p(after_commit, .5):.2f} s / {max(after_commit):.2f} s")
PY
)
  rows+="| ${BENCH_MIB} MiB, poll every $interval | $out |"$'\n'
  log "interval $interval: $out"
done

write_results_section follow-bench "## restore --follow lag (bench/follow.sh)

$context.
A WAL db of ${BENCH_MIB} MiB on SeaweedFS (loopback); each of $ROUNDS rounds commits 10 rows, runs \`mailsafe snapshot\`,
then opens the followed copy read-only every 10 ms until it has them. Each new snapshot is restored in full
(verified, swapped in atomically), so the lag is one poll interval at most plus one restore of the db.

| db, poll interval | lag after the snapshot: p50 / max | lag after the commit (snapshot included): p50 / max |
|---|---|---|
${rows}"
