//! The block walk shared by the plan and the copy: which ranges of each block the child does
//! not hold yet, and whether they must be copied.
//!
//! A block the child holds whole (or marks as zeros) needs nothing. A block the child holds in
//! part (a VHD block or a VHDX PARTIALLY_PRESENT block with clear bits) gets every missing
//! sector, zeros included: a dynamic VHD reads an allocated block whole, ignoring its bitmap,
//! and a standalone VHDX has no partial state. A block the child lacks entirely is copied
//! whole when some layer below stores data for any part of it, and left unallocated when the
//! chain reads it as zeros throughout (unallocated reads as zeros once standalone).

use crate::disk::{Disk, Extent};
use crate::error::Result;
use crate::view::{Allocation, ChainView};

/// What one block needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Need {
    /// Nothing: the child holds it, or it reads as zeros and stays unallocated.
    Nothing,
    /// The whole block, `(offset, len)`.
    Whole(u64, u64),
    /// These runs `(offset, len)` of a block the child holds in part.
    Runs(Vec<(u64, u64)>),
}

impl Need {
    /// The virtual ranges to copy.
    pub(super) fn ranges(&self) -> Vec<(u64, u64)> {
        match self {
            Need::Nothing => Vec::new(),
            Need::Whole(o, l) => vec![(*o, *l)],
            Need::Runs(r) => r.clone(),
        }
    }

    /// Bytes to copy.
    pub(super) fn bytes(&self) -> u64 {
        self.ranges().iter().map(|r| r.1).sum()
    }
}

/// Blocks and bytes to copy, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub whole_blocks: u64,
    pub partial_blocks: u64,
    pub bytes: u64,
}

impl Totals {
    pub(super) fn add(&mut self, need: &Need) {
        match need {
            Need::Nothing => {}
            Need::Whole(..) => self.whole_blocks += 1,
            Need::Runs(_) => self.partial_blocks += 1,
        }
        self.bytes += need.bytes();
    }
}

/// Blocks of `size` bytes, as `(offset, len)`: the last one may be short.
pub(super) fn blocks(size: u64, block: u64) -> impl Iterator<Item = (u64, u64)> {
    let block = block.max(1);
    (0..size.div_ceil(block)).map(move |i| {
        let start = i * block;
        (start, block.min(size - start))
    })
}

/// What block `(start, len)` of `child` needs, with `parents` the chain below it.
pub(super) fn need(child: &Disk, parents: &ChainView, start: u64, len: u64) -> Result<Need> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let end = start + len;
    let mut at = start;
    while at < end {
        let (extent, n) = child.map(at, end - at)?;
        if extent == Extent::Unallocated {
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == at => last.1 += n,
                _ => runs.push((at, n)),
            }
        }
        at += n;
    }
    if runs.is_empty() {
        return Ok(Need::Nothing);
    }
    if runs != [(start, len)] {
        return Ok(Need::Runs(runs));
    }
    Ok(if stores_data(parents, start, len)? {
        Need::Whole(start, len)
    } else {
        Need::Nothing
    })
}

/// Whether some layer of `parents` stores data in `[start, start + len)`.
fn stores_data(parents: &ChainView, start: u64, len: u64) -> Result<bool> {
    let size = parents.virtual_size();
    let end = (start + len).min(size);
    let mut at = start;
    while at < end {
        let (a, n) = parents.allocation(at, end - at)?;
        if a == Allocation::Data {
            return Ok(true);
        }
        at += n.max(1);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_disk_and_the_last_is_short() {
        let b: Vec<_> = blocks(5 * 512 + 100, 1024).collect();
        assert_eq!(b, vec![(0, 1024), (1024, 1024), (2048, 612)]);
        assert_eq!(blocks(0, 1024).count(), 0);
    }

    #[test]
    fn totals_count_blocks_and_bytes() {
        let mut t = Totals::default();
        t.add(&Need::Whole(0, 4096));
        t.add(&Need::Runs(vec![(4096, 512), (5120, 1024)]));
        t.add(&Need::Nothing);
        assert_eq!(
            t,
            Totals {
                whole_blocks: 1,
                partial_blocks: 1,
                bytes: 4096 + 1536
            }
        );
    }
}
