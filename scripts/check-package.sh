#!/usr/bin/env bash
# Packages vhdkit and vhdkit-cli as crates.io would receive them, then builds and tests each
# from its unpacked .crate file alone. cargo's own verification step may reuse a library built
# from the workspace sources in the same target/, so this builds the archives in a workspace of
# their own, with its own target dir, where vhdkit-cli gets vhdkit from the unpacked archive.
# Extra arguments go to `cargo package` (e.g. --allow-dirty when run by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="vhdkit"))')

log "cargo package (with cargo's own verification)"
cargo package -p vhdkit -p vhdkit-cli "$@"

log "package sizes"
for c in vhdkit vhdkit-cli; do
  f="target/package/$c-$version.crate"
  printf '%-12s %8d bytes compressed, %4d files\n' "$c" "$(stat -c %s "$f")" \
    "$(tar tzf "$f" | grep -vc '/$')"
done

log "build and test from the unpacked .crate files"
work="target/package-check"
rm -rf "$work/src"
mkdir -p "$work/src"
for c in vhdkit vhdkit-cli; do
  tar xzf "target/package/$c-$version.crate" -C "$work/src"
done
cat >"$work/src/Cargo.toml" <<TOML
[workspace]
resolver = "2"
members = ["vhdkit-$version", "vhdkit-cli-$version"]

# vhdkit-cli asks for vhdkit $version from the registry: give it the unpacked archive instead.
[patch.crates-io]
vhdkit = { path = "vhdkit-$version" }
TOML
# Same dependency versions as the workspace (cargo drops the entries it does not need).
cp Cargo.lock "$work/src/Cargo.lock"
export CARGO_TARGET_DIR="$PWD/$work/target"
(cd "$work/src" && cargo test --workspace --all-targets --all-features && cargo test --workspace --doc --all-features)
log "both packages build and pass their tests from their .crate files"
