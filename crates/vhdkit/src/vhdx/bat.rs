//! The block allocation table: chunk ratio, interleaved sector-bitmap entries, entry states and
//! placement rules.
//!
//! Reserved payload states: 4 is refused as corrupt. 5 is read as UNMAPPED (zeros), as qemu does
//! (its draft-0.95 value), with a warning: refusing it would make files qemu reads unreadable,
//! and UNMAPPED contents are undefined anyway.

use super::format::{
    BAT_ENTRY_SIZE, BAT_OFFSET_MASK, BAT_RESERVED_MASK, BAT_STATE_MASK, MIB,
    PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    PAYLOAD_BLOCK_UNDEFINED, PAYLOAD_BLOCK_UNMAPPED, PAYLOAD_BLOCK_UNMAPPED_V095,
    PAYLOAD_BLOCK_ZERO, SB_BLOCK_NOT_PRESENT, SB_BLOCK_PRESENT, SECTORS_PER_CHUNK,
    SECTOR_BITMAP_BLOCK_SIZE,
};
use crate::disjoint::{find_overlap, Span, Visit, DEFAULT_BUDGET};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::Source;
use crate::table::{scan_raw, scan_table, LazyTable, Width};
use crate::util::overlaps;

const BAT: &str = "vhdx block allocation table";

/// Counts of BAT entries per state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct BatSummary {
    /// Entries read (payload and sector bitmap).
    pub entries: u64,
    /// Payload blocks of the virtual disk.
    pub payload_blocks: u64,
    /// Sector bitmap slots among the entries read.
    pub sector_bitmap_entries: u64,
    /// Payload NOT_PRESENT.
    pub not_present: u64,
    /// Payload UNDEFINED.
    pub undefined: u64,
    /// Payload ZERO.
    pub zero: u64,
    /// Payload UNMAPPED (including reserved state 5).
    pub unmapped: u64,
    /// Payload FULLY_PRESENT.
    pub fully_present: u64,
    /// Payload PARTIALLY_PRESENT.
    pub partially_present: u64,
    /// Sector bitmap blocks present.
    pub sector_bitmap_present: u64,
}

/// The checked BAT. Its entries are read from the file on demand (a 64 TiB disk's table is
/// hundreds of MiB): only counts and the extent of the blocks are kept.
#[derive(Debug)]
pub(crate) struct Bat {
    /// The raw 64-bit entries.
    pub table: LazyTable,
    /// End of the furthest block any entry points at, whatever its state (0 if none).
    pub blocks_end: u64,
    pub chunk_ratio: u64,
    pub block_size: u64,
    pub summary: BatSummary,
    pub warnings: Vec<String>,
}

/// Chunk ratio from the logical sector size (never the physical one).
pub(crate) fn chunk_ratio(logical_sector_size: u32, block_size: u32) -> u64 {
    (SECTORS_PER_CHUNK * u64::from(logical_sector_size)) / u64::from(block_size).max(1)
}

/// BAT index of payload block `b`.
pub(crate) fn payload_index(b: u64, cr: u64) -> u64 {
    b + b / cr
}

/// BAT index of the sector bitmap block of chunk `c`.
pub(crate) fn sb_index(c: u64, cr: u64) -> u64 {
    c * (cr + 1) + cr
}

/// Whether BAT index `idx` holds a sector bitmap entry (the last of each chunk's `cr + 1`).
pub(crate) fn is_sb_index(idx: u64, cr: u64) -> bool {
    (idx + 1) % (cr + 1) == 0
}

/// Entries a file must have.
pub(crate) fn required_entries(payload_blocks: u64, cr: u64, differencing: bool) -> u64 {
    if differencing {
        payload_blocks.div_ceil(cr) * (cr + 1)
    } else if payload_blocks == 0 {
        0
    } else {
        payload_blocks + (payload_blocks - 1) / cr
    }
}

/// Inputs that decide the BAT's shape.
pub(crate) struct BatParams<'a> {
    pub region_offset: u64,
    pub region_length: u64,
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub differencing: bool,
    pub file_len: u64,
    /// Only `max_bat_bytes` is used.
    pub limits: &'a Limits,
    /// Spans (start, end, what) entries must not overlap: first MiB, regions, log.
    pub reserved: &'a [(u64, u64, String)],
}

/// State checks of one BAT entry, counted into a summary.
struct Checker<'a, 'b> {
    p: &'a BatParams<'b>,
    /// For the sector bitmap entry of a chunk, which comes after its payload entries.
    table: &'a LazyTable,
    /// What the table is read through.
    src: &'a dyn Source,
    cr: u64,
    summary: BatSummary,
    warnings: Vec<String>,
}

impl Checker<'_, '_> {
    /// Sector bitmap entry `idx`: bytes of file it needs, if any.
    fn sector_bitmap(&mut self, idx: u64, at: u64, state: u8) -> Result<Option<u64>> {
        self.summary.sector_bitmap_entries += 1;
        match state {
            SB_BLOCK_NOT_PRESENT => Ok(None),
            SB_BLOCK_PRESENT => {
                self.summary.sector_bitmap_present += 1;
                Ok(Some(SECTOR_BITMAP_BLOCK_SIZE))
            }
            s => Err(Error::corrupt(
                BAT,
                at,
                format!("sector bitmap entry {idx} has state {s}; allowed 0 or 6"),
            )
            .with_code("vhdx.bat.state_invalid")),
        }
    }

    /// Payload entry `idx` of block `b`: bytes of file it needs, if any.
    fn payload(&mut self, idx: u64, b: u64, at: u64, state: u8) -> Result<Option<u64>> {
        let s = &mut self.summary;
        match state {
            PAYLOAD_BLOCK_NOT_PRESENT => s.not_present += 1,
            PAYLOAD_BLOCK_UNDEFINED => s.undefined += 1,
            PAYLOAD_BLOCK_ZERO => s.zero += 1,
            PAYLOAD_BLOCK_UNMAPPED => s.unmapped += 1,
            PAYLOAD_BLOCK_UNMAPPED_V095 => {
                s.unmapped += 1;
                if !self.warnings.iter().any(|w| w.contains("state 5")) {
                    self.warnings.push(format!(
                        "BAT entry {idx} uses reserved state 5 (qemu's draft UNMAPPED); read as zeros"
                    ));
                }
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                self.check_partial(idx, b, at)?;
                self.summary.partially_present += 1;
                return Ok(Some(self.used_bytes(b)));
            }
            PAYLOAD_BLOCK_FULLY_PRESENT => {
                s.fully_present += 1;
                return Ok(Some(self.used_bytes(b)));
            }
            s => {
                return Err(Error::corrupt(
                    BAT,
                    at,
                    format!("payload entry {idx} (block {b}) has reserved state {s}"),
                )
                .with_code("vhdx.bat.state_invalid"))
            }
        }
        Ok(None)
    }

    /// Only the part of the last block that holds virtual data must exist.
    fn used_bytes(&self, b: u64) -> u64 {
        let block_size = u64::from(self.p.block_size);
        self.p
            .virtual_size
            .saturating_sub(b.saturating_mul(block_size))
            .min(block_size)
    }

    /// PARTIALLY_PRESENT needs a parent and a present sector bitmap block.
    fn check_partial(&self, idx: u64, b: u64, at: u64) -> Result<()> {
        if !self.p.differencing {
            return Err(Error::corrupt(
                BAT,
                at,
                format!(
                    "payload entry {idx} (block {b}) is PARTIALLY_PRESENT in a disk without a parent"
                ),
            )
            .with_code("vhdx.bat.state_invalid"));
        }
        let sbi = sb_index(b / self.cr, self.cr);
        let sb = if sbi < self.table.len() {
            Some(self.table.get(self.src, sbi)?)
        } else {
            None
        };
        if sb.map(|v| v & BAT_STATE_MASK) != Some(u64::from(SB_BLOCK_PRESENT)) {
            return Err(Error::corrupt(
                BAT,
                at,
                format!(
                    "payload entry {idx} (block {b}) is PARTIALLY_PRESENT but its \
                     sector bitmap entry {sbi} is not present"
                ),
            )
            .with_code("vhdx.bat.bitmap_missing"));
        }
        Ok(())
    }

    /// Count `n` entries holding `e` when it has no offset, no reserved bits and a state that
    /// places no block (most entries of a sparse disk), and say so; such an entry needs none
    /// of the checks of [`Checker::check`], which counts it the same way.
    fn count_blockless(&mut self, is_sb: bool, e: u64, n: u64) -> bool {
        if e & !BAT_STATE_MASK != 0 {
            return false;
        }
        let state = u8::try_from(e).unwrap_or(u8::MAX);
        let s = &mut self.summary;
        let count = if is_sb {
            match state {
                SB_BLOCK_NOT_PRESENT => &mut s.sector_bitmap_entries,
                _ => return false,
            }
        } else {
            match state {
                PAYLOAD_BLOCK_NOT_PRESENT => &mut s.not_present,
                PAYLOAD_BLOCK_UNDEFINED => &mut s.undefined,
                PAYLOAD_BLOCK_ZERO => &mut s.zero,
                PAYLOAD_BLOCK_UNMAPPED => &mut s.unmapped,
                _ => return false,
            }
        };
        *count += n;
        true
    }

    /// Entry `idx` (value `e`): its block span (start, end) in the file, if it has one.
    fn check(&mut self, idx: u64, e: u64) -> Result<Option<(u64, u64)>> {
        let at = self.p.region_offset + idx * BAT_ENTRY_SIZE;
        if e & BAT_RESERVED_MASK != 0 {
            return Err(Error::corrupt(
                BAT,
                at,
                format!("entry {idx} ({e:#018x}) has reserved bits 3-19 set"),
            )
            .with_code("vhdx.bat.reserved_bits"));
        }
        let state = u8::try_from(e & BAT_STATE_MASK).unwrap_or(u8::MAX);
        let needed = if is_sb_index(idx, self.cr) {
            self.sector_bitmap(idx, at, state)?
        } else {
            self.payload(idx, idx - idx / (self.cr + 1), at, state)?
        };
        let Some(len) = needed else { return Ok(None) };
        let offset = e & BAT_OFFSET_MASK;
        if offset < MIB {
            return Err(Error::corrupt(
                BAT,
                at,
                format!("entry {idx} points at {offset:#x}, inside the first MiB"),
            )
            .with_code("vhdx.bat.offset_invalid"));
        }
        let file_len = self.p.file_len;
        let end = offset.checked_add(len).filter(|&end| end <= file_len).ok_or_else(|| {
            Error::corrupt(
                BAT,
                at,
                format!(
                    "entry {idx} block at {offset:#x}+{len:#x} ends past the end of the file ({file_len:#x})"
                ),
            )
            .with_code("vhdx.bat.past_eof")
        })?;
        let reserved = self.p.reserved.iter();
        if let Some((_, _, what)) = reserved
            .clone()
            .find(|(s, e, _)| overlaps(&(offset..end), &(*s..*e)))
        {
            return Err(Error::corrupt(
                BAT,
                at,
                format!("entry {idx} block at {offset:#x}+{len:#x} overlaps {what}"),
            )
            .with_code("vhdx.bat.overlaps_metadata"));
        }
        Ok(Some((offset, end)))
    }
}

/// The file span of entry `idx` (value `e`, already checked) when its state places a block:
/// what the overlap passes visit.
fn block_span(p: &BatParams<'_>, cr: u64, idx: u64, e: u64) -> Option<Span> {
    let state = u8::try_from(e & BAT_STATE_MASK).unwrap_or(u8::MAX);
    let len = if is_sb_index(idx, cr) {
        (state == SB_BLOCK_PRESENT).then_some(SECTOR_BITMAP_BLOCK_SIZE)?
    } else if state == PAYLOAD_BLOCK_FULLY_PRESENT || state == PAYLOAD_BLOCK_PARTIALLY_PRESENT {
        let block_size = u64::from(p.block_size);
        let b = idx - idx / (cr + 1);
        p.virtual_size
            .saturating_sub(b.saturating_mul(block_size))
            .min(block_size)
    } else {
        return None;
    };
    let start = e & BAT_OFFSET_MASK;
    Some(Span {
        start,
        end: start.saturating_add(len),
        id: idx,
    })
}

/// No two blocks may share a byte. `held` are the spans of the checking pass when they fit the
/// budget; otherwise the table is streamed again, in as many passes as the budget needs.
fn check_no_overlaps(
    src: &dyn Source,
    p: &BatParams<'_>,
    cr: u64,
    count: u64,
    held: Option<Vec<Span>>,
) -> Result<()> {
    let mut spans = |visit: &mut Visit<'_>| match &held {
        Some(v) => v.iter().try_for_each(|s| visit(*s)),
        None => scan_table(
            src,
            p.region_offset,
            count,
            Width::U64Le,
            BAT,
            0,
            &mut |i, e| block_span(p, cr, i, e).map_or(Ok(()), &mut *visit),
        ),
    };
    let found = find_overlap(&mut spans, DEFAULT_BUDGET)?;
    match found {
        None => Ok(()),
        Some((a, b)) => Err(Error::corrupt(
            BAT,
            p.region_offset + b.id * BAT_ENTRY_SIZE,
            format!(
                "entries {} and {} point at overlapping blocks (at {:#x})",
                a.id, b.id, b.start
            ),
        )
        .with_code("vhdx.bat.overlap")),
    }
}

/// The number of entries the disk needs, checked against the region and the limit.
fn entry_count(p: &BatParams<'_>, cr: u64, payload_blocks: u64) -> Result<u64> {
    let count = required_entries(payload_blocks, cr, p.differencing);
    let bytes = count.checked_mul(BAT_ENTRY_SIZE).ok_or_else(|| {
        Error::corrupt(BAT, p.region_offset, format!("{count} entries overflow"))
            .with_code("vhdx.bat.too_small")
    })?;
    if bytes > p.region_length {
        return Err(Error::corrupt(
            BAT,
            p.region_offset,
            format!(
                "the disk needs {count} entries ({bytes} bytes) but the BAT region has {} bytes",
                p.region_length
            ),
        )
        .with_code("vhdx.bat.too_small"));
    }
    p.limits
        .check_bat_bytes(BAT, p.region_offset, "BAT size in bytes", bytes)?;
    Ok(count)
}

/// Check the BAT of `src` in one streaming pass (and more for overlaps only when the blocks do
/// not fit the overlap budget); entries are read on demand afterwards.
pub(crate) fn read_bat(src: &dyn Source, p: &BatParams<'_>) -> Result<Bat> {
    let cr = chunk_ratio(p.logical_sector_size, p.block_size);
    let block_size = u64::from(p.block_size);
    let payload_blocks = p.virtual_size.div_ceil(block_size);
    let count = entry_count(p, cr, payload_blocks)?;
    let table = LazyTable::new(p.region_offset, count, Width::U64Le, BAT);
    let mut pass = Pass {
        checker: Checker {
            p,
            table: &table,
            src,
            cr,
            summary: BatSummary {
                entries: count,
                payload_blocks,
                ..BatSummary::default()
            },
            warnings: Vec::new(),
        },
        held: Some(Vec::new()),
        blocks_end: 0,
        block_size,
    };
    let mut pieces = Pieces::new(cr);
    scan_raw(
        src,
        p.region_offset,
        count,
        Width::U64Le,
        BAT,
        0,
        &mut |first, raw| pieces.cut(first, raw, &mut |piece| pass.piece(piece)),
    )?;
    let Pass {
        checker: Checker {
            summary, warnings, ..
        },
        held,
        blocks_end,
        ..
    } = pass;
    check_no_overlaps(src, p, cr, count, held)?;
    Ok(Bat {
        table,
        blocks_end,
        chunk_ratio: cr,
        block_size,
        summary,
        warnings,
    })
}

/// What the one pass of [`read_bat`] gathers besides the checks.
struct Pass<'a, 'b> {
    checker: Checker<'a, 'b>,
    /// Block spans while they fit the overlap budget.
    held: Option<Vec<Span>>,
    /// See [`Bat::blocks_end`].
    blocks_end: u64,
    block_size: u64,
}

impl Pass<'_, '_> {
    /// A run of payload entries that all hold one blockless value (every entry of a sparse
    /// disk's table but the few in use) is counted at once; the rest entry by entry.
    fn piece(&mut self, piece: Piece<'_>) -> Result<()> {
        if !piece.sb {
            if let Some(v) = uniform(piece.raw) {
                if self.checker.count_blockless(false, v, piece.len()) {
                    return Ok(());
                }
            }
        }
        for (idx, e) in piece.entries() {
            self.entry(idx, e, piece.sb)?;
        }
        Ok(())
    }

    fn entry(&mut self, idx: u64, e: u64, is_sb: bool) -> Result<()> {
        if self.checker.count_blockless(is_sb, e, 1) {
            return Ok(());
        }
        let cr = self.checker.cr;
        self.blocks_end = self.blocks_end.max(entry_end(cr, self.block_size, idx, e));
        if let Some((start, end)) = self.checker.check(idx, e)? {
            // Past the budget the spans are dropped before the vector would grow again.
            match self.held.as_mut() {
                Some(v) if v.len() < DEFAULT_BUDGET => v.push(Span {
                    start,
                    end,
                    id: idx,
                }),
                _ => self.held = None,
            }
        }
        Ok(())
    }
}

/// A stretch of BAT entries as stored: payload entries up to the next sector bitmap entry, or
/// that one entry (`sb`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece<'a> {
    /// Index of the first entry.
    pub first: u64,
    /// The entries, `BAT_ENTRY_SIZE` bytes each.
    pub raw: &'a [u8],
    /// A sector bitmap entry.
    pub sb: bool,
}

impl Piece<'_> {
    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.raw.len() as u64 / BAT_ENTRY_SIZE
    }

    /// `(index, entry)` of each entry.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (self.first..).zip(self.raw.chunks_exact(ENTRY).map(entry_value))
    }
}

const ENTRY: usize = BAT_ENTRY_SIZE as usize;

fn entry_value(c: &[u8]) -> u64 {
    c.try_into().map_or(0, u64::from_le_bytes)
}

/// The value every entry of `raw` holds, when they all hold the same one (an OR over the whole
/// run, without an early exit, which compiles to vector instructions).
pub(crate) fn uniform(raw: &[u8]) -> Option<u64> {
    let v = entry_value(raw.get(..ENTRY)?);
    let diff = raw
        .chunks_exact(ENTRY)
        .fold(0u64, |acc, c| acc | (entry_value(c) ^ v));
    (diff == 0).then_some(v)
}

/// Cuts the table, read in order in buffers, into [`Piece`]s at the sector bitmap entries,
/// following the next one's index from buffer to buffer rather than dividing per entry.
#[derive(Debug)]
pub(crate) struct Pieces {
    cr: u64,
    next_sb: u64,
}

impl Pieces {
    /// For a table with chunk ratio `cr`, read from entry 0.
    pub(crate) fn new(cr: u64) -> Pieces {
        Pieces { cr, next_sb: cr }
    }

    /// Hand `f` the pieces of `raw`, the entries from index `first` on (after those of the
    /// previous call).
    pub(crate) fn cut(
        &mut self,
        first: u64,
        raw: &[u8],
        f: &mut impl FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut i = first;
        let mut rest = raw;
        while !rest.is_empty() {
            while self.next_sb < i {
                self.next_sb = self.next_sb.saturating_add(self.cr + 1);
            }
            let sb = i == self.next_sb;
            let n = if sb { 1 } else { self.next_sb - i };
            let bytes = usize::try_from(n)
                .map_or(usize::MAX, |n| n.saturating_mul(ENTRY))
                .min(rest.len());
            let (piece, tail) = rest.split_at(bytes);
            f(Piece {
                first: i,
                raw: piece,
                sb,
            })?;
            i = i.saturating_add(piece.len() as u64 / BAT_ENTRY_SIZE);
            rest = tail;
        }
        Ok(())
    }
}

/// End of the block entry `idx` (value `e`) points at, whatever its state; 0 without an offset.
/// A writer allocates past every such block.
fn entry_end(cr: u64, block_size: u64, idx: u64, e: u64) -> u64 {
    let off = e & BAT_OFFSET_MASK;
    if off == 0 {
        return 0;
    }
    let len = if is_sb_index(idx, cr) {
        SECTOR_BITMAP_BLOCK_SIZE
    } else {
        block_size
    };
    off.saturating_add(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The span each state places, with a chunk ratio of 4 (entry 4 is the first bitmap slot)
    /// and 2 MiB blocks: 8 payload blocks, the last (block 7, entry 8) a quarter used.
    #[test]
    fn block_span_of_every_state() {
        let limits = Limits::default();
        let reserved: Vec<(u64, u64, String)> = Vec::new();
        let block = 2 * MIB;
        let p = BatParams {
            region_offset: 0,
            region_length: MIB,
            virtual_size: 7 * block + block / 4,
            block_size: 2 << 20,
            logical_sector_size: 512,
            differencing: true,
            file_len: u64::MAX,
            limits: &limits,
            reserved: &reserved,
        };
        let at = 7 * MIB;
        let span = |idx: u64, state: u8| {
            block_span(&p, 4, idx, at | u64::from(state)).map(|s| (s.start, s.end, s.id))
        };
        for state in [PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT] {
            assert_eq!(span(0, state), Some((at, at + block, 0)));
            assert_eq!(span(7, state), Some((at, at + block, 7)));
            assert_eq!(span(8, state), Some((at, at + block / 4, 8)));
        }
        for state in [
            PAYLOAD_BLOCK_NOT_PRESENT,
            PAYLOAD_BLOCK_UNDEFINED,
            PAYLOAD_BLOCK_ZERO,
            PAYLOAD_BLOCK_UNMAPPED,
        ] {
            assert_eq!(span(8, state), None, "state {state}");
        }
        assert_eq!(span(4, SB_BLOCK_PRESENT), Some((at, at + MIB, 4)));
        assert_eq!(span(9, SB_BLOCK_PRESENT), Some((at, at + MIB, 9)));
        assert_eq!(span(4, SB_BLOCK_NOT_PRESENT), None);
    }

    #[test]
    fn chunk_ratio_uses_logical_sector() {
        assert_eq!(chunk_ratio(512, 2 << 20), 2048);
        assert_eq!(chunk_ratio(4096, 2 << 20), 16384);
        assert_eq!(chunk_ratio(512, 256 << 20), 16);
        assert_eq!(chunk_ratio(512, 1 << 20), 4096);
    }

    #[test]
    fn interleaving() {
        assert_eq!(payload_index(0, 2048), 0);
        assert_eq!(payload_index(2048, 2048), 2049);
        assert_eq!(sb_index(0, 2048), 2048);
        assert_eq!(sb_index(1, 2048), 4097);
        assert!(is_sb_index(2048, 2048) && is_sb_index(4097, 2048));
        assert!(!is_sb_index(2047, 2048) && !is_sb_index(2049, 2048) && !is_sb_index(0, 1));
        assert_eq!(required_entries(8, 512, true), 513);
        assert_eq!(required_entries(4097, 4096, false), 4098);
        assert_eq!(required_entries(5, 2048, false), 5);
    }

    #[test]
    fn pieces_cut_at_every_sector_bitmap_entry_across_buffers() {
        for cr in [1u64, 4, 16] {
            let count = 7 * (cr + 1) + 3;
            let raw: Vec<u8> = (0..count).flat_map(|i| (i * 10).to_le_bytes()).collect();
            // Buffers of several sizes, none a multiple of the chunk.
            for per in [1usize, 3, 5, 64] {
                let mut pieces = Pieces::new(cr);
                let mut seen = Vec::new();
                for (b, buf) in raw.chunks(per * ENTRY).enumerate() {
                    let first = (b * per) as u64;
                    let cut = pieces.cut(first, buf, &mut |p| {
                        assert!(p.sb || p.entries().all(|(i, _)| !is_sb_index(i, cr)));
                        assert!(!p.sb || p.len() == 1);
                        seen.extend(p.entries().map(|(i, e)| (i, e, p.sb)));
                        Ok(())
                    });
                    assert!(cut.is_ok());
                }
                let want: Vec<(u64, u64, bool)> = (0..count)
                    .map(|i| (i, i * 10, is_sb_index(i, cr)))
                    .collect();
                assert_eq!(seen, want, "cr {cr}, {per} entries per buffer");
            }
        }
    }

    #[test]
    fn uniform_needs_every_entry_equal() {
        let run = |v: &[u64]| -> Vec<u8> { v.iter().flat_map(|e| e.to_le_bytes()).collect() };
        assert_eq!(uniform(&run(&[2, 2, 2, 2, 2])), Some(2));
        assert_eq!(uniform(&run(&[0])), Some(0));
        assert_eq!(uniform(&run(&[2, 2, 2, 2, 3])), None);
        assert_eq!(uniform(&run(&[2, 2 | (1 << 40), 2])), None);
        assert_eq!(uniform(&[]), None);
    }

    /// The summary of one pass over a table of every kind of entry, against counts made here
    /// entry by entry.
    #[test]
    fn summary_counts_runs_and_single_entries_alike() {
        let (cr, block) = (4u64, 1u64 << 30);
        let payload_blocks = 200u64;
        let count = required_entries(payload_blocks, cr, false);
        let region_offset = 3 * MIB;
        let mut entries = Vec::new();
        let mut next_block = 4 * MIB;
        for i in 0..count {
            let e = if is_sb_index(i, cr) {
                0
            } else if i % 13 == 5 {
                let e = next_block | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
                next_block += block;
                e
            } else {
                // Long runs of one state, changing every 9 entries.
                (i / 9) % 4
            };
            entries.push(e);
        }
        let mut file = vec![0u8; usize::try_from(region_offset).unwrap_or(0)];
        file.extend(entries.iter().flat_map(|e| e.to_le_bytes()));
        let limits = Limits::default();
        let p = BatParams {
            region_offset,
            region_length: MIB,
            virtual_size: payload_blocks * block,
            block_size: u32::try_from(block).unwrap_or(0),
            logical_sector_size: 512,
            differencing: false,
            file_len: next_block,
            limits: &limits,
            reserved: &[],
        };
        assert_eq!(chunk_ratio(p.logical_sector_size, p.block_size), cr);
        let Ok(bat) = read_bat(&file, &p) else {
            unreachable!("a valid table")
        };
        let payload: Vec<u64> = (0..count)
            .filter(|&i| !is_sb_index(i, cr))
            .map(|i| entries[i as usize] & BAT_STATE_MASK)
            .collect();
        let n = |s: u8| payload.iter().filter(|&&x| x == u64::from(s)).count() as u64;
        let want = BatSummary {
            entries: count,
            payload_blocks,
            sector_bitmap_entries: count - payload.len() as u64,
            not_present: n(PAYLOAD_BLOCK_NOT_PRESENT),
            undefined: n(PAYLOAD_BLOCK_UNDEFINED),
            zero: n(PAYLOAD_BLOCK_ZERO),
            unmapped: n(PAYLOAD_BLOCK_UNMAPPED),
            fully_present: n(PAYLOAD_BLOCK_FULLY_PRESENT),
            partially_present: 0,
            sector_bitmap_present: 0,
        };
        assert_eq!(bat.summary, want);
        assert!(want.fully_present > 10 && want.zero > 10 && want.unmapped > 10);
        assert_eq!(bat.blocks_end, next_block);
    }
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod built_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::disk::OpenOptions;
    use crate::vhdx::VhdxFile;
    use vhdkit_testkit::vhdx::{Built, Kind, VhdxBuilder};

    /// A differencing 8 MiB disk in 1 MiB blocks: block 0 full, block 1 partial (so chunk 0
    /// has a sector bitmap block), block 2 ZERO, the rest NOT_PRESENT.
    fn built() -> Built {
        let mut b = VhdxBuilder::new(Kind::Differencing, 8 << 20, 1 << 20, 512);
        b.write(0, &[1; 1 << 20]);
        b.write(1 << 20, &[2; 4096]);
        b.zero_block(2);
        b.build()
    }

    fn set_entry(bytes: &mut [u8], built: &Built, idx: u64, e: u64) {
        let at = (built.layout.bat_offset + idx * BAT_ENTRY_SIZE) as usize;
        bytes[at..at + 8].copy_from_slice(&e.to_le_bytes());
    }

    fn open(bytes: Vec<u8>) -> Result<VhdxFile> {
        VhdxFile::open(Box::new(bytes), &OpenOptions::default())
    }

    /// Opening reads the table once: while the blocks' spans fit the memory budget, the overlap
    /// check uses the spans the checking pass kept instead of streaming the table again. (A
    /// dynamic disk: a differencing disk's partial blocks also look up their bitmap entries.)
    #[test]
    fn opening_reads_the_table_once() {
        let mut b = VhdxBuilder::new(Kind::Dynamic, 64 << 20, 1 << 20, 512);
        for i in 0..8 {
            b.write(i * (3 << 20), &[1; 4096]);
        }
        let built = b.build();
        let (at, len) = (built.layout.bat_offset, built.layout.bat_length);
        let log = std::sync::Arc::new(crate::source::ReadLog::new(built.bytes));
        VhdxFile::open(Box::new(log.clone()), &OpenOptions::default()).unwrap();
        let in_table: u64 = log
            .reads()
            .iter()
            .filter(|&&(o, _)| o >= at && o < at + len)
            .map(|&(_, n)| n as u64)
            .sum();
        let cr = chunk_ratio(512, 1 << 20);
        assert_eq!(in_table, required_entries(64, cr, false) * BAT_ENTRY_SIZE);
    }

    /// Every state is counted in its own field, and the sector bitmap slot too.
    #[test]
    fn the_summary_counts_each_state() {
        // Entries without data, with no offset (counted a run at a time) and with a stale one
        // (checked one by one): the counts are the same.
        for stale in [0, 9 << 20] {
            summary_counts_each_state(stale);
        }
    }

    fn summary_counts_each_state(stale: u64) {
        let b = built();
        let mut bytes = b.bytes.clone();
        set_entry(&mut bytes, &b, 2, stale | u64::from(PAYLOAD_BLOCK_ZERO));
        set_entry(
            &mut bytes,
            &b,
            3,
            stale | u64::from(PAYLOAD_BLOCK_NOT_PRESENT),
        );
        set_entry(
            &mut bytes,
            &b,
            4,
            stale | u64::from(PAYLOAD_BLOCK_UNDEFINED),
        );
        set_entry(&mut bytes, &b, 5, stale | u64::from(PAYLOAD_BLOCK_UNMAPPED));
        set_entry(
            &mut bytes,
            &b,
            6,
            stale | u64::from(PAYLOAD_BLOCK_UNMAPPED_V095),
        );
        let f = open(bytes).unwrap();
        let s = &*f.info().bat;
        let got = (
            s.entries,
            s.payload_blocks,
            s.sector_bitmap_entries,
            s.sector_bitmap_present,
        );
        assert_eq!(got, (4097, 8, 1, 1), "{s:?}");
        let states = (
            s.fully_present,
            s.partially_present,
            s.zero,
            s.undefined,
            s.unmapped,
            s.not_present,
        );
        // NOT_PRESENT: blocks 3 and 7, and the 4088 payload slots of the chunk past the disk.
        assert_eq!(states, (1, 1, 1, 1, 2, 4090), "{s:?}");
    }

    /// A present sector bitmap block is a 1 MiB structure like a payload block: it may not
    /// lie in the first MiB nor run past the end of the file.
    #[test]
    fn a_sector_bitmap_block_is_checked_like_a_block() {
        let b = built();
        let cr = b.layout.chunk_ratio;
        let sb = *b.layout.sb_offsets.get(&0).unwrap();
        let present = u64::from(SB_BLOCK_PRESENT);
        let mut bytes = b.bytes.clone();
        set_entry(&mut bytes, &b, sb_index(0, cr), present);
        let e = open(bytes.clone()).unwrap_err();
        assert_eq!(e.code(), Some("vhdx.bat.offset_invalid"), "{e}");
        // At 1 MiB exactly it is past the first MiB, and overlaps the log there.
        let mut at_mib = b.bytes.clone();
        set_entry(&mut at_mib, &b, sb_index(0, cr), MIB | present);
        let overlap = open(at_mib).unwrap_err();
        assert_eq!(
            overlap.code(),
            Some("vhdx.bat.overlaps_metadata"),
            "{overlap}"
        );
        // The error names the entry's own offset.
        let Error::Corrupt { location, .. } = &e else {
            panic!("{e:?}")
        };
        let entry_at = b.layout.bat_offset + sb_index(0, cr) * BAT_ENTRY_SIZE;
        assert_eq!(location.offset, entry_at, "{e}");
        // The block moved to the end of the file, half of it past the end.
        let mut bytes = b.bytes.clone();
        let end = bytes.len() as u64;
        let at = end.next_multiple_of(MIB);
        bytes.resize((at + MIB / 2) as usize, 0);
        set_entry(&mut bytes, &b, sb_index(0, cr), at | present);
        let e = open(bytes).unwrap_err();
        assert_eq!(
            e.code(),
            Some("vhdx.bat.past_eof"),
            "{e} (sb was at {sb:#x})"
        );
    }

    /// The last block of a disk whose size is not a whole number of blocks needs only the part
    /// holding virtual data: a file that ends right after it opens and reads; one sector less
    /// is cut short.
    #[test]
    fn the_last_block_needs_only_its_used_part() {
        // The last block lies in the second chunk (past a sector bitmap slot), at an entry
        // index (8192) where every miscomputed block number differs from the right one.
        let last = 8191u64;
        let size = (last << 20) + (512 << 10);
        let mut b = VhdxBuilder::new(Kind::Dynamic, size, 1 << 20, 512);
        b.write(last << 20, &[7; 512 << 10]);
        let built = b.build();
        let from = *built.layout.block_offsets.get(&last).unwrap() as usize;
        // The block moved to the end of the file, with only its used half there.
        let mut bytes = built.bytes.clone();
        let at = bytes.len().next_multiple_of(1 << 20);
        let data = bytes[from..from + (512 << 10)].to_vec();
        bytes.resize(at, 0);
        bytes.extend_from_slice(&data);
        let present = u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
        let idx = payload_index(last, built.layout.chunk_ratio);
        assert_eq!(idx, 8192);
        set_entry(&mut bytes, &built, idx, at as u64 | present);
        let d = crate::Disk::from_source(Box::new(bytes.clone()), &OpenOptions::default());
        let mut buf = vec![0u8; 512 << 10];
        d.unwrap()
            .view()
            .read_exact_at(&mut buf, last << 20)
            .unwrap();
        assert!(buf.iter().all(|&x| x == 7));
        bytes.truncate(bytes.len() - 512);
        let e = open(bytes).unwrap_err();
        assert_eq!(e.code(), Some("vhdx.bat.past_eof"), "{e}");
    }

    /// The overlap pass that streams the table again (when the spans do not fit the budget)
    /// finds the same overlaps the held spans do, sector bitmap blocks and a short last block
    /// included, and names one of the two entries.
    #[test]
    fn the_streamed_overlap_pass_sees_every_block() {
        // The short last block in the second chunk, at entry 8192 (see the test above).
        let size = (8191 << 20) + (512 << 10);
        let mut b = VhdxBuilder::new(Kind::Differencing, size, 1 << 20, 512);
        b.write(0, &[1; 4096]);
        b.write(8191 << 20, &[7; 4096]);
        let built = b.build();
        let cr = built.layout.chunk_ratio;
        let limits = crate::Limits::default();
        let reserved: Vec<(u64, u64, String)> = Vec::new();
        let scan = |bytes: &Vec<u8>| {
            let p = BatParams {
                region_offset: built.layout.bat_offset,
                region_length: built.layout.bat_length,
                virtual_size: size,
                block_size: 1 << 20,
                logical_sector_size: 512,
                differencing: true,
                file_len: bytes.len() as u64,
                limits: &limits,
                reserved: &reserved,
            };
            check_no_overlaps(bytes, &p, cr, required_entries(8192, cr, true), None)
        };
        assert!(scan(&built.bytes).is_ok());
        let entry = |bytes: &[u8], idx: u64| {
            let at = (built.layout.bat_offset + idx * BAT_ENTRY_SIZE) as usize;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        let sb = entry(&built.bytes, sb_index(0, cr));
        let last_idx = payload_index(8191, cr);
        let last = entry(&built.bytes, last_idx);
        // The last block (its used half) and then the bitmap block moved onto block 0.
        for (idx, onto) in [(last_idx, 0), (sb_index(0, cr), 0)] {
            let mut bytes = built.bytes.clone();
            let target = entry(&bytes, onto) & BAT_OFFSET_MASK;
            let keep = if idx == last_idx { last } else { sb } & BAT_STATE_MASK;
            set_entry(&mut bytes, &built, idx, target | keep);
            let e = scan(&bytes).unwrap_err();
            assert_eq!(e.code(), Some("vhdx.bat.overlap"), "{e}");
            let Error::Corrupt { location, .. } = &e else {
                panic!("{e:?}")
            };
            let at = |i: u64| built.layout.bat_offset + i * BAT_ENTRY_SIZE;
            assert!([at(idx), at(onto)].contains(&location.offset), "{e}");
        }
        // A short last block ends where its used part ends: a block right after that is fine.
        let mut bytes = built.bytes.clone();
        let at7 = last & BAT_OFFSET_MASK;
        let mut sb_after = at7 + (512 << 10);
        sb_after = sb_after.next_multiple_of(1 << 20);
        bytes.resize((sb_after + (1 << 20)) as usize, 0);
        set_entry(
            &mut bytes,
            &built,
            sb_index(0, cr),
            sb_after | (sb & BAT_STATE_MASK),
        );
        assert!(scan(&bytes).is_ok());
    }

    /// A table that fills its region exactly is valid: 131,041 blocks of 1 MiB need 131,072
    /// entries, 1 MiB.
    #[test]
    fn a_table_that_fills_its_region_exactly_opens() {
        let b = VhdxBuilder::new(Kind::Dynamic, 131_041 << 20, 1 << 20, 512);
        let built = b.build();
        assert_eq!(required_entries(131_041, 4096, false) * BAT_ENTRY_SIZE, MIB);
        assert_eq!(built.layout.bat_length, MIB);
        open(built.bytes).unwrap();
    }

    /// Entries a disk needs: a dynamic disk's last chunk has no bitmap slot after it; a
    /// differencing disk's chunks are all whole.
    #[test]
    fn required_entries_follow_the_spec() {
        let cases = [
            (0, 4, false, 0),
            (1, 4, false, 1),
            (3, 4, false, 3),
            (4, 4, false, 4),
            (5, 4, false, 6),
            (8, 4, false, 9),
            (9, 4, false, 11),
            (1, 4, true, 5),
            (4, 4, true, 5),
            (5, 4, true, 10),
        ];
        for (pb, cr, diff, want) in cases {
            assert_eq!(
                required_entries(pb, cr, diff),
                want,
                "{pb} blocks, cr {cr}, {diff}"
            );
        }
    }
}
