//! What the merge copies, the copy itself and its verification.
//!
//! The runs copied into ANCESTOR are those a merged disk holds: a merged layer that maps a
//! range to data, or to zeros whatever is below (VHDX ZERO/UNMAPPED), or that is smaller than
//! the range's offset (it then reads zeros there), hides ANCESTOR for that range. Everywhere
//! else CHILD reads ANCESTOR already, and nothing is written.

use crate::disk::{Disk, Extent};
use crate::error::{Error, Result};
use crate::progress::{self, Progress};
use crate::view::ChainView;
use crate::write::WritableDisk;

/// Most bytes read and written at once: the copy holds one such buffer.
const COPY_CHUNK: u64 = 1 << 20;

/// Blocks of `size` bytes, as `(offset, len)`: the last one may be short.
pub(super) fn blocks(size: u64, block: u64) -> impl Iterator<Item = (u64, u64)> {
    let block = block.max(1);
    (0..size.div_ceil(block)).map(move |i| {
        let start = i * block;
        (start, block.min(size - start))
    })
}

/// The runs of `[start, start + len)` some layer of `merged` (CHILD first, ANCESTOR left out)
/// holds, merged when adjacent, each rounded out to `sector` bytes and clipped to `size`.
pub(super) fn held_runs(
    merged: &[Disk],
    start: u64,
    len: u64,
    sector: u64,
    size: u64,
) -> Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let end = start.saturating_add(len).min(size);
    let mut at = start;
    while at < end {
        let (held, n) = held_at(merged, 0, at, end - at)?;
        if held {
            let s = at / sector * sector;
            let e = at
                .saturating_add(n)
                .div_ceil(sector)
                .saturating_mul(sector)
                .min(size);
            match runs.last_mut() {
                Some(last) if last.0 + last.1 >= s => last.1 = e.max(last.0 + last.1) - last.0,
                _ => runs.push((s, e - s)),
            }
        }
        at += n.max(1);
    }
    Ok(runs)
}

/// Whether a merged layer from `level` down holds `offset`, and for how many bytes that holds.
fn held_at(merged: &[Disk], level: usize, offset: u64, max_len: u64) -> Result<(bool, u64)> {
    let Some(disk) = merged.get(level) else {
        return Ok((false, max_len));
    };
    if offset >= disk.virtual_size() {
        // CHILD reads zeros past a smaller merged disk's end, whatever ANCESTOR holds there.
        return Ok((true, max_len));
    }
    let (extent, n) = disk.map(offset, max_len)?;
    match extent {
        Extent::Data { .. } | Extent::Zero => Ok((true, n)),
        Extent::Unallocated => held_at(merged, level + 1, offset, n),
    }
}

/// A block's start and length, and the runs to copy in it.
type BlockRuns = (u64, u64, Vec<(u64, u64)>);

/// How the merge walks CHILD's virtual disk: by ANCESTOR block, in ANCESTOR's sectors.
#[derive(Debug, Clone, Copy)]
pub(super) struct Walk {
    /// ANCESTOR's block size (2 MiB steps for a fixed VHD, which has no blocks).
    pub block: u64,
    /// ANCESTOR's logical sector size.
    pub sector: u64,
    /// CHILD's virtual size.
    pub size: u64,
    /// How many layers of CHILD's chain are merged (CHILD first); the next is ANCESTOR.
    pub merged: usize,
}

/// What the merge copies.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    /// ANCESTOR blocks written to.
    pub blocks: u64,
    /// Virtual bytes copied.
    pub bytes: u64,
    /// Blocks ANCESTOR holds no data in yet (each may allocate a block).
    pub new_blocks: u64,
}

impl Walk {
    /// The walk of merging the first `merged` layers of `chain` (CHILD's) into the next one.
    pub(super) fn of(chain: &ChainView, merged: usize) -> Result<Walk> {
        let ancestor = chain
            .layers()
            .get(merged)
            .ok_or_else(|| Error::internal("the ancestor is not in the chain"))?;
        Ok(Walk {
            block: ancestor.block_size().unwrap_or(2 << 20),
            sector: u64::from(ancestor.logical_sector_size()).max(1),
            size: chain.virtual_size(),
            merged,
        })
    }

    /// The runs to copy in each block that has some, as `Vec<(offset, len)>`, in order.
    fn each_block<'a>(
        &'a self,
        chain: &'a ChainView,
    ) -> impl Iterator<Item = Result<BlockRuns>> + 'a {
        let merged = chain.layers().get(..self.merged).unwrap_or(&[]);
        blocks(self.size, self.block).filter_map(move |(start, len)| {
            match held_runs(merged, start, len, self.sector, self.size) {
                Ok(r) if r.is_empty() => None,
                Ok(r) => Some(Ok((start, len, r))),
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Count what the merge copies (maps only, no data read).
    pub(super) fn count(&self, chain: &ChainView) -> Result<Totals> {
        let ancestor = chain.layers().get(self.merged);
        let mut t = Totals::default();
        for b in self.each_block(chain) {
            let (start, len, runs) = b?;
            t.blocks += 1;
            t.bytes += runs.iter().map(|r| r.1).sum::<u64>();
            if let Some(a) = ancestor.filter(|a| a.block_size().is_some()) {
                if !holds_data(a, start, len)? {
                    t.new_blocks += 1;
                }
            }
        }
        Ok(t)
    }
}

/// Whether `disk` itself stores data somewhere in the range.
fn holds_data(disk: &Disk, start: u64, len: u64) -> Result<bool> {
    let end = start.saturating_add(len).min(disk.virtual_size());
    let mut at = start;
    while at < end {
        let (e, n) = disk.map(at, end - at)?;
        if matches!(e, Extent::Data { .. }) {
            return Ok(true);
        }
        at += n.max(1);
    }
    Ok(false)
}

/// The copy. **Invariant:** every byte written into ANCESTOR is the byte CHILD reads at that
/// offset now (`child` is CHILD's whole chain, opened before the copy), and for these runs
/// CHILD reads a merged disk, never ANCESTOR: so whatever part of the copy lands before a
/// crash, reads through CHILD do not change. Cancelling flushes what was written and stops
/// between blocks. Returns what was copied.
pub(super) fn what_child_reads(
    ancestor: &mut WritableDisk,
    child: &ChainView,
    walk: &Walk,
    total: u64,
    progress: &mut dyn Progress,
) -> Result<Totals> {
    progress.start("merge", Some(total));
    let mut buf = Vec::new();
    let mut done = Totals::default();
    for b in walk.each_block(child) {
        if progress.cancelled() {
            ancestor.flush()?;
            return Err(progress::cancelled());
        }
        let (_, _, runs) = b?;
        done.blocks += 1;
        for (mut at, len) in runs {
            let end = at + len;
            while at < end {
                let n = usize::try_from((end - at).min(COPY_CHUNK)).unwrap_or(0);
                buf.resize(n, 0);
                child.read_exact_at(&mut buf, at)?;
                ancestor.write_at(at, &buf)?;
                progress.advance(n as u64);
                at += n as u64;
                done.bytes += n as u64;
            }
        }
    }
    progress.finish();
    Ok(done)
}

/// Compare every copied run as ANCESTOR's chain now reads it with CHILD's view.
pub(super) fn verify(ancestor: &ChainView, child: &ChainView, walk: &Walk) -> Result<()> {
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for b in walk.each_block(child) {
        for (mut at, len) in b?.2 {
            let end = at + len;
            while at < end {
                let n = usize::try_from((end - at).min(COPY_CHUNK)).unwrap_or(0);
                a.resize(n, 0);
                c.resize(n, 0);
                ancestor.read_exact_at(&mut a, at)?;
                child.read_exact_at(&mut c, at)?;
                if a != c {
                    let i = a.iter().zip(&c).position(|(x, y)| x != y).unwrap_or(0);
                    return Err(Error::internal(format!(
                        "the merged ancestor does not read what the child reads at virtual \
                         offset {:#x}; the merged files and the merge record are kept",
                        at + i as u64
                    )));
                }
                at += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn blocks_cover_the_disk_and_the_last_is_short() {
        let b: Vec<_> = blocks(5 * 512 + 100, 1024).collect();
        assert_eq!(b, vec![(0, 1024), (1024, 1024), (2048, 612)]);
    }

    #[test]
    fn no_merged_layer_holds_nothing_and_past_a_layers_end_is_held() {
        assert!(held_runs(&[], 0, 4096, 512, 8192).unwrap().is_empty());
    }
}
