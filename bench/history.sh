#!/usr/bin/env bash
# Cost of a long history (issue 19): restore of the newest snapshot and a
# writer's start-up (`mailsafe snapshot` after a change: it loads the newest
# manifest first, as `watch` does) with N older manifests beside it; and
# `prune` and `snapshots`, which need every snapshot's summary, before and
# after prune has written the day indexes (index/, see docs/FORMAT.md).
#
# One SeaweedFS (scripts/s3.sh, small objects kept in its filer store), one
# small WAL db snapshotted once; then N older manifests are added (copies of
# the real base manifest under ids in 2020, one per second, so every command
# can read them; PUT straight to the SeaweedFS filer, 32 at a time: ~2,000/s
# here where boto3 through S3 managed ~300/s), and for each N the commands
# are timed (best of RUNS for restore) and their S3 requests counted through
# bench/s3proxy. No prune deletes anything (the keep-all one forgets
# nothing, the keep-last one is a dry run), so each N builds on the last.
#
# `snapshots` and prune read every snapshot's summary: one GET per manifest
# until prune has written the day indexes, by design (the index is built
# from the manifests). At 100 k that is minutes on 2 cores, so those phases
# run only up to FULL_MAX older manifests and are reported as skipped above
# it; restore and the writer's start-up run at every N.
#
# Env: SIZES ("0 1000 100000"; 1000000 takes ~10 min to synthesise), RUNS (3),
# FULL_MAX (10000), MAILSAFE_BIN (default target/release/mailsafe, built if
# missing), BENCH_KEEP=1 keeps the work dir. Results: the history-bench
# section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-0 1000 100000}
RUNS=${RUNS:-3}
FULL_MAX=${FULL_MAX:-10000}
log() { echo "[history-bench] $*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-history-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
bench_binary
profile=$BENCH_BUILD

# Manifests of up to 64 KiB live in the filer store: no volume write each.
MAILSAFE_S3_WEED_ARGS="-filer.saveToFilerLimit=65536" bench_s3_start bench-history
FILER_PORT=$(cut -d' ' -f4 <<<"$MAILSAFE_S3_PORTS")
start_proxy meter
export AWS_ENDPOINT_URL="http://127.0.0.1:$PROXY_PORT"
URL=s3://bench-history/h
requests() { stats "$PROXY_PORT" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(o["requests"] for o in s["ops"].values()))'; }

python3 - "$WORK/app.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("PRAGMA journal_mode=wal")
db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
db.executemany("INSERT INTO t(body) VALUES (?)", [("x" * 500,)] * 200)
db.commit()
PY
"$MAILSAFE_BIN" snapshot --db "$WORK/app.db" --replica "$URL" >/dev/null
REAL=$(python3 - "$S3" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bench-history", Prefix="h/manifests/")["Contents"]]
print(keys[-1])
PY
)

# synth FROM TO: older manifests FROM..TO-1 (ids in 2020, one per second),
# PUT to the filer (the S3 bucket's directory) 32 at a time.
synth() {
  python3 - "$1" "$2" "$S3" "$REAL" "$FILER_PORT" <<'PY'
import sys, json, datetime, http.client, threading, boto3, concurrent.futures as cf
have, n, endpoint, real, filer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
proto = json.loads(s3.get_object(Bucket="bench-history", Key=real)["Body"].read())
t0 = datetime.datetime(2020, 1, 1)
local = threading.local()
def put(i):
    t = t0 + datetime.timedelta(seconds=i)
    sid = f"{t:%Y%m%dT%H%M%S}.000Z-{i:08x}"
    m = dict(proto, id=sid, base=sid, parent=None, created=f"{t:%Y-%m-%dT%H:%M:%S}Z")
    c = getattr(local, "c", None) or http.client.HTTPConnection("127.0.0.1", filer)
    local.c = c
    c.request("PUT", f"/buckets/bench-history/h/manifests/{sid}.json", body=json.dumps(m).encode())
    r = c.getresponse()
    r.read()
    if r.status not in (200, 201):
        sys.exit(f"filer PUT {sid}: HTTP {r.status}")
with cf.ThreadPoolExecutor(32) as ex:
    list(ex.map(put, range(have, n)))
PY
}

# timed NAME CMD... -> "best_s requests" (requests of the last run)
timed() {
  local best="" t0 t1 r
  for _ in $(seq "$RUNS"); do
    reset_stats "$PROXY_PORT"
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    r=$(requests)
    best=$(python3 -c "b='$best'; t=$t1-$t0; print(f'{t:.3f}' if not b or t < float(b) else b)")
  done
  echo "$best $r"
}

rows=""
have=0
base_restore=""
for n in $SIZES; do
  if [ "$n" -gt "$have" ]; then
    log "synthesising $((n - have)) older manifests (to $n)"
    t0=$(date +%s)
    synth "$have" "$n"
    log "synthesised in $(($(date +%s) - t0)) s"
    have=$n
  fi
  rm -f "$WORK/out.db"*
  read -r rs rr < <(timed "$MAILSAFE_BIN" restore --db "$WORK/out.db" --replica "$URL" --force)
  [ -n "$base_restore" ] || base_restore=$rs
  vs=$(python3 -c "print(f'{($rs / $base_restore - 1) * 100:+.0f}%')")
  python3 -c "import sqlite3; c=sqlite3.connect('$WORK/app.db'); c.execute('INSERT INTO t(body) VALUES (1)'); c.commit()"
  read -r ss sr < <(RUNS=1 timed "$MAILSAFE_BIN" snapshot --db "$WORK/app.db" --replica "$URL")
  log "N=$n: restore ${rs}s ($rr requests, $vs against the first size), writer start-up + snapshot ${ss}s ($sr requests)"
  if [ "$n" -gt "$FULL_MAX" ]; then
    # One GET per manifest before the indexes exist, by design: skipped.
    log "N=$n: snapshots and prune skipped (they read every manifest until prune has indexed it; FULL_MAX=$FULL_MAX)"
    skip="skipped (O(N))"
    rows+="| $n | $rs ($vs) | $rr | $ss | $sr | $skip | $skip | $skip | $skip | $skip |"$'\n'
    continue
  fi
  # Before and after the day indexes: `snapshots` and a dry-run prune that
  # would keep only the newest (it reads what it keeps); in between, a
  # prune that keeps everything writes the indexes of past days.
  read -r l1 l1r < <(RUNS=1 timed "$MAILSAFE_BIN" snapshots --replica "$URL")
  read -r d1 d1r < <(RUNS=1 timed "$MAILSAFE_BIN" prune --replica "$URL" --keep-last 1 --dry-run)
  read -r pw pwr < <(RUNS=1 timed "$MAILSAFE_BIN" prune --replica "$URL" --keep-within 36500d)
  read -r l2 l2r < <(RUNS=1 timed "$MAILSAFE_BIN" snapshots --replica "$URL")
  read -r d2 d2r < <(RUNS=1 timed "$MAILSAFE_BIN" prune --replica "$URL" --keep-last 1 --dry-run)
  log "N=$n: snapshots ${l1}s ($l1r) -> ${l2}s ($l2r), prune --dry-run ${d1}s ($d1r) -> ${d2}s ($d2r), index-writing prune ${pw}s ($pwr)"
  rows+="| $n | $rs ($vs) | $rr | $ss | $sr | $l1 / $l1r | $l2 / $l2r | $d1 / $d1r | $d2 / $d2r | $pw / $pwr |"$'\n'
done

section="## Long histories (bench/history.sh)

$(bench_context "$profile"), SeaweedFS on loopback through bench/s3proxy (requests counted).
The newest snapshot of a small db with N older manifests beside it: \`restore\` (best of $RUNS) and a
writer's start-up plus one incremental snapshot (\`mailsafe snapshot\`, which finds the newest manifest
as \`watch\` does). Target: restore within 10% of the first size's figure (in brackets). Then, seconds / requests, before and
after the day indexes (docs/FORMAT.md): \`snapshots\`, and \`prune --keep-last 1 --dry-run\` (reads what it
keeps); the indexes are written by a \`prune --keep-within 36500d\` in between (keeps everything, so it
reads every manifest twice: last column). Those four read every manifest (one GET each) before the
indexes exist, by design, so they run only up to FULL_MAX=$FULL_MAX older manifests (shown as skipped above it).

| older manifests | restore s | restore requests | start-up + snapshot s | requests | snapshots s / req | snapshots, indexed | prune dry-run s / req | prune dry-run, indexed | index-writing prune |
|---|---|---|---|---|---|---|---|---|---|
${rows}"
write_results_section history-bench "$section"
echo "$section"
