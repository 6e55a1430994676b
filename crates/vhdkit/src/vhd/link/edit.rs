//! Building the plan of a [`LinkEdit`], in steps over one [`Editor`]: choose the slots, place
//! the new paths, zero the dropped locators' data, then (in `tables`) rewrite the dynamic header
//! and move or sync the footers. Each step adds its writes and its field changes in the order
//! they are shown.

use std::ops::Range;

use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len, Source};
use crate::txn::{FieldChange, Plan, WriteOp};
use crate::util::{overlaps, round_up, utf16le};

use super::super::bat::scan_allocated;
use super::super::dynamic::CheckedHeader;
use super::super::format::{self, ParentLocatorEntry};
use super::super::locator::{code_text, data_space_bytes};
use super::super::VhdFile;
use super::{DropLocators, LinkEdit, MAX_PATH_UNITS};

const SECTOR: u64 = format::SECTOR_BYTES;
/// The codes a new path is written with, in the order they are placed.
const NEW_CODES: [[u8; 4]; 2] = [format::PLATFORM_W2KU, format::PLATFORM_W2RU];

/// What the simulated result must show.
pub(super) struct Expected {
    /// `(slot, code, path)` of every non-empty slot, in slot order.
    pub locators: Vec<(usize, String, Option<String>)>,
    /// The parent unicode name, decoded.
    pub parent_name: Option<String>,
    /// Parent unique id and time stamp.
    pub linkage: ([u8; 16], u32),
}

/// The plan, what the result must show, and what to tell the user.
pub(super) struct Built {
    pub plan: Plan,
    pub expect: Expected,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
    /// Some locator data went to the end of the file.
    pub relocated: bool,
}

/// Build the plan of `edit` on `file` (a differencing disk: it has a dynamic header).
pub(super) fn build(file: &VhdFile, opts: &OpenOptions, edit: &LinkEdit) -> Result<Built> {
    let mut ed = Editor::new(file)?;
    ed.choose_slots(edit);
    let values = [edit.absolute.as_deref(), edit.relative.as_deref()];
    for (k, value) in values.iter().enumerate() {
        if let Some(v) = value {
            ed.place(k, v, opts)?;
        }
    }
    ed.zero_dropped()?;
    ed.pad_gap()?;
    ed.header(edit, values)?;
    let new_len = ed.footers(edit.sync_footers)?;
    Ok(ed.finish(edit, values, new_len))
}

/// Read `len` bytes at `offset`; bytes past `file_len` are zeros.
pub(super) fn read_padded(
    src: &dyn Source,
    offset: u64,
    len: u64,
    file_len: u64,
) -> Result<Vec<u8>> {
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

/// The state passed between the steps of [`build`].
pub(super) struct Editor<'a> {
    pub(super) file: &'a VhdFile,
    pub(super) hdr: &'a CheckedHeader,
    pub(super) src: &'a dyn Source,
    pub(super) file_len: u64,
    pub(super) end_footer: u64,
    /// Structures no locator write may touch.
    pub(super) protected: Vec<(Range<u64>, String)>,
    pub(super) old: [ParentLocatorEntry; format::LOCATOR_ENTRIES],
    pub(super) entries: [ParentLocatorEntry; format::LOCATOR_ENTRIES],
    /// The slot of each new path, by [`NEW_CODES`] index.
    pub(super) keep: [Option<usize>; 2],
    pub(super) dropped: Vec<usize>,
    /// Data spaces kept or written by this edit.
    pub(super) claimed: Vec<Range<u64>>,
    /// Where the next relocated data goes.
    pub(super) tail: u64,
    pub(super) first_tail: u64,
    pub(super) writes: Vec<WriteOp>,
    pub(super) changes: Vec<FieldChange>,
    pub(super) notes: Vec<String>,
    pub(super) warnings: Vec<String>,
}

impl<'a> Editor<'a> {
    fn new(file: &'a VhdFile) -> Result<Editor<'a>> {
        let Some(hdr) = file.header.as_ref() else {
            return Err(Error::refused(
                "not a differencing disk (no dynamic header)",
            ));
        };
        let src: &dyn Source = &*file.src;
        let end_footer = file.footer.end_offset;
        let tail = round_up(end_footer, SECTOR).ok_or_else(|| {
            Error::corrupt("vhd footer", end_footer, "end footer offset overflows")
        })?;
        Ok(Editor {
            file,
            hdr,
            src,
            file_len: source_len(src)?,
            end_footer,
            protected: protected(hdr),
            old: hdr.raw.parent_locators,
            entries: hdr.raw.parent_locators,
            keep: [None, None],
            dropped: Vec::new(),
            claimed: Vec::new(),
            tail,
            first_tail: tail,
            writes: Vec::new(),
            changes: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// `Ok(Ok)` when `r` lies between the footers and overlaps no protected structure and no
    /// data block; `Ok(Err(why))` when it does.
    fn usable(&self, r: &Range<u64>) -> Result<std::result::Result<(), String>> {
        if r.start < format::FOOTER_BYTES as u64 || r.end > self.end_footer || r.start > r.end {
            return Ok(Err(format!(
                "{:#x}..{:#x} is outside the area between the front footer and the end footer",
                r.start, r.end
            )));
        }
        let why = |what: &str| format!("{:#x}..{:#x} overlaps {what}", r.start, r.end);
        if let Some((_, what)) = self.protected.iter().find(|(p, _)| overlaps(p, r)) {
            return Ok(Err(why(what)));
        }
        Ok(match block_under(self.file, self.hdr, r)? {
            Some(i) => Err(why(&format!("data block {i}"))),
            None => Ok(()),
        })
    }

    pub(super) fn path_of(&self, i: usize) -> Option<String> {
        self.file
            .slots
            .iter()
            .find(|s| s.index == i)
            .and_then(|s| s.path.clone())
    }

    /// Which slot keeps which new path, which slots are dropped; kept slots claim their space.
    fn choose_slots(&mut self, edit: &LinkEdit) {
        let listed = |i: usize| match &edit.drop {
            DropLocators::AllOthers => false,
            DropLocators::Slots(s) => s.contains(&i),
        };
        let wanted = [edit.absolute.is_some(), edit.relative.is_some()];
        for (k, code) in NEW_CODES.iter().enumerate() {
            if wanted[k] {
                self.keep[k] = (0..format::LOCATOR_ENTRIES)
                    .find(|&i| &self.old[i].platform_code == code && !listed(i));
            }
        }
        for (i, e) in self.old.iter().enumerate() {
            if e.platform_code == [0; 4] || self.keep.contains(&Some(i)) {
                continue;
            }
            if edit.drop == DropLocators::AllOthers || listed(i) {
                self.entries[i] = ParentLocatorEntry::default();
                self.dropped.push(i);
            } else {
                let space = data_space_bytes(e.platform_data_space).unwrap_or(0);
                let n = space.max(u64::from(e.platform_data_length));
                let off = e.platform_data_offset;
                self.claimed.push(off..off.saturating_add(n));
            }
        }
    }

    /// Write the new path `value` for [`NEW_CODES`]`[k]`: in its slot's space, or relocated.
    fn place(&mut self, k: usize, value: &str, opts: &OpenOptions) -> Result<()> {
        let code = NEW_CODES[k];
        let data = utf16le(value);
        check_path_size(code, &data, opts)?;
        let len = data.len() as u64;
        let slot = match self.keep[k] {
            Some(i) => i,
            None => {
                // A new slot: the first empty one after clearing.
                let Some(i) = (0..format::LOCATOR_ENTRIES).find(|&i| {
                    self.entries[i].platform_code == [0; 4] && !self.keep.contains(&Some(i))
                }) else {
                    return Err(Error::refused(
                        "no free parent locator slot for the new path".to_string(),
                    ));
                };
                self.keep[k] = Some(i);
                i
            }
        };
        let old = self.old[slot];
        let mut e = ParentLocatorEntry {
            platform_code: code,
            platform_data_space: old.platform_data_space,
            platform_data_length: u32::try_from(len).unwrap_or(u32::MAX),
            reserved: 0,
            platform_data_offset: old.platform_data_offset,
        };
        match self.space_in_place(slot, code, len)? {
            Some(sp) => self.write_in_place(slot, code, &old, &data, sp)?,
            None => {
                let (off, space) = self.relocate(slot, code, &old, &data)?;
                e.platform_data_space = u32::try_from(space).unwrap_or(u32::MAX);
                e.platform_data_offset = off;
            }
        }
        self.entries[slot] = e;
        Ok(())
    }

    /// The reserved space of `slot` when `len` bytes of `code` data may be written there.
    fn space_in_place(&mut self, slot: usize, code: [u8; 4], len: u64) -> Result<Option<u64>> {
        let old = self.old[slot];
        if old.platform_code != code {
            return Ok(None);
        }
        let Some(sp) = data_space_bytes(old.platform_data_space).filter(|&sp| len <= sp) else {
            return Ok(None);
        };
        let r = old.platform_data_offset..old.platform_data_offset.saturating_add(sp);
        let why = match self.usable(&r)? {
            Ok(()) if !self.claimed.iter().any(|c| overlaps(c, &r)) => return Ok(Some(sp)),
            Ok(()) => "shares its data space with another locator; its new data".to_string(),
            Err(why) => format!("data space {why}; its new data"),
        };
        self.warnings.push(format!(
            "locator {slot} ({}) {why} goes to the end of the file",
            code_text(code)
        ));
        Ok(None)
    }

    fn write_in_place(
        &mut self,
        slot: usize,
        code: [u8; 4],
        old: &ParentLocatorEntry,
        data: &[u8],
        sp: u64,
    ) -> Result<()> {
        let off = old.platform_data_offset;
        // Overwrite the old data completely: new bytes, then zeros up to the old length.
        let n = (data.len() as u64).max(u64::from(old.platform_data_length).min(sp));
        let mut buf = data.to_vec();
        buf.resize(usize::try_from(n).unwrap_or(data.len()), 0);
        let old_bytes = read_padded(self.src, off, n, self.file_len)?;
        self.claimed.push(off..off.saturating_add(sp));
        if old_bytes != buf {
            self.writes.push(WriteOp {
                offset: off,
                data: buf,
                old: old_bytes,
                what: format!(
                    "parent locator {slot} ({}) data, in its reserved space",
                    code_text(code)
                ),
            });
        }
        Ok(())
    }

    /// Write `data` at the end of the file; returns its offset and space.
    fn relocate(
        &mut self,
        slot: usize,
        code: [u8; 4],
        old: &ParentLocatorEntry,
        data: &[u8],
    ) -> Result<(u64, u64)> {
        let len = data.len() as u64;
        let space = round_up(len.max(1), SECTOR).unwrap_or(SECTOR);
        let off = self.tail;
        self.tail = self.tail.checked_add(space).ok_or_else(|| {
            Error::InvalidArgument("relocated locator data overflows the file".into())
        })?;
        let mut buf = data.to_vec();
        buf.resize(usize::try_from(space).unwrap_or(data.len()), 0);
        self.writes.push(WriteOp {
            offset: off,
            old: read_padded(self.src, off, space, self.file_len)?,
            data: buf,
            what: format!(
                "parent locator {slot} ({}) data, relocated to the end of the file",
                code_text(code)
            ),
        });
        self.claimed.push(off..self.tail);
        let was = data_space_bytes(old.platform_data_space)
            .filter(|_| old.platform_code == code)
            .map_or_else(
                || "no reserved space".to_string(),
                |s| format!("{s} reserved bytes"),
            );
        self.notes.push(format!(
            "the new {} path ({len} bytes) does not fit in {was}: its data is relocated to \
             {off:#x} ({space} bytes) at the end of the file, and the end footer moves after it",
            code_text(code)
        ));
        Ok((off, space))
    }

    /// Zero the data of dropped locators, where that is safe.
    fn zero_dropped(&mut self) -> Result<()> {
        for i in self.dropped.clone() {
            let e = self.old[i];
            let len = u64::from(e.platform_data_length);
            if len == 0 {
                continue;
            }
            let r = e.platform_data_offset..e.platform_data_offset.saturating_add(len);
            let left = |why: &str| {
                format!(
                    "stale locator {i} ({}) cleared, but its data was left in place: {why}",
                    code_text(e.platform_code)
                )
            };
            if let Err(why) = self.usable(&r)? {
                self.warnings.push(left(&why));
                continue;
            }
            if self.claimed.iter().any(|c| overlaps(c, &r)) {
                continue; // reused by a new locator, already rewritten
            }
            if let Some(why) = self.unread(i) {
                self.warnings.push(left(&why));
                continue;
            }
            let old = read_padded(self.src, r.start, len, self.file_len)?;
            self.claimed.push(r.clone());
            if old.iter().any(|&b| b != 0) {
                self.writes.push(WriteOp {
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
        Ok(())
    }

    /// Why the data of slot `i` could not be read at open, if it could not.
    fn unread(&self, i: usize) -> Option<String> {
        let s = self.file.slots.iter().find(|s| s.index == i)?;
        if !s.raw.is_empty() {
            return None;
        }
        Some(s.error.clone().unwrap_or_else(|| "unreadable".to_string()))
    }

    /// The gap between the old end footer and the first relocated byte, if it was not aligned.
    fn pad_gap(&mut self) -> Result<()> {
        if self.tail > self.first_tail && self.first_tail > self.end_footer {
            let n = self.first_tail - self.end_footer;
            let old = read_padded(self.src, self.end_footer, n, self.file_len)?;
            self.writes.push(WriteOp {
                offset: self.end_footer,
                data: vec![0; old.len()],
                old,
                what: "padding before the relocated locator data".into(),
            });
        }
        Ok(())
    }

    pub(super) fn change(&mut self, structure: &str, field: String, old: String, new: String) {
        if old != new {
            self.changes.push(FieldChange {
                structure: structure.to_string(),
                field,
                old,
                new,
            });
        }
    }

    fn finish(self, edit: &LinkEdit, values: [Option<&str>; 2], new_len: u64) -> Built {
        let mut locators = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.platform_code == [0; 4] {
                continue;
            }
            let (code, path) = match self.keep.iter().position(|s| *s == Some(i)) {
                Some(k) => (code_text(e.platform_code), values[k].map(str::to_string)),
                None => match self.file.slots.iter().find(|s| s.index == i) {
                    Some(s) => (s.code.clone(), s.path.clone()),
                    None => (code_text(e.platform_code), None),
                },
            };
            locators.push((i, code, path));
        }
        let raw = &self.hdr.raw;
        let expect = Expected {
            locators,
            parent_name: edit
                .parent_name
                .clone()
                .or_else(|| self.hdr.parent_name.name.clone()),
            linkage: edit
                .linkage
                .unwrap_or((raw.parent_unique_id, raw.parent_time_stamp)),
        };
        Built {
            plan: Plan {
                changes: self.changes,
                writes: self.writes,
                old_len: self.file_len,
                new_len,
            },
            expect,
            notes: self.notes,
            warnings: self.warnings,
            relocated: self.tail > self.first_tail,
        }
    }
}

/// Refuse a new path longer than Windows allows or than the caller's limits.
fn check_path_size(code: [u8; 4], data: &[u8], opts: &OpenOptions) -> Result<()> {
    if data.len() / 2 > MAX_PATH_UNITS {
        return Err(Error::refused(format!(
            "the new {} path is {} UTF-16 code units, longer than Windows allows ({MAX_PATH_UNITS})",
            code_text(code),
            data.len() / 2
        )));
    }
    if data.len() > opts.limits.max_locator_bytes as usize {
        return Err(Error::refused(format!(
            "the new {} path is {} bytes, above Limits::max_locator_bytes ({})",
            code_text(code),
            data.len(),
            opts.limits.max_locator_bytes
        )));
    }
    Ok(())
}

/// The footer copies, the dynamic header and the BAT (the data blocks are checked by streaming
/// the table, see [`Editor::usable`]).
fn protected(hdr: &CheckedHeader) -> Vec<(Range<u64>, String)> {
    let hdr_off = hdr.offset;
    let entries = u64::from(hdr.raw.max_table_entries);
    let bat_bytes = round_up(entries * format::BAT_ENTRY_BYTES, SECTOR).unwrap_or(u64::MAX);
    let table = hdr.raw.table_offset;
    vec![
        (
            0..format::FOOTER_BYTES as u64,
            "the footer copy at offset 0".into(),
        ),
        (
            hdr_off..hdr_off.saturating_add(format::DYNAMIC_HEADER_BYTES as u64),
            "the dynamic header".into(),
        ),
        (
            table..table.saturating_add(bat_bytes),
            "the block allocation table".into(),
        ),
    ]
}

/// The first allocated data block (in table order) that `r` overlaps, streaming the table.
fn block_under(file: &VhdFile, hdr: &CheckedHeader, r: &Range<u64>) -> Result<Option<u64>> {
    let Some(bat) = &file.bat else {
        return Ok(None);
    };
    let block_bytes = file.bitmap_bytes + u64::from(hdr.raw.block_size);
    let mut found = None;
    // Ends the scan at the first hit; never seen by callers.
    let stop = || Error::Internal(String::new());
    let scanned = scan_allocated(&*file.src, bat.offset(), bat.len(), &mut |i, e| {
        let at = u64::from(e) * SECTOR;
        if overlaps(&(at..at.saturating_add(block_bytes)), r) {
            found = Some(i);
            return Err(stop());
        }
        Ok(())
    });
    match (found, scanned) {
        (Some(i), _) => Ok(Some(i)),
        (None, r) => r.map(|()| None),
    }
}
