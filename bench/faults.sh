#!/usr/bin/env bash
# S3 faults during steady mail load (issue 7): `mailsafe serve` takes mail
# from a real SMTP client at 20 mails/s while a `mailsafe watch` sidecar backs
# its db up through bench/s3proxy, which answers 30% of requests 503
# SlowDown, resets connections mid-body and adds 2 s latency for 40 s, then
# refuses everything for 30 s (a full outage). Reported: mails acknowledged
# vs restored, the watcher's peak RSS, the largest replication lag, how long
# after the faults were cleared the replica had caught up, and the faults
# actually injected.
#
# The scenario is tests/faults.rs run with FAULTS_FULL=1 (CI runs the same
# test with short phases); its FIGURE lines go to bench/RESULTS.md between
# the faults-bench markers. The test starts its own SeaweedFS unless
# MAILSAFE_TEST_S3_ENDPOINT is set. Profile: dev (deps at opt-level 3);
# PROFILE=release for a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-dev}
# shellcheck source=bench/lib.sh
source bench/lib.sh

flags=()
[ "$PROFILE" = release ] && flags+=(--release)
OUT="$(FAULTS_FULL=1 cargo test "${flags[@]}" -p mailsafe --test faults -- --nocapture 2>&1)" || {
  echo "$OUT" >&2
  exit 1
}
FIG="$(echo "$OUT" | grep '^FIGURE ' | sed 's/^FIGURE /- /')"
SECTION=$(cat <<MD
<!-- faults-bench:begin -->
## S3 faults during mail load (bench/faults.sh)

$(date -u +%Y-%m-%dT%H:%MZ), profile $PROFILE, SeaweedFS on loopback behind bench/s3proxy; serve + watch sidecar,
20 mails/s over SMTP. Phases (s): calm, then 30% 503 + 20% resets + 2 s latency, then a full outage (faults stay on 5 s after).

$FIG

Targets: lost = 0; RSS bounded (no growth with the backlog); /healthz non-200 during the outage (asserted by the test) and 200 after.
<!-- faults-bench:end -->
MD
)
write_results_section faults-bench "$SECTION"
echo "$SECTION"
