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
# With BASELINE_BIN set, every timed restore is also run with that binary,
# alternating with MAILSAFE_BIN on the same snapshot (before/after in one
# run, same load). With FILE_REPLICA=1 each snapshot is also written to a
# file:// replica and restored from it: the restore's own speed, without an
# S3 server on the same cores. "server CPU s" is SeaweedFS's CPU over each
# restore (/proc), the other half of what a loopback restore costs the cores.
#
# Env: PACKS ("4 8 16"), RUNS (3), BENCH_MIB (200), CATCHER_MIB (100; 0 skips),
# MAILSAFE_BIN (default target/release/mailsafe, built if missing),
# BASELINE_BIN and BASELINE_LABEL (a build to compare with), BENCH_BUILD_LABEL
# (names MAILSAFE_BIN's rows), FILE_REPLICA,
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

# cpu_ticks PID : utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
BUILDS=("$MAILSAFE_BIN")
[ -n "${BASELINE_BIN:-}" ] && BUILDS=("$BASELINE_BIN" "$MAILSAFE_BIN")
label_of() {
  if [ "$1" = "${BASELINE_BIN:-}" ]; then echo "${BASELINE_LABEL:-baseline}"; else echo "${BENCH_BUILD_LABEL:-this build}"; fi
}

# measure NAME DB PACK_BYTES : snapshot DB into prefix NAME (and a file://
# replica with FILE_REPLICA=1), then RUNS timed restores per build and
# replica, builds alternating; appends a JSON line per (build, replica) to
# $WORK/results.jsonl.
measure() {
  local name=$1 db=$2 pack=$3 src="$WORK/$1.db"
  cp "$db" "$src"
  local replicas=("s3://bench-restore/$name")
  [ -n "${FILE_REPLICA:-}" ] && replicas+=("file://$WORK/$name.file")
  for r in "${replicas[@]}"; do
    MAILSAFE_PACK_BYTES=$pack "$MAILSAFE_BIN" snapshot --db "$src" --replica "$r" --json >"$WORK/$name.snap.json" 2>>"$WORK/log"
  done
  : >"$WORK/$name.runs"
  for i in $(seq 1 "$RUNS"); do
    for r in "${replicas[@]}"; do
      for b in "${BUILDS[@]}"; do
        rm -f "$WORK/$name.out.db"
        local t0 t1 w0 w1
        w0=$(cpu_ticks "$MAILSAFE_S3_PID")
        t0=$(date +%s.%N)
        /usr/bin/time -f "%U %S %M" -o "$WORK/$name.time" \
          "$b" restore --db "$WORK/$name.out.db" --replica "$r" 2>>"$WORK/log"
        t1=$(date +%s.%N)
        w1=$(cpu_ticks "$MAILSAFE_S3_PID")
        cmp -s <(sqlite3 "$src" "select count(*) from sqlite_schema") <(sqlite3 "$WORK/$name.out.db" "select count(*) from sqlite_schema") ||
          { log "$name: restored db differs ($b, $r)"; exit 1; }
        echo "$(label_of "$b")|${r%%:*}|$(echo "$t1 - $t0" | bc)|$(awk '{print $1 + $2}' "$WORK/$name.time")|$(awk '{print $3}' "$WORK/$name.time")|$(echo "scale=2; ($w1 - $w0) / $TICKS" | bc)" >>"$WORK/$name.runs"
      done
    done
  done
  python3 - "$name" "$db" "$pack" "$WORK" >>"$WORK/results.jsonl" <<'PY'
import json, os, statistics, sys
name, db, pack, work = sys.argv[1:]
snap = json.load(open(f"{work}/{name}.snap.json"))
runs = {}
for line in open(f"{work}/{name}.runs"):
    build, replica, t, cpu, rss, server = line.strip().split("|")
    runs.setdefault((build, replica), []).append((float(t), float(cpu), int(rss), float(server)))
for (build, replica), rs in runs.items():
    times = sorted(r[0] for r in rs)
    print(json.dumps({"name": name, "build": build, "replica": replica,
                      "db_mib": os.path.getsize(db) / 2**20, "pack_mib": int(pack) / 2**20,
                      "objects": snap["uploaded_objects"], "stored_mib": snap["uploaded_bytes"] / 2**20,
                      "best_s": times[0], "median_s": statistics.median(times),
                      "mb_s": os.path.getsize(db) / 1e6 / times[0],
                      "cpu_s": statistics.median(r[1] for r in rs),
                      "server_cpu_s": statistics.median(r[3] for r in rs) if replica == "s3" else None,
                      "rss_mib": max(r[2] for r in rs) / 1024}))
PY
  rm -rf "$src" "$WORK/$name.out.db" "$WORK/$name.file"
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
       f"one `snapshot` per replica, then {runs} timed `restore`s per build and replica, builds alternating "
       "(wall s, default `--parallelism` 32, quick check; CPU s and the S3 server's CPU s median, "
       "peak RSS the highest of the runs).", "",
       "| db | build | replica | db MiB | pack MiB | objects | stored MiB | restore best s | median s | MB/s (best) | CPU s | server CPU s | peak RSS MiB |",
       "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    server = "" if r.get("server_cpu_s") is None else f"{r['server_cpu_s']:.2f}"
    out.append(f"| {r['name']} | {r['build']} | {r['replica']} | {r['db_mib']:.0f} | {r['pack_mib']:g} | {r['objects']} | "
               f"{r['stored_mib']:.1f} | {r['best_s']:.2f} | {r['median_s']:.2f} | {r.get('mb_s', 0):.0f} | "
               f"{r.get('cpu_s', 0):.2f} | {server} | {r.get('rss_mib', 0):.1f} |")
out.append(f"<!-- {marker}:end -->")
print("\n".join(out))
PY
)
write_results_section "$marker" "$section"
echo "$section"
