//! Building the plan of a [`LinkEdit`], in steps over one [`Editor`]: choose the slots, place
//! the new paths, zero the dropped locators' data, rewrite the dynamic header, move or sync the
//! footers. Each step adds its writes and its field changes in the order they are shown.

use std::ops::Range;

use binrw::meta::WriteEndian;
use binrw::BinWrite;

use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len, Source};
use crate::txn::{FieldChange, Plan, WriteOp};
use crate::util::{overlaps, round_up, utf16le};

use super::super::dynamic::CheckedHeader;
use super::super::format::{self, ParentLocatorEntry};
use super::super::locator::{code_text, data_space_bytes};
use super::super::VhdFile;
use super::{DropLocators, LinkEdit, MAX_PARENT_NAME_UNITS, MAX_PATH_UNITS};

const SECTOR: u64 = format::SECTOR_BYTES;
const HEADER: &str = "vhd dynamic header";
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

/// The on-disk bytes of a binrw structure.
fn to_bytes<T>(v: &T, what: &str) -> Result<Vec<u8>>
where
    T: for<'a> BinWrite<Args<'a> = ()> + WriteEndian,
{
    let mut c = std::io::Cursor::new(Vec::new());
    v.write(&mut c)
        .map_err(|e| Error::InvalidArgument(format!("internal: encoding the {what}: {e}")))?;
    Ok(c.into_inner())
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

/// The parent unicode name field for `name`: UTF-16 big-endian, zero-padded.
fn encode_parent_name(name: &str) -> Result<[u8; format::PARENT_NAME_BYTES]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    if units.len() > MAX_PARENT_NAME_UNITS {
        return Err(Error::InvalidArgument(format!(
            "parent unicode name of {} code units is longer than {MAX_PARENT_NAME_UNITS}",
            units.len()
        )));
    }
    let mut field = [0u8; format::PARENT_NAME_BYTES];
    for (dst, u) in field.chunks_exact_mut(2).zip(&units) {
        dst.copy_from_slice(&u.to_be_bytes());
    }
    Ok(field)
}

/// The state passed between the steps of [`build`].
struct Editor<'a> {
    file: &'a VhdFile,
    hdr: &'a CheckedHeader,
    src: &'a dyn Source,
    file_len: u64,
    end_footer: u64,
    /// Structures no locator write may touch.
    protected: Vec<(Range<u64>, String)>,
    old: [ParentLocatorEntry; format::LOCATOR_ENTRIES],
    entries: [ParentLocatorEntry; format::LOCATOR_ENTRIES],
    /// The slot of each new path, by [`NEW_CODES`] index.
    keep: [Option<usize>; 2],
    dropped: Vec<usize>,
    /// Data spaces kept or written by this edit.
    claimed: Vec<Range<u64>>,
    /// Where the next relocated data goes.
    tail: u64,
    first_tail: u64,
    writes: Vec<WriteOp>,
    changes: Vec<FieldChange>,
    notes: Vec<String>,
    warnings: Vec<String>,
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
            protected: protected(file, hdr),
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

    /// `Ok` when `r` lies between the footers and overlaps no protected structure.
    fn usable(&self, r: &Range<u64>) -> std::result::Result<(), String> {
        if r.start < format::FOOTER_BYTES as u64 || r.end > self.end_footer || r.start > r.end {
            return Err(format!(
                "{:#x}..{:#x} is outside the area between the front footer and the end footer",
                r.start, r.end
            ));
        }
        match self.protected.iter().find(|(p, _)| overlaps(p, r)) {
            Some((_, what)) => Err(format!("{:#x}..{:#x} overlaps {what}", r.start, r.end)),
            None => Ok(()),
        }
    }

    fn path_of(&self, i: usize) -> Option<String> {
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
        match self.space_in_place(slot, code, len) {
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
    fn space_in_place(&mut self, slot: usize, code: [u8; 4], len: u64) -> Option<u64> {
        let old = self.old[slot];
        if old.platform_code != code {
            return None;
        }
        let sp = data_space_bytes(old.platform_data_space).filter(|&sp| len <= sp)?;
        let r = old.platform_data_offset..old.platform_data_offset.saturating_add(sp);
        let why = match self.usable(&r) {
            Ok(()) if !self.claimed.iter().any(|c| overlaps(c, &r)) => return Some(sp),
            Ok(()) => "shares its data space with another locator; its new data".to_string(),
            Err(why) => format!("data space {why}; its new data"),
        };
        self.warnings.push(format!(
            "locator {slot} ({}) {why} goes to the end of the file",
            code_text(code)
        ));
        None
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
        self.claimed.push(off..off + sp);
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
        self.claimed.push(off..off + space);
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
            if let Err(why) = self.usable(&r) {
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

    fn change(&mut self, structure: &str, field: String, old: String, new: String) {
        if old != new {
            self.changes.push(FieldChange {
                structure: structure.to_string(),
                field,
                old,
                new,
            });
        }
    }

    /// The new dynamic header: parent name, linkage, locator entries, checksum.
    fn header(&mut self, edit: &LinkEdit, values: [Option<&str>; 2]) -> Result<()> {
        let mut h = self.hdr.raw.clone();
        if let Some(name) = &edit.parent_name {
            h.parent_unicode_name = encode_parent_name(name)?;
        }
        h.parent_locators = self.entries;
        if let Some((id, ts)) = edit.linkage {
            h.parent_unique_id = id;
            h.parent_time_stamp = ts;
        }
        h.checksum = format::checksum(&to_bytes(&h, HEADER)?, format::DYNAMIC_CHECKSUM_OFFSET);
        let new = to_bytes(&h, HEADER)?;
        let old = to_bytes(&self.hdr.raw, HEADER)?;
        self.describe_header(edit, values, h.checksum);
        if new != old {
            self.writes.push(WriteOp {
                offset: self.hdr.offset,
                data: new,
                old,
                what: "dynamic header".into(),
            });
        }
        Ok(())
    }

    fn describe_header(&mut self, edit: &LinkEdit, values: [Option<&str>; 2], sum: u32) {
        let raw = &self.hdr.raw;
        let (old_id, old_ts, old_sum) = (raw.parent_unique_id, raw.parent_time_stamp, raw.checksum);
        if let Some(name) = &edit.parent_name {
            let old_name = self.hdr.parent_name.name.clone();
            let old_name = old_name.unwrap_or_else(|| "(undecodable)".to_string());
            self.change(HEADER, "parent unicode name".into(), old_name, name.clone());
        }
        if let Some((id, ts)) = edit.linkage {
            let g = crate::guid::from_vhd_bytes;
            let (old_g, new_g) = (g(old_id).to_string(), g(id).to_string());
            self.change(HEADER, "parent unique id".into(), old_g, new_g);
            let (old_t, new_t) = (old_ts.to_string(), ts.to_string());
            self.change(HEADER, "parent time stamp".into(), old_t, new_t);
        }
        for i in 0..format::LOCATOR_ENTRIES {
            let old_p = self.path_of(i);
            let new_p = match self.keep.iter().position(|s| *s == Some(i)) {
                Some(k) => values[k].map(str::to_string),
                None if self.entries[i] == self.old[i] => old_p.clone(),
                None => None,
            };
            let old_d = describe_entry(&self.old[i], old_p.as_deref());
            let new_d = describe_entry(&self.entries[i], new_p.as_deref());
            self.change(HEADER, format!("parent locator {i}"), old_d, new_d);
        }
        let hex = |v: u32| format!("{v:#010x}");
        self.change(HEADER, "checksum".into(), hex(old_sum), hex(sum));
    }

    /// Footers: content unchanged; the end one moves after relocated data, and with `sync` the
    /// copy in use goes to both places. Returns the new file length.
    fn footers(&mut self, sync: bool) -> Result<u64> {
        let relocated = self.tail > self.first_tail;
        if !sync && !relocated {
            return Ok(self.file_len);
        }
        // The copy in use, as parsed (its checksum was verified at open).
        let footer = to_bytes(&self.file.footer.raw, "vhd footer")?;
        if sync {
            self.sync_front(&footer)?;
        }
        let (end_footer, file_len) = (self.end_footer, self.file_len);
        let new_at = if relocated { self.tail } else { end_footer };
        let old_end = read_padded(self.src, new_at, format::FOOTER_BYTES as u64, file_len)?;
        if new_at != end_footer {
            let (old, new) = (format!("{end_footer:#x}"), format!("{new_at:#x}"));
            self.change("vhd footer (end)", "offset".into(), old, new);
        }
        if old_end != footer {
            self.writes.push(WriteOp {
                offset: new_at,
                old: old_end,
                data: footer,
                what: if new_at == end_footer {
                    "end footer".into()
                } else {
                    "end footer, moved after the relocated locator data".into()
                },
            });
        }
        let new_len = new_at + format::FOOTER_BYTES as u64;
        let (old, new) = (file_len.to_string(), new_len.to_string());
        self.change("file", "length".into(), old, new);
        if new_len < file_len {
            return Err(Error::InvalidArgument(format!(
                "internal: the plan would shrink the file from {file_len} to {new_len} bytes"
            )));
        }
        Ok(new_len)
    }

    /// Rewrite the copy at offset 0 when it differs from `footer`, the copy in use.
    fn sync_front(&mut self, footer: &[u8]) -> Result<()> {
        let front = read_padded(self.src, 0, format::FOOTER_BYTES as u64, self.file_len)?;
        if front != footer {
            let status = self.file.footer.copies.as_str();
            self.change(
                "vhd footer (copy at offset 0)",
                "contents".into(),
                format!("differs from the copy in use (status: {status})"),
                "the copy in use".into(),
            );
            self.writes.push(WriteOp {
                offset: 0,
                old: front,
                data: footer.to_vec(),
                what: "footer copy at offset 0".into(),
            });
        }
        Ok(())
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

/// The footer copies, the dynamic header, the BAT and every allocated block.
fn protected(file: &VhdFile, hdr: &CheckedHeader) -> Vec<(Range<u64>, String)> {
    let hdr_off = hdr.offset;
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
    let entries = u64::from(hdr.raw.max_table_entries);
    let bat_bytes = round_up(entries * format::BAT_ENTRY_BYTES, SECTOR).unwrap_or(u64::MAX);
    let table = hdr.raw.table_offset;
    protected.push((
        table..table.saturating_add(bat_bytes),
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
    protected
}
