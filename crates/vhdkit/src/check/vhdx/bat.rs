//! The BAT of a VHDX file: its size against the disk's geometry, every entry's state and
//! offset, overlaps between blocks and with metadata, and the sector bitmaps that partially
//! present blocks need.

use std::ops::Range;

use super::metadata::Params;
use crate::check::{Bytes, Findings, MAX_PER_CODE};
use crate::disjoint::{each_overlap, Span, Visit, DEFAULT_BUDGET};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::util::overlaps;
use crate::vhdx::bat::Pieces;
use crate::vhdx::format::{
    self, BAT_ENTRY_SIZE, BAT_OFFSET_MASK, BAT_RESERVED_MASK, BAT_STATE_MASK, MIB,
    SECTOR_BITMAP_BLOCK_SIZE,
};

const BAT: &str = "vhdx bat";

/// Entries read at a time: the table is never held whole.
const PER_READ: u64 = crate::table::SCAN_BYTES / BAT_ENTRY_SIZE;

/// The walk over the BAT entries, and what it gathers for the checks across entries.
struct Walk<'a> {
    b: &'a Bytes<'a>,
    p: &'a Params,
    /// Where the table starts.
    boff: u64,
    /// Payload blocks per chunk (then one sector bitmap entry).
    chunk_ratio: u64,
    /// What blocks may not overlap.
    busy: &'a [(Range<u64>, &'static str)],
    /// Present blocks (start, end, entry index) while they fit the overlap budget; `None`
    /// once they do not, and the overlap check streams the table again.
    present: Option<Vec<Span>>,
    /// The chunk being walked, when one of its blocks is partially present and no present
    /// sector bitmap entry was seen for it yet.
    sb_needed: Option<u64>,
    /// The first chunks found without the sector bitmap block they need (as many as are
    /// listed), and how many there are in all.
    sb_missing: Vec<u64>,
    sb_missing_count: u64,
}

/// Check the BAT region `bat` against the geometry in `p`; blocks may not overlap `busy`.
pub(super) fn check(
    b: &Bytes,
    limits: &Limits,
    s: &mut Findings,
    bat: Range<u64>,
    p: &Params,
    busy: &[(Range<u64>, &'static str)],
) {
    let (boff, blen) = (bat.start, bat.end - bat.start);
    let chunk_ratio = (format::SECTORS_PER_CHUNK * p.logical_sector_size) / p.block_size;
    if chunk_ratio == 0 {
        return;
    }
    let Some(count) = table_entries(s, limits, boff, blen, p, chunk_ratio) else {
        return;
    };
    let entry = BAT_ENTRY_SIZE;
    if boff
        .checked_add(count * entry)
        .is_none_or(|end| end > b.len)
    {
        return;
    }
    let mut w = Walk {
        b,
        p,
        boff,
        chunk_ratio,
        busy,
        present: Some(Vec::new()),
        sb_needed: None,
        sb_missing: Vec::new(),
        sb_missing_count: 0,
    };
    // Cut at the sector bitmap entries, so runs of blockless payload entries (all of a sparse
    // disk's table but the blocks in use) are passed over a run at a time.
    let mut pieces = Pieces::new(chunk_ratio);
    let walked = walk_raw(b, boff, count, &mut |first, raw| {
        pieces.cut(first, raw, &mut |piece| {
            if piece.sb || !all_blockless_payload(piece.raw) {
                for (i, e) in piece.entries() {
                    if !blockless(piece.sb, e) {
                        w.entry(s, i, e);
                    }
                }
            }
            Ok(())
        })
    });
    if walked.is_err() {
        return;
    }
    w.chunk_done(u64::MAX);
    w.report_overlaps(s, count);
    w.report_missing_bitmaps(s);
}

/// Whether entry `e` (a sector bitmap entry when `is_sb`) has no offset, no reserved bits and
/// a state that places no block: nothing to check or report, and skipping it changes no
/// finding (`Walk::chunk_done` sees the next entry's chunk).
fn blockless(is_sb: bool, e: u64) -> bool {
    if is_sb {
        e == u64::from(format::SB_BLOCK_NOT_PRESENT)
    } else {
        e <= u64::from(format::PAYLOAD_BLOCK_UNMAPPED)
    }
}

/// Whether every payload entry of `raw` is blockless: with no offset and no reserved bits, the
/// states that place no block are 0 to 3 (not present, undefined, zero, unmapped), so the OR of
/// the entries is at most 3 exactly when each is. No early exit: it compiles to vector code.
fn all_blockless_payload(raw: &[u8]) -> bool {
    let or = raw
        .chunks_exact(BAT_ENTRY_SIZE as usize)
        .fold(0u64, |acc, c| {
            acc | c.try_into().map_or(u64::MAX, u64::from_le_bytes)
        });
    or <= u64::from(format::PAYLOAD_BLOCK_UNMAPPED)
}

/// Call `f(index, entry)` for every non-zero entry of the `count` at `boff`; an error when part
/// of the table cannot be read.
fn walk_entries<F>(b: &Bytes, boff: u64, count: u64, f: &mut F) -> Result<()>
where
    F: FnMut(u64, u64) -> Result<()> + ?Sized,
{
    walk_raw(b, boff, count, &mut |first, raw| {
        for (i, c) in (first..).zip(raw.chunks_exact(BAT_ENTRY_SIZE as usize)) {
            let e = c.try_into().map_or(0, u64::from_le_bytes);
            if e != 0 {
                f(i, e)?;
            }
        }
        Ok(())
    })
}

/// Call `f(first index, entries as stored)` for the `count` entries at `boff`, `PER_READ` at
/// a time; an error when part of the table cannot be read.
fn walk_raw<F>(b: &Bytes, boff: u64, count: u64, f: &mut F) -> Result<()>
where
    F: FnMut(u64, &[u8]) -> Result<()> + ?Sized,
{
    let entry = BAT_ENTRY_SIZE;
    let mut first = 0u64;
    while first < count {
        let n = (count - first).min(PER_READ);
        let raw = usize::try_from(n * entry)
            .ok()
            .and_then(|k| b.get(boff + first * entry, k))
            .ok_or_else(|| Error::corrupt(BAT, boff + first * entry, "unreadable"))?;
        f(first, &raw)?;
        first += n;
    }
    Ok(())
}

/// The block entry `i` (value `e`) places in a file of `file_len` bytes, as the walk records
/// it: a present state, past the first MiB, inside the file.
fn block_of(p: &Params, cr: u64, file_len: u64, i: u64, e: u64) -> Option<Span> {
    let state = (e & BAT_STATE_MASK) as u8;
    let len = if i % (cr + 1) == cr {
        (state == format::SB_BLOCK_PRESENT).then_some(SECTOR_BITMAP_BLOCK_SIZE)?
    } else if state == format::PAYLOAD_BLOCK_FULLY_PRESENT
        || (state == format::PAYLOAD_BLOCK_PARTIALLY_PRESENT && p.has_parent)
    {
        p.block_size
    } else {
        return None;
    };
    let start = e & BAT_OFFSET_MASK;
    let end = start.saturating_add(len);
    (start >= MIB && end <= file_len).then_some(Span { start, end, id: i })
}

/// The entries the disk needs against the region and the memory limit: how many to walk, or
/// `None` when the table is too large to check.
fn table_entries(
    s: &mut Findings,
    limits: &Limits,
    boff: u64,
    blen: u64,
    p: &Params,
    chunk_ratio: u64,
) -> Option<u64> {
    let cr = chunk_ratio;
    let payload_blocks = p.virtual_size.div_ceil(p.block_size);
    let need = if p.has_parent {
        payload_blocks.div_ceil(cr) * (cr + 1)
    } else {
        payload_blocks + payload_blocks.saturating_sub(1) / cr
    };
    let entry = BAT_ENTRY_SIZE;
    let need_bytes = need.saturating_mul(entry);
    if need_bytes > blen {
        s.add(
            "vhdx.bat.too_small",
            BAT,
            Some(boff),
            format!("the BAT region has {blen} bytes but {need} entries ({need_bytes} bytes) are needed"),
        );
    }
    if need_bytes > limits.max_bat_bytes {
        s.add(
            "vhdx.bat.too_large",
            BAT,
            Some(boff),
            format!(
                "{need_bytes} bytes of BAT is above the {}-byte limit; entries not checked",
                limits.max_bat_bytes
            ),
        );
        return None;
    }
    Some(need.min(blen / entry))
}

impl Walk<'_> {
    /// Entry `i` (non-zero value `e`).
    fn entry(&mut self, s: &mut Findings, i: u64, e: u64) {
        self.chunk_done(i / (self.chunk_ratio + 1));
        let at = self.boff + BAT_ENTRY_SIZE * i;
        let off = e & BAT_OFFSET_MASK;
        if e & BAT_RESERVED_MASK != 0 {
            s.add_with("vhdx.bat.reserved_bits", BAT, Some(at), || {
                format!("entry {i} ({e:#018x}) has reserved bits set")
            });
        }
        let Some(span) = self.span(s, i, at, e, off) else {
            return;
        };
        if off < MIB {
            s.add_with("vhdx.bat.offset_invalid", BAT, Some(at), || {
                format!("entry {i} is present at file offset {off:#x}, inside the first MiB")
            });
            return;
        }
        let end = off.saturating_add(span);
        if end > self.b.len {
            s.add_with("vhdx.bat.past_eof", BAT, Some(at), || {
                format!(
                    "entry {i}: block at {off:#x}..{end:#x} ends past the end of the file ({:#x})",
                    self.b.len
                )
            });
            return;
        }
        for (r, what) in self.busy {
            if overlaps(&(off..end), r) {
                s.add_with("vhdx.bat.overlaps_metadata", BAT, Some(at), || {
                    format!("entry {i}: block at {off:#x}..{end:#x} overlaps {what}")
                });
            }
        }
        // Past the budget the spans are dropped before the vector would grow again.
        match self.present.as_mut() {
            Some(v) if v.len() < DEFAULT_BUDGET => v.push(Span {
                start: off,
                end,
                id: i,
            }),
            _ => self.present = None,
        }
    }

    /// The walk reached chunk `c`: a chunk before it that still needs its sector bitmap block
    /// has none.
    fn chunk_done(&mut self, c: u64) {
        if let Some(n) = self.sb_needed.filter(|&n| n < c) {
            if self.sb_missing.len() < MAX_PER_CODE {
                self.sb_missing.push(n);
            }
            self.sb_missing_count += 1;
            self.sb_needed = None;
        }
    }

    /// The bytes entry `i` (at `at`, value `e`, file offset `off`) places in the file, when
    /// its state says it has any; findings about its state.
    fn span(&mut self, s: &mut Findings, i: u64, at: u64, e: u64, off: u64) -> Option<u64> {
        let state = (e & BAT_STATE_MASK) as u8;
        let cr = self.chunk_ratio;
        if i % (cr + 1) == cr {
            if state != format::SB_BLOCK_NOT_PRESENT && state != format::SB_BLOCK_PRESENT {
                s.add_with("vhdx.bat.state_invalid", BAT, Some(at), || {
                    format!("sector bitmap entry {i} has state {state} (0 or 6 allowed)")
                });
                return None;
            }
            if state != format::SB_BLOCK_PRESENT {
                return None;
            }
            if self.sb_needed == Some(i / (cr + 1)) {
                self.sb_needed = None;
            }
            return Some(SECTOR_BITMAP_BLOCK_SIZE);
        }
        match state {
            format::PAYLOAD_BLOCK_NOT_PRESENT | format::PAYLOAD_BLOCK_ZERO => {
                if off != 0 {
                    s.add_with("vhdx.bat.offset_reserved", BAT, Some(at), || {
                        format!("entry {i} has state {state} but file offset {off:#x}")
                    });
                }
                None
            }
            format::PAYLOAD_BLOCK_UNDEFINED | format::PAYLOAD_BLOCK_UNMAPPED => None,
            format::PAYLOAD_BLOCK_FULLY_PRESENT => Some(self.p.block_size),
            format::PAYLOAD_BLOCK_PARTIALLY_PRESENT if self.p.has_parent => {
                self.sb_needed = Some(i / (cr + 1));
                Some(self.p.block_size)
            }
            _ => {
                s.add_with("vhdx.bat.state_invalid", BAT, Some(at), || {
                    format!(
                        "payload entry {i} has state {state}{}",
                        if state == format::PAYLOAD_BLOCK_PARTIALLY_PRESENT {
                            " (partially present) on a disk without a parent"
                        } else {
                            " (reserved)"
                        }
                    )
                });
                None
            }
        }
    }

    /// Present blocks that overlap one before them in file order.
    fn report_overlaps(&mut self, s: &mut Findings, count: u64) {
        let boff = self.boff;
        let mut report = |c: Span, b: Span| {
            let (i, start, mi) = (b.id, b.start, c.id);
            s.add_with(
                "vhdx.bat.overlap",
                BAT,
                Some(boff + BAT_ENTRY_SIZE * i),
                || format!("entry {i} (at {start:#x}) overlaps entry {mi}"),
            );
        };
        // Reading the table again fails only if the file changed under the check: then the
        // overlaps found so far are all that is reported.
        let _ = match self.present.take() {
            Some(v) => each_overlap(
                &mut |visit: &mut Visit<'_>| v.iter().try_for_each(|sp| visit(*sp)),
                DEFAULT_BUDGET,
                &mut report,
            ),
            None => {
                let (b, p, cr) = (self.b, self.p, self.chunk_ratio);
                each_overlap(
                    &mut |visit: &mut Visit<'_>| {
                        walk_entries(b, boff, count, &mut |i, e| {
                            block_of(p, cr, b.len, i, e).map_or(Ok(()), &mut *visit)
                        })
                    },
                    DEFAULT_BUDGET,
                    &mut report,
                )
            }
        };
    }

    /// Chunks with partially present blocks but no sector bitmap block.
    fn report_missing_bitmaps(&mut self, s: &mut Findings) {
        let cr = self.chunk_ratio;
        for c in &self.sb_missing {
            s.add_with(
                "vhdx.bat.bitmap_missing",
                BAT,
                Some(self.boff + BAT_ENTRY_SIZE * (c * (cr + 1) + cr)),
                || format!("chunk {c} has partially present blocks but no sector bitmap block"),
            );
        }
        // Past the listed ones only the count is reported: no need to remember which.
        let listed = self.sb_missing.len() as u64;
        for _ in listed..self.sb_missing_count {
            s.add_with("vhdx.bat.bitmap_missing", BAT, None, || {
                "a chunk has partially present blocks but no sector bitmap block".into()
            });
        }
    }
}
