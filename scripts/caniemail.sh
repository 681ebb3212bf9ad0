#!/usr/bin/env bash
# Regenerates the HTML check's vendored email-client support data
# (crates/catcher/data/caniemail.json.zst and its licence) from the npm
# package `caniemail`, which ships caniemail.com's data file.
#
#   scripts/caniemail.sh [VERSION]   default: the version named below
#
# The JSON is stored zstd-compressed (650 KB -> ~35 KB) and embedded in the
# catcher with include_bytes!; after a new version, update the version in
# README ("HTML check") and run `cargo test -p mailsafe_catcher --lib
# checks::html` (a test checks that every feature the check looks for is
# still in the data).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${1:-2.0.2}"
OUT=crates/catcher/data
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "caniemail@$VERSION" >/dev/null)
tar -xzf "$tmp/caniemail-$VERSION.tgz" -C "$tmp" package/data/caniemail.json package/LICENSE package/package.json
# Minified and compressed: the catcher parses it once, on the first check.
python3 -c 'import json,sys; json.dump(json.load(open(sys.argv[1])), sys.stdout, separators=(",", ":"), ensure_ascii=False)' \
    "$tmp/package/data/caniemail.json" >"$tmp/caniemail.json"
zstd -q -19 -f "$tmp/caniemail.json" -o "$OUT/caniemail.json.zst"
cp "$tmp/package/LICENSE" "$OUT/caniemail-LICENSE"
python3 - "$tmp/package/data/caniemail.json" "$VERSION" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"caniemail {sys.argv[2]}: data {d['last_update_date']}, {len(d['data'])} features")
PY
