//! Sector bitmaps (differencing disks): LSB-first bits, one 1 MiB block per chunk, each payload
//! block owning `1 MiB / chunk_ratio` consecutive bytes of its chunk's bitmap.

use super::format::SECTOR_BITMAP_BLOCK_SIZE;
use crate::bitmap::{run, BitOrder};

/// Byte range (offset inside the chunk's sector bitmap block, length) owned by payload block `b`.
pub(crate) fn block_bitmap_range(b: u64, cr: u64) -> (u64, u64) {
    let per_block = SECTOR_BITMAP_BLOCK_SIZE / cr;
    ((b % cr) * per_block, per_block)
}

/// Length in bits of the run of equal bits starting at bit `start` of `bitmap` (LSB first),
/// looking at no more than `max` bits; returns (bit value, run length >= 1).
pub(crate) fn bit_run(bitmap: &[u8], start: u64, max: u64) -> (bool, u64) {
    let (v, end) = run(bitmap, start, start.saturating_add(max), BitOrder::LsbFirst);
    (v, end.saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges() {
        assert_eq!(block_bitmap_range(0, 2048), (0, 512));
        assert_eq!(block_bitmap_range(2049, 2048), (512, 512));
        assert_eq!(block_bitmap_range(15, 16), (15 * 65536, 65536));
    }

    #[test]
    fn bit_runs_lsb_first() {
        let bm = [0b0000_0110u8, 0xFF, 0xFF, 0x01, 0x00];
        assert_eq!(bit_run(&bm, 0, 40), (false, 1));
        assert_eq!(bit_run(&bm, 1, 40), (true, 2));
        assert_eq!(bit_run(&bm, 3, 40), (false, 5));
        assert_eq!(bit_run(&bm, 8, 40), (true, 17));
        assert_eq!(bit_run(&bm, 8, 10), (true, 10));
        assert_eq!(bit_run(&bm, 25, 15), (false, 15));
    }
}
