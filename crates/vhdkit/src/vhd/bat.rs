//! The Block Allocation Table (FORMAT.md A.8): size checks before allocating, then per-entry
//! placement checks.
//!
//! Rules enforced, each an `Error::corrupt("vhd block allocation table", ...)` at the offset of
//! the table or of the bad entry:
//! - `max table entries` >= ceil(current size / block size);
//! - the table lies between the dynamic header and the end footer; its size is within
//!   `Limits::max_bat_bytes` (`Error::LimitExceeded`);
//! - every allocated block (bitmap + data) lies inside the file before the end footer, does not
//!   overlap the front footer copy, the dynamic header or the table, and does not overlap another
//!   block.
//!
//! The table is streamed, never held: one pass checks each entry, then the blocks are checked
//! for overlaps in passes of bounded memory, and readers read entries on demand afterwards.

use crate::disjoint::{find_overlap, Span, Visit, DEFAULT_BUDGET};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::{read_struct, Source};

use super::format;

const STRUCTURE: &str = "vhd block allocation table";

/// Geometry of the BAT and its blocks.
#[derive(Debug, Clone, Copy)]
pub struct BatLayout {
    /// Absolute offset of the table.
    pub table_offset: u64,
    /// Number of entries.
    pub entries: u32,
    /// Data bytes per block.
    pub block_size: u32,
    /// Bitmap bytes in front of each block.
    pub bitmap_bytes: u64,
    /// Virtual size the table must cover.
    pub virtual_size: u64,
    /// Offset of the end footer: nothing may reach into it.
    pub data_end: u64,
    /// Absolute offset of the dynamic header (1024 bytes).
    pub header_offset: u64,
}

/// Check the table, streaming it through a bounded buffer (it is never held whole); returns
/// the number of allocated blocks. Readers then read entries on demand.
pub fn check_bat(src: &dyn Source, l: &BatLayout, limits: &Limits) -> Result<u64> {
    let bs = u64::from(l.block_size);
    let needed = l.virtual_size.div_ceil(bs);
    let table_at_entries = l
        .header_offset
        .saturating_add(format::dynamic_header_fields::MAX_TABLE_ENTRIES);
    if u64::from(l.entries) < needed {
        return Err(Error::corrupt(
            "vhd dynamic header",
            table_at_entries,
            format!(
                "max table entries {} is below the {needed} blocks needed for a current size of \
                 {} bytes with {bs}-byte blocks",
                l.entries, l.virtual_size
            ),
        )
        .with_code("vhd.bat.too_small"));
    }
    let bytes = u64::from(l.entries) * format::BAT_ENTRY_BYTES;
    limits.check_bat_bytes(
        STRUCTURE,
        l.table_offset,
        "block allocation table size in bytes",
        bytes,
    )?;
    let end = l.table_offset.checked_add(bytes);
    let header_end = l
        .header_offset
        .saturating_add(format::DYNAMIC_HEADER_BYTES as u64);
    let overlaps_header = l.table_offset < header_end && end.is_none_or(|e| e > l.header_offset);
    if end.is_none_or(|e| e > l.data_end)
        || l.table_offset < format::FOOTER_BYTES as u64
        || overlaps_header
    {
        return Err(Error::corrupt(
            STRUCTURE,
            l.table_offset,
            format!(
                "table of {} entries ({bytes} bytes) at {:#x} does not fit between the front \
                 footer copy (ends 0x200) and the end footer ({:#x}) without overlapping the \
                 dynamic header ({:#x}..{header_end:#x})",
                l.entries, l.table_offset, l.data_end, l.header_offset
            ),
        )
        .with_code(if end.is_none_or(|e| e > l.data_end) {
            "vhd.bat.past_eof"
        } else {
            "vhd.bat.overlaps_metadata"
        }));
    }
    let (allocated, held) = check_entries(src, l, header_end, DEFAULT_BUDGET)?;
    match held {
        Some(blocks) => overlap_error(l, first_overlap(blocks))?,
        None => check_disjoint(src, l, DEFAULT_BUDGET)?,
    }
    Ok(allocated)
}

fn entry_offset(l: &BatLayout, i: u64) -> u64 {
    l.table_offset
        .saturating_add(i.saturating_mul(format::BAT_ENTRY_BYTES))
}

/// Bitmap + data bytes of one block.
fn block_span(l: &BatLayout) -> u64 {
    l.bitmap_bytes.saturating_add(u64::from(l.block_size))
}

/// Entries read at a time by [`scan_allocated`].
const SCAN_ENTRIES: u64 = crate::table::SCAN_BYTES / format::BAT_ENTRY_BYTES;
/// Entries compared at once when skipping unallocated runs.
const SKIP_GROUP: usize = 16;

/// Whether every byte of `group` (whole entries) is 0xff, i.e. every entry unallocated. An AND
/// over the whole group, without an early exit, compiles to a few vector instructions: much
/// cheaper than a `memcmp` call per group on a table that is mostly empty.
pub(crate) fn all_unallocated(group: &[u8]) -> bool {
    group.iter().fold(u8::MAX, |a, &b| a & b) == u8::MAX
}

/// Entries passed over at once when a whole stretch is unallocated (4 KiB of table).
const SKIP_PAGE: usize = 1024;

/// Call `f(index, sector)` for every allocated entry of `raw`, the entries from index `first`
/// on, in order. Unallocated runs are passed over 1024, then 16 entries at a time, so a pass
/// over a large, mostly empty table costs little more than reading it.
pub(crate) fn each_allocated<E>(
    first: u64,
    raw: &[u8],
    f: &mut (impl FnMut(u64, u32) -> std::result::Result<(), E> + ?Sized),
) -> std::result::Result<(), E> {
    const W: usize = format::BAT_ENTRY_BYTES as usize;
    for (p, page) in (first..).step_by(SKIP_PAGE).zip(raw.chunks(SKIP_PAGE * W)) {
        if all_unallocated(page) {
            continue;
        }
        for (g, group) in (p..).step_by(SKIP_GROUP).zip(page.chunks(SKIP_GROUP * W)) {
            if all_unallocated(group) {
                continue;
            }
            for (j, c) in (g..).zip(group.chunks_exact(W)) {
                let e = c
                    .try_into()
                    .map_or(format::BAT_UNALLOCATED, u32::from_be_bytes);
                if e != format::BAT_UNALLOCATED {
                    f(j, e)?;
                }
            }
        }
    }
    Ok(())
}

/// Call `f(index, sector)` for every allocated entry of the table, in order, reading it
/// `SCAN_BYTES` at a time ([`each_allocated`] passes over unallocated runs).
pub(crate) fn scan_allocated(
    src: &dyn Source,
    offset: u64,
    count: u64,
    f: &mut dyn FnMut(u64, u32) -> Result<()>,
) -> Result<()> {
    const W: usize = format::BAT_ENTRY_BYTES as usize;
    let mut buf = Vec::new();
    let mut i = 0u64;
    while i < count {
        let n = (count - i).min(SCAN_ENTRIES);
        // At most SCAN_BYTES (SCAN_ENTRIES entries).
        buf.resize(usize::try_from(n).unwrap_or(0) * W, 0);
        read_struct(
            src,
            offset.saturating_add(i * W as u64),
            &mut buf,
            STRUCTURE,
        )?;
        each_allocated(i, &buf, f)?;
        i += n;
    }
    Ok(())
}

/// Stream the table once: every allocated block lies before the end footer and clear of the
/// fixed structures. Returns how many blocks are allocated and, when there are at most
/// `budget`, their spans (so the overlap check needs no second pass).
fn check_entries(
    src: &dyn Source,
    l: &BatLayout,
    header_end: u64,
    budget: usize,
) -> Result<(u64, Option<Vec<Span>>)> {
    let span = block_span(l);
    let table_end = entry_offset(l, u64::from(l.entries));
    // Fixed structures a block must not touch.
    let fixed: [(u64, u64, &str); 3] = [
        (
            0,
            format::FOOTER_BYTES as u64,
            "the footer copy at offset 0",
        ),
        (l.header_offset, header_end, "the dynamic header"),
        (l.table_offset, table_end, "the block allocation table"),
    ];
    let mut allocated = 0u64;
    let mut held = Some(Vec::new());
    let mut each = |i: u64, e: u32| -> Result<()> {
        let start = u64::from(e) * format::SECTOR_BYTES;
        let end = start.checked_add(span).filter(|&x| x <= l.data_end);
        let Some(end) = end else {
            return Err(Error::corrupt(
                STRUCTURE,
                entry_offset(l, i),
                format!(
                    "entry {i} = sector {e} ({start:#x}): bitmap + block ({span} bytes) runs past \
                     the end footer at {:#x}; allowed block starts are 0x200..={:#x}",
                    l.data_end,
                    l.data_end.saturating_sub(span)
                ),
            )
            .with_code("vhd.block.past_eof"));
        };
        for (fs, fe, what) in fixed {
            if start < fe && end > fs {
                return Err(Error::corrupt(
                    STRUCTURE,
                    entry_offset(l, i),
                    format!(
                        "entry {i} = sector {e}: block {start:#x}..{end:#x} overlaps {what} \
                         ({fs:#x}..{fe:#x})"
                    ),
                )
                .with_code("vhd.block.overlaps_metadata"));
            }
        }
        allocated += 1;
        // Past the budget the spans are dropped and found again in passes.
        match &mut held {
            Some(v) if v.len() < budget => v.push(Span { start, end, id: i }),
            _ => held = None,
        }
        Ok(())
    };
    scan_allocated(src, l.table_offset, u64::from(l.entries), &mut each)?;
    Ok((allocated, held))
}

/// The first pair of neighbours in file order that share bytes.
fn first_overlap(mut blocks: Vec<Span>) -> Option<(Span, Span)> {
    blocks.sort_unstable();
    blocks.windows(2).find_map(|w| match w {
        [a, b] if b.start < a.end => Some((*a, *b)),
        _ => None,
    })
}

/// No two allocated blocks share a byte, for more blocks than memory holds at once: they are
/// visited in passes over the table (`disjoint`). The blocks all have one size, so the pair
/// found is the one [`first_overlap`] finds.
fn check_disjoint(src: &dyn Source, l: &BatLayout, budget: usize) -> Result<()> {
    let span = block_span(l);
    let mut pass = |visit: &mut Visit<'_>| -> Result<()> {
        scan_allocated(src, l.table_offset, u64::from(l.entries), &mut |i, e| {
            // Checked by `check_entries`: the block ends before the end footer.
            let start = u64::from(e) * format::SECTOR_BYTES;
            visit(Span {
                start,
                end: start.saturating_add(span),
                id: i,
            })
        })
    };
    overlap_error(l, find_overlap(&mut pass, budget)?)
}

fn overlap_error(l: &BatLayout, pair: Option<(Span, Span)>) -> Result<()> {
    let Some((a, b)) = pair else {
        return Ok(());
    };
    let (s0, e0, i0, s1, i1) = (a.start, a.end, a.id, b.start, b.id);
    Err(Error::corrupt(
        STRUCTURE,
        entry_offset(l, i1),
        format!(
            "entry {i1} (block at {s1:#x}) overlaps entry {i0} (block {s0:#x}..{e0:#x}); \
             blocks must not share bytes"
        ),
    )
    .with_code("vhd.block.overlap"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(entries: u32) -> BatLayout {
        BatLayout {
            table_offset: 0x600,
            entries,
            block_size: 4096,
            bitmap_bytes: 512,
            virtual_size: u64::from(entries) * 4096,
            data_end: 0x10000,
            header_offset: 0x200,
        }
    }

    fn image(l: &BatLayout, bat: &[u32]) -> Vec<u8> {
        let mut v = vec![0u8; usize::try_from(l.data_end).unwrap() + 512];
        for (i, e) in bat.iter().enumerate() {
            let o = 0x600 + i * 4;
            v[o..o + 4].copy_from_slice(&e.to_be_bytes());
        }
        v
    }

    #[test]
    fn valid_table() {
        let l = layout(3);
        let bat = [8, format::BAT_UNALLOCATED, 0x12];
        let got = check_bat(&image(&l, &bat), &l, &Limits::default()).unwrap();
        assert_eq!(got, 2);
    }

    #[test]
    fn too_few_entries() {
        let mut l = layout(2);
        l.virtual_size = 3 * 4096 - 1;
        let e = check_bat(&image(&l, &[]), &l, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("below the 3 blocks"), "{e}");
    }

    #[test]
    fn huge_table_is_limited_or_corrupt() {
        let mut l = layout(1);
        l.entries = u32::MAX;
        l.virtual_size = 4096;
        let e = check_bat(&image(&l, &[]), &l, &Limits::default()).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
        let lim = Limits {
            max_bat_bytes: u64::MAX,
            ..Limits::default()
        };
        let e = check_bat(&image(&l, &[]), &l, &lim).unwrap_err();
        assert!(e.is_corruption(), "{e}");
    }

    /// The table's own place: from the end of the front footer copy (0x200) at the earliest,
    /// to the end footer at the latest, clear of the dynamic header; the refusal names which.
    #[test]
    fn table_placement() {
        let check = |l: &BatLayout| {
            let unallocated = vec![0xffu8; usize::try_from(l.data_end).unwrap() + 512];
            check_bat(&unallocated, l, &Limits::default()).map_err(|e| e.code())
        };
        // Ending exactly at the end footer fits; one entry more does not.
        let fits = (0x10000 - 0x600) / 4;
        assert_eq!(check(&layout(fits)), Ok(0));
        assert_eq!(check(&layout(fits + 1)), Err(Some("vhd.bat.past_eof")));
        // Right after the front footer copy, ending exactly where the header starts.
        let mut l = layout(2);
        l.table_offset = 0x200;
        l.header_offset = 0x208;
        assert_eq!(check(&l), Ok(0));
        l.header_offset = 0x204;
        assert_eq!(check(&l), Err(Some("vhd.bat.overlaps_metadata")));
        l.header_offset = 0x400;
        l.table_offset = 0x1fc;
        assert_eq!(check(&l), Err(Some("vhd.bat.overlaps_metadata")));
        // Ending exactly at the end footer but starting inside the footer copy: the refusal is
        // for the overlap, not for the end.
        let mut l = layout((0x10000 - 0x1fc) / 4);
        l.table_offset = 0x1fc;
        assert_eq!(check(&l), Err(Some("vhd.bat.overlaps_metadata")));
        // Starting inside the header (which ends at 0x600).
        let mut l = layout(2);
        l.table_offset = 0x5fc;
        assert_eq!(check(&l), Err(Some("vhd.bat.overlaps_metadata")));
    }

    /// A table of three reads' worth of entries, followed by bytes that would read as allocated
    /// entries: every allocated entry is found at its index, the table is read in chunks of at
    /// most `SCAN_BYTES`, and nothing past its end is read.
    #[test]
    fn scan_reads_the_table_in_bounded_chunks_and_no_further() {
        let per = usize::try_from(SCAN_ENTRIES).unwrap();
        let count = 2 * per + 3;
        let at = 0x200usize;
        let mut bytes = vec![0xffu8; at + count * 4];
        bytes.resize(bytes.len() + 4096, 0);
        let want: Vec<(u64, u32)> = [5, per + 1, 2 * per + 2]
            .iter()
            .map(|&i| (i as u64, 0x1000 + i as u32))
            .collect();
        for &(i, e) in &want {
            let o = at + usize::try_from(i).unwrap() * 4;
            bytes[o..o + 4].copy_from_slice(&e.to_be_bytes());
        }
        let src = crate::source::ReadLog::new(bytes);
        let mut got = vec![];
        let mut f = |i: u64, e: u32| -> Result<()> {
            got.push((i, e));
            Ok(())
        };
        scan_allocated(&src, at as u64, count as u64, &mut f).unwrap();
        assert_eq!(got, want);
        let reads = src.reads();
        let end = (at + count * 4) as u64;
        assert!(
            reads
                .iter()
                .all(|&(_, n)| n as u64 <= crate::table::SCAN_BYTES),
            "{reads:?}"
        );
        assert!(reads.iter().all(|&(o, n)| o + n as u64 <= end), "{reads:?}");
        assert_eq!(reads.iter().map(|r| r.1).sum::<usize>(), count * 4);
    }

    #[test]
    fn all_unallocated_is_true_only_for_all_ones() {
        assert!(all_unallocated(&[0xff; 64]));
        assert!(all_unallocated(&[]));
        let mut g = [0xffu8; 64];
        g[63] = 0xfe;
        assert!(!all_unallocated(&g));
    }

    /// A block may end exactly where the table starts (and start exactly where the header
    /// ends): touching is not overlapping.
    #[test]
    fn a_block_may_touch_the_header_and_the_table() {
        let mut l = layout(2);
        // Header 0x200..0x600, block 0x600..0x1800 (512 + 4096 bytes), table from 0x1800.
        l.table_offset = 0x1800;
        let mut v = vec![0xffu8; usize::try_from(l.data_end).unwrap() + 512];
        v[0x1800..0x1804].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(check_bat(&v, &l, &Limits::default()).unwrap(), 1);
        v[0x1800..0x1804].copy_from_slice(&4u32.to_be_bytes());
        let e = check_bat(&v, &l, &Limits::default()).unwrap_err();
        assert_eq!(e.code(), Some("vhd.block.overlaps_metadata"), "{e}");
    }

    #[test]
    fn entry_past_end() {
        let l = layout(2);
        let e = check_bat(&image(&l, &[8, 0x7f]), &l, &Limits::default()).unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!(loc.offset, 0x604);
        assert_eq!(loc.structure, STRUCTURE);
        let e = check_bat(&image(&l, &[8, 0xFFFF_FFFE]), &l, &Limits::default()).unwrap_err();
        assert!(e.is_corruption());
    }

    #[test]
    fn overlapping_entries() {
        let l = layout(3);
        let e = check_bat(
            &image(&l, &[8, format::BAT_UNALLOCATED, 10]),
            &l,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.location().unwrap().offset, 0x608, "{e}");
        assert!(e.to_string().contains("overlaps entry 0"), "{e}");
    }

    #[test]
    fn overlapping_metadata() {
        let l = layout(2);
        let e = check_bat(
            &image(&l, &[1, format::BAT_UNALLOCATED]),
            &l,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("dynamic header"), "{e}");
        let e = check_bat(
            &image(&l, &[3, format::BAT_UNALLOCATED]),
            &l,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("allocation table"), "{e}");
    }

    #[test]
    fn overlaps_are_found_the_same_way_in_several_passes() {
        // 60 blocks of 9 sectors (512 bitmap + 4096 data) placed 9 sectors apart from sector
        // 0x80, in reverse table order; then entry 40 moved onto entry 7's second sector.
        let mut l = layout(60);
        l.data_end = 0x100000;
        let mut bat: Vec<u32> = (0..60).map(|i| 0x80 + 9 * (59 - i)).collect();
        let src = image(&l, &bat);
        for budget in [2, 3, 7, 1000] {
            check_disjoint(&src, &l, budget).unwrap();
        }
        bat[40] = bat[7] + 1;
        let src = image(&l, &bat);
        for budget in [2, 3, 7, 1000] {
            let e = check_disjoint(&src, &l, budget).unwrap_err();
            assert_eq!(e.location().unwrap().offset, 0x600 + 40 * 4, "{e}");
            assert!(e.to_string().contains("entry 40 (block at 0x"), "{e}");
            assert!(e.to_string().contains("overlaps entry 7 "), "{e}");
        }
        // Many entries on one sector: the two lowest entries are named.
        let same: Vec<u32> = vec![0x80; 60];
        let e = check_disjoint(&image(&l, &same), &l, 4).unwrap_err();
        assert!(e.to_string().contains("entry 1 (block at 0x10000)"), "{e}");
        assert!(e.to_string().contains("overlaps entry 0 "), "{e}");
    }

    #[test]
    fn one_pass_and_several_passes_agree() {
        let mut l = layout(60);
        l.data_end = 0x100000;
        let mut bat: Vec<u32> = (0..60).map(|i| 0x80 + 9 * (59 - i)).collect();
        bat[13] = format::BAT_UNALLOCATED;
        bat[40] = bat[7] + 1;
        let src = image(&l, &bat);
        let (n, held) = check_entries(&src, &l, 0x600, 1000).unwrap();
        assert_eq!(n, 59);
        let one = overlap_error(&l, first_overlap(held.unwrap()));
        let many = check_disjoint(&src, &l, 3);
        assert_eq!(one.unwrap_err().to_string(), many.unwrap_err().to_string());
        // More blocks than the budget: nothing held.
        assert!(check_entries(&src, &l, 0x600, 10).unwrap().1.is_none());
        let mut seen = Vec::new();
        scan_allocated(&src, 0x600, 60, &mut |i, e| {
            seen.push((i, e));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 59);
        assert_eq!(seen[13], (14, bat[14]));
        assert_eq!(seen[58], (59, bat[59]));
    }

    #[test]
    fn each_allocated_finds_every_allocated_entry_whatever_the_runs() {
        // Allocated entries alone, in pairs, at page and group edges, and at the very end of a
        // table whose length is not a whole number of groups or pages.
        let n = 3 * SKIP_PAGE + 37;
        let set = [
            0,
            15,
            16,
            17,
            SKIP_PAGE - 1,
            SKIP_PAGE,
            2 * SKIP_PAGE + 5,
            n - 1,
        ];
        let mut raw = vec![0xffu8; n * 4];
        for (k, &i) in set.iter().enumerate() {
            // Sector 0x0000_00ff..: bytes that are 0xff except one, which a whole-group test
            // must not mistake for unallocated.
            let v = 0xffff_ff00u32 | k as u32;
            raw[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
        }
        let mut seen = Vec::new();
        let walked = each_allocated(100, &raw, &mut |i, e| {
            seen.push((i, e));
            Ok::<(), ()>(())
        });
        assert!(walked.is_ok());
        let want: Vec<(u64, u32)> = set
            .iter()
            .enumerate()
            .map(|(k, &i)| (100 + i as u64, 0xffff_ff00 | k as u32))
            .collect();
        assert_eq!(seen, want);
        // An error from `f` stops the walk.
        let mut calls = 0;
        let r = each_allocated(0, &raw, &mut |_, _| {
            calls += 1;
            if calls == 3 {
                Err("stop")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, calls), (Err("stop"), 3));
    }
}
