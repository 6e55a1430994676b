#!/usr/bin/env bash
# Packages vhdkit and vhdkit-cli as crates.io would receive them, then builds and tests each
# from its unpacked .crate file alone, in a workspace of their own with its own target dir, where
# vhdkit-cli gets vhdkit from the unpacked archive. Both steps guard against cargo reusing an
# earlier run's build (see below): without that, this check once passed on stale sources.
# Extra arguments go to `cargo package` (e.g. --allow-dirty when run by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

version=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="vhdkit"))')

# cargo verifies vhdkit-cli against vhdkit taken from a temporary local registry, and treats a
# registry crate as immutable: it neither re-extracts one of the same name and version into its
# source cache nor rebuilds it. Left alone, an earlier run's vhdkit would be verified instead of
# this one. So: packaging gets a target dir of its own, whose vhdkit builds are removed, and the
# extracted copies are removed from the source cache (copies from crates.io are left alone).
pkg_target="target/package-verify"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
for d in "$cargo_home"/registry/src/*/vhdkit-"$version" "$cargo_home"/registry/src/*/vhdkit-cli-"$version"; do
  case "$d" in */index.crates.io-*) continue ;; esac
  if [ -d "$d" ]; then rm -rf "$d"; fi
done
rm -rf "$pkg_target/package"
for kind in .fingerprint build deps; do
  rm -rf "$pkg_target/debug/$kind"/vhdkit-* "$pkg_target/debug/$kind"/libvhdkit-* \
    "$pkg_target/debug/$kind"/vhdkit_cli-*
done
export CARGO_TARGET_DIR="$PWD/$pkg_target"

log "cargo package (with cargo's own verification)"
cargo package -p vhdkit -p vhdkit-cli "$@"

log "package sizes"
for c in vhdkit vhdkit-cli; do
  f="$pkg_target/package/$c-$version.crate"
  printf '%-12s %8d bytes compressed, %4d files\n' "$c" "$(stat -c %s "$f")" \
    "$(tar tzf "$f" | grep -vc '/$')"
done

log "build and test from the unpacked .crate files"
work="target/package-check"
rm -rf "$work/src"
mkdir -p "$work/src"
for c in vhdkit vhdkit-cli; do
  tar xzf "$pkg_target/package/$c-$version.crate" -C "$work/src"
done
# Files in a .crate all carry one fixed old mtime, so cargo would take them for unchanged and
# reuse an earlier run's build of them: make them newer than any build.
find "$work/src" -type f -exec touch {} +
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
# Same target dir as the packaging step: its dependencies are built already.
(cd "$work/src" && cargo test --workspace --all-targets --all-features && cargo test --workspace --doc --all-features)
log "both packages build and pass their tests from their .crate files"
