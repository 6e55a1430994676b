#!/usr/bin/env bash
# Mutation testing, on demand only (never in CI): cargo-mutants on the modules where a silent
# bug costs data, one named group at a time, each within a time budget. A surviving ("missed")
# mutant that changes behaviour means a test is missing.
#
#   scripts/mutants.sh [--list] [GROUP...]     GROUP: txn digest identity identity-core readers
#                                               (default: txn digest identity readers)
#
# Environment:
#   VHDKIT_MUTANTS_BUDGET   seconds per group (default 1800); the run is interrupted then and
#                           what was tested so far is reported
#   VHDKIT_MUTANTS_TIMEOUT  seconds for one mutant's tests (default: cargo-mutants derives it
#                           from the unmutated run, so a mutant that loops costs little)
#   VHDKIT_MUTANTS_JOBS     parallel mutants (default 1: the machine has 2 cores)
#   VHDKIT_MUTANTS_ARGS     more cargo-mutants arguments, split on spaces: e.g. `--re store.rs`
#                           to test a part of a group, `--baseline skip` to reuse a build
#   VHDKIT_MUTANTS_TESTS    cargo test arguments instead of the group's, split on spaces (e.g.
#                           `--lib` alone when the mutants tested are guarded by unit tests)
#
# Results: target/mutants/GROUP/mutants.out/{outcomes.json,caught.txt,missed.txt,timeout.txt}.
# cargo-mutants (crates.io) is installed with `cargo install` when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

budget="${VHDKIT_MUTANTS_BUDGET:-1800}"
timeout_args=()
[ -z "${VHDKIT_MUTANTS_TIMEOUT:-}" ] || timeout_args=(--timeout "$VHDKIT_MUTANTS_TIMEOUT")
jobs="${VHDKIT_MUTANTS_JOBS:-1}"
read -r -a extra_args <<<"${VHDKIT_MUTANTS_ARGS:-}"
# One build folder for every mutant and run: dependencies are built once, then each mutant is
# an incremental build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target/mutants-build}"

# Each group sets SEL (files to mutate, an optional name filter) and TESTS (cargo test
# arguments: the tests that guard them).
set_group() {
  case "$1" in
    txn)
      # sync_path_if_exists is built only off Linux: its mutants cannot fail here.
      SEL=(-f 'crates/vhdkit/src/txn/journal/*.rs' -e crates/vhdkit/src/txn/journal/tests.rs
        -f crates/vhdkit/src/txn/barrier.rs --exclude-re 'sync_path_if_exists')
      TESTS=(--lib --test reparent_vhd --test barrier_syncs) ;;
    digest)
      SEL=(-f crates/vhdkit/src/share/digest.rs)
      TESTS=(--lib) ;;
    identity-core)
      # The identity decisions only: the chain walker's candidate check, reparent's id match.
      SEL=(-f crates/vhdkit/src/chain/resolve.rs -f crates/vhdkit/src/reparent/plan.rs
        --re '\b(try_candidate|Draft<.*>::identity)\b')
      TESTS=(--lib --test reparent_vhd --test reparent_vhdx) ;;
    identity)
      # The parent-identity decisions: the chain walker's candidate check (and its refusal of
      # the child itself), whether one locator leads to the parent, reparent's plan.
      SEL=(-f crates/vhdkit/src/chain/resolve.rs -f crates/vhdkit/src/reparent/plan.rs
        -f crates/vhdkit/src/reparent/verify.rs
        --re '\b(try_candidate|open_candidate|locator_leads_to_parent|Draft<.*>::identity|contents)\b')
      TESTS=(--lib --test reparent_vhd --test reparent_vhdx --test dead_locators --test confine) ;;
    readers)
      # vhd/bitmap.rs only re-exports the shared bit arithmetic in bitmap.rs.
      SEL=(-f crates/vhdkit/src/vhd/bat.rs -f crates/vhdkit/src/bitmap.rs
        -f crates/vhdkit/src/vhdx/bat.rs -f crates/vhdkit/src/vhdx/bitmap.rs)
      TESTS=(--lib --test vhd_read --test vhdx_read) ;;
    *) echo "unknown group '$1' (txn digest identity identity-core readers)" >&2; return 2 ;;
  esac
}

list=false
groups=()
for a in "$@"; do
  case "$a" in
    --list) list=true ;;
    *) groups+=("$a") ;;
  esac
done
[ "${#groups[@]}" -gt 0 ] || groups=(txn digest identity readers)

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "installing cargo-mutants from crates.io"
  cargo install --locked cargo-mutants
fi

# cargo-mutants finds source files by following `mod` items, and cannot see the modules the
# `support_mod!` macro declares (`txn` among them): it runs on a copy of the tree where those
# declarations are spelled out as the `test-support` feature declares them (public, hidden).
mkdir -p target
src="$(mktemp -d "$(pwd)/target/mutants-src.XXXXXX")"
git ls-files -z -co --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$src"
sed -i -E 's/^support_mod!\(([a-z_]+)\);$/#[doc(hidden)]\npub mod \1;/' \
  "$src/crates/vhdkit/src/lib.rs"
trap 'rm -rf "$src"' EXIT

for g in "${groups[@]}"; do
  set_group "$g"
  [ -z "${VHDKIT_MUTANTS_TESTS:-}" ] || read -r -a TESTS <<<"$VHDKIT_MUTANTS_TESTS"
  out="$(pwd)/target/mutants/$g"
  mkdir -p "$out"
  if $list; then
    cargo mutants -d "$src" -p vhdkit "${SEL[@]}" "${extra_args[@]}" --list
    continue
  fi
  echo "== group $g: budget ${budget}s, ${jobs} job(s), tests: ${TESTS[*]}"
  # SIGINT lets cargo-mutants stop cleanly and write its report for what it tested.
  status=0
  timeout --signal=INT --kill-after=60 "$budget" \
    cargo mutants -d "$src" -p vhdkit "${SEL[@]}" "${extra_args[@]}" --jobs "$jobs" \
      --profile mutants \
      "${timeout_args[@]}" \
      --output "$out" -- "${TESTS[@]}" || status=$?
  o="$out/mutants.out"
  caught=$(wc -l <"$o/caught.txt" 2>/dev/null || echo 0)
  missed=$(wc -l <"$o/missed.txt" 2>/dev/null || echo 0)
  tout=$(wc -l <"$o/timeout.txt" 2>/dev/null || echo 0)
  unviable=$(wc -l <"$o/unviable.txt" 2>/dev/null || echo 0)
  echo "== group $g: caught $caught, missed $missed, timeout $tout, unviable $unviable (exit $status)"
  if [ "$missed" -gt 0 ]; then
    echo "-- survivors:"
    cat "$o/missed.txt"
  fi
done
