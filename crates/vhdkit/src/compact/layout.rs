//! Where the blocks of a sparse file lie and where they go: the format-neutral part of a
//! compaction. A file is a set of fixed structures (headers, tables, logs, locators, VHDX
//! sector bitmap blocks), which never move, and payload blocks of one span each. Free space is
//! every gap between them; blocks move from the top of the file into the lowest gaps that hold
//! them, so the end of the file comes down.

use crate::error::{Error, Result};

/// Most allocated blocks a compaction tracks (16 bytes each in memory). A VHD of 2 TiB in
/// 2 MiB blocks has 1 Mi blocks, a VHDX of 64 TiB in 32 MiB blocks 2 Mi: the bound is never met
/// by a disk a format allows with its usual block size.
pub(crate) const MAX_TRACKED_BLOCKS: usize = 1 << 22;

/// One allocated payload block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Alloc {
    /// Block number in the virtual disk.
    pub block: u64,
    /// File offset of the start of its span (VHD: its sector bitmap; VHDX: its data).
    pub at: u64,
    /// The raw table entry (state bits kept when the block moves).
    pub raw: u64,
}

/// What a table change does to one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// The block stops using space and reads as zeros on its own (VHDX differencing: the ZERO
    /// state; elsewhere unallocated).
    DropZero(Alloc),
    /// The block stops using space and reads through to the parent again.
    DropToParent(Alloc),
    /// A VHDX entry with no data (ZERO, UNMAPPED...) whose offset still names a range: the
    /// offset is cleared so nothing else can claim the range the block is about to receive.
    Clear(Alloc),
    /// The block's span now lies at `to`.
    Move(Alloc, u64),
}

/// The parsed map of a sparse file.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileMap {
    /// Virtual bytes per block.
    pub block_size: u64,
    /// File bytes per block (VHD: bitmap and data).
    pub span: u64,
    /// Alignment of a block's span in the file.
    pub align: u64,
    /// Alignment of the file's length after a compaction (VHDX: 1 MiB; VHD: a sector, the
    /// footer following).
    pub len_align: u64,
    /// Bytes after the last structure (VHD: the footer).
    pub tail: u64,
    /// Allocated payload blocks.
    pub blocks: Vec<Alloc>,
    /// Entries with an offset but no data (VHDX), cleared with the drops.
    pub stale: Vec<Alloc>,
    /// Spans `[start, end)` of every structure that never moves.
    pub fixed: Vec<(u64, u64)>,
    /// A table that may move down once the blocks are packed (the VHDX BAT region: offset,
    /// length), so that one a resize moved to the end does not keep the end up.
    pub table: Option<(u64, u64)>,
    /// Length of the file.
    pub file_len: u64,
}

impl FileMap {
    /// Refuse a map whose blocks overlap each other or a fixed structure: moving data in such a
    /// file could destroy what another entry reads (`check` reports the damage).
    pub(crate) fn check_disjoint(&self) -> Result<()> {
        let mut spans: Vec<(u64, u64)> = self.fixed.clone();
        if let Some((at, len)) = self.table {
            spans.push((at, end_of(at, len)?));
        }
        for b in &self.blocks {
            spans.push((b.at, end_of(b.at, self.span)?));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            if let [a, b] = w {
                if b.0 < a.1 {
                    return Err(Error::refused(format!(
                        "two structures of the file overlap at offset {:#x}; compaction moves \
                         data and refuses such a file (see `vhdkit check`)",
                        b.0
                    )));
                }
            }
        }
        Ok(())
    }
}

fn end_of(at: u64, len: u64) -> Result<u64> {
    at.checked_add(len)
        .ok_or_else(|| Error::unsupported(format!("a block at {at:#x} ends past 2^64")))
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_next_multiple_of(a.max(1))
}

/// What a compaction does to the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packed {
    /// Blocks and where they go, highest first.
    pub moves: Vec<(Alloc, u64)>,
    /// The file length afterwards.
    pub len: u64,
    /// Where the movable table goes: past the packed blocks, clear of its old place.
    pub table_to: Option<u64>,
}

/// Pack `kept` blocks (the ones that stay allocated) into the lowest gaps of the file, highest
/// block first. A movable table that then lies above everything, with room for it below its
/// old place, comes down after them; otherwise it stays, as a fixed structure.
pub(crate) fn pack(map: &FileMap, kept: &[Alloc]) -> Result<Packed> {
    if let Some((start, len)) = map.table {
        let span = (start, end_of(start, len)?);
        let (moves, end) = pack_blocks(map, kept, Some(span), false)?;
        let to = align_up(end, map.align).filter(|&at| start >= end && at + len <= start);
        if let Some(at) = to {
            let len = finish(map, at + len)?;
            return Ok(Packed {
                moves,
                len,
                table_to: Some(at),
            });
        }
        let (moves, end) = pack_blocks(map, kept, Some(span), true)?;
        let len = finish(map, end)?;
        return Ok(Packed {
            moves,
            len,
            table_to: None,
        });
    }
    let (moves, end) = pack_blocks(map, kept, None, false)?;
    let len = finish(map, end)?;
    Ok(Packed {
        moves,
        len,
        table_to: None,
    })
}

/// The moves of the blocks, and the end of what then lies highest (the table not counted
/// unless `table_fixed`). Blocks below the last structure that stays do not move: that would
/// write data without bringing the end down.
fn pack_blocks(
    map: &FileMap,
    kept: &[Alloc],
    table: Option<(u64, u64)>,
    table_fixed: bool,
) -> Result<(Vec<(Alloc, u64)>, u64)> {
    let mut occupied: Vec<(u64, u64)> = map.fixed.clone();
    occupied.extend(table);
    for b in kept {
        occupied.push((b.at, end_of(b.at, map.span)?));
    }
    occupied.sort_unstable();
    let mut holes = Holes::new(&occupied, map.span, map.align);
    let mut top: Vec<Alloc> = kept.to_vec();
    top.sort_unstable_by_key(|b| std::cmp::Reverse(b.at));
    let mut moves = Vec::new();
    let stays = table.filter(|_| table_fixed);
    let fixed_end = map
        .fixed
        .iter()
        .chain(&stays)
        .map(|f| f.1)
        .max()
        .unwrap_or(0);
    let mut end = fixed_end;
    for b in top {
        if end_of(b.at, map.span)? <= fixed_end {
            break;
        }
        match holes.next_below(b.at) {
            Some(to) => {
                end = end.max(end_of(to, map.span)?);
                moves.push((b, to));
            }
            None => end = end.max(end_of(b.at, map.span)?),
        }
    }
    Ok((moves, end))
}

/// The file length for content ending at `end`.
fn finish(map: &FileMap, end: u64) -> Result<u64> {
    align_up(end, map.len_align)
        .and_then(|e| e.checked_add(map.tail))
        .ok_or_else(|| Error::unsupported("file too large"))
}

/// Positions in the gaps between occupied spans, lowest first, each holding one span.
struct Holes<'a> {
    occupied: &'a [(u64, u64)],
    /// Index of the occupied span the current gap ends at.
    i: usize,
    /// Next candidate position.
    pos: u64,
    span: u64,
    align: u64,
}

impl<'a> Holes<'a> {
    fn new(occupied: &'a [(u64, u64)], span: u64, align: u64) -> Self {
        Holes {
            occupied,
            i: 0,
            pos: 0,
            span,
            align,
        }
    }

    /// The next free position whose span ends at or before `limit` (the block that would move
    /// there starts at `limit`, so the move brings it down); `None` when there is none.
    fn next_below(&mut self, limit: u64) -> Option<u64> {
        loop {
            let at = align_up(self.pos, self.align)?;
            let end = at.checked_add(self.span)?;
            if end > limit {
                return None;
            }
            // The gap ends where the next occupied span starts.
            match self.occupied.get(self.i) {
                Some(&(s, e)) if end > s => {
                    self.pos = self.pos.max(e);
                    self.i += 1;
                }
                _ => {
                    self.pos = end;
                    return Some(at);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(span: u64, fixed: Vec<(u64, u64)>, blocks: &[u64]) -> FileMap {
        FileMap {
            block_size: span,
            span,
            align: 1,
            len_align: 1,
            tail: 0,
            blocks: blocks
                .iter()
                .enumerate()
                .map(|(i, &at)| Alloc {
                    block: i as u64,
                    at,
                    raw: 0,
                })
                .collect(),
            stale: Vec::new(),
            fixed,
            table: None,
            file_len: 0,
        }
    }

    #[test]
    fn the_highest_blocks_fill_the_lowest_gaps() {
        // Header 0..10, blocks at 10, 30, 50, 70 of span 10; the one at 30 is dropped.
        let m = map(10, vec![(0, 10)], &[10, 30, 50, 70]);
        let kept: Vec<Alloc> = m.blocks.iter().copied().filter(|b| b.at != 30).collect();
        let Packed { moves, len, .. } = pack(&m, &kept).unwrap();
        let to: Vec<(u64, u64)> = moves.iter().map(|(b, t)| (b.at, *t)).collect();
        // 70 -> 20 (gap 20..30 free from the start), 50 -> 30; then no gap below 10.
        assert_eq!(to, vec![(70, 20), (50, 30)]);
        assert_eq!(len, 40);
    }

    #[test]
    fn alignment_and_fixed_structures_are_respected() {
        // A locator at 25..27 splits the gap 20..60: the aligned place after it is 30..40.
        let mut m = map(10, vec![(0, 10), (25, 27)], &[10, 60]);
        m.align = 10;
        m.len_align = 8;
        m.tail = 3;
        let Packed { moves, len, .. } = pack(&m, &m.blocks.clone()).unwrap();
        let to: Vec<(u64, u64)> = moves.iter().map(|(b, t)| (b.at, *t)).collect();
        assert_eq!(to, vec![(60, 30)]);
        assert_eq!(len, 40 + 3);
    }

    #[test]
    fn nothing_moves_up_and_a_packed_file_keeps_its_end() {
        let m = map(10, vec![(0, 10)], &[10, 20, 30]);
        let Packed { moves, len, .. } = pack(&m, &m.blocks.clone()).unwrap();
        assert!(moves.is_empty());
        assert_eq!(len, 40);
        // A fixed structure past the blocks (a relocated locator) keeps the end up.
        let m = map(10, vec![(0, 10), (90, 95)], &[10]);
        assert_eq!(pack(&m, &m.blocks.clone()).unwrap().len, 95);
    }

    #[test]
    fn blocks_below_the_last_fixed_structure_stay() {
        // A table at 60..70 ends the file: the gap at 10 would take the block at 40 without
        // bringing the end down; the block at 70 above the table moves.
        let m = map(10, vec![(0, 10), (60, 70)], &[40, 70]);
        let Packed { moves, len, .. } = pack(&m, &m.blocks.clone()).unwrap();
        let to: Vec<(u64, u64)> = moves.iter().map(|(b, t)| (b.at, *t)).collect();
        assert_eq!(to, vec![(70, 10)]);
        assert_eq!(len, 70);
    }

    #[test]
    fn a_table_at_the_end_comes_down_after_the_blocks() {
        // Blocks at 10, 30 (dropped), 50; a table at 70..90: 50 -> 20, the table to 30.
        let mut m = map(10, vec![(0, 10)], &[10, 30, 50]);
        m.table = Some((70, 20));
        let kept: Vec<Alloc> = m.blocks.iter().copied().filter(|b| b.at != 30).collect();
        let p = pack(&m, &kept).unwrap();
        let to: Vec<(u64, u64)> = p.moves.iter().map(|(b, t)| (b.at, *t)).collect();
        assert_eq!(to, vec![(50, 20)]);
        assert_eq!((p.table_to, p.len), (Some(30), 50));
        // No room below it (its new place would overlap the old one): it stays, fixed, and
        // only what lies above it moves.
        let mut m = map(10, vec![(0, 10)], &[10, 20, 50]);
        m.table = Some((30, 20));
        let p = pack(&m, &m.blocks.clone()).unwrap();
        assert_eq!(p.table_to, None);
        assert!(p.moves.is_empty(), "{p:?}");
        assert_eq!(p.len, 60);
        // Blocks above a table that cannot come down still move into gaps below it.
        let mut m = map(10, vec![(0, 10)], &[10, 60, 70]);
        m.table = Some((20, 30));
        let p = pack(&m, &m.blocks.clone()).unwrap();
        assert_eq!(p.table_to, None);
        let to: Vec<(u64, u64)> = p.moves.iter().map(|(b, t)| (b.at, *t)).collect();
        assert_eq!(to, vec![(70, 50)]);
        assert_eq!(p.len, 70);
    }

    #[test]
    fn overlapping_structures_are_refused() {
        assert!(map(10, vec![(0, 15)], &[10]).check_disjoint().is_err());
        assert!(map(10, vec![(0, 10)], &[10, 19]).check_disjoint().is_err());
        assert!(map(10, vec![(0, 10)], &[10, 20]).check_disjoint().is_ok());
    }
}
