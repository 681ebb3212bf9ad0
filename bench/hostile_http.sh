#!/usr/bin/env bash
# Memory of `mailsafe serve` under hostile HTTP (bench/hostile_http.py): 300
# slow-loris connections, 300 websocket subscribers that never read while 200
# mails arrive, 8 x 60 MB PUT /api/v1/tags bodies at once, one send near the
# 50 MB limit (48 MB of JSON), GETs of that message (raw, part, message, text
# view), 4 x 20 MB sends at once, with a normal API client polling meanwhile. Samples VmRSS/VmHWM
# from /proc/<pid>/status. BIN=path/to/mailsafe runs another build (e.g. an
# older commit's); BEFORE='<its JSON line>' BEFORE_LABEL=... adds it as
# columns for a before/after comparison.
# Writes the hostile-http section of bench/RESULTS.md (bench/lib.sh).
#   PROFILE=dev|release (default dev)   bench/hostile_http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
PROFILE="${PROFILE:-dev}"
flag=()
[ "$PROFILE" = release ] && flag=(--release)
if [ -z "${BIN:-}" ]; then
  cargo build -q "${flag[@]}" -p mailsafe --bin mailsafe
  BIN="target/$([ "$PROFILE" = release ] && echo release || echo debug)/mailsafe"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT


smtp="$(free_port)"; http="$(free_port)"
MAILSAFE_LOG=warn "$BIN" serve --db "$work/mail.db" --smtp "127.0.0.1:$smtp" --listen "127.0.0.1:$http" \
  --max-messages 0 >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  python3 -c "import socket;socket.create_connection(('127.0.0.1',$http),1)" 2>/dev/null && break
  sleep 0.1
done
result="$(python3 bench/hostile_http.py "$pid" "$http" "$smtp")"
kill "$pid"; wait "$pid" || true
echo "$result"

section=$(python3 - "$result" "$(bench_context "$PROFILE")" "${BEFORE:-}" "${BEFORE_LABEL:-before}" <<'PY'
import collections, json, sys
r = json.loads(sys.argv[1])
context = sys.argv[2]
before = json.loads(sys.argv[3]) if sys.argv[3] else None
before_label = sys.argv[4]
def codes(c):
    c = collections.Counter(c) if isinstance(c, list) else c
    return ", ".join(f"{v} x {k}" for k, v in sorted(c.items()))
def b(path):
    if not before:
        return "-"
    v = before
    for k in path:
        v = v[k]
    return v
def closed(p):
    # The driver gives up on a connection after 120 s.
    return f"all closed within {p['max_seconds']} s" if p["max_seconds"] < 119 else "still open at 120 s"
def bc(key):
    if not before:
        return "-"
    p = before[key]
    return closed(p) if key == "slow_loris_300" else codes(p["codes"])
sl, t, s, ws, n = (r[k] for k in ("slow_loris_300", "tags_8x60MB", "send_4x20MB", "ws_300_not_reading", "normal_client"))
one = r["send_1x48MB"]
def b1(key):
    if not before or "send_1x48MB" not in before:
        return "-"
    p = before["send_1x48MB"]
    return codes(p["codes"]) if key == "codes" else f"{p['peak_rss_mib']} (+{p['rise_mib']})"
get = r.get("get_48MB")
def bg(key):
    if not before or "get_48MB" not in before:
        return "-"
    p = before["get_48MB"]
    return codes(p["codes"]) if key == "codes" else f"{p['peak_rss_mib']} (+{p['rise_mib']})"
lines = [
    "<!-- hostile-http:begin -->",
    "## Hostile HTTP: memory of `mailsafe serve` (bench/hostile_http.sh)",
    "",
    f"{context}; VmRSS sampled every 50 ms. Defaults: header-read timeout 10 s, 1024 connections, 256 per IP,",
    "1 MiB body limit (send API: MP_MAX_MESSAGE_SIZE 50 MB, spooled, reserving at most 40 MiB from the 256 MB budget",
    "SMTP uses and waiting up to 10 s for it), 256 websocket subscribers.",
    "",
    f"| Phase | Answers | Peak RSS MiB | {before_label}: answers | peak RSS MiB |",
    "|---|---|---|---|---|",
    f"| idle, before anything | - | {r['baseline_rss_mib']} | - | {b(['baseline_rss_mib'])} |",
    f"| 300 slow-loris connections (half a request head) | {closed(sl)} | {sl['peak_rss_mib']} | {bc('slow_loris_300')} | {b(['slow_loris_300', 'peak_rss_mib'])} |",
    f"| 300 websocket subscribers not reading, 200 mails arrive | {codes(ws['codes'])} | {ws['peak_rss_mib']} | {bc('ws_300_not_reading')} | {b(['ws_300_not_reading', 'peak_rss_mib'])} |",
    f"| 8 x 60 MB `PUT /api/v1/tags` at once (2.4 M IDs each) | {codes(t['codes'])} | {t['peak_rss_mib']} | {bc('tags_8x60MB')} | {b(['tags_8x60MB', 'peak_rss_mib'])} |",
    f"| one `POST /api/v1/send` near the limit (36 MB incompressible attachment, 48 MB JSON); peak (+rise) | {codes(one['codes'])} | {one['peak_rss_mib']} (+{one['rise_mib']}) | {b1('codes')} | {b1('peak')} |",
    f"| GETs of that message one after another: raw, attachment part, message, `/view/latest.txt`; peak (+rise) | {codes(get['codes'])} | {get['peak_rss_mib']} (+{get['rise_mib']}) | {bg('codes')} | {bg('peak')} |",
    f"| 4 x 20 MB `POST /api/v1/send` at once | {codes(s['codes'])} | {s['peak_rss_mib']} | {bc('send_4x20MB')} | {b(['send_4x20MB', 'peak_rss_mib'])} |",
    f"| after the mix | - | {r['after_rss_mib']} | - | {b(['after_rss_mib'])} |",
    f"| whole run (VmHWM) | - | {r['hwm_mib']} | - | {b(['hwm_mib'])} |",
    "",
    "\"reset\": the server refused the body before reading it (413, or 503 when the send API's reservation did not",
    "fit the budget) and closed; the client, still uploading, saw the reset before the answer.",
    f"A normal client from another address meanwhile (one list request every 100 ms): {n['ok']} answered,",
    f"{n['failed']} failed, latency p50 {n['p50_ms']} ms / p99 {n['p99_ms']} ms.",
    "<!-- hostile-http:end -->",
]
print("\n".join(lines))
PY
)
write_results_section hostile-http "$section"
echo "$section"
