//! Helpers shared by the fuzz targets (included with `#[path]`, not a crate of its own).
//!
//! Everything here is in memory: a `Vec<u8>` is a `vhdkit::Source`, so no temp files and no unsafe.

#![allow(dead_code)]

use vhdkit::{Allocation, ChainView, Limits, OpenOptions};

/// Limits tight enough that a hostile header cannot make an allocation that a legitimate small
/// input would not need: anything the parser allocates beyond these must be bounded by the input
/// itself, and libFuzzer's `-rss_limit_mb` catches the rest.
pub fn tight_options() -> OpenOptions {
    let mut limits = Limits::default();
    limits.max_bat_bytes = 1 << 20;
    limits.max_chain_depth = 4;
    limits.max_locator_bytes = 64 << 10;
    limits.max_metadata_item_bytes = 256 << 10;
    limits.max_log_replay_bytes = 4 << 20;
    OpenOptions::new().limits(limits)
}

/// Most virtual bytes of allocated data read per input.
pub const MAX_DATA_BYTES: u64 = 64 << 20;
/// Most `allocation()`/read steps per input, so a mapper that returns one-sector runs over a
/// huge sparse disk cannot make one input take minutes.
pub const MAX_STEPS: u32 = 1 << 18;
/// Largest single read.
pub const CHUNK: u64 = 1 << 20;

/// Read the view front to back, skipping ranges that read as zeros, until the end, an error,
/// or one of the caps above. Checks that ranges `allocation()` calls `Zero` read as zeros
/// (sampled: the first chunk of each such range).
pub fn read_whole_view(view: &ChainView) {
    let size = view.virtual_size();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0u64;
    let mut data_read = 0u64;
    let mut steps = 0u32;
    while offset < size && data_read < MAX_DATA_BYTES && steps < MAX_STEPS {
        steps += 1;
        let Ok((alloc, len)) = view.allocation(offset, size - offset) else {
            return;
        };
        assert!(
            len >= 1 && len <= size - offset,
            "allocation({offset:#x}) returned a run of {len} bytes, {} left",
            size - offset
        );
        match alloc {
            Allocation::Zero => {
                // Sample the start of the zero run: it must read as zeros.
                let n = len.min(4096) as usize;
                let b = &mut buf[..n];
                b.fill(0xa5);
                if view.read_exact_at(b, offset).is_ok() {
                    assert!(
                        b.iter().all(|&x| x == 0),
                        "range at {offset:#x} is Allocation::Zero but does not read as zeros"
                    );
                }
            }
            Allocation::Data => {
                let mut pos = offset;
                let end = offset + len;
                while pos < end && data_read < MAX_DATA_BYTES && steps < MAX_STEPS {
                    steps += 1;
                    let n = (end - pos).min(CHUNK) as usize;
                    if view.read_exact_at(&mut buf[..n], pos).is_err() {
                        return;
                    }
                    pos += n as u64;
                    data_read += n as u64;
                }
            }
        }
        offset += len;
    }
}

/// The 512-byte VHD footer signature.
pub const VHD_COOKIE: &[u8; 8] = b"conectix";

/// If `data` starts with a VHD footer copy (dynamic and differencing disks) but does not end
/// with a footer (libFuzzer truncated or grew it), append a copy of the head footer so the input
/// still reaches the dynamic-header/BAT parsers. Otherwise the input is used as it is.
pub fn with_vhd_footer(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let ends_with_footer = |d: &[u8]| {
        let l = d.len();
        (l >= 512 && d[l - 512..].starts_with(VHD_COOKIE))
            || (l >= 511 && d[l - 511..].starts_with(VHD_COOKIE))
    };
    if !ends_with_footer(data) && data.len() >= 512 && data.starts_with(VHD_COOKIE) {
        v.extend_from_slice(&data[..512]);
    }
    v
}
