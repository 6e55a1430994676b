#!/usr/bin/env bash
# Fill fuzz/corpus/<target>/ with seed inputs. Safe to run again: it only adds files.
#
# Sources, each used when present:
#   1. testdata/ at the repository root (every .vhd/.vhdx/.avhd/.avhdx, plain, .gz or .bz2, and
#      testdata/fuzz-regressions/*);
#   2. the shared real-world images (../shared/testdata-real beside the repository, or
#      $VHDKIT_REAL_TESTDATA);
#   3. tiny images made here with qemu-img/qemu-io in several subformats and block sizes.
#
# Size policy (run-ci.sh caps image inputs at -max_len=131072):
#   - a file of at most 64 KiB is kept whole, as raw bytes;
#   - a larger one becomes a sparse description (`vhdkitSP`, see fuzz_targets/common/mod.rs):
#     its real length, its sectors of one repeated non-zero byte (a VHD's empty BAT is 0xff) as
#     fills, and its other non-zero 512-byte sectors, at most 64 KiB of them, the structures
#     first: a VHDX's first MiB (headers, region tables), then 2-4 MiB (BAT and metadata in every
#     image we have), then its log (1-2 MiB), then the rest in file order; a VHD's footer, then
#     the rest in file order. So a 4-8 MiB image is a 1-70 KiB input that still reaches every
#     structure, and a disk of any size costs libFuzzer no more than its structures.
# read_view inputs get a 49-byte prefix of four (offset, length) records; see
# fuzz_targets/read_view.rs.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$FUZZ_DIR")"
CORPUS="$FUZZ_DIR/corpus"
RAW_MAX=$((64 << 10))

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

mkdir -p "$CORPUS"/{open_vhd,open_vhdx,detect,read_view,vhdx_log_replay,check,journal_recover,nbd_request}
# Seeds of the old policy (4 MiB heads) would be cut to -max_len: drop them.
find "$CORPUS" -type f \( -name '*.head4M*' -o -name '*.head64K+footer*' \) -delete
count=0

# Four read_view records: (0, 4096), (1 MiB mod size, 65543), (raw 0x1ff, 1000),
# (near 2^60 mod size, 1 MiB). Little-endian u64 offset + u32 length each.
read_view_prefix() {
    printf '\x04'
    printf '\x00\x00\x00\x00\x00\x00\x00\x00' ; printf '\x00\x10\x00\x00'
    printf '\x00\x00\x10\x00\x00\x00\x00\x00' ; printf '\x07\x00\x01\x00'
    printf '\xff\x01\x00\x00\x00\x00\x00\x80' ; printf '\xe8\x03\x00\x00'
    printf '\x00\xf0\xff\xff\xff\xff\xff\x0f' ; printf '\x00\x00\x10\x00'
}

is_vhdx() { cmp -s -n 8 <(printf 'vhdxfile') "$1"; }

# sparse IN OUT: write IN's sparse description (the policy above) to OUT.
sparse() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
MIB, SECTOR, BUDGET = 1 << 20, 512, 64 << 10
src, dst = sys.argv[1], sys.argv[2]
with open(src, 'rb') as f:
    data = f.read()
size = len(data)
if data[:8] == b'vhdxfile':
    spans = [(0, MIB), (2 * MIB, 4 * MIB), (MIB, 2 * MIB), (4 * MIB, size)]
else:
    spans = [(size - size % SECTOR - SECTOR, size), (0, size)]
# Sector -> fill byte (a whole sector of one non-zero byte: free) or None (data: budgeted).
keep, used = {}, 0
for lo, hi in spans:
    for s in range(max(lo, 0) // SECTOR, (min(hi, size) + SECTOR - 1) // SECTOR):
        sec = data[s * SECTOR:(s + 1) * SECTOR]
        if s in keep or not sec.strip(b'\0'):
            continue
        if len(sec) == SECTOR and sec == sec[:1] * SECTOR:
            keep[s] = sec[0]
        elif used < BUDGET:
            keep[s] = None
            used += SECTOR
out = [b'vhdkitSP', struct.pack('<Q', size)]
run = []
def flush():
    if not run:
        return
    fill = keep[run[0]]
    if fill is None:
        body = data[run[0] * SECTOR:(run[-1] + 1) * SECTOR]
        out.extend([struct.pack('<II', run[0], len(body)), body])
    else:
        out.extend([struct.pack('<II', run[0], 1 << 31 | len(run) * SECTOR), bytes([fill])])
    run.clear()
for s in sorted(keep):
    if run and (s != run[-1] + 1 or keep[s] != keep[run[0]]):
        flush()
    run.append(s)
flush()
with open(dst, 'wb') as f:
    f.write(b''.join(out))
PY
}

# add NAME FILE: raw or sparse per the policy above, then copy into the targets' corpora.
add() {
    local name="$1" file="$2" size out="$TMP/seed"
    size=$(stat -c %s "$file")
    if [ "$size" -le "$RAW_MAX" ]; then
        cp "$file" "$out"
    else
        sparse "$file" "$out"
        name="$name.sparse"
    fi
    cp "$out" "$CORPUS/check/$name"
    if is_vhdx "$file"; then
        cp "$out" "$CORPUS/open_vhdx/$name"
        # vhdx_log_replay takes the start of a log region: the 1 MiB at offset 1 MiB (qemu and
        # Windows put the log there; the real dirty-log image has seven entries in it), less
        # trailing zeros, at most the 256 KiB run-ci.sh allows.
        python3 - "$file" "$CORPUS/vhdx_log_replay/$name.log" <<'PY'
import sys
ring = open(sys.argv[1], 'rb').read()[1 << 20:(1 << 20) + (256 << 10)].rstrip(b'\0')
if b'loge' in ring:
    open(sys.argv[2], 'wb').write(ring)
PY
    else
        cp "$out" "$CORPUS/open_vhd/$name"
    fi
    # detect reads only the first 8 bytes and the last 512: keep those and the neighbourhood.
    if [ "$size" -le 8192 ]; then
        cp "$file" "$CORPUS/detect/$name"
    else
        { head -c 4096 "$file"; tail -c 4096 "$file"; } > "$CORPUS/detect/$name"
    fi
    { read_view_prefix; cat "$out"; } > "$CORPUS/read_view/$name"
    count=$((count + 1))
}

# add_any NAME PATH: decompress .gz/.bz2 into the temp dir first.
add_any() {
    local name="$1" path="$2"
    case "$path" in
        *.gz) gzip -dc "$path" > "$TMP/raw"; add "${name%.gz}" "$TMP/raw" ;;
        *.bz2) bzip2 -dc "$path" > "$TMP/raw"; add "${name%.bz2}" "$TMP/raw" ;;
        *) add "$name" "$path" ;;
    esac
}

# 1. testdata/
if [ -d "$ROOT/testdata" ]; then
    while IFS= read -r -d '' f; do
        rel="${f#"$ROOT/testdata/"}"
        add_any "testdata-${rel//\//-}" "$f"
    done < <(find "$ROOT/testdata" -type f \( -iname '*.vhd' -o -iname '*.vhdx' -o -iname '*.avhd' \
        -o -iname '*.avhdx' -o -iname '*.vhd*.gz' -o -iname '*.vhd*.bz2' -o -path '*/fuzz-regressions/*' \) \
        ! -name '*.md' -print0 | sort -z)
fi

# 2. shared real-world images
REAL="${VHDKIT_REAL_TESTDATA:-}"
if [ -z "$REAL" ]; then
    for d in "$ROOT/../shared/testdata-real" "$ROOT/../../shared/testdata-real"; do
        if [ -d "$d" ]; then REAL="$d"; break; fi
    done
fi
if [ -n "$REAL" ] && [ -d "$REAL" ]; then
    while IFS= read -r -d '' f; do
        rel="${f#"$REAL/"}"
        add_any "real-${rel//\//-}" "$f"
    done < <(find "$REAL" -type f \( -iname '*.vhd*' -o -iname '*.avhd*' -o -name '*.1' -o -name '*.bin' \) -print0 | sort -z)
else
    echo "seed.sh: no shared testdata-real found (set VHDKIT_REAL_TESTDATA); skipping" >&2
fi

# 3. tiny qemu-made images
if command -v qemu-img > /dev/null && command -v qemu-io > /dev/null; then
    q="$TMP/q"
    mkimg() { # NAME FORMAT OPTIONS SIZE [qemu-io commands...]
        local name="$1" fmt="$2" opts="$3" size="$4"
        shift 4
        rm -f "$q"
        qemu-img create -q -f "$fmt" -o "$opts" "$q" "$size"
        local c
        for c in "$@"; do qemu-io -f "$fmt" -c "$c" "$q" > /dev/null; done
        add "qemu-$name" "$q"
    }
    mkimg vpc-dynamic-empty-16M.vhd vpc subformat=dynamic 16M
    mkimg vpc-dynamic-1blk-16M.vhd vpc subformat=dynamic 16M 'write -P 0x5a 2M 1M'
    mkimg vpc-dynamic-2blk-sparse-1G.vhd vpc subformat=dynamic 1G 'write -P 0x11 0 4k' 'write -P 0x22 1020M 512'
    mkimg vpc-dynamic-forcesize-5M.vhd vpc subformat=dynamic,force_size=on 5M 'write -P 0x33 4M 1536'
    mkimg vpc-fixed-1M.vhd vpc subformat=fixed 1M 'write -P 0x44 4096 8k'
    mkimg vpc-fixed-forcesize-3M.vhd vpc subformat=fixed,force_size=on 3M 'write -P 0x55 0 512'
    mkimg vpc-dynamic-huge-2T.vhd vpc subformat=dynamic 2040G 'write -P 0x66 0 512'
    for bs in 1M 8M 32M; do
        mkimg "vhdx-dynamic-bs$bs-64M.vhdx" vhdx "subformat=dynamic,block_size=$bs,log_size=1M" 64M 'write -P 0x77 0 64k'
    done
    mkimg vhdx-dynamic-nozero-16M.vhdx vhdx subformat=dynamic,block_state_zero=off 16M
    mkimg vhdx-dynamic-huge-64T.vhdx vhdx subformat=dynamic,block_size=256M 64T
    mkimg vhdx-fixed-1M.vhdx vhdx subformat=fixed 1M
else
    echo "seed.sh: qemu-img/qemu-io not found; skipping generated seeds" >&2
fi

printf 'loge' > "$CORPUS/vhdx_log_replay/bare-signature"

# journal_recover: mode byte 1 (fix the CRC up), then a journal: magic, version 1, one record
# (offset 512, 16 bytes, "test") over a 64 KiB file, old bytes as the target holds them.
python3 - "$CORPUS/journal_recover" <<'PY' 2>/dev/null || printf '\x01VHDKITJ1' > "$CORPUS/journal_recover/magic-only"
import struct, sys, os
pat = bytes(((i * 2654435761) & 0xffffffff) >> 24 for i in range(65536))
rec = struct.pack('<QIH', 512, 16, 4) + b'test' + pat[512:528] + b'\xaa' * 16
j = b'VHDKITJ1' + struct.pack('<IIQQ', 1, 1, 65536, 65536) + rec
open(os.path.join(sys.argv[1], 'one-record'), 'wb').write(b'\x01' + j)
grow = b'VHDKITJ1' + struct.pack('<IIQQ', 1, 1, 65536, 69632) + struct.pack('<QIH', 65536, 16, 4) + b'grow' + b'\0' * 16 + b'\xbb' * 16
open(os.path.join(sys.argv[1], 'grow'), 'wb').write(b'\x01' + grow)
PY

# Two bare signatures, so detect starts from both.
printf 'vhdxfile' > "$CORPUS/detect/sig-vhdx"
{ head -c 504 /dev/zero; printf 'conectix'; } > "$CORPUS/detect/sig-vhd-tail"

# nbd_request: whole client sessions (client flags, options, requests; big-endian as on the
# wire): GO then reads and a write; structured replies, meta contexts and block status; LIST,
# INFO with a block-size request, an unknown option, ABORT.
python3 - "$CORPUS/nbd_request" <<'PY'
import os, struct, sys
out = sys.argv[1]
OPT = 0x49484156454F5054
def opt(code, data=b""):
    return struct.pack(">QII", OPT, code, len(data)) + data
def go(code=7, name=b"", reqs=()):
    return opt(code, struct.pack(">I", len(name)) + name + struct.pack(">H", len(reqs)) + b"".join(struct.pack(">H", r) for r in reqs))
def meta(code, queries, name=b""):
    body = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    return opt(code, body + b"".join(struct.pack(">I", len(q)) + q for q in queries))
def req(kind, off, length, flags=0, cookie=1):
    return struct.pack(">IHHQQI", 0x25609513, flags, kind, cookie, off, length)
flags = struct.pack(">I", 3)
sessions = {
    "go-reads": flags + go() + req(0, 0, 4096) + req(0, (2 << 20) + 512, 65536, cookie=2)
        + req(0, 8 << 20, 512, cookie=3) + req(1, 0, 16) + b"x" * 16 + req(3, 0, 0) + req(2, 0, 0),
    "structured-status": flags + opt(8) + meta(9, [b"base:"]) + meta(10, [b"base:allocation", b"qemu:allocation-depth"])
        + go(name=b"fuzz") + req(7, 0, 8 << 20) + req(7, 1 << 20, 4 << 20, flags=8, cookie=2)
        + req(0, 2 << 20, 8192, cookie=3) + req(99, 0, 1) + req(2, 0, 0),
    "list-info-abort": flags + opt(3) + go(6, b"fuzz", (0, 3)) + opt(99, b"zz") + go(6, b"nope") + opt(2),
    "export-name": struct.pack(">I", 1) + opt(1, b"") + req(0, 0, 1 << 20) + req(4, 0, 512),
}
for name, data in sessions.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
PY

for t in open_vhd open_vhdx detect read_view vhdx_log_replay check journal_recover nbd_request; do
    echo "seed.sh: $t: $(find "$CORPUS/$t" -type f | wc -l) files"
done
echo "seed.sh: added $count images"

