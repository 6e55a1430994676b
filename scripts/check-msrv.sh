#!/usr/bin/env bash
# Checks the declared minimum Rust version (workspace.package.rust-version) as well as this
# machine allows:
# 1. When rustup has a toolchain of that version, build and test-compile the workspace with it:
#    the real check.
# 2. Otherwise (no toolchain can be downloaded here) say so, and check what can be checked with
#    the toolchain there is:
#    - every resolved dependency declares a rust-version no higher than ours (Cargo.lock may
#      hold versions that need a newer compiler);
#    - clippy's incompatible_msrv lint, which reads rust-version from the manifests, finds no
#      use of a standard-library API stabilized after it. It does not see language features
#      or compiler behaviour, so this is weaker than building with the old compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

msrv=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$msrv" ] || { echo "check-msrv: no rust-version in Cargo.toml" >&2; exit 1; }
log "declared MSRV: $msrv"

toolchain=""
if command -v rustup >/dev/null 2>&1; then
  toolchain=$(rustup toolchain list | awk '{print $1}' | grep -E "^${msrv//./\\.}(\.[0-9]+)?-" | head -n1 || true)
fi
if [ -n "$toolchain" ]; then
  log "building with $toolchain"
  cargo "+$toolchain" check --workspace --all-targets --locked
  log "MSRV $msrv checked by building with $toolchain"
  exit 0
fi

echo "no $msrv toolchain installed (rustup has: $(rustup toolchain list 2>/dev/null | awk '{print $1}' | tr '\n' ' '))"
echo "falling back to dependency rust-versions and clippy's incompatible_msrv lint with $(rustc --version)"

log "dependencies' declared rust-version <= $msrv"
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
msrv = tuple(int(x) for x in sys.argv[1].split("."))
bad = []
for p in json.load(sys.stdin)["packages"]:
    rv = p.get("rust_version")
    if rv and tuple(int(x) for x in rv.split(".")) > msrv + (0,) * (3 - len(msrv)):
        bad.append("%s %s needs %s" % (p["name"], p["version"], rv))
for b in bad:
    print("too new:", b)
sys.exit(1 if bad else 0)
' "$msrv"
echo "ok"

log "clippy incompatible_msrv (std APIs newer than $msrv)"
cargo clippy --workspace --all-targets --all-features --locked -- -D clippy::incompatible_msrv
log "MSRV $msrv checked as far as possible without a $msrv toolchain (see above)"
