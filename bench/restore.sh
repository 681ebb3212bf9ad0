#!/usr/bin/env bash
# Restore time by chunk pack size (issue 3, format v2): for each pack size in
# PACKS (MiB), one `mailsafe snapshot` of the ~200 MiB mail db of
# bench/engine.sh into its own prefix of one SeaweedFS, then RUNS timed
# restores of it straight from SeaweedFS (wall seconds, best and median), with
# the objects the snapshot wrote. With CATCHER_MIB set (default 100) also a
# mail *catcher* db of about that size (FTS5 index; made by the catcher's
# api_bench example, cached) at the default pack size: the pod-churn cold
# start restores one of those (target < 1 s).
#
# Each restore also runs under /usr/bin/time: its CPU seconds (user+system)
# and peak RSS (issue 18: >= 700 MB/s of db, RSS <= 64 MiB at 1 and 4 GiB).
# The MB/s column is db bytes (10^6) per wall second of the best run.
#
# Env: PACKS ("4 8 16"), RUNS (3), BENCH_MIB (200), CATCHER_MIB (100; 0 skips),
# MAILSAFE_BIN (default target/release/mailsafe, built if missing),
# BENCH_PROFILE (names a build copied out of target/), BENCH_LABEL (a
# section of its own, e.g. before/after), BENCH_KEEP=1 keeps the work dir.
# Results: the restore-bench section of bench/RESULTS.md (restore-bench-LABEL
# with a label).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACKS=${PACKS:-4 8 16}
RUNS=${RUNS:-3}
MIB=${BENCH_MIB:-200}
CATCHER_MIB=${CATCHER_MIB:-100}
log() { echo "[restore-bench] $*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-restore-bench.XXXXXX")"
# shellcheck source=bench/lib.sh
source bench/lib.sh
trap bench_cleanup EXIT
MAILSAFE_BIN=${MAILSAFE_BIN:-$ROOT/target/release/mailsafe}
if [ ! -x "$MAILSAFE_BIN" ]; then
  log "building release mailsafe"
  cargo build --release -p mailsafe --bin mailsafe >&2
fi
bench_s3_start bench-restore
export AWS_ENDPOINT_URL=$S3

CACHE="$ROOT/target/bench-cache"
mkdir -p "$CACHE"
MAILDB="$CACHE/maildb-${MIB}.db"
if [ ! -f "$MAILDB" ]; then
  log "creating ${MIB} MiB mail db"
  python3 bench/maildb.py create "$MAILDB.tmp" --mib "$MIB" >&2
  mv "$MAILDB.tmp" "$MAILDB"
fi
CATCHERDB="$CACHE/catcher-${CATCHER_MIB}.db"
if [ "$CATCHER_MIB" != 0 ] && [ ! -f "$CATCHERDB" ]; then
  # ~5.3 KiB of db per generated message (FTS index included).
  n=$((CATCHER_MIB * 1024 / 5))
  log "creating a catcher db of $n messages"
  cargo build -q --release -p mailsafe_catcher --example api_bench >&2
  API_BENCH_DB="$CATCHERDB.tmp" "$ROOT/target/release/examples/api_bench" "$n" 1 >/dev/null
  sqlite3 "$CATCHERDB.tmp" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
  mv "$CATCHERDB.tmp" "$CATCHERDB"
  rm -f "$CATCHERDB.tmp-wal" "$CATCHERDB.tmp-shm"
fi

# measure NAME DB PACK_BYTES : snapshot DB into prefix NAME, then RUNS timed
# restores; appends a JSON line to $WORK/results.jsonl.
measure() {
  local name=$1 db=$2 pack=$3 src="$WORK/$1.db"
  cp "$db" "$src"
  MAILSAFE_PACK_BYTES=$pack "$MAILSAFE_BIN" snapshot --db "$src" --replica "s3://bench-restore/$name" --json >"$WORK/$name.snap.json" 2>>"$WORK/log"
  local times=() cpus=() rss=()
  for i in $(seq 1 "$RUNS"); do
    rm -f "$WORK/$name.out.db"
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S %M" -o "$WORK/$name.time" \
      "$MAILSAFE_BIN" restore --db "$WORK/$name.out.db" --replica "s3://bench-restore/$name" 2>>"$WORK/log"
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc)")
    cpus+=("$(awk '{print $1 + $2}' "$WORK/$name.time")")
    rss+=("$(awk '{print $3}' "$WORK/$name.time")")
  done
  cmp -s <(sqlite3 "$src" "select count(*) from sqlite_schema") <(sqlite3 "$WORK/$name.out.db" "select count(*) from sqlite_schema") ||
    { log "$name: restored db differs"; exit 1; }
  python3 - "$name" "$db" "$pack" "$WORK" "${times[*]}" "${cpus[*]}" "${rss[*]}" >>"$WORK/results.jsonl" <<'PY'
import json, os, statistics, sys
name, db, pack, work, times, cpus, rss = sys.argv[1:]
times = sorted(float(t) for t in times.split())
cpus = [float(c) for c in cpus.split()]
rss = [int(r) for r in rss.split()]
snap = json.load(open(f"{work}/{name}.snap.json"))
print(json.dumps({"name": name, "db_mib": os.path.getsize(db) / 2**20, "pack_mib": int(pack) / 2**20,
                  "objects": snap["uploaded_objects"], "stored_mib": snap["uploaded_bytes"] / 2**20,
                  "best_s": times[0], "median_s": statistics.median(times),
                  "mb_s": os.path.getsize(db) / 1e6 / times[0],
                  "cpu_s": statistics.median(cpus), "rss_mib": max(rss) / 1024}))
PY
  rm -f "$src" "$WORK/$name.out.db"
}

for p in $PACKS; do
  log "mail db, packs of $p MiB"
  measure "mail-pack$p" "$MAILDB" $((p << 20))
done
if [ "$CATCHER_MIB" != 0 ]; then
  log "catcher db, default packs"
  measure "catcher" "$CATCHERDB" $((2 << 20))
fi

profile=dev
case "$MAILSAFE_BIN" in */release/*) profile=release ;; esac
profile=${BENCH_PROFILE:-$profile}
marker=restore-bench${BENCH_LABEL:+-$BENCH_LABEL}
section=$(python3 - "$WORK/results.jsonl" "$RUNS" "$(bench_context "$profile")" "$marker" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs, context = sys.argv[2], sys.argv[3]
marker = sys.argv[4]
out = [f"<!-- {marker}:begin -->", "## Restore time by pack size (bench/restore.sh)", "",
       f"{context}, SeaweedFS on loopback; "
       f"one `snapshot`, then {runs} timed `restore`s (wall s, default `--parallelism` 32, quick check; "
       "CPU s median, peak RSS the highest of the runs).", "",
       "| db | db MiB | pack MiB | objects | stored MiB | restore best s | median s | MB/s (best) | CPU s | peak RSS MiB |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    out.append(f"| {r['name']} | {r['db_mib']:.0f} | {r['pack_mib']:g} | {r['objects']} | {r['stored_mib']:.1f} | "
               f"{r['best_s']:.2f} | {r['median_s']:.2f} | {r.get('mb_s', 0):.0f} | {r.get('cpu_s', 0):.2f} | "
               f"{r.get('rss_mib', 0):.1f} |")
out.append(f"<!-- {marker}:end -->")
print("\n".join(out))
PY
)
write_results_section "$marker" "$section"
echo "$section"
