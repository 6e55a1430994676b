//! VHD sector bitmaps (FORMAT.md A.8, trap 6): one bit per sector, **most significant bit
//! first** (`0x80 >> (i % 8)`), except old tapdisk files, which are least significant bit first.
//! The bit arithmetic is the crate's `crate::bitmap`, shared with VHDX (LSB first).

pub use crate::bitmap::{run, BitOrder};
