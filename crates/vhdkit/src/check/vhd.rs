//! Structural checks of a VHD file (FORMAT.md Part A).

use super::{be32, be64, Bytes, Finding, Sink};
use crate::limits::Limits;
use crate::vhd::format::{
    self, BAT_UNALLOCATED, DISK_TYPE_DIFFERENCING, DISK_TYPE_DYNAMIC, DISK_TYPE_FIXED,
    DYNAMIC_COOKIE, DYNAMIC_HEADER_BYTES, FEATURE_RESERVED, FEATURE_TEMPORARY, FOOTER_BYTES,
    FOOTER_COOKIE, LOCATOR_ENTRIES, LOCATOR_ENTRY_BYTES, LOCATOR_TABLE_OFFSET, MAX_BLOCK_BYTES,
    PARENT_NAME_BYTES, PARENT_NAME_OFFSET, VERSION_1_0,
};
use crate::vhd::locator::{code_text, data_space_bytes, decode_path};

const FOOTER: &str = "vhd footer";
const COPY: &str = "vhd footer copy";
const HEADER: &str = "vhd dynamic header";
const BAT: &str = "vhd bat";
const LOCATOR: &str = "vhd parent locator";

/// Largest dynamic/differencing disk (SV; qemu `VHD_MAX_SECTORS`).
const MAX_DYNAMIC_SIZE: u64 = 2040 << 30;

/// A footer as found at some offset.
struct FoundFooter {
    offset: u64,
    bytes: Vec<u8>,
    checksum_ok: bool,
}

fn footer_at(b: &Bytes, off: u64, n: usize) -> Option<FoundFooter> {
    let mut bytes = b.get(off, n)?;
    if bytes.get(..8) != Some(&FOOTER_COOKIE[..]) {
        return None;
    }
    bytes.resize(FOOTER_BYTES, 0);
    let stored = be32(&bytes, format::FOOTER_CHECKSUM_OFFSET);
    let checksum_ok = format::checksum(&bytes, format::FOOTER_CHECKSUM_OFFSET) == stored;
    Some(FoundFooter {
        offset: off,
        bytes,
        checksum_ok,
    })
}

/// Byte ranges `[start, end)` that hold metadata.
type Ranges = Vec<(u64, u64, &'static str)>;

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

pub(super) fn check(b: &Bytes, limits: &Limits) -> Vec<Finding> {
    let mut s = Sink::default();
    check_into(b, limits, &mut s);
    s.finish()
}

fn check_into(b: &Bytes, limits: &Limits, s: &mut Sink) {
    if b.len < 511 {
        s.add(
            "vhd.file.too_small",
            FOOTER,
            Some(0),
            format!("the file has {} bytes, less than one footer", b.len),
        );
        return;
    }
    let end = b
        .len
        .checked_sub(512)
        .and_then(|o| footer_at(b, o, 512))
        .or_else(|| b.len.checked_sub(511).and_then(|o| footer_at(b, o, 511)));
    let front = footer_at(b, 0, 512).filter(|f| {
        // On a fixed disk offset 0 is guest data; a footer copy only exists on sparse disks.
        let t = be32(&f.bytes, 60);
        t == DISK_TYPE_DYNAMIC || t == DISK_TYPE_DIFFERENCING
    });
    let front = front.filter(|f| end.as_ref().is_none_or(|e| e.offset != f.offset));
    match &end {
        None => s.add(
            "vhd.footer.missing",
            FOOTER,
            Some(b.len.saturating_sub(512)),
            if front.is_some() {
                "no `conectix` cookie in the last 512 (or 511) bytes; the copy at offset 0 survives"
            } else {
                "no `conectix` cookie in the last 512 (or 511) bytes"
            },
        ),
        Some(e) => {
            if e.offset == b.len.saturating_sub(511) {
                s.add(
                    "vhd.footer.short",
                    FOOTER,
                    Some(e.offset),
                    "the end footer is 511 bytes long (written before Virtual PC 2004)",
                );
            }
            if !e.checksum_ok {
                s.add(
                    "vhd.footer.checksum",
                    FOOTER,
                    Some(e.offset + 64),
                    format!(
                        "checksum {:#010x}, computed {:#010x}",
                        be32(&e.bytes, 64),
                        format::checksum(&e.bytes, 64)
                    ),
                );
            }
        }
    }
    if let Some(f) = &front {
        if !f.checksum_ok {
            s.add(
                "vhd.footer_copy.checksum",
                COPY,
                Some(64),
                format!(
                    "checksum {:#010x}, computed {:#010x}",
                    be32(&f.bytes, 64),
                    format::checksum(&f.bytes, 64)
                ),
            );
        }
    }
    // The footer to trust: a valid end footer, else a valid copy, else whatever is there.
    let (reference, ref_name) = match (&end, &front) {
        (Some(e), _) if e.checksum_ok => (e, FOOTER),
        (_, Some(f)) if f.checksum_ok => (f, COPY),
        (Some(e), _) => (e, FOOTER),
        (None, Some(f)) => (f, COPY),
        (None, None) => return,
    };
    let fb = &reference.bytes;
    let footer_offset = end.as_ref().map_or(b.len, |e| e.offset);
    let disk_type = be32(fb, 60);
    if let (Some(e), Some(f)) = (&end, &front) {
        if e.checksum_ok && f.checksum_ok && e.bytes != f.bytes {
            let first = e
                .bytes
                .iter()
                .zip(&f.bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            s.add(
                "vhd.footer_copy.differs",
                COPY,
                Some(first as u64),
                format!("the copy at offset 0 differs from the end footer from byte {first}"),
            );
        }
    }
    if (disk_type == DISK_TYPE_DYNAMIC || disk_type == DISK_TYPE_DIFFERENCING)
        && front.is_none()
        && end.is_some()
    {
        s.add(
            "vhd.footer_copy.missing",
            COPY,
            Some(0),
            "no `conectix` footer copy at offset 0",
        );
    }
    let ro = reference.offset;
    let version = be32(fb, 12);
    if version != VERSION_1_0 {
        s.add(
            "vhd.footer.version",
            ref_name,
            Some(ro + 12),
            format!("file format version {version:#010x}, expected 0x00010000"),
        );
    }
    let features = be32(fb, 8);
    if features & !(FEATURE_TEMPORARY | FEATURE_RESERVED) != 0 || features & FEATURE_RESERVED == 0 {
        s.add(
            "vhd.footer.features",
            ref_name,
            Some(ro + 8),
            format!("features {features:#010x} (expected bit 1 set and no bits above 1)"),
        );
    }
    if fb.get(84).copied().unwrap_or(0) != 0 {
        s.add(
            "vhd.footer.saved_state",
            ref_name,
            Some(ro + 84),
            "the saved-state flag is set (the VM was saved with this disk)",
        );
    }
    let size = be64(fb, 48);
    if size == 0 {
        s.add(
            "vhd.footer.size_zero",
            ref_name,
            Some(ro + 48),
            "current size is 0",
        );
    } else if size % 512 != 0 {
        s.add(
            "vhd.footer.size_unaligned",
            ref_name,
            Some(ro + 48),
            format!("current size {size} is not a multiple of 512"),
        );
    }
    let chs = format::chs_bytes(u16::from_be_bytes([fb[56], fb[57]]), fb[58], fb[59]);
    let max_chs = format::chs_bytes(65535, 16, 255);
    if chs < size.min(max_chs) && chs < size {
        let limit = size.min(max_chs);
        // Windows rounds geometry down a little (4 MiB -> 120/4/17); flag only real gaps.
        if limit - chs > limit / 16 {
            s.add(
                "vhd.footer.geometry",
                ref_name,
                Some(ro + 56),
                format!("CHS geometry covers {chs} bytes of the {size}-byte disk"),
            );
        }
    }
    let data_offset = be64(fb, 16);
    match disk_type {
        DISK_TYPE_FIXED => {
            if data_offset != u64::MAX && data_offset != 0xFFFF_FFFF {
                s.add(
                    "vhd.footer.data_offset",
                    ref_name,
                    Some(ro + 16),
                    format!("fixed disk data offset {data_offset:#x}, expected all ones"),
                );
            }
            if size > footer_offset {
                s.add(
                    "vhd.fixed.size_mismatch",
                    ref_name,
                    Some(ro + 48),
                    format!(
                        "current size {size} is larger than the {footer_offset} bytes before the footer"
                    ),
                );
            }
        }
        DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING => {
            if size > MAX_DYNAMIC_SIZE {
                s.add(
                    "vhd.footer.size_too_large",
                    ref_name,
                    Some(ro + 48),
                    format!("current size {size} is above the 2040 GiB maximum of sparse VHDs"),
                );
            }
            check_dynamic(b, limits, s, fb, footer_offset, disk_type);
        }
        t => s.add(
            "vhd.footer.disk_type",
            ref_name,
            Some(ro + 60),
            format!("disk type {t}, expected 2 (fixed), 3 (dynamic) or 4 (differencing)"),
        ),
    }
}

fn check_dynamic(
    b: &Bytes,
    limits: &Limits,
    s: &mut Sink,
    fb: &[u8],
    footer_offset: u64,
    disk_type: u32,
) {
    let size = be64(fb, 48);
    let hdr_off = be64(fb, 16);
    if hdr_off < 512 || hdr_off == u64::MAX {
        s.add(
            "vhd.footer.data_offset",
            FOOTER,
            Some(b.len.saturating_sub(512) + 16),
            format!("data offset {hdr_off:#x} cannot hold the dynamic header"),
        );
        return;
    }
    let Some(h) = hdr_off
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
        return;
    };
    if h.get(..8) != Some(&DYNAMIC_COOKIE[..]) {
        s.add(
            "vhd.header.cookie",
            HEADER,
            Some(hdr_off),
            format!(
                "cookie {:02x?}, expected \"cxsparse\"",
                h.get(..8).unwrap_or(&[])
            ),
        );
        return;
    }
    let stored = be32(&h, format::DYNAMIC_CHECKSUM_OFFSET);
    let computed = format::checksum(&h, format::DYNAMIC_CHECKSUM_OFFSET);
    if stored != computed {
        s.add(
            "vhd.header.checksum",
            HEADER,
            Some(hdr_off + 36),
            format!("checksum {stored:#010x}, computed {computed:#010x}"),
        );
    }
    let hv = be32(&h, 24);
    if hv != VERSION_1_0 {
        s.add(
            "vhd.header.version",
            HEADER,
            Some(hdr_off + 24),
            format!("header version {hv:#010x}, expected 0x00010000"),
        );
    }
    let hdr_range = (hdr_off, hdr_off + DYNAMIC_HEADER_BYTES as u64);
    let mut meta: Ranges = vec![
        (0, 512, "the footer copy"),
        (hdr_range.0, hdr_range.1, "the dynamic header"),
    ];

    // Parent name and locators.
    let diff = disk_type == DISK_TYPE_DIFFERENCING;
    let mut usable = 0usize;
    if diff {
        let name = h
            .get(PARENT_NAME_OFFSET..PARENT_NAME_OFFSET + PARENT_NAME_BYTES)
            .unwrap_or(&[]);
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
                Some(hdr_off + PARENT_NAME_OFFSET as u64),
                crate::vhd::little_endian_warning(&decoded),
            );
        }
        match String::from_utf16(&units) {
            Ok(n) if !n.is_empty() => usable += 1,
            Ok(_) => {}
            Err(_) => s.add(
                "vhd.header.parent_name",
                HEADER,
                Some(hdr_off + PARENT_NAME_OFFSET as u64),
                "parent unicode name is not valid UTF-16BE",
            ),
        }
        if h.get(40..56).is_some_and(|id| id.iter().all(|&x| x == 0)) {
            s.add(
                "vhd.header.parent_id_zero",
                HEADER,
                Some(hdr_off + 40),
                "parent unique id is all zeros",
            );
        }
    }
    let mut loc_ranges: Ranges = Vec::new();
    for i in 0..LOCATOR_ENTRIES {
        let rel = LOCATOR_TABLE_OFFSET + i * LOCATOR_ENTRY_BYTES;
        let Some(e) = h.get(rel..rel + LOCATOR_ENTRY_BYTES) else {
            continue;
        };
        let mut code = [0u8; 4];
        code.copy_from_slice(&e[..4]);
        if code == [0; 4] {
            continue;
        }
        let at = hdr_off + rel as u64;
        let name = format!("{LOCATOR} {}", i + 1);
        if !diff {
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
        let known = [
            format::PLATFORM_W2RU,
            format::PLATFORM_W2KU,
            format::PLATFORM_WI2R,
            format::PLATFORM_WI2K,
            format::PLATFORM_MAC,
            format::PLATFORM_MACX,
        ];
        if !known.contains(&code) {
            s.add(
                "vhd.locator.platform_code",
                name.clone(),
                Some(at),
                format!("unknown platform code `{}`", code_text(code)),
            );
            continue;
        }
        let space = be32(e, 4);
        let dlen = be32(e, 8);
        let doff = be64(e, 16);
        match data_space_bytes(space) {
            Some(sp) if u64::from(dlen) <= sp => {}
            _ => s.add(
                "vhd.locator.length",
                name.clone(),
                Some(at + 4),
                format!("data length {dlen} does not fit data space {space}"),
            ),
        }
        let dend = doff.checked_add(u64::from(dlen));
        let Some(dend) = dend.filter(|&e| e <= footer_offset && doff >= 512) else {
            s.add(
                "vhd.locator.out_of_bounds",
                name,
                Some(at + 16),
                format!(
                    "data at {doff:#x}+{dlen} lies outside the file's data area (footer at {footer_offset:#x})"
                ),
            );
            continue;
        };
        if dlen > 0 && overlaps((doff, dend), hdr_range) {
            s.add(
                "vhd.locator.overlaps_metadata",
                name.clone(),
                Some(at + 16),
                format!("data at {doff:#x}+{dlen} overlaps the dynamic header"),
            );
        }
        if dlen > 0 {
            loc_ranges.push((doff, dend, "locator data"));
        }
        if dlen > limits.max_locator_bytes {
            continue;
        }
        if code == format::PLATFORM_MAC {
            continue;
        }
        let Some(data) = b.get(doff, dlen as usize) else {
            continue;
        };
        match decode_path(code, &data) {
            Ok(p) if !p.is_empty() => usable += 1,
            Ok(_) => {}
            Err(m) => s.add(
                "vhd.locator.undecodable",
                name,
                Some(doff),
                format!("`{}` data does not decode: {m}", code_text(code)),
            ),
        }
    }
    if diff && usable == 0 {
        s.add(
            "vhd.locator.none",
            HEADER,
            Some(hdr_off + LOCATOR_TABLE_OFFSET as u64),
            "differencing disk without a decodable parent name or locator",
        );
    }

    // Block size and BAT.
    let bs = be32(&h, 32);
    let bs_ok = bs >= 512 && bs.is_power_of_two() && bs <= MAX_BLOCK_BYTES;
    if !bs_ok {
        s.add(
            "vhd.header.block_size",
            HEADER,
            Some(hdr_off + 32),
            format!("block size {bs} (must be a power-of-two number of sectors, at most 256 MiB)"),
        );
    }
    let entries = be32(&h, 28);
    if bs_ok && size > 0 {
        let need = size.div_ceil(u64::from(bs));
        if u64::from(entries) < need {
            s.add(
                "vhd.bat.too_small",
                HEADER,
                Some(hdr_off + 28),
                format!("{entries} BAT entries, but {need} are needed for {size} bytes in {bs}-byte blocks"),
            );
        } else if u64::from(entries) > need {
            s.add(
                "vhd.bat.excess_entries",
                HEADER,
                Some(hdr_off + 28),
                format!("{entries} BAT entries, {need} needed"),
            );
        }
    }
    let bat_off = be64(&h, 16);
    let bat_bytes = u64::from(entries) * 4;
    if bat_off % 512 != 0 {
        s.add(
            "vhd.bat.unaligned",
            BAT,
            Some(hdr_off + 16),
            format!("table offset {bat_off:#x} is not a multiple of 512"),
        );
    }
    let Some(bat_end) = bat_off
        .checked_add(bat_bytes)
        .filter(|&e| e <= footer_offset)
    else {
        s.add(
            "vhd.bat.past_eof",
            BAT,
            Some(hdr_off + 16),
            format!(
                "the {entries}-entry BAT at {bat_off:#x} runs past the footer at {footer_offset:#x}"
            ),
        );
        return;
    };
    let bat_range = (bat_off, bat_end.next_multiple_of(512).max(bat_end));
    for (a, z, what) in &meta {
        if bat_bytes > 0 && overlaps(bat_range, (*a, *z)) {
            s.add(
                "vhd.bat.overlaps_metadata",
                BAT,
                Some(bat_off),
                format!("the BAT at {bat_off:#x}..{bat_end:#x} overlaps {what}"),
            );
        }
    }
    for (a, z, _) in &loc_ranges {
        if overlaps((bat_off, bat_end), (*a, *z)) {
            s.add(
                "vhd.locator.overlaps_metadata",
                LOCATOR,
                Some(*a),
                format!("locator data at {a:#x}..{z:#x} overlaps the BAT"),
            );
        }
    }
    meta.push((bat_range.0, bat_range.1, "the BAT"));
    meta.extend(loc_ranges);
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
    if !bs_ok {
        return;
    }
    let Some(raw) = b.get(bat_off, bat_bytes as usize) else {
        return;
    };
    let block_span = format::bitmap_bytes(bs) + u64::from(bs);
    let mut blocks: Vec<(u64, u32)> = Vec::new();
    for (i, c) in raw.chunks_exact(4).enumerate() {
        let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        if e == BAT_UNALLOCATED {
            continue;
        }
        let at = bat_off + 4 * i as u64;
        let start = u64::from(e) * 512;
        let end = start + block_span;
        if end > footer_offset {
            s.add(
                "vhd.block.past_eof",
                BAT,
                Some(at),
                format!(
                    "block {i} at {start:#x}..{end:#x} runs past the footer at {footer_offset:#x}"
                ),
            );
            continue;
        }
        for (a, z, what) in &meta {
            if overlaps((start, end), (*a, *z)) {
                s.add(
                    "vhd.block.overlaps_metadata",
                    BAT,
                    Some(at),
                    format!("block {i} at {start:#x}..{end:#x} overlaps {what}"),
                );
            }
        }
        blocks.push((start, i as u32));
    }
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if let [(a, ia), (b2, ib)] = w {
            if a + block_span > *b2 {
                s.add(
                    "vhd.block.overlap",
                    BAT,
                    Some(bat_off + 4 * u64::from(*ib)),
                    format!("blocks {ia} (at {a:#x}) and {ib} (at {b2:#x}) overlap"),
                );
            }
        }
    }
}
