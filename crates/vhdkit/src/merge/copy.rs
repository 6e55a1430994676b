//! What the merge copies, the copy itself and its verification.
//!
//! The runs copied into ANCESTOR are those a merged disk holds: a merged layer that maps a
//! range to data, or to zeros whatever is below (VHDX ZERO/UNMAPPED), or that is smaller than
//! the range's offset (it then reads zeros there), hides ANCESTOR for that range. Everywhere
//! else CHILD reads ANCESTOR already, and nothing is written.

use std::fs::File;

use super::io::Io;
use crate::disk::{Disk, Extent};
use crate::error::{Error, Result};
use crate::fsx::RangeCopier;
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

/// The file system block cloned ranges are aligned to (XFS and btrfs clone at 4 KiB; an
/// unaligned range would make the kernel refuse, and the copier stop asking it).
pub(crate) const CLONE_ALIGN: u64 = 4096;

/// How much of `[at, end)` the buffered path takes: at most [`COPY_CHUNK`], and where the file
/// system clones, only up to the next [`CLONE_ALIGN`] boundary when `at` is not on one (so the
/// aligned rest of a run can still be cloned).
pub(crate) fn buffered_len(at: u64, end: u64, clones: bool) -> u64 {
    let n = (end - at).min(COPY_CHUNK);
    let into = at % CLONE_ALIGN;
    if clones && into != 0 {
        n.min(CLONE_ALIGN - into)
    } else {
        n
    }
}

/// Written bytes between two starts of writeback of ANCESTOR's new payload: the final flush
/// then finds little still dirty, and the disk works while the copy goes on.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Where the copy writes: ANCESTOR through the engine, and its file for the payload the kernel
/// copies into blocks the engine stores whole.
pub(super) struct Target<'a> {
    /// ANCESTOR's writer over its own parents.
    pub disk: &'a mut WritableDisk,
    /// ANCESTOR's file (the locked descriptor, counted by `io`).
    pub file: &'a File,
    /// The merge's way to the file system.
    pub io: &'a Io,
}

/// What the copy did: the totals, and the digest of where it left each copied sector.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Copied {
    /// Blocks and bytes.
    pub totals: Totals,
    /// Bytes the kernel copied (or cloned) file to file.
    pub by_kernel: u64,
    /// [`MapDigest`] of every copied sector.
    pub map: MapDigest,
}

/// An order-free digest of a map from virtual sectors to file offsets: the wrapping sum of a
/// mix of each (virtual offset, file offset) pair, so runs split differently digest the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct MapDigest {
    sum: u64,
    sectors: u64,
}

impl MapDigest {
    /// Add the `len` bytes at virtual `v`, stored from file offset `f` on, sector by sector.
    fn add_run(&mut self, v: u64, f: u64, len: u64, sector: u64) {
        let mut i = 0;
        while i < len {
            let x = v.wrapping_add(i).rotate_left(32) ^ f.wrapping_add(i);
            self.sum = self.sum.wrapping_add(mix(x));
            self.sectors += 1;
            i += sector;
        }
    }
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The run of CHILD's data at `at` (at most `max` bytes) stored contiguously in one merged
/// layer's file, which the kernel can copy: its file, offset and length. `None` where CHILD
/// reads zeros there (a VHDX zero state, past a smaller disk's end) or the layer's reads do
/// not go straight to its file (an overlay, a log replayed in memory).
pub(crate) fn stored_run(merged: &[Disk], at: u64, max: u64) -> Result<Option<(&File, u64, u64)>> {
    let mut len = max;
    for disk in merged {
        if at >= disk.virtual_size() {
            return Ok(None);
        }
        match disk.map(at, len)? {
            (Extent::Data { file_offset }, n) => {
                return Ok(disk.data_file(file_offset, n).map(|f| (f, file_offset, n)))
            }
            (Extent::Zero, _) => return Ok(None),
            (Extent::Unallocated, n) => len = n,
        }
    }
    Ok(None)
}

/// The copy. **Invariant:** every byte written into ANCESTOR is the byte CHILD reads at that
/// offset now (`child` is CHILD's whole chain, opened before the copy), and for these runs
/// CHILD reads a merged disk, never ANCESTOR: so whatever part of the copy lands before a
/// crash, reads through CHILD do not change. A piece stored contiguously in a merged file
/// that lands in an ANCESTOR block stored whole is copied by the kernel, file to file (a
/// reflink where the file system clones); the rest goes through the engine and is read back
/// at once. Cancelling flushes what was written and stops between blocks.
pub(super) fn what_child_reads(
    t: &mut Target<'_>,
    child: &ChainView,
    walk: &Walk,
    total: u64,
    progress: &mut dyn Progress,
) -> Result<Copied> {
    progress.start("merge", Some(total));
    let mut c = Copier {
        merged: child.layers().get(..walk.merged).unwrap_or(&[]),
        child,
        sector: walk.sector,
        kernel: RangeCopier::new(),
        clones: RangeCopier::for_sparse_output(t.file).uses_kernel(),
        buf: Vec::new(),
        back: Vec::new(),
        pending: None,
        done: Copied::default(),
    };
    for b in walk.each_block(child) {
        if progress.cancelled() {
            t.disk.flush()?;
            return Err(progress::cancelled());
        }
        let (_, _, runs) = b?;
        c.done.totals.blocks += 1;
        for (mut at, len) in runs {
            let end = at + len;
            while at < end {
                let n = c.piece(t, at, end)?;
                progress.advance(n);
                at += n;
                c.done.totals.bytes += n;
            }
        }
    }
    c.writeback(t.file);
    progress.finish();
    Ok(c.done)
}

/// The copy's state.
struct Copier<'c> {
    merged: &'c [Disk],
    child: &'c ChainView,
    sector: u64,
    kernel: RangeCopier,
    /// ANCESTOR's file system clones (XFS, btrfs): the kernel gets file-system-block-aligned
    /// pieces only, which it shares (elsewhere it copies any piece).
    clones: bool,
    buf: Vec<u8>,
    back: Vec<u8>,
    /// ANCESTOR's file range the kernel copied into since the last start of writeback.
    pending: Option<(u64, u64)>,
    done: Copied,
}

impl Copier<'_> {
    /// Copy the piece at `at` (before `end`, in one ANCESTOR block); returns its length.
    fn piece(&mut self, t: &mut Target<'_>, at: u64, end: u64) -> Result<u64> {
        if let Some((src, from, n)) = stored_run(self.merged, at, end - at)? {
            let unit = if self.clones {
                CLONE_ALIGN
            } else {
                self.sector
            };
            let n = n / unit * unit;
            let aligned = !self.clones || (at % CLONE_ALIGN == 0 && from % CLONE_ALIGN == 0);
            if n > 0 && aligned {
                match t.disk.place_for_copy(at, n)? {
                    Some(dst) if !self.clones || dst % CLONE_ALIGN == 0 => {
                        if let Err(e) = self.by_kernel(t, (src, from), dst, n) {
                            t.disk.abandon();
                            return Err(e);
                        }
                        self.done.map.add_run(at, dst, n, self.sector);
                        return Ok(n);
                    }
                    _ => {}
                }
            }
        }
        let n = buffered_len(at, end, self.clones);
        self.through_engine(t.disk, at, n)
    }

    /// `n` bytes at `from` of `src` copied by the kernel to `dst` of ANCESTOR's file.
    fn by_kernel(
        &mut self,
        t: &Target<'_>,
        (src, from): (&File, u64),
        dst: u64,
        n: u64,
    ) -> Result<()> {
        let moved =
            t.io.step("copy_file_range")
                .and_then(|()| self.kernel.copy(src, from, t.file, dst, n, false))
                .map_err(|e| {
                    Error::io(
                        format!(
                        "copying {n} bytes of payload from {from:#x} into the ancestor at {dst:#x}"
                    ),
                        e,
                    )
                })?;
        self.done.by_kernel += moved;
        let end = dst.saturating_add(n);
        let (lo, hi) = self
            .pending
            .map_or((dst, end), |(lo, hi)| (lo.min(dst), hi.max(end)));
        self.pending = Some((lo, hi));
        if hi - lo >= WRITEBACK_STEP {
            self.writeback(t.file);
        }
        Ok(())
    }

    /// Start writing back what the kernel copied (a hint: the final flush makes it durable).
    fn writeback(&mut self, file: &File) {
        if let Some((lo, hi)) = self.pending.take() {
            crate::newdisk::start_writeback(file, lo, hi - lo);
        }
    }

    /// `n` bytes read through CHILD, written through the engine and read back through it;
    /// returns the length.
    fn through_engine(&mut self, disk: &mut WritableDisk, at: u64, n: u64) -> Result<u64> {
        let len = usize::try_from(n).map_err(|_| Error::internal("a copy piece too large"))?;
        self.buf.resize(len, 0);
        self.back.resize(len, 0);
        self.child.read_exact_at(&mut self.buf, at)?;
        disk.write_at(at, &self.buf)?;
        disk.read_exact_at(&mut self.back, at)?;
        if self.back != self.buf {
            return Err(differs(at, &self.back, &self.buf));
        }
        // A piece lies in one block, whose sectors are stored contiguously.
        let f = disk
            .stored_at(at)?
            .ok_or_else(|| Error::internal(format!("nothing stored at {at:#x} after a write")))?;
        self.done.map.add_run(at, f, n, self.sector);
        Ok(n)
    }
}

fn differs(at: u64, got: &[u8], want: &[u8]) -> Error {
    let i = got.iter().zip(want).position(|(x, y)| x != y).unwrap_or(0);
    Error::internal(format!(
        "the merged ancestor does not read what the child reads at virtual offset {:#x}; the \
         merged files and the merge record are kept",
        at + i as u64
    ))
}

/// The verification, on ANCESTOR parsed again from its file once the copy is flushed: every
/// copied sector must be stored by ANCESTOR itself, at the file offset the copy put it (the
/// map digests agree). Data is not read again: see the module docs.
pub(super) fn verify(
    ancestor: &Disk,
    child: &ChainView,
    walk: &Walk,
    copied: &Copied,
) -> Result<()> {
    let mut map = MapDigest::default();
    for b in walk.each_block(child) {
        for (mut at, len) in b?.2 {
            let end = at + len;
            while at < end {
                match ancestor.map(at, end - at)? {
                    (Extent::Data { file_offset }, n) => {
                        let n = n.min(end - at);
                        map.add_run(at, file_offset, n, walk.sector);
                        at += n;
                    }
                    _ => {
                        return Err(Error::internal(format!(
                            "the merged ancestor does not store the copied sector at virtual \
                             offset {at:#x}; the merged files and the merge record are kept"
                        )))
                    }
                }
            }
        }
    }
    if map != copied.map {
        return Err(Error::internal(
            "the merged ancestor's map, read back from its file, is not where the copy put the \
             data; the merged files and the merge record are kept",
        ));
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
