//! Sector bitmaps: one bit per sector, in either bit order. VHD bitmaps are **most significant
//! bit first** (`0x80 >> (i % 8)`, FORMAT.md A.8, trap 6) except old tapdisk files; VHDX bitmaps
//! are least significant bit first (MS-VHDX 2.5.1.1). Readers and the sparse writer engine both
//! use these, so this module depends on neither.

/// Bit order of a bitmap byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum BitOrder {
    /// Sector `i` is `0x80 >> (i % 8)` (every writer but old tapdisk).
    MsbFirst,
    /// Sector `i` is `1 << (i % 8)` (tapdisk before format 1.1; every VHDX).
    LsbFirst,
}

/// Whether sector `i` is set. Bits past the end of the bitmap read as clear.
pub fn bit(bitmap: &[u8], i: u64, order: BitOrder) -> bool {
    let Ok(byte) = usize::try_from(i / 8) else {
        return false;
    };
    bitmap.get(byte).is_some_and(|b| b & mask(i, order) != 0)
}

/// The run of sectors with the same bit as sector `start`, up to (not including) `limit`:
/// returns that bit and the first sector after the run. Whole 0x00/0xFF bytes are skipped a
/// byte at a time. Requires `start < limit`.
pub fn run(bitmap: &[u8], start: u64, limit: u64, order: BitOrder) -> (bool, u64) {
    let set = bit(bitmap, start, order);
    let full = if set { 0xFFu8 } else { 0x00 };
    let mut i = start + 1;
    while i < limit {
        if i % 8 == 0 && limit - i >= 8 {
            let same = usize::try_from(i / 8)
                .ok()
                .and_then(|b| bitmap.get(b))
                .map_or(!set, |&b| b == full);
            if same {
                i += 8;
                continue;
            }
        }
        if bit(bitmap, i, order) != set {
            break;
        }
        i += 1;
    }
    (set, i.min(limit))
}

/// Set the bits of sectors `start..end`; returns whether any was clear before. Bits past the
/// end of the bitmap are ignored.
pub fn set_range(bitmap: &mut [u8], start: u64, end: u64, order: BitOrder) -> bool {
    let mut changed = false;
    for i in start..end {
        let Some(b) = usize::try_from(i / 8).ok().and_then(|x| bitmap.get_mut(x)) else {
            continue;
        };
        let m = mask(i, order);
        if *b & m == 0 {
            *b |= m;
            changed = true;
        }
    }
    changed
}

fn mask(i: u64, order: BitOrder) -> u8 {
    let shift = (i % 8) as u32;
    match order {
        BitOrder::MsbFirst => 0x80u8 >> shift,
        BitOrder::LsbFirst => 1u8 << shift,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of set bits stops where the bitmap ends (bits past it read as clear), even when
    /// the limit lies further: the whole-byte skip must not take a missing byte for 0xFF.
    #[test]
    fn a_set_run_stops_at_the_end_of_the_bitmap() {
        for order in [BitOrder::MsbFirst, BitOrder::LsbFirst] {
            assert_eq!(run(&[0xff], 0, 24, order), (true, 8));
            assert_eq!(run(&[0xff, 0xff], 3, 64, order), (true, 16));
            assert_eq!(run(&[0x00], 0, 24, order), (false, 24));
        }
    }

    #[test]
    fn msb_first_0x52() {
        // 0x52 = 0101_0010: sectors 1, 3, 6.
        let b = [0x52u8];
        let set: Vec<u64> = (0..8).filter(|&i| bit(&b, i, BitOrder::MsbFirst)).collect();
        assert_eq!(set, vec![1, 3, 6]);
        let set: Vec<u64> = (0..8).filter(|&i| bit(&b, i, BitOrder::LsbFirst)).collect();
        assert_eq!(set, vec![1, 4, 6]);
    }

    #[test]
    fn runs() {
        let b = [0x52u8, 0xFF, 0xFF, 0x80, 0x00, 0x00];
        assert_eq!(run(&b, 0, 48, BitOrder::MsbFirst), (false, 1));
        assert_eq!(run(&b, 1, 48, BitOrder::MsbFirst), (true, 2));
        assert_eq!(run(&b, 6, 48, BitOrder::MsbFirst), (true, 7));
        assert_eq!(run(&b, 7, 48, BitOrder::MsbFirst), (false, 8));
        assert_eq!(run(&b, 8, 48, BitOrder::MsbFirst), (true, 25));
        assert_eq!(run(&b, 9, 20, BitOrder::MsbFirst), (true, 20));
        assert_eq!(run(&b, 25, 48, BitOrder::MsbFirst), (false, 48));
        // Past the bitmap: clear.
        assert_eq!(run(&b, 40, 100, BitOrder::MsbFirst), (false, 100));
    }

    #[test]
    fn set_range_reports_changes_in_both_orders() {
        let mut b = [0u8; 2];
        assert!(set_range(&mut b, 1, 3, BitOrder::MsbFirst));
        assert_eq!(b, [0x60, 0]);
        assert!(!set_range(&mut b, 1, 3, BitOrder::MsbFirst));
        assert!(set_range(&mut b, 8, 10, BitOrder::LsbFirst));
        assert_eq!(b, [0x60, 0x03]);
        // Past the end: ignored.
        assert!(!set_range(&mut b, 16, 20, BitOrder::LsbFirst));
    }

    #[test]
    fn runs_match_bitwise_model() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            let mut b = [0u8; 16];
            for x in &mut b {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *x = match rng % 4 {
                    0 => 0,
                    1 => 0xff,
                    _ => (rng >> 8) as u8,
                };
            }
            let start = (rng >> 20) % 128;
            let limit = start + 1 + (rng >> 40) % (128 - start);
            for order in [BitOrder::MsbFirst, BitOrder::LsbFirst] {
                let (set, end) = run(&b, start, limit, order);
                assert_eq!(set, bit(&b, start, order));
                for i in start..end {
                    assert_eq!(bit(&b, i, order), set);
                }
                assert!(end == limit || bit(&b, end, order) != set);
            }
        }
    }
}
