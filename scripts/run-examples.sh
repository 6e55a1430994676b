#!/usr/bin/env bash
# Builds the library's examples and runs each on the bundled testdata (writers on a copy in a
# temporary folder), checking what each prints. Run from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }
fail() { echo "run-examples: $*" >&2; exit 1; }

cargo build -q -p vhdkit --examples --all-features
ex="${CARGO_TARGET_DIR:-target}/debug/examples"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

log "inspect_chain"
out=$("$ex/inspect_chain" testdata/lab/vm1/disk.vhdx)
echo "$out"
grep -q 'found via relative_path' <<<"$out" || fail "inspect_chain: no parent link"
grep -q '^sha256 of 8388608 virtual bytes: [0-9a-f]\{64\}$' <<<"$out" || fail "inspect_chain: no hash"

log "repoint (on a copy of testdata/exported-lab)"
cp -r testdata/exported-lab "$tmp/lab"
child="$tmp/lab/Web01/Virtual Hard Disks/Web01.avhdx"
other="$tmp/lab/Web02/Virtual Hard Disks/Base-2022.vhdx"
before=$(sha256sum "$child")
"$ex/repoint" --dry-run "$child" "$other"
[ "$(sha256sum "$child")" = "$before" ] || fail "repoint --dry-run changed the child"
out=$("$ex/repoint" "$child" "$other")
echo "$out"
grep -q "chain now reads through .*Web02/Virtual Hard Disks/Base-2022.vhdx" <<<"$out" \
  || fail "repoint: the chain does not go through the new parent"

log "check_folder_json"
"$ex/check_folder_json" testdata/lab >"$tmp/check.json"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert len(r)==4, r; print(len(r), "reports")' \
  "$tmp/check.json"
# A reader that is gone (`| head`) must not make it panic: stdout is a pipe whose read end is
# closed before the example starts, so its first write certainly fails with EPIPE.
python3 - "$ex/check_folder_json" <<'PY'
import os, subprocess, sys
r, w = os.pipe()
os.close(r)
p = subprocess.run([sys.argv[1], "testdata/lab"], stdout=w, stderr=subprocess.PIPE)
assert p.returncode in (0, 1) and not p.stderr, (p.returncode, p.stderr)
print("closed pipe: exit", p.returncode, "and nothing on stderr")
PY

log "create_and_write"
"$ex/create_and_write" "$tmp/new.vhdx"
"$ex/create_and_write" "$tmp/new.vhdx" 2>/dev/null && fail "create_and_write overwrote a file"
"$ex/create_and_write"

log "every example ran"
