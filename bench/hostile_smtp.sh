#!/usr/bin/env bash
# Memory of `mailsafe serve` under hostile SMTP (bench/hostile_smtp.py): 800
# idle connections, 16 x 30 MB messages at once, 8 x 80 MB endless DATA,
# 8 MiB lines + NUL + 10k RCPTs, 50 slow-loris sessions, while a normal
# client keeps sending. Then the 16 x 30 MB phase again without the global
# cap (--smtp-max-data-memory 0) for comparison, and the whole mix again with
# glibc malloc told to return memory (MALLOC_ARENA_MAX=2,
# MALLOC_MMAP_THRESHOLD_=131072). Samples VmRSS/VmHWM from /proc/<pid>/status.
# Writes the hostile-smtp section of bench/RESULTS.md (bench/lib.sh).
#   PROFILE=dev|release (default dev)   bench/hostile_smtp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
PROFILE="${PROFILE:-dev}"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" -p mailsafe --bin mailsafe
bin="target/$([ "$PROFILE" = release ] && echo release || echo debug)/mailsafe"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT


run() { # $1 = global cap (MB), $2 = extra env (or -), rest = driver args
  local cap="$1" env="$2"; shift 2
  local smtp http pid
  smtp="$(free_port)"; http="$(free_port)"
  rm -f "$work"/mail.db*
  [ "$env" = - ] && env=X=1
  # shellcheck disable=SC2086 # several VAR=value words
  env $env MAILSAFE_LOG=warn "$bin" serve --db "$work/mail.db" --smtp "127.0.0.1:$smtp" --listen "127.0.0.1:$http" \
    --max-messages 0 --smtp-idle-timeout 3s --smtp-max-data-memory "$cap" >"$work/serve.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true' RETURN
  for _ in $(seq 100); do
    python3 -c "import socket;socket.create_connection(('127.0.0.1',$smtp),1)" 2>/dev/null && break
    sleep 0.1
  done
  python3 bench/hostile_smtp.py "$pid" "$smtp" "$@"
  kill "$pid"; wait "$pid" || true
  rm -f "$work"/mail.db*
}

full="$(run 256 -)"
echo "$full"
nocap="$(run 0 - --only-big)"
echo "$nocap"
tuned="$(run 256 "MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072")"
echo "$tuned"

section=$(python3 - "$full" "$nocap" "$tuned" "$(bench_context "$PROFILE")" <<'PY'
import json, sys
full, nocap, tuned = (json.loads(a) for a in sys.argv[1:4])
context = sys.argv[4]
b, e, l, lo, n = (full[k] for k in ("big_16x30MB", "endless_8x80MB", "lines_nul_rcpt_x4", "slow_loris_50", "normal_client"))
t = tuned
def rc(d):
    return ", ".join(f"{v} x {k}" for k, v in sorted(d.items()))
lines = [
    "<!-- hostile-smtp:begin -->",
    "## Hostile SMTP: memory of `mailsafe serve` (bench/hostile_smtp.sh)",
    "",
    f"{context}; VmRSS sampled every 50 ms.",
    "Defaults: MP_MAX_MESSAGE_SIZE 50 MB, MAILSAFE_SMTP_MAX_DATA_MEMORY 256 MB; idle timeout 3 s for the run.",
    "Peak RSS with glibc's default malloc, and with `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072`",
    "(large buffers are mmapped and go back to the OS when freed instead of staying in per-thread arenas).",
    "",
    "| Phase | Replies | Peak RSS MiB (default malloc) | (tuned malloc) |",
    "|---|---|---|---|",
    f"| idle, before anything | - | {full['baseline_rss_mib']} | {t['baseline_rss_mib']} |",
    f"| 800 idle connections (held throughout) | 800 x 220 | {full['idle_800_rss_mib']} | {t['idle_800_rss_mib']} |",
    f"| 16 sessions x 30 MB at once (480 MB demand) | {rc(b['replies'])} | {b['peak_rss_mib']} | {t['big_16x30MB']['peak_rss_mib']} |",
    f"| same, **without** the global cap | {rc(nocap['big_16x30MB']['replies'])} | {nocap['big_16x30MB']['peak_rss_mib']} | - |",
    f"| 8 sessions x 80 MB endless DATA (over the limit) | {rc(e['replies'])} | {e['peak_rss_mib']} | {t['endless_8x80MB']['peak_rss_mib']} |",
    f"| 4 x (8 MiB line + NUL: reply, then 10k pipelined RCPT: 250s, 452s) | {l['replies'][0]} each | {l['peak_rss_mib']} | {t['lines_nul_rcpt_x4']['peak_rss_mib']} |",
    f"| 50 slow-loris sessions (1 byte / 0.5 s) | {rc(lo['replies'])}, all gone within {lo['max_seconds']} s | {lo['peak_rss_mib']} | {t['slow_loris_50']['peak_rss_mib']} |",
    f"| after the mix | - | {full['after_rss_mib']} | {t['after_rss_mib']} |",
    f"| whole run (VmHWM) | - | {full['hwm_mib']} | {t['hwm_mib']} |",
    "",
    f"Without the cap, 16 x 30 MB alone reach VmHWM {nocap['hwm_mib']} MiB. Refused big messages got 452 4.3.1 (the",
    "client retries later); while big streams use up the budget, a small message can get 452 too.",
    f"A normal client meanwhile (one small message every 100 ms): {n['ok']} accepted, {n['failed']} refused, latency",
    f"p50 {n['p50_ms']} ms / p99 {n['p99_ms']} ms (tuned run: {t['normal_client']['ok']} / {t['normal_client']['failed']},",
    f"p99 {t['normal_client']['p99_ms']} ms); the p99 is the store's one writer busy committing 30 MB messages.",
    "<!-- hostile-smtp:end -->",
]
print("\n".join(lines))
PY
)
write_results_section hostile-smtp "$section"
echo "$section"
