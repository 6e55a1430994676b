#!/usr/bin/env bash
# Build every fuzz target and run each for SECONDS seconds (default 60) on the seeded corpus.
# Exits non-zero if any target crashes, leaks, times out or runs out of memory, and prints
# the path of each crashing input (reproduce with `cargo fuzz run <target> <path>`).
#
# Build choice: AddressSanitizer via RUSTC_BOOTSTRAP=1 on the stable toolchain when that builds
# (about 1.6x the build time of `-s none` here: 63 s vs 38 s from scratch). The targets are safe
# Rust, so ASan finds no memory errors of ours; what it adds is libFuzzer's malloc hooks, so
# `-malloc_limit_mb` stops any single allocation sized from a hostile field at
# once, even one that is never touched and so never shows in RSS. If the ASan build fails
# (toolchain without sanitizer support), it falls back to `-s none` and says so.
#
# Env: FUZZ_SANITIZER=none|address to force a build; FUZZ_TARGETS="a b" to run a subset.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"

# cargo-fuzz: wait for a background install already running, else install it.
if ! cargo fuzz --version > /dev/null 2>&1; then
    if [ -f /tmp/cargofuzz.log ] && pgrep -f 'cargo install cargo-fuzz' > /dev/null 2>&1; then
        echo "run-ci: waiting for the cargo-fuzz install in progress (/tmp/cargofuzz.log)"
        for _ in $(seq 1 120); do
            cargo fuzz --version > /dev/null 2>&1 && break
            sleep 5
        done
    fi
    if ! cargo fuzz --version > /dev/null 2>&1; then
        cargo install cargo-fuzz --locked
    fi
fi
echo "run-ci: $(cargo fuzz --version)"

./seed.sh

SAN_ARGS=()
case "${FUZZ_SANITIZER:-auto}" in
    none) SAN_ARGS=(-s none) ;;
    address) export RUSTC_BOOTSTRAP=1 ;;
    auto)
        if RUSTC_BOOTSTRAP=1 cargo fuzz build; then
            export RUSTC_BOOTSTRAP=1
        else
            echo "run-ci: ASan build failed on this toolchain; falling back to -s none" >&2
            SAN_ARGS=(-s none)
        fi
        ;;
    *) echo "run-ci: FUZZ_SANITIZER must be none, address or auto" >&2; exit 2 ;;
esac
cargo fuzz build "${SAN_ARGS[@]}"
echo "run-ci: build ${SAN_ARGS[*]:-with ASan}"

TARGETS="${FUZZ_TARGETS:-$(cargo fuzz list | tr '\n' ' ')}"
mkdir -p artifacts
failed=()
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # Work per input is bounded (Limits::fuzzing(), sampled view reads, sparse images), so the
    # inputs can be small: image seeds are sparse descriptions of at most ~70 KiB (seed.sh) and
    # 128 KiB leaves them room to grow. With the old 4 MiB units libFuzzer's own copies, hashes,
    # mutations and unit writes dominated the run, and the corpus alone passed 512 MB.
    # vhdx_log_replay's input is the start of a 1 MiB log region: 256 KiB (64 of its 4 KiB
    # slots) holds the entries of every seed but one (cut there), and longer inputs made
    # libFuzzer's SHA-1s and the ring scan dominate (25 runs/s at 1 MiB). The journal
    # recovery target works on a 64 KiB file. -malloc_limit_mb=128 (ASan build) fails the run on
    # any single allocation over 128 MiB: with the fuzzing limits no parser comes near, and the
    # largest legitimate one is journal_recover's in-memory file grown by a journal (the journal
    # format allows 64 MiB of growth; a real file grows sparse).
    # -reload=0: one process per corpus, so rescanning it for units from other jobs only costs.
    case "$t" in
        detect | journal_recover) max_len=65536 ;;
        vhdx_log_replay) max_len=262144 ;;
        *) max_len=131072 ;;
    esac
    rss_mb=1024
    log="artifacts/$t.log"
    marker="$(mktemp)"
    echo "run-ci: $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)"
    if cargo fuzz run "${SAN_ARGS[@]}" "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$rss_mb" -malloc_limit_mb=128 -timeout=10 \
        -max_len="$max_len" -reload=0 -print_final_stats=1 > "$log" 2>&1; then
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb):' "$log" \
            | sed "s/^/run-ci: $t: /" || true
    else
        failed+=("$t")
        echo "run-ci: $t FAILED; last lines of its log:" >&2
        tail -n 40 "$log" >&2
        while IFS= read -r a; do
            echo "run-ci: $t crashing input: fuzz/$a" >&2
        done < <(find "artifacts/$t" -type f -newer "$marker" | sort)
    fi
    rm -f "$marker"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "run-ci: failed targets: ${failed[*]}" >&2
    exit 1
fi
echo "run-ci: all targets ran ${SECONDS_PER_TARGET}s without a crash"
