//! What a dynamic or differencing VHD adds to the footer: the dynamic header, the parent name
//! and locators, the BAT and the blocks it places.

use std::ops::Range;

use super::{raw_dynamic_header, Ranges, BAT, FOOTER, HEADER, LOCATOR};
use crate::check::{Bytes, Findings};
use crate::disjoint::{visit_sorted, Span, Visit, DEFAULT_BUDGET};
use crate::limits::Limits;
use crate::util::{overlaps, round_up};
use crate::vhd::format::{
    self, dynamic_header_fields as hf, footer_fields as ff, locator_entry_fields as lf,
    DynamicHeader, Footer, ParentLocatorEntry, BAT_ENTRY_BYTES, DISK_TYPE_DIFFERENCING,
    DYNAMIC_CHECKSUM_OFFSET, DYNAMIC_COOKIE, DYNAMIC_HEADER_BYTES, FOOTER_BYTES,
    LOCATOR_ENTRY_BYTES, LOCATOR_TABLE_OFFSET, MAX_BLOCK_BYTES, PARENT_NAME_OFFSET, SECTOR_BYTES,
    VERSION_1_0,
};
use crate::vhd::locator::{code_text, data_space_bytes, decode_path};

/// Platform codes a locator may carry (A.7).
const KNOWN_PLATFORMS: [[u8; 4]; 6] = [
    format::PLATFORM_W2RU,
    format::PLATFORM_W2KU,
    format::PLATFORM_WI2R,
    format::PLATFORM_WI2K,
    format::PLATFORM_MAC,
    format::PLATFORM_MACX,
];

/// What the checks of a sparse disk's dynamic header, locators and BAT share.
struct Sparse<'a> {
    b: &'a Bytes<'a>,
    limits: &'a Limits,
    /// Where the end footer starts (the file length without one): nothing may reach past it.
    footer_offset: u64,
    hdr_off: u64,
    h: DynamicHeader,
    size: u64,
    differencing: bool,
}

pub(super) fn check(b: &Bytes, limits: &Limits, s: &mut Findings, f: &Footer, footer_offset: u64) {
    let Some((hdr_off, h)) = read_dynamic_header(b, s, f.data_offset, footer_offset) else {
        return;
    };
    let d = Sparse {
        b,
        limits,
        footer_offset,
        hdr_off,
        h,
        size: f.current_size,
        differencing: f.disk_type == DISK_TYPE_DIFFERENCING,
    };
    if d.h.header_version != VERSION_1_0 {
        s.add(
            "vhd.header.version",
            HEADER,
            Some(hdr_off + hf::HEADER_VERSION),
            format!(
                "header version {:#010x}, expected 0x00010000",
                d.h.header_version
            ),
        );
    }
    let mut meta: Ranges = vec![
        (0..FOOTER_BYTES as u64, "the footer copy"),
        (d.header_range(), "the dynamic header"),
    ];
    let name_usable = d.differencing && d.check_parent_name(s);
    let (locators_usable, loc_ranges) = d.check_locators(s);
    if d.differencing && !name_usable && locators_usable == 0 {
        s.add(
            "vhd.locator.none",
            HEADER,
            Some(hdr_off + LOCATOR_TABLE_OFFSET as u64),
            "differencing disk without a decodable parent name or locator",
        );
    }
    let bs_ok = d.check_block_size(s);
    let Some((bat_off, bat_bytes)) = d.check_bat_placement(s, &mut meta, loc_ranges) else {
        return;
    };
    if bat_bytes > limits.max_bat_bytes {
        s.add(
            "vhd.bat.too_large",
            BAT,
            Some(bat_off),
            format!(
                "BAT of {bat_bytes} bytes is above the {}-byte limit; entries not checked",
                limits.max_bat_bytes
            ),
        );
        return;
    }
    if bs_ok
        && bat_off
            .checked_add(bat_bytes)
            .is_some_and(|end| end <= b.len)
    {
        d.check_blocks(s, bat_off, bat_bytes, &meta);
    }
}

/// The dynamic header the footer points at, with its cookie and checksum checked: its offset
/// and fields, or `None` (after a finding) when there is no header to check.
fn read_dynamic_header(
    b: &Bytes,
    s: &mut Findings,
    hdr_off: u64,
    footer_offset: u64,
) -> Option<(u64, DynamicHeader)> {
    if hdr_off < FOOTER_BYTES as u64 || hdr_off == u64::MAX {
        s.add(
            "vhd.footer.data_offset",
            FOOTER,
            Some(b.len.saturating_sub(FOOTER_BYTES as u64) + ff::DATA_OFFSET),
            format!("data offset {hdr_off:#x} cannot hold the dynamic header"),
        );
        return None;
    }
    let Some(bytes) = hdr_off
        .checked_add(DYNAMIC_HEADER_BYTES as u64)
        .filter(|&e| e <= footer_offset)
        .and_then(|_| b.get(hdr_off, DYNAMIC_HEADER_BYTES))
    else {
        s.add(
            "vhd.header.truncated",
            HEADER,
            Some(hdr_off),
            format!(
                "the 1024-byte dynamic header at {hdr_off:#x} does not fit before the footer at {footer_offset:#x}"
            ),
        );
        return None;
    };
    let cookie = bytes.get(..DYNAMIC_COOKIE.len()).unwrap_or(&[]);
    if cookie != &DYNAMIC_COOKIE[..] {
        s.add(
            "vhd.header.cookie",
            HEADER,
            Some(hdr_off),
            format!("cookie {cookie:02x?}, expected \"cxsparse\""),
        );
        return None;
    }
    let h = raw_dynamic_header(&bytes)?;
    let computed = format::checksum(&bytes, DYNAMIC_CHECKSUM_OFFSET);
    if h.checksum != computed {
        s.add(
            "vhd.header.checksum",
            HEADER,
            Some(hdr_off + DYNAMIC_CHECKSUM_OFFSET as u64),
            format!("checksum {:#010x}, computed {computed:#010x}", h.checksum),
        );
    }
    Some((hdr_off, h))
}

impl Sparse<'_> {
    fn header_range(&self) -> Range<u64> {
        self.hdr_off..self.hdr_off + DYNAMIC_HEADER_BYTES as u64
    }

    /// The parent name and id of a differencing disk; true when the name is usable.
    fn check_parent_name(&self, s: &mut Findings) -> bool {
        let name = &self.h.parent_unicode_name[..];
        let at = self.hdr_off + PARENT_NAME_OFFSET as u64;
        let units: Vec<u16> = name
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let decoded = crate::vhd::dynamic::decode_parent_name(name);
        if decoded.little_endian {
            s.add(
                "vhd.header.parent_name_little_endian",
                HEADER,
                Some(at),
                crate::vhd::little_endian_warning(&decoded),
            );
        }
        let usable = match String::from_utf16(&units) {
            Ok(n) => !n.is_empty(),
            Err(_) => {
                s.add(
                    "vhd.header.parent_name",
                    HEADER,
                    Some(at),
                    "parent unicode name is not valid UTF-16BE",
                );
                false
            }
        };
        if self.h.parent_unique_id.iter().all(|&x| x == 0) {
            s.add(
                "vhd.header.parent_id_zero",
                HEADER,
                Some(self.hdr_off + hf::PARENT_UNIQUE_ID),
                "parent unique id is all zeros",
            );
        }
        usable
    }

    /// Every locator slot: how many lead to a usable path, and where their data lies.
    fn check_locators(&self, s: &mut Findings) -> (usize, Ranges) {
        let mut ranges = Ranges::new();
        let mut usable = 0;
        for (i, e) in self.h.parent_locators.iter().enumerate() {
            if self.check_locator(s, i, e, &mut ranges) {
                usable += 1;
            }
        }
        (usable, ranges)
    }

    /// One locator slot; true when its path decodes to something. Its data range, when it has
    /// data inside the file, is added to `ranges`.
    fn check_locator(
        &self,
        s: &mut Findings,
        i: usize,
        e: &ParentLocatorEntry,
        ranges: &mut Ranges,
    ) -> bool {
        let code = e.platform_code;
        if code == [0; 4] {
            return false;
        }
        let at = self.hdr_off + LOCATOR_TABLE_OFFSET as u64 + (i * LOCATOR_ENTRY_BYTES) as u64;
        let name = format!("{LOCATOR} {}", i + 1);
        if !self.differencing {
            s.add(
                "vhd.locator.on_non_differencing",
                name.clone(),
                Some(at),
                format!(
                    "slot {} holds a `{}` locator on a disk without a parent",
                    i + 1,
                    code_text(code)
                ),
            );
        }
        if !KNOWN_PLATFORMS.contains(&code) {
            s.add(
                "vhd.locator.platform_code",
                name,
                Some(at),
                format!("unknown platform code `{}`", code_text(code)),
            );
            return false;
        }
        let (space, dlen, doff) = (
            e.platform_data_space,
            e.platform_data_length,
            e.platform_data_offset,
        );
        if data_space_bytes(space).is_none_or(|sp| u64::from(dlen) > sp) {
            s.add(
                "vhd.locator.length",
                name.clone(),
                Some(at + lf::PLATFORM_DATA_SPACE),
                format!("data length {dlen} does not fit data space {space}"),
            );
        }
        let dend = doff.checked_add(u64::from(dlen));
        let Some(dend) = dend.filter(|&e| e <= self.footer_offset && doff >= FOOTER_BYTES as u64)
        else {
            s.add(
                "vhd.locator.out_of_bounds",
                name,
                Some(at + lf::PLATFORM_DATA_OFFSET),
                format!(
                    "data at {doff:#x}+{dlen} lies outside the file's data area (footer at {:#x})",
                    self.footer_offset
                ),
            );
            return false;
        };
        if dlen > 0 {
            if overlaps(&(doff..dend), &self.header_range()) {
                s.add(
                    "vhd.locator.overlaps_metadata",
                    name.clone(),
                    Some(at + lf::PLATFORM_DATA_OFFSET),
                    format!("data at {doff:#x}+{dlen} overlaps the dynamic header"),
                );
            }
            ranges.push((doff..dend, "locator data"));
        }
        self.decodes(s, name, code, doff, dlen)
    }

    /// Whether the `dlen` bytes of locator data at `doff` decode to a path; a finding (for
    /// the slot `name`) when they do not decode.
    fn decodes(&self, s: &mut Findings, name: String, code: [u8; 4], doff: u64, dlen: u32) -> bool {
        // Mac alias records are opaque: nothing to decode.
        if dlen > self.limits.max_locator_bytes || code == format::PLATFORM_MAC {
            return false;
        }
        let Some(data) = usize::try_from(dlen).ok().and_then(|n| self.b.get(doff, n)) else {
            return false;
        };
        match decode_path(code, &data) {
            Ok(p) => !p.is_empty(),
            Err(m) => {
                s.add(
                    "vhd.locator.undecodable",
                    name,
                    Some(doff),
                    format!("`{}` data does not decode: {m}", code_text(code)),
                );
                false
            }
        }
    }

    /// Block size and the BAT entry count it implies; true when the block size is usable.
    fn check_block_size(&self, s: &mut Findings) -> bool {
        let bs = self.h.block_size;
        let bs_ok = u64::from(bs) >= SECTOR_BYTES && bs.is_power_of_two() && bs <= MAX_BLOCK_BYTES;
        if !bs_ok {
            s.add(
                "vhd.header.block_size",
                HEADER,
                Some(self.hdr_off + hf::BLOCK_SIZE),
                format!(
                    "block size {bs} (must be a power-of-two number of sectors, at most 256 MiB)"
                ),
            );
        }
        let (entries, size) = (self.h.max_table_entries, self.size);
        if bs_ok && size > 0 {
            let at = Some(self.hdr_off + hf::MAX_TABLE_ENTRIES);
            let need = size.div_ceil(u64::from(bs));
            if u64::from(entries) < need {
                s.add(
                    "vhd.bat.too_small",
                    HEADER,
                    at,
                    format!("{entries} BAT entries, but {need} are needed for {size} bytes in {bs}-byte blocks"),
                );
            } else if u64::from(entries) > need {
                s.add(
                    "vhd.bat.excess_entries",
                    HEADER,
                    at,
                    format!("{entries} BAT entries, {need} needed"),
                );
            }
        }
        bs_ok
    }

    /// Where the BAT lies against the file end, the metadata in `meta` and the locator data in
    /// `loc_ranges`; then both are added to `meta`. `None` when the BAT runs past the footer.
    fn check_bat_placement(
        &self,
        s: &mut Findings,
        meta: &mut Ranges,
        loc_ranges: Ranges,
    ) -> Option<(u64, u64)> {
        let entries = self.h.max_table_entries;
        let bat_off = self.h.table_offset;
        let bat_bytes = u64::from(entries) * BAT_ENTRY_BYTES;
        let at = Some(self.hdr_off + hf::TABLE_OFFSET);
        if bat_off % SECTOR_BYTES != 0 {
            s.add(
                "vhd.bat.unaligned",
                BAT,
                at,
                format!("table offset {bat_off:#x} is not a multiple of 512"),
            );
        }
        let Some(bat_end) = bat_off
            .checked_add(bat_bytes)
            .filter(|&e| e <= self.footer_offset)
        else {
            s.add(
                "vhd.bat.past_eof",
                BAT,
                at,
                format!(
                    "the {entries}-entry BAT at {bat_off:#x} runs past the footer at {:#x}",
                    self.footer_offset
                ),
            );
            return None;
        };
        let bat_range = bat_off..round_up(bat_end, SECTOR_BYTES).unwrap_or(bat_end);
        for (r, what) in meta.iter() {
            if bat_bytes > 0 && overlaps(&bat_range, r) {
                s.add(
                    "vhd.bat.overlaps_metadata",
                    BAT,
                    Some(bat_off),
                    format!("the BAT at {bat_off:#x}..{bat_end:#x} overlaps {what}"),
                );
            }
        }
        for (r, _) in &loc_ranges {
            if overlaps(&(bat_off..bat_end), r) {
                s.add(
                    "vhd.locator.overlaps_metadata",
                    LOCATOR,
                    Some(r.start),
                    format!(
                        "locator data at {:#x}..{:#x} overlaps the BAT",
                        r.start, r.end
                    ),
                );
            }
        }
        meta.push((bat_range, "the BAT"));
        meta.extend(loc_ranges);
        Some((bat_off, bat_bytes))
    }

    /// Every allocated block: inside the file, clear of metadata, clear of the other blocks.
    /// The table is streamed, never held whole, and the overlaps are found in passes of
    /// bounded memory (`disjoint::visit_sorted`).
    fn check_blocks(&self, s: &mut Findings, bat_off: u64, bat_bytes: u64, meta: &Ranges) {
        let bs = self.h.block_size;
        let block_span = format::bitmap_bytes(bs) + u64::from(bs);
        // The blocks before the footer, while they fit the budget: then no second pass.
        let mut held = Some(Vec::new());
        let read = self.each_entry(bat_off, bat_bytes, &mut |j, e| {
            let at = bat_off + BAT_ENTRY_BYTES * j;
            if self.check_block(s, at, j, e, block_span, meta) {
                let start = u64::from(e) * SECTOR_BYTES;
                let span = Span {
                    start,
                    end: start + block_span,
                    id: j,
                };
                match &mut held {
                    Some(v) if v.len() < DEFAULT_BUDGET => v.push(span),
                    _ => held = None,
                }
            }
        });
        if !read {
            return;
        }
        let mut report = Neighbours::new(s, bat_off);
        match held {
            Some(mut v) => {
                v.sort_unstable();
                v.into_iter().for_each(|b| report.next(b));
            }
            None => self.report_overlaps(&mut report, bat_off, bat_bytes, block_span),
        }
    }

    /// Call `f(index, entry)` for every allocated entry, reading the table a bounded buffer at a time;
    /// false when a read fails (the entries before it were visited).
    fn each_entry(&self, bat_off: u64, bat_bytes: u64, f: &mut dyn FnMut(u64, u32)) -> bool {
        const PER_READ: u64 = crate::table::SCAN_BYTES;
        let entry = BAT_ENTRY_BYTES;
        let mut done = 0u64;
        while done < bat_bytes {
            let n = (bat_bytes - done).min(PER_READ);
            let Some(raw) = usize::try_from(n)
                .ok()
                .and_then(|k| self.b.get(bat_off + done, k))
            else {
                return false;
            };
            let first = done / entry;
            let _ = crate::vhd::bat::each_allocated(first, &raw, &mut |j, e| {
                f(j, e);
                Ok::<(), std::convert::Infallible>(())
            });
            done += n;
        }
        true
    }

    /// Blocks that overlap the block before them in file order, for more blocks than memory
    /// holds at once (blocks running past the footer were reported already and are left out).
    fn report_overlaps(&self, r: &mut Neighbours, bat_off: u64, bat_bytes: u64, block_span: u64) {
        let footer = self.footer_offset;
        let mut pass = |visit: &mut Visit<'_>| -> crate::Result<()> {
            let mut failed = None;
            let read = self.each_entry(bat_off, bat_bytes, &mut |j, e| {
                let start = u64::from(e) * SECTOR_BYTES;
                let end = start + block_span;
                if end <= footer && failed.is_none() {
                    failed = visit(Span { start, end, id: j }).err();
                }
            });
            match failed {
                Some(e) => Err(e),
                None if read => Ok(()),
                None => Err(crate::Error::Internal(
                    "the BAT could not be read again".into(),
                )),
            }
        };
        // A table that cannot be read again (the file changed under the check) ends the report.
        let _ = visit_sorted(&mut pass, DEFAULT_BUDGET, &mut |b| {
            r.next(b);
            Ok(())
        });
    }

    /// Block `i` (BAT entry `e`, at `at`): before the footer (true), clear of the metadata.
    fn check_block(
        &self,
        s: &mut Findings,
        at: u64,
        i: u64,
        e: u32,
        block_span: u64,
        meta: &Ranges,
    ) -> bool {
        let start = u64::from(e) * SECTOR_BYTES;
        let end = start + block_span;
        if end > self.footer_offset {
            s.add_with("vhd.block.past_eof", BAT, Some(at), || {
                format!(
                    "block {i} at {start:#x}..{end:#x} runs past the footer at {:#x}",
                    self.footer_offset
                )
            });
            return false;
        }
        for (r, what) in meta {
            if overlaps(&(start..end), r) {
                s.add_with("vhd.block.overlaps_metadata", BAT, Some(at), || {
                    format!("block {i} at {start:#x}..{end:#x} overlaps {what}")
                });
            }
        }
        true
    }
}

/// Reports blocks that overlap the block before them, fed in file order.
struct Neighbours<'f> {
    s: &'f mut Findings,
    bat_off: u64,
    prev: Option<Span>,
}

impl<'f> Neighbours<'f> {
    fn new(s: &'f mut Findings, bat_off: u64) -> Neighbours<'f> {
        Neighbours {
            s,
            bat_off,
            prev: None,
        }
    }

    fn next(&mut self, b: Span) {
        if let Some(a) = self.prev {
            if a.end > b.start {
                let (ia, ib) = (a.id, b.id);
                self.s.add_with(
                    "vhd.block.overlap",
                    BAT,
                    Some(self.bat_off + BAT_ENTRY_BYTES * ib),
                    || {
                        format!(
                            "blocks {ia} (at {:#x}) and {ib} (at {:#x}) overlap",
                            a.start, b.start
                        )
                    },
                );
            }
        }
        self.prev = Some(b);
    }
}
