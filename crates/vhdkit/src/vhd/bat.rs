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

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::{read_struct, Source};
use crate::util::first_overlap;

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

/// Read and check the table; returns the raw entries (sector numbers or `BAT_UNALLOCATED`).
pub fn read_bat(src: &dyn Source, l: &BatLayout, limits: &Limits) -> Result<Vec<u32>> {
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
        ));
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
        ));
    }
    let n = usize::try_from(bytes).map_err(|_| {
        Error::limit(
            STRUCTURE,
            l.table_offset,
            "table bytes",
            bytes,
            limits.max_bat_bytes,
        )
    })?;
    let mut raw = vec![0u8; n];
    read_struct(src, l.table_offset, &mut raw, STRUCTURE)?;
    let entries: Vec<u32> = raw
        .chunks_exact(std::mem::size_of::<u32>())
        .map(|c| c.try_into().map_or(0, u32::from_be_bytes))
        .collect();
    check_entries(&entries, l, header_end)?;
    Ok(entries)
}

fn entry_offset(l: &BatLayout, i: usize) -> u64 {
    l.table_offset
        .saturating_add((i as u64).saturating_mul(format::BAT_ENTRY_BYTES))
}

fn check_entries(entries: &[u32], l: &BatLayout, header_end: u64) -> Result<()> {
    let span = l.bitmap_bytes.saturating_add(u64::from(l.block_size));
    let table_end = l
        .table_offset
        .saturating_add(entries.len() as u64 * format::BAT_ENTRY_BYTES);
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
    let mut blocks: Vec<(u64, u64, usize)> = Vec::new();
    for (i, &e) in entries.iter().enumerate() {
        if e == format::BAT_UNALLOCATED {
            continue;
        }
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
            ));
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
                ));
            }
        }
        blocks.push((start, end, i));
    }
    let Some(((s0, e0, i0), (s1, _, i1))) = first_overlap(&mut blocks) else {
        return Ok(());
    };
    Err(Error::corrupt(
        STRUCTURE,
        entry_offset(l, i1),
        format!(
            "entry {i1} (block at {s1:#x}) overlaps entry {i0} (block {s0:#x}..{e0:#x}); \
             blocks must not share bytes"
        ),
    ))
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
        let got = read_bat(&image(&l, &bat), &l, &Limits::default()).unwrap();
        assert_eq!(got, bat);
    }

    #[test]
    fn too_few_entries() {
        let mut l = layout(2);
        l.virtual_size = 3 * 4096 - 1;
        let e = read_bat(&image(&l, &[]), &l, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("below the 3 blocks"), "{e}");
    }

    #[test]
    fn huge_table_is_limited_or_corrupt() {
        let mut l = layout(1);
        l.entries = u32::MAX;
        l.virtual_size = 4096;
        let e = read_bat(&image(&l, &[]), &l, &Limits::default()).unwrap_err();
        assert!(matches!(e, Error::LimitExceeded { .. }), "{e}");
        let lim = Limits {
            max_bat_bytes: u64::MAX,
            ..Limits::default()
        };
        let e = read_bat(&image(&l, &[]), &l, &lim).unwrap_err();
        assert!(e.is_corruption(), "{e}");
    }

    #[test]
    fn entry_past_end() {
        let l = layout(2);
        let e = read_bat(&image(&l, &[8, 0x7f]), &l, &Limits::default()).unwrap_err();
        let loc = e.location().unwrap();
        assert_eq!(loc.offset, 0x604);
        assert_eq!(loc.structure, STRUCTURE);
        let e = read_bat(&image(&l, &[8, 0xFFFF_FFFE]), &l, &Limits::default()).unwrap_err();
        assert!(e.is_corruption());
    }

    #[test]
    fn overlapping_entries() {
        let l = layout(3);
        let e = read_bat(
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
        let e = read_bat(
            &image(&l, &[1, format::BAT_UNALLOCATED]),
            &l,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("dynamic header"), "{e}");
        let e = read_bat(
            &image(&l, &[3, format::BAT_UNALLOCATED]),
            &l,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("allocation table"), "{e}");
    }
}
