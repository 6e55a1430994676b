//! Rewriting a differencing VHD's parent linkage: locators, parent name, (optionally) parent
//! unique id and time stamp. Produces a [`crate::txn::Plan`]; writes nothing.
//!
//! What changes (FORMAT.md A.6, A.7, "Rewriting VHD metadata"):
//! - `W2ru` / `W2ku` get the new paths (UTF-16 little-endian). A locator keeps its slot and its
//!   reserved data space when the new path fits there (Windows reserves 4096 and 65536 bytes);
//!   otherwise its data goes to the end of the file: at the old end footer's offset (rounded up
//!   to 512), a space of the data length rounded up to 512, and the end footer after it. The
//!   old data is left where it was (no entry points at it any more). Data blocks, the BAT and
//!   the bitmaps are never written.
//! - Every other locator (`Wi2r`, `Wi2k`, `MacX`, `Mac `, unknown codes, duplicates, and the
//!   `W2ru`/`W2ku` not wanted in this mode) is cleared: entry zeroed, its data zeroed, so no
//!   locator still points at the old parent.
//! - The parent unicode name (UTF-16 big-endian, 512 bytes).
//! - Parent unique id and time stamp only when the caller rewrites the linkage.
//! - The dynamic header checksum. Footer content never changes (the child's unique id stays);
//!   the end footer moves when data is relocated, and a damaged or differing copy is rewritten
//!   from the copy in use.
//!
//! Writes are ordered as FORMAT.md recommends (new locator data, then the header, then the front
//! and the end footer); the `txn` journal makes the whole plan atomic anyway.
//!
//! Every space written is checked against the structures it must not touch (footer copies,
//! dynamic header, BAT, every allocated block), and the finished plan is simulated in memory
//! and re-opened before it is returned.

use std::ops::Range;

use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len, OverlaySource, Source};
use crate::txn::{FieldChange, Plan, WriteOp};

use super::format::{self, ParentLocatorEntry};
use super::locator::{code_text, data_space_bytes};
use super::VhdFile;

const SECTOR: u64 = format::SECTOR_BYTES;
/// Longest Windows path (UTF-16 code units).
pub const MAX_PATH_UNITS: usize = 32_767;
/// Longest parent unicode name (UTF-16 code units).
pub const MAX_PARENT_NAME_UNITS: usize = format::PARENT_NAME_BYTES / 2;

/// What the new linkage should say.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `W2ru` value; `None` clears every `W2ru`.
    pub relative: Option<String>,
    /// `W2ku` value; `None` clears every `W2ku`.
    pub absolute: Option<String>,
    /// The parent unicode name (at most 256 UTF-16 code units).
    pub parent_name: String,
    /// New parent unique id (raw bytes) and parent time stamp, when the linkage is rewritten.
    pub linkage: Option<([u8; 16], u32)>,
}

/// The plan and what the caller should tell the user.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The writes.
    pub plan: Plan,
    /// Facts worth showing (relocations).
    pub notes: Vec<String>,
    /// Problems that did not stop the plan.
    pub warnings: Vec<String>,
}

use crate::util::{overlaps, round_up, utf16le};

fn hexu32(v: u32) -> String {
    format!("{v:#010x}")
}

fn describe_entry(e: &ParentLocatorEntry, path: Option<&str>) -> String {
    if e.platform_code == [0; 4] {
        return "(empty)".to_string();
    }
    format!(
        "{} {} (data {} bytes at {:#x}, space {})",
        code_text(e.platform_code),
        path.map_or_else(|| "(undecodable)".to_string(), |p| format!("\"{p}\"")),
        e.platform_data_length,
        e.platform_data_offset,
        e.platform_data_space
    )
}

fn entry_bytes(e: &ParentLocatorEntry) -> [u8; format::LOCATOR_ENTRY_BYTES] {
    let mut b = [0u8; format::LOCATOR_ENTRY_BYTES];
    b[0..4].copy_from_slice(&e.platform_code);
    b[4..8].copy_from_slice(&e.platform_data_space.to_be_bytes());
    b[8..12].copy_from_slice(&e.platform_data_length.to_be_bytes());
    b[12..16].copy_from_slice(&e.reserved.to_be_bytes());
    b[16..24].copy_from_slice(&e.platform_data_offset.to_be_bytes());
    b
}

/// Read `len` bytes at `offset`; bytes past `file_len` are zeros.
fn read_padded(src: &dyn Source, offset: u64, len: u64, file_len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("a write of {len} bytes is too large")))?;
    let mut buf = vec![0u8; n];
    if offset < file_len {
        let avail = usize::try_from((file_len - offset).min(len)).unwrap_or(n);
        if let Some(dst) = buf.get_mut(..avail) {
            read_struct(src, offset, dst, "vhd file")?;
        }
    }
    Ok(buf)
}

/// Plan the rewrite of the differencing VHD that `open` yields. `open` is called twice: once to
/// read the file as it is, once to re-open the simulated result.
pub fn plan(
    open: &dyn Fn() -> Result<Box<dyn Source>>,
    opts: &OpenOptions,
    t: &Targets,
) -> Result<Planned> {
    let file = VhdFile::open(open()?, opts)?;
    let Some(hdr) = file.header.as_ref() else {
        return Err(Error::refused(
            "not a differencing disk (no dynamic header)",
        ));
    };
    if file.disk_type != crate::DiskType::Differencing {
        return Err(Error::refused(format!(
            "not a differencing disk (footer disk type {})",
            file.footer.raw.disk_type
        )));
    }
    let src: &dyn Source = &*file.src;
    let file_len = source_len(src)?;
    let end_footer = file.footer.end_offset;
    let hdr_off = hdr.offset;
    let mut notes = Vec::new();
    let mut warnings = Vec::new();

    // Structures no locator write may touch.
    let mut protected: Vec<(Range<u64>, String)> = vec![
        (
            0..format::FOOTER_BYTES as u64,
            "the footer copy at offset 0".into(),
        ),
        (
            hdr_off..hdr_off + format::DYNAMIC_HEADER_BYTES as u64,
            "the dynamic header".into(),
        ),
    ];
    let bat_bytes = round_up(u64::from(hdr.raw.max_table_entries) * 4, SECTOR).unwrap_or(u64::MAX);
    protected.push((
        hdr.raw.table_offset..hdr.raw.table_offset.saturating_add(bat_bytes),
        "the block allocation table".into(),
    ));
    let block_bytes = file.bitmap_bytes + u64::from(hdr.raw.block_size);
    for (i, &e) in file.bat.iter().enumerate() {
        if e != format::BAT_UNALLOCATED {
            let at = u64::from(e) * SECTOR;
            protected.push((
                at..at.saturating_add(block_bytes),
                format!("data block {i}"),
            ));
        }
    }
    let usable = |r: &Range<u64>| -> std::result::Result<(), String> {
        if r.start < format::FOOTER_BYTES as u64 || r.end > end_footer || r.start > r.end {
            return Err(format!(
                "{:#x}..{:#x} is outside the area between the front footer and the end footer",
                r.start, r.end
            ));
        }
        match protected.iter().find(|(p, _)| overlaps(p, r)) {
            Some((_, what)) => Err(format!("{:#x}..{:#x} overlaps {what}", r.start, r.end)),
            None => Ok(()),
        }
    };

    let old_entries = hdr.raw.parent_locators;
    let path_of = |i: usize| -> Option<String> {
        file.slots
            .iter()
            .find(|s| s.index == i)
            .and_then(|s| s.path.clone())
    };
    let mut entries = old_entries;
    let mut writes: Vec<WriteOp> = Vec::new();
    let mut claimed: Vec<Range<u64>> = Vec::new();
    let mut tail = round_up(end_footer, SECTOR)
        .ok_or_else(|| Error::corrupt("vhd footer", end_footer, "end footer offset overflows"))?;
    let first_tail = tail;

    // Which slot keeps which code.
    let wanted: [(&[u8; 4], Option<&String>); 2] = [
        (&format::PLATFORM_W2KU, t.absolute.as_ref()),
        (&format::PLATFORM_W2RU, t.relative.as_ref()),
    ];
    let mut keep: [Option<usize>; 2] = [None, None];
    for (k, (code, value)) in wanted.iter().enumerate() {
        if value.is_some() {
            keep[k] = old_entries.iter().position(|e| &e.platform_code == *code);
        }
    }
    // Clear every other non-empty slot.
    let mut cleared: Vec<usize> = Vec::new();
    for (i, e) in old_entries.iter().enumerate() {
        if e.platform_code != [0; 4] && !keep.contains(&Some(i)) {
            entries[i] = ParentLocatorEntry::default();
            cleared.push(i);
        }
    }
    // New data for the kept (or new) W2ku / W2ru.
    let mut relocated = Vec::new();
    for (k, (code, value)) in wanted.iter().enumerate() {
        let Some(value) = value else { continue };
        let data = utf16le(value);
        if data.len() / 2 > MAX_PATH_UNITS {
            return Err(Error::refused(format!(
                "the new {} path is {} UTF-16 code units, longer than Windows allows ({MAX_PATH_UNITS})",
                code_text(**code),
                data.len() / 2
            )));
        }
        if data.len() > opts.limits.max_locator_bytes as usize {
            return Err(Error::refused(format!(
                "the new {} path is {} bytes, above Limits::max_locator_bytes ({})",
                code_text(**code),
                data.len(),
                opts.limits.max_locator_bytes
            )));
        }
        let len = data.len() as u64;
        let slot = match keep[k] {
            Some(i) => i,
            None => {
                // A new slot: the first empty one after clearing.
                let Some(i) = (0..format::LOCATOR_ENTRIES)
                    .find(|&i| entries[i].platform_code == [0; 4] && !keep.contains(&Some(i)))
                else {
                    return Err(Error::refused(
                        "no free parent locator slot for the new path".to_string(),
                    ));
                };
                keep[k] = Some(i);
                i
            }
        };
        let old = old_entries[slot];
        let in_place = if old.platform_code == **code {
            let space = data_space_bytes(old.platform_data_space);
            match space {
                Some(sp) if len <= sp => {
                    let r = old.platform_data_offset..old.platform_data_offset.saturating_add(sp);
                    match usable(&r) {
                        Ok(()) if !claimed.iter().any(|c| overlaps(c, &r)) => Some(sp),
                        Ok(()) => {
                            warnings.push(format!(
                                "locator {slot} ({}) shares its data space with another locator; \
                                 its new data goes to the end of the file",
                                code_text(**code)
                            ));
                            None
                        }
                        Err(why) => {
                            warnings.push(format!(
                                "locator {slot} ({}) data space {why}; its new data goes to the \
                                 end of the file",
                                code_text(**code)
                            ));
                            None
                        }
                    }
                }
                _ => None,
            }
        } else {
            None
        };
        let mut e = ParentLocatorEntry {
            platform_code: **code,
            platform_data_space: old.platform_data_space,
            platform_data_length: u32::try_from(len).unwrap_or(u32::MAX),
            reserved: 0,
            platform_data_offset: old.platform_data_offset,
        };
        match in_place {
            Some(sp) => {
                let off = old.platform_data_offset;
                // Overwrite the old data completely: new bytes, then zeros up to the old length.
                let n = len.max(u64::from(old.platform_data_length).min(sp));
                let mut buf = data.clone();
                buf.resize(usize::try_from(n).unwrap_or(data.len()), 0);
                let old_bytes = read_padded(src, off, n, file_len)?;
                claimed.push(off..off + sp);
                if old_bytes != buf {
                    writes.push(WriteOp {
                        offset: off,
                        data: buf,
                        old: old_bytes,
                        what: format!(
                            "parent locator {slot} ({}) data, in its reserved space",
                            code_text(**code)
                        ),
                    });
                }
            }
            None => {
                let space = round_up(len.max(1), SECTOR).unwrap_or(SECTOR);
                let off = tail;
                tail = tail.checked_add(space).ok_or_else(|| {
                    Error::InvalidArgument("relocated locator data overflows the file".into())
                })?;
                let mut buf = data.clone();
                buf.resize(usize::try_from(space).unwrap_or(data.len()), 0);
                writes.push(WriteOp {
                    offset: off,
                    old: read_padded(src, off, space, file_len)?,
                    data: buf,
                    what: format!(
                        "parent locator {slot} ({}) data, relocated to the end of the file",
                        code_text(**code)
                    ),
                });
                claimed.push(off..off + space);
                e.platform_data_space = u32::try_from(space).unwrap_or(u32::MAX);
                e.platform_data_offset = off;
                let was = data_space_bytes(old.platform_data_space)
                    .filter(|_| old.platform_code == **code)
                    .map_or_else(
                        || "no reserved space".to_string(),
                        |s| format!("{s} reserved bytes"),
                    );
                relocated.push(slot);
                notes.push(format!(
                    "the new {} path ({len} bytes) does not fit in {was}: its data is relocated to \
                     {off:#x} ({space} bytes) at the end of the file, and the end footer moves after it",
                    code_text(**code)
                ));
            }
        }
        entries[slot] = e;
    }
    // Zero the data of cleared locators, where that is safe.
    for &i in &cleared {
        let e = old_entries[i];
        let len = u64::from(e.platform_data_length);
        if len == 0 {
            continue;
        }
        let r = e.platform_data_offset..e.platform_data_offset.saturating_add(len);
        if let Err(why) = usable(&r) {
            warnings.push(format!(
                "stale locator {i} ({}) cleared, but its data was left in place: {why}",
                code_text(e.platform_code)
            ));
            continue;
        }
        if claimed.iter().any(|c| overlaps(c, &r)) {
            continue; // reused by a new locator, already rewritten
        }
        let old = read_padded(src, r.start, len, file_len)?;
        claimed.push(r.clone());
        if old.iter().any(|&b| b != 0) {
            writes.push(WriteOp {
                offset: r.start,
                data: vec![0u8; old.len()],
                old,
                what: format!(
                    "stale parent locator {i} ({}) data, zeroed",
                    code_text(e.platform_code)
                ),
            });
        }
    }
    // The gap between the old end footer and the first relocated byte, if it was not aligned.
    if tail > first_tail && first_tail > end_footer {
        let n = first_tail - end_footer;
        let old = read_padded(src, end_footer, n, file_len)?;
        writes.push(WriteOp {
            offset: end_footer,
            data: vec![0; old.len()],
            old,
            what: "padding before the relocated locator data".into(),
        });
    }

    // The dynamic header.
    let mut h = [0u8; format::DYNAMIC_HEADER_BYTES];
    read_struct(src, hdr_off, &mut h, "vhd dynamic header")?;
    let old_h = h;
    let name_units: Vec<u16> = t.parent_name.encode_utf16().collect();
    if name_units.len() > MAX_PARENT_NAME_UNITS {
        return Err(Error::InvalidArgument(format!(
            "parent unicode name of {} code units is longer than {MAX_PARENT_NAME_UNITS}",
            name_units.len()
        )));
    }
    let name_field = &mut h[format::PARENT_NAME_OFFSET..][..format::PARENT_NAME_BYTES];
    name_field.fill(0);
    for (i, u) in name_units.iter().enumerate() {
        name_field[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
    }
    for (i, e) in entries.iter().enumerate() {
        let at = format::LOCATOR_TABLE_OFFSET + i * format::LOCATOR_ENTRY_BYTES;
        h[at..at + format::LOCATOR_ENTRY_BYTES].copy_from_slice(&entry_bytes(e));
    }
    if let Some((id, ts)) = t.linkage {
        h[40..56].copy_from_slice(&id);
        h[56..60].copy_from_slice(&ts.to_be_bytes());
    }
    let sum = format::checksum(&h, format::DYNAMIC_CHECKSUM_OFFSET);
    h[36..40].copy_from_slice(&sum.to_be_bytes());

    // Field-level description.
    let mut changes = Vec::new();
    let hs = "vhd dynamic header";
    let mut change = |structure: &str, field: String, old: String, new: String| {
        if old != new {
            changes.push(FieldChange {
                structure: structure.to_string(),
                field,
                old,
                new,
            });
        }
    };
    let old_name = hdr
        .parent_name
        .name
        .clone()
        .unwrap_or_else(|| "(undecodable)".to_string());
    change(
        hs,
        "parent unicode name".into(),
        old_name,
        t.parent_name.clone(),
    );
    if let Some((id, ts)) = t.linkage {
        change(
            hs,
            "parent unique id".into(),
            crate::guid::from_vhd_bytes(hdr.raw.parent_unique_id).to_string(),
            crate::guid::from_vhd_bytes(id).to_string(),
        );
        change(
            hs,
            "parent time stamp".into(),
            hdr.raw.parent_time_stamp.to_string(),
            ts.to_string(),
        );
    }
    for i in 0..format::LOCATOR_ENTRIES {
        let old_p = path_of(i);
        let new_p = if entries[i] == old_entries[i] && !keep.contains(&Some(i)) {
            old_p.clone()
        } else if entries[i].platform_code == format::PLATFORM_W2KU {
            t.absolute.clone()
        } else if entries[i].platform_code == format::PLATFORM_W2RU {
            t.relative.clone()
        } else {
            None
        };
        change(
            hs,
            format!("parent locator {i}"),
            describe_entry(&old_entries[i], old_p.as_deref()),
            describe_entry(&entries[i], new_p.as_deref()),
        );
    }
    change(hs, "checksum".into(), hexu32(hdr.raw.checksum), hexu32(sum));
    if h != old_h {
        writes.push(WriteOp {
            offset: hdr_off,
            data: h.to_vec(),
            old: old_h.to_vec(),
            what: "dynamic header".into(),
        });
    }

    // Footers: content unchanged; the copy in use goes to both places.
    let mut footer = [0u8; format::FOOTER_BYTES];
    let have = if file.footer.short_footer && file.footer.offset != 0 {
        format::OLD_FOOTER_BYTES
    } else {
        format::FOOTER_BYTES
    };
    read_struct(src, file.footer.offset, &mut footer[..have], "vhd footer")?;
    let fsum = format::checksum(&footer, format::FOOTER_CHECKSUM_OFFSET);
    footer[64..68].copy_from_slice(&fsum.to_be_bytes());
    let front = read_padded(src, 0, format::FOOTER_BYTES as u64, file_len)?;
    if front != footer {
        change(
            "vhd footer (copy at offset 0)",
            "contents".into(),
            format!(
                "{} (status: {})",
                "differs from the copy in use",
                file.footer.copies.as_str()
            ),
            "the copy in use".into(),
        );
        writes.push(WriteOp {
            offset: 0,
            old: front,
            data: footer.to_vec(),
            what: "footer copy at offset 0".into(),
        });
    }
    let new_footer_at = if tail > first_tail { tail } else { end_footer };
    let old_end = read_padded(src, new_footer_at, format::FOOTER_BYTES as u64, file_len)?;
    if new_footer_at != end_footer {
        change(
            "vhd footer (end)",
            "offset".into(),
            format!("{end_footer:#x}"),
            format!("{new_footer_at:#x}"),
        );
    }
    if old_end != footer {
        writes.push(WriteOp {
            offset: new_footer_at,
            old: old_end,
            data: footer.to_vec(),
            what: if new_footer_at == end_footer {
                "end footer".into()
            } else {
                "end footer, moved after the relocated locator data".into()
            },
        });
    }
    let new_len = new_footer_at + format::FOOTER_BYTES as u64;
    change(
        "file",
        "length".into(),
        file_len.to_string(),
        new_len.to_string(),
    );
    if new_len < file_len {
        return Err(Error::InvalidArgument(format!(
            "internal: the plan would shrink the file from {file_len} to {new_len} bytes"
        )));
    }
    let plan = Plan {
        changes,
        writes,
        old_len: file_len,
        new_len,
    };

    // Simulate and re-open: the result must parse, carry the new linkage, and map every block
    // exactly as before.
    let sim = OverlaySource::new(
        open()?,
        plan.writes
            .iter()
            .map(|w| (w.offset, w.data.clone()))
            .collect(),
        new_len,
    )
    .map_err(|(_, e)| Error::io("simulating the plan", e))?;
    let after = VhdFile::open(Box::new(sim), opts).map_err(|e| {
        Error::InvalidArgument(format!("internal: the planned file would not open: {e}"))
    })?;
    let check = |ok: bool, what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "internal: the planned file would have a different {what}"
            )))
        }
    };
    check(after.bat == file.bat, "block allocation table")?;
    check(after.virtual_size == file.virtual_size, "virtual size")?;
    check(
        after.footer.raw.unique_id == file.footer.raw.unique_id,
        "unique id",
    )?;
    let ah = after.header.as_ref().map(|h| &h.raw);
    check(
        ah.map(|h| (h.block_size, h.table_offset))
            == Some((hdr.raw.block_size, hdr.raw.table_offset)),
        "block layout",
    )?;
    let got = |code: &str| {
        after
            .slots
            .iter()
            .filter(|s| s.code == code)
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    };
    check(
        got("W2ru") == t.relative.iter().cloned().map(Some).collect::<Vec<_>>(),
        "W2ru locator",
    )?;
    check(
        got("W2ku") == t.absolute.iter().cloned().map(Some).collect::<Vec<_>>(),
        "W2ku locator",
    )?;
    check(
        after.slots.len() == keep.iter().flatten().count(),
        "locator count",
    )?;
    check(
        after
            .header
            .as_ref()
            .and_then(|h| h.parent_name.name.clone())
            == Some(t.parent_name.clone()),
        "parent unicode name",
    )?;
    if !relocated.is_empty() {
        notes.push(format!(
            "the file grows from {file_len} to {new_len} bytes; no data block moves"
        ));
    }
    Ok(Planned {
        plan,
        notes,
        warnings,
    })
}
