#!/usr/bin/env bash
# VHD write benchmarks, each against qemu-img in the same run (issue 4).
#
#   bash bench/write-vhd.sh [DIR] [SIZE]     (defaults: a temp dir, 1GiB)
#
# 1. Sequential write of SIZE into a new dynamic VHD: vhdkit (examples/seqwrite.rs, 1 MiB
#    writes through WritableDisk, flushed) vs `qemu-img convert -f raw -O vpc` of a SIZE raw
#    image of non-zero data (qemu's fastest path to a full dynamic VHD).
# 2. `vhdkit convert --to vhd` of the SIZE raw image vs `qemu-img convert -O vpc`.
# Each timing includes a final sync of the output. Prints seconds and ratios (vhdkit / qemu;
# below 1 means vhdkit is faster). Outputs are cross-checked with qemu-img.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$(mktemp -d)}
size=${2:-1GiB}
mkdir -p "$dir"
cargo build --release -q --manifest-path "$root/Cargo.toml" -p vhdkit-cli -p vhdkit --examples --bins
bin="$root/target/release"
bytes=$(numfmt --from=iec-i "${size%B}" 2>/dev/null || numfmt --from=iec "${size%iB}")
raw="$dir/src.raw"
if [ ! -s "$raw" ] || [ "$(stat -c %s "$raw")" != "$bytes" ]; then
    # Non-zero data everywhere, so neither tool can skip anything.
    head -c "$bytes" /dev/urandom > "$raw"
fi
sync
t() { local s e; s=$(date +%s.%N); "$@" >/dev/null; sync; e=$(date +%s.%N); echo "$e - $s" | bc; }
rm -f "$dir"/*.vhd
v1=$(t "$bin/examples/seqwrite" "$dir/seq.vhd" "$size" 1MiB)
q1=$(t qemu-img convert -f raw -O vpc -o subformat=dynamic "$raw" "$dir/qemu-seq.vhd")
v2=$(t "$bin/vhdkit" convert --to vhd --no-progress "$raw" "$dir/conv.vhd")
q2=$(t qemu-img convert -f raw -O vpc -o subformat=dynamic "$raw" "$dir/qemu-conv.vhd")
# Correctness of what was timed.
qemu-img compare -q -f raw -F vpc "$raw" "$dir/conv.vhd"
qemu-img info -f vpc "$dir/seq.vhd" >/dev/null
printf '%-44s %8s %8s %7s\n' "case ($size)" vhdkit qemu ratio
printf '%-44s %8.2f %8.2f %7.2f\n' "sequential write, new dynamic VHD" "$v1" "$q1" "$(echo "$v1 / $q1" | bc -l)"
printf '%-44s %8.2f %8.2f %7.2f\n' "convert raw -> dynamic VHD" "$v2" "$q2" "$(echo "$v2 / $q2" | bc -l)"
ls -l "$dir"/*.vhd
