#!/usr/bin/env bash
# Memory of `mailsafe serve` under hostile SMTP (bench/hostile_smtp.py): 800
# idle connections, 16 x 30 MB messages at once, 8 x 80 MB endless DATA,
# 8 MiB lines + NUL + 10k RCPTs, 50 slow-loris sessions, while a normal
# client keeps sending. Then the 16 x 30 MB phase again without the global
# cap (--smtp-max-data-memory 0) for comparison. Samples VmRSS/VmHWM from
# /proc/<pid>/status. Writes the "Hostile SMTP" section of bench/RESULTS.md.
#   PROFILE=dev|release (default dev)   bench/hostile_smtp.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-dev}"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" -p mailsafe --bin mailsafe
bin="target/$([ "$PROFILE" = release ] && echo release || echo debug)/mailsafe"
work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

run() { # $1 = label, rest = extra serve args / driver args split by --
  local cap="$1"; shift
  local smtp http
  smtp="$(free_port)"; http="$(free_port)"
  rm -f "$work"/mail.db*
  MAILSAFE_LOG=warn "$bin" serve --db "$work/mail.db" --smtp "127.0.0.1:$smtp" --listen "127.0.0.1:$http" \
    --max-messages 0 --smtp-idle-timeout 3s --smtp-max-data-memory "$cap" >"$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    python3 -c "import socket;socket.create_connection(('127.0.0.1',$smtp),1)" 2>/dev/null && break
    sleep 0.1
  done
  python3 bench/hostile_smtp.py "$pid" "$smtp" "$@"
  kill "$pid"; wait "$pid" || true
}

full="$(run 256)"
echo "$full"
nocap="$(run 0 --only-big)"
echo "$nocap"

python3 - "$full" "$nocap" "$PROFILE" <<'PY'
import json, pathlib, re, subprocess, sys
full, nocap, profile = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
load = open("/proc/loadavg").read().split()[0]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
b, e, l, lo, n = (full[k] for k in ("big_16x30MB", "endless_8x80MB", "lines_nul_rcpt_x4", "slow_loris_50", "normal_client"))
lines = [
    "<!-- hostile-smtp:begin -->",
    "## Hostile SMTP: memory of `mailsafe serve` (bench/hostile_smtp.sh)",
    "",
    f"{profile} build at {rev}, load average {load} on the shared 2-core machine; VmRSS sampled every 50 ms.",
    "Defaults: MP_MAX_MESSAGE_SIZE 50 MB, MAILSAFE_SMTP_MAX_DATA_MEMORY 256 MB; idle timeout 3 s for the run.",
    "",
    "| Phase | Replies | Peak RSS (MiB) |",
    "|---|---|---|",
    f"| idle, before anything | - | {full['baseline_rss_mib']} |",
    f"| 800 idle connections (held throughout) | 220 x 800 | {full['idle_800_rss_mib']} |",
    f"| 16 sessions x 30 MB at once (480 MB demand) | {b['replies']} | {b['peak_rss_mib']} |",
    f"| same, **without** the global cap | {nocap['big_16x30MB']['replies']} | {nocap['big_16x30MB']['peak_rss_mib']} |",
    f"| 8 sessions x 80 MB endless DATA (over the limit) | {e['replies']} | {e['peak_rss_mib']} |",
    f"| 4 x (8 MiB line + NUL, 10k pipelined RCPT) | {l['replies']} (line reply, 250s, 452s) | {l['peak_rss_mib']} |",
    f"| 50 slow-loris sessions (1 byte / 0.5 s) | {lo['replies']}, all gone within {lo['max_seconds']} s | {lo['peak_rss_mib']} |",
    f"| after the mix | - | {full['after_rss_mib']} |",
    "",
    f"Whole-run high-water mark (VmHWM): {full['hwm_mib']} MiB with the cap, {nocap['hwm_mib']} MiB without it "
    "(16 x 30 MB only).",
    f"A normal client meanwhile (one small message every 100 ms): {n['ok']} accepted, {n['failed']} failed, "
    f"latency p50 {n['p50_ms']} ms / p99 {n['p99_ms']} ms.",
    "<!-- hostile-smtp:end -->",
]
section = "\n".join(lines) + "\n"
res = pathlib.Path("bench/RESULTS.md")
text = res.read_text()
pat = re.compile(r"<!-- hostile-smtp:begin -->.*?<!-- hostile-smtp:end -->\n", re.S)
text = pat.sub(lambda _m: section, text) if pat.search(text) else text.rstrip() + "\n\n" + section
res.write_text(text)
print(section)
PY
