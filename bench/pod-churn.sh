#!/usr/bin/env bash
# Pod-churn benchmark: N pod lives (default 100) of each Kubernetes variant
# (restore initContainer + watch sidecar + catcher; `serve --replica` alone)
# against a local SeaweedFS, with a db seeded to SEED_MIB (default 100 MiB) in
# the first life, so every later life is a cold start that restores it.
# Reports lost emails (must be 0) and cold start (restore -> /readyz ok;
# target < 1 s) in bench/RESULTS.md, section "Pod churn".
#
#   bench/pod-churn.sh            # N=100, SEED_MIB=100
#   N=20 SEED_MIB=10 bench/pod-churn.sh
#   PROFILE=dev bench/pod-churn.sh   # reuse the test build instead of release
#   VARIANTS=single bench/pod-churn.sh   # one variant only (sidecar|single)
#   LABEL="dev, no seed" ...            # section "Pod churn (LABEL)", so runs
#                                       # of different settings sit side by side
#
# It runs tests/pod_churn.rs (release build) with MAILSAFE_CHURN_* set: the
# same harness CI runs with N=10, so the benchmark and the test cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-100}"
VARIANTS="${VARIANTS:-}"
LABEL="${LABEL:-}"
SEED_MIB="${SEED_MIB:-100}"
PROFILE="${PROFILE:-release}"
profile_args=()
[ "$PROFILE" = dev ] || profile_args=(--profile "$PROFILE")
OUT="bench/out/pod-churn${LABEL:+-${LABEL//[^a-zA-Z0-9]/_}}"
mkdir -p "$OUT"
rm -f "$OUT"/report.*.json
filter=()
case "$VARIANTS" in
  sidecar) filter=(sidecar_pods) ;;
  single) filter=(single_container_pods) ;;
esac

bash scripts/setup.sh

export MAILSAFE_S3_ENV="$OUT/s3.env"
bash scripts/s3.sh start >/dev/null
trap 'bash scripts/s3.sh stop >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1090
source "$MAILSAFE_S3_ENV"
export MAILSAFE_TEST_S3_ENDPOINT MAILSAFE_TEST_S3_ACCESS_KEY MAILSAFE_TEST_S3_SECRET_KEY
# Loopback S3 over plain HTTP: no CA bundles.
unset AWS_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR || true

echo "[pod-churn] N=$N lives per variant, seed ${SEED_MIB} MiB" >&2
start=$(date +%s)
set +e
MAILSAFE_CHURN_LIVES="$N" MAILSAFE_CHURN_SEED_MIB="$SEED_MIB" \
  MAILSAFE_CHURN_REPORT="$PWD/$OUT/report" \
  cargo test "${profile_args[@]}" --test pod_churn -- "${filter[@]}" --include-ignored --test-threads=1 --nocapture \
  2>&1 | tee "$OUT/run.log" | grep --line-buffered -E '^\[(sidecar|single)\]|^test |test result'
status=${PIPESTATUS[0]}
set -e
elapsed=$(( $(date +%s) - start ))

# shellcheck source=bench/lib.sh
source bench/lib.sh
section=$(python3 - "$OUT" "$N" "$SEED_MIB" "$elapsed" "$status" "$(bench_context "$PROFILE")" "$VARIANTS" "$LABEL" <<'PY'
import json, os, re, subprocess, sys, datetime
out, n, seed, elapsed, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
context, only, title = sys.argv[6], sys.argv[7], sys.argv[8]
heading = f"## Pod churn ({title})" if title else "## Pod churn"
rows = []
for variant, label in (("sidecar", "restore + `watch` sidecar + `serve`"), ("single", "`serve --replica` alone")):
    if only and only != variant:
        continue
    path = os.path.join(out, f"report.{variant}.json")
    if not os.path.exists(path):
        rows.append(f"| {label} | did not finish (see bench/out/pod-churn/run.log) | | | | |")
        continue
    r = json.load(open(path))
    ok = "✅" if r["lost"] == 0 else "❌"
    target = "✅" if r["cold_start_ms_p50"] < 1000 else "❌"
    rows.append(
        f"| {label} | {r['lives']} | {r['acknowledged']} | **{r['lost']}** {ok} | "
        f"{r['cold_start_ms_p50']:.0f} / {r['cold_start_ms_p99']:.0f} / {r['cold_start_ms_max']:.0f} {target} | "
        f"{r['restored_db_bytes_max'] / 2**20:.1f} MiB |")
cpu = ""
try:
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
except Exception:
    pass
section = "\n".join([
    heading,
    "",
    f"`bench/pod-churn.sh` (N={n} pod lives per variant, db seeded with {seed} MiB of mail in the first life), "
    f"{context}, {cpu}, SeaweedFS on loopback, {elapsed} s in all, harness exit {status}.",
    "",
    "Each life: fresh empty dir → restore → ready → 10 emails + a sender running through SIGTERM → "
    "catcher stopped, then sidecar → next life. Lost = acknowledged with 250 but missing after the next restore "
    "(target 0). Cold start = first process of the pod to `/readyz` 200, restoring the whole db (target < 1 s).",
    "",
    "| variant | lives | emails acknowledged | lost | cold start p50 / p99 / max (ms) | restored db |",
    "| --- | --- | --- | --- | --- | --- |",
    *rows,
    "",
])
print(section)
PY
)
marker="pod-churn${LABEL:+-$(echo "$LABEL" | tr 'A-Z' 'a-z' | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')}"
write_results_section "$marker" "$section"
echo "$section"
exit "$status"
