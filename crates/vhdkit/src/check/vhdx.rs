//! Structural checks of a VHDX file (FORMAT.md Part B).

use super::{le16, le32, le64, Bytes, Finding, Sink};
use crate::guid::from_vhdx_bytes;
use crate::limits::Limits;
use crate::vhdx::format::{
    self, BAT_OFFSET_MASK, BAT_REGION_GUID, BAT_RESERVED_MASK, FILE_PARAMETERS_GUID,
    HEADER_OFFSETS, HEADER_SIZE, LOGICAL_SECTOR_SIZE_GUID, MAX_BLOCK_SIZE, MAX_METADATA_ENTRIES,
    MAX_METADATA_ITEM_BYTES, MAX_REGION_ENTRIES, MAX_VIRTUAL_DISK_SIZE, METADATA_REGION_GUID,
    METADATA_TABLE_SIZE, MIB, MIN_BLOCK_SIZE, PARENT_LOCATOR_GUID, PHYSICAL_SECTOR_SIZE_GUID,
    REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, VIRTUAL_DISK_ID_GUID, VIRTUAL_DISK_SIZE_GUID,
};
use crate::vhdx::log::{self, LogPlace, LogWrite};

const HEADER_NAMES: [&str; 2] = ["vhdx header 1", "vhdx header 2"];
const REGION_NAMES: [&str; 2] = ["vhdx region table 1", "vhdx region table 2"];
const META: &str = "vhdx metadata table";
const BAT: &str = "vhdx bat";

/// A valid header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawHeader {
    pub seq: u64,
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// Check one header slot: `Ok(header)` or `Err((code, message))`.
pub(crate) fn header_status(
    b: &Bytes,
    slot: usize,
) -> std::result::Result<(RawHeader, Vec<u8>), (&'static str, String)> {
    let off = HEADER_OFFSETS[slot & 1];
    let Some(h) = b.get(off, HEADER_SIZE) else {
        return Err((
            "vhdx.header.signature",
            "the file ends before this header".into(),
        ));
    };
    if h.get(..4) != Some(&format::HEADER_SIGNATURE[..]) {
        return Err((
            "vhdx.header.signature",
            format!(
                "signature {:02x?}, expected \"head\"",
                h.get(..4).unwrap_or(&[])
            ),
        ));
    }
    let crc = format::crc32c_with_zeroed(&h, 4);
    let stored = le32(&h, 4);
    if crc != stored {
        return Err((
            "vhdx.header.checksum",
            format!("checksum {stored:#010x}, computed {crc:#010x}"),
        ));
    }
    let version = le16(&h, 66);
    if version != 1 {
        return Err((
            "vhdx.header.version",
            format!("version {version}, expected 1"),
        ));
    }
    let mut log_guid = [0u8; 16];
    log_guid.copy_from_slice(h.get(48..64).unwrap_or(&[0; 16]));
    Ok((
        RawHeader {
            seq: le64(&h, 8),
            log_guid,
            log_version: le16(&h, 64),
            log_length: le32(&h, 68),
            log_offset: le64(&h, 72),
        },
        h,
    ))
}

/// Check one region table slot: `Ok(bytes)` or `Err((code, message))`.
pub(crate) fn region_status(
    b: &Bytes,
    slot: usize,
) -> std::result::Result<Vec<u8>, (&'static str, String)> {
    let off = REGION_TABLE_OFFSETS[slot & 1];
    let Some(t) = b.get(off, REGION_TABLE_SIZE) else {
        return Err((
            "vhdx.region.signature",
            "the file ends before this region table".into(),
        ));
    };
    if t.get(..4) != Some(&format::REGION_TABLE_SIGNATURE[..]) {
        return Err((
            "vhdx.region.signature",
            format!(
                "signature {:02x?}, expected \"regi\"",
                t.get(..4).unwrap_or(&[])
            ),
        ));
    }
    let crc = format::crc32c_with_zeroed(&t, 4);
    let stored = le32(&t, 4);
    if crc != stored {
        return Err((
            "vhdx.region.checksum",
            format!("checksum {stored:#010x}, computed {crc:#010x}"),
        ));
    }
    let n = le32(&t, 8);
    if n > MAX_REGION_ENTRIES {
        return Err((
            "vhdx.region.entry_count",
            format!("{n} entries, at most {MAX_REGION_ENTRIES} allowed"),
        ));
    }
    Ok(t)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

pub(super) fn check(mut b: Bytes, limits: &Limits) -> Vec<Finding> {
    let mut s = Sink::default();
    check_into(&mut b, limits, &mut s);
    s.finish()
}

fn check_into(b: &mut Bytes, limits: &Limits, s: &mut Sink) {
    if b.len < MIB {
        s.add(
            "vhdx.file.too_small",
            "vhdx file",
            Some(0),
            format!(
                "the file has {} bytes; the fixed structures take 1 MiB",
                b.len
            ),
        );
    }
    if b.get(0, 8).as_deref() != Some(&format::FILE_IDENTIFIER_SIGNATURE[..]) {
        s.add(
            "vhdx.ident.signature",
            "vhdx file identifier",
            Some(0),
            "signature is not \"vhdxfile\"",
        );
    }
    // Headers.
    let mut valid: Vec<(usize, RawHeader, Vec<u8>)> = Vec::new();
    for slot in 0..2 {
        match header_status(b, slot) {
            Ok((h, raw)) => valid.push((slot, h, raw)),
            Err((code, m)) => s.add(code, HEADER_NAMES[slot], Some(HEADER_OFFSETS[slot]), m),
        }
    }
    let current = match valid.as_slice() {
        [] => {
            s.add(
                "vhdx.header.none_valid",
                "vhdx header",
                Some(HEADER_OFFSETS[0]),
                "neither header is valid",
            );
            return;
        }
        [one] => one.1,
        [a, c, ..] => {
            if a.1.seq == c.1.seq && a.2.get(..80) != c.2.get(..80) {
                s.add(
                    "vhdx.header.tie",
                    "vhdx header",
                    Some(HEADER_OFFSETS[0]),
                    format!("both headers have sequence number {} but differ", a.1.seq),
                );
            }
            if c.1.seq > a.1.seq {
                c.1
            } else {
                a.1
            }
        }
    };
    let cur_name = "vhdx header (current)";
    let log_guid = from_vhdx_bytes(current.log_guid);
    if current.log_version != 0 && !log_guid.is_nil() {
        s.add(
            "vhdx.header.log_version",
            cur_name,
            None,
            format!("log version {}, expected 0", current.log_version),
        );
    }
    let log_off = current.log_offset;
    let log_len = u64::from(current.log_length);
    let log_ok = log_off % MIB == 0
        && log_off >= MIB
        && log_len % MIB == 0
        && (log_len > 0 || log_guid.is_nil())
        && log_off
            .checked_add(log_len)
            .is_some_and(|e| e <= b.base_len);
    if !log_ok {
        s.add(
            "vhdx.header.log_placement",
            cur_name,
            None,
            format!(
                "log at {log_off:#x}+{log_len:#x}: must be 1 MiB aligned, after the first MiB and inside the {}-byte file",
                b.base_len
            ),
        );
    }
    // Log: replay in memory when dirty, so the rest is checked as a reader would see it.
    if !log_guid.is_nil() && log_ok {
        let place = LogPlace {
            offset: log_off,
            length: log_len,
            guid: log_guid,
        };
        match log::find_active_sequence(b.src, &place, limits.max_log_replay_bytes) {
            Ok(seq) => {
                let (first, last) = seq.sequence_range();
                s.add(
                    "vhdx.log.dirty",
                    "vhdx log",
                    Some(log_off),
                    format!(
                        "the log holds {} unapplied entries (sequence {first}..{last}); checked as replayed",
                        seq.entries.len()
                    ),
                );
                for e in &seq.entries {
                    b.len = b.len.max(e.last_file_offset);
                    for w in &e.writes {
                        match w {
                            LogWrite::Data {
                                file_offset,
                                sector,
                            } => {
                                b.len = b.len.max(file_offset.saturating_add(4096));
                                b.overlay.push((*file_offset, 4096, Some(sector.clone())));
                            }
                            LogWrite::Zero {
                                file_offset,
                                length,
                            } => {
                                b.len = b.len.max(file_offset.saturating_add(*length));
                                b.overlay.push((*file_offset, *length, None));
                            }
                        }
                    }
                }
            }
            Err(e) => s.add(
                "vhdx.log.corrupt",
                "vhdx log",
                Some(log_off),
                format!("the log cannot be replayed: {e}"),
            ),
        }
    }
    // Region tables.
    let mut tables: Vec<(usize, Vec<u8>)> = Vec::new();
    for slot in 0..2 {
        match region_status(b, slot) {
            Ok(t) => tables.push((slot, t)),
            Err((code, m)) => s.add(
                code,
                REGION_NAMES[slot],
                Some(REGION_TABLE_OFFSETS[slot]),
                m,
            ),
        }
    }
    let Some((tslot, table)) = tables.first() else {
        s.add(
            "vhdx.region.none_valid",
            "vhdx region table",
            Some(REGION_TABLE_OFFSETS[0]),
            "neither region table is valid",
        );
        return;
    };
    if let [(_, a), (_, c)] = tables.as_slice() {
        if a != c {
            s.add(
                "vhdx.region.copies_differ",
                REGION_NAMES[1],
                Some(REGION_TABLE_OFFSETS[1]),
                "the two region tables are both valid but differ",
            );
        }
    }
    let tname = REGION_NAMES[*tslot];
    let toff = REGION_TABLE_OFFSETS[*tslot];
    let n = le32(table, 8) as usize;
    let mut regions: Vec<([u8; 16], u64, u64, u64)> = Vec::new(); // guid, offset, length, entry offset
    let mut bat_region = None;
    let mut meta_region = None;
    for i in 0..n {
        let rel = 16 + 32 * i;
        let Some(e) = table.get(rel..rel + 32) else {
            break;
        };
        let at = toff + rel as u64;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&e[..16]);
        let off = le64(e, 16);
        let len = u64::from(le32(e, 24));
        let flags = le32(e, 28);
        let known = guid == BAT_REGION_GUID || guid == METADATA_REGION_GUID;
        if regions.iter().any(|r| r.0 == guid) {
            s.add(
                "vhdx.region.duplicate",
                tname,
                Some(at),
                format!("region {} appears twice", from_vhdx_bytes(guid)),
            );
            continue;
        }
        if !known && flags & format::REGION_REQUIRED != 0 {
            s.add(
                "vhdx.region.unknown_required",
                tname,
                Some(at),
                format!(
                    "unknown region {} is marked required",
                    from_vhdx_bytes(guid)
                ),
            );
        }
        if off % MIB != 0 || len % MIB != 0 || off < MIB || len == 0 {
            s.add(
                "vhdx.region.unaligned",
                tname,
                Some(at + 16),
                format!("region at {off:#x}+{len:#x} is not 1 MiB aligned, empty, or inside the first MiB"),
            );
            continue;
        }
        if off.checked_add(len).is_none_or(|e| e > b.len) {
            s.add(
                "vhdx.region.past_eof",
                tname,
                Some(at + 16),
                format!(
                    "region at {off:#x}+{len:#x} ends past the end of the file ({:#x})",
                    b.len
                ),
            );
            continue;
        }
        if log_ok && log_len > 0 && overlaps((off, off + len), (log_off, log_off + log_len)) {
            s.add(
                "vhdx.region.overlap",
                tname,
                Some(at + 16),
                format!("region at {off:#x}+{len:#x} overlaps the log"),
            );
        }
        for r in &regions {
            if overlaps((off, off + len), (r.1, r.1 + r.2)) {
                s.add(
                    "vhdx.region.overlap",
                    tname,
                    Some(at + 16),
                    format!(
                        "region at {off:#x}+{len:#x} overlaps the region at {:#x}+{:#x}",
                        r.1, r.2
                    ),
                );
            }
        }
        if guid == BAT_REGION_GUID {
            bat_region = Some((off, len));
        } else if guid == METADATA_REGION_GUID {
            meta_region = Some((off, len));
        }
        regions.push((guid, off, len, at));
    }
    let (Some(meta), Some(batr)) = (meta_region, bat_region) else {
        s.add(
            "vhdx.region.missing",
            tname,
            Some(toff),
            format!(
                "missing (or unusable) {}",
                match (meta_region, bat_region) {
                    (None, None) => "BAT and metadata regions",
                    (None, _) => "metadata region",
                    _ => "BAT region",
                }
            ),
        );
        return;
    };
    let Some(params) = check_metadata(b, limits, s, meta) else {
        return;
    };
    let mut busy: Vec<(u64, u64, &'static str)> = vec![(0, MIB, "the first MiB")];
    if log_ok && log_len > 0 {
        busy.push((log_off, log_off + log_len, "the log"));
    }
    for r in &regions {
        busy.push((
            r.1,
            r.1 + r.2,
            if r.0 == BAT_REGION_GUID {
                "the BAT region"
            } else if r.0 == METADATA_REGION_GUID {
                "the metadata region"
            } else {
                "a region"
            },
        ));
    }
    check_bat(b, limits, s, batr, &params, &busy);
}

/// The values the BAT check needs.
pub(crate) struct Params {
    pub block_size: u64,
    pub virtual_size: u64,
    pub logical_sector_size: u64,
    pub has_parent: bool,
}

fn check_metadata(
    b: &Bytes,
    limits: &Limits,
    s: &mut Sink,
    (moff, mlen): (u64, u64),
) -> Option<Params> {
    let Some(t) = b.get(moff, METADATA_TABLE_SIZE) else {
        s.add(
            "vhdx.metadata.signature",
            META,
            Some(moff),
            "the metadata table is outside the file",
        );
        return None;
    };
    if t.get(..8) != Some(&format::METADATA_TABLE_SIGNATURE[..]) {
        s.add(
            "vhdx.metadata.signature",
            META,
            Some(moff),
            format!(
                "signature {:02x?}, expected \"metadata\"",
                t.get(..8).unwrap_or(&[])
            ),
        );
        return None;
    }
    let n = le16(&t, 10);
    if n > MAX_METADATA_ENTRIES {
        s.add(
            "vhdx.metadata.entry_count",
            META,
            Some(moff + 10),
            format!("{n} entries, at most {MAX_METADATA_ENTRIES} allowed"),
        );
        return None;
    }
    let known: [[u8; 16]; 6] = [
        FILE_PARAMETERS_GUID,
        VIRTUAL_DISK_SIZE_GUID,
        VIRTUAL_DISK_ID_GUID,
        LOGICAL_SECTOR_SIZE_GUID,
        PHYSICAL_SECTOR_SIZE_GUID,
        PARENT_LOCATOR_GUID,
    ];
    // (guid, is_user, offset in region, length, entry file offset)
    let mut items: Vec<([u8; 16], bool, u64, u64, u64)> = Vec::new();
    for i in 0..usize::from(n) {
        let rel = 32 + 32 * i;
        let Some(e) = t.get(rel..rel + 32) else {
            break;
        };
        let at = moff + rel as u64;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&e[..16]);
        let off = u64::from(le32(e, 16));
        let len = u64::from(le32(e, 20));
        let flags = le32(e, 24);
        let is_user = flags & format::META_IS_USER != 0;
        if items.iter().any(|it| it.0 == guid && it.1 == is_user) {
            s.add(
                "vhdx.metadata.duplicate",
                META,
                Some(at),
                format!("item {} appears twice", from_vhdx_bytes(guid)),
            );
            continue;
        }
        if !is_user && !known.contains(&guid) && flags & format::META_IS_REQUIRED != 0 {
            s.add(
                "vhdx.metadata.unknown_required",
                META,
                Some(at),
                format!("unknown item {} is marked required", from_vhdx_bytes(guid)),
            );
        }
        let bad = if len == 0 {
            false
        } else {
            off < METADATA_TABLE_SIZE as u64
                || len > u64::from(MAX_METADATA_ITEM_BYTES)
                || off + len > mlen
        };
        if bad {
            s.add(
                "vhdx.metadata.item_bounds",
                META,
                Some(at + 16),
                format!(
                    "item {} at region offset {off:#x}+{len:#x} is out of bounds",
                    from_vhdx_bytes(guid)
                ),
            );
            continue;
        }
        if len > 0 {
            for it in &items {
                if it.3 > 0 && overlaps((off, off + len), (it.2, it.2 + it.3)) {
                    s.add(
                        "vhdx.metadata.item_overlap",
                        META,
                        Some(at + 16),
                        format!(
                            "item {} at {off:#x}+{len:#x} overlaps item {}",
                            from_vhdx_bytes(guid),
                            from_vhdx_bytes(it.0)
                        ),
                    );
                }
            }
        }
        items.push((guid, is_user, off, len, at));
    }
    let item = |g: [u8; 16], want: Option<u64>| -> Option<(Vec<u8>, u64)> {
        let it = items.iter().find(|it| it.0 == g && !it.1)?;
        if want.is_some_and(|w| w != it.3) {
            return None;
        }
        let fo = moff + it.2;
        Some((b.get(fo, usize::try_from(it.3).ok()?)?, fo))
    };
    let missing = |name: &str, s: &mut Sink| {
        s.add(
            "vhdx.metadata.missing_item",
            META,
            Some(moff),
            format!("required item {name} is missing, has the wrong length, or cannot be read"),
        );
    };
    let fp = item(FILE_PARAMETERS_GUID, Some(8));
    let vs = item(VIRTUAL_DISK_SIZE_GUID, Some(8));
    let ls = item(LOGICAL_SECTOR_SIZE_GUID, Some(4));
    let ps = item(PHYSICAL_SECTOR_SIZE_GUID, Some(4));
    if item(VIRTUAL_DISK_ID_GUID, Some(16)).is_none() {
        missing("Virtual Disk ID", s);
    }
    let mut ok = true;
    let (mut block_size, mut has_parent) = (0u64, false);
    match &fp {
        None => {
            missing("File Parameters", s);
            ok = false;
        }
        Some((d, fo)) => {
            let bs = le32(d, 0);
            let flags = le32(d, 4);
            if !(bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)) {
                s.add(
                    "vhdx.metadata.block_size",
                    "vhdx file parameters",
                    Some(*fo),
                    format!("block size {bs}, must be a power of two from 1 to 256 MiB"),
                );
                ok = false;
            }
            if flags & !3 != 0 {
                s.add(
                    "vhdx.metadata.file_parameters",
                    "vhdx file parameters",
                    Some(*fo + 4),
                    format!("flags {flags:#x} have reserved bits set"),
                );
            }
            block_size = u64::from(bs);
            has_parent = flags & format::FP_HAS_PARENT != 0;
        }
    }
    let mut lss = 0u64;
    match &ls {
        None => {
            missing("Logical Sector Size", s);
            ok = false;
        }
        Some((d, fo)) => {
            lss = u64::from(le32(d, 0));
            if lss != 512 && lss != 4096 {
                s.add(
                    "vhdx.metadata.sector_size",
                    "vhdx logical sector size",
                    Some(*fo),
                    format!("logical sector size {lss}, expected 512 or 4096"),
                );
                ok = false;
            }
        }
    }
    match &ps {
        None => missing("Physical Sector Size", s),
        Some((d, fo)) => {
            let p = le32(d, 0);
            if p != 512 && p != 4096 {
                s.add(
                    "vhdx.metadata.sector_size",
                    "vhdx physical sector size",
                    Some(*fo),
                    format!("physical sector size {p}, expected 512 or 4096"),
                );
            }
        }
    }
    let mut size = 0u64;
    match &vs {
        None => {
            missing("Virtual Disk Size", s);
            ok = false;
        }
        Some((d, fo)) => {
            size = le64(d, 0);
            if size == 0 || size > MAX_VIRTUAL_DISK_SIZE || (lss > 0 && size % lss != 0) {
                s.add(
                    "vhdx.metadata.virtual_size",
                    "vhdx virtual disk size",
                    Some(*fo),
                    format!("virtual size {size}: must be non-zero, at most 64 TiB and a multiple of the logical sector size"),
                );
                ok = false;
            }
        }
    }
    let loc = items.iter().find(|it| it.0 == PARENT_LOCATOR_GUID && !it.1);
    match (loc, has_parent) {
        (None, true) => missing("Parent Locator (the disk has a parent)", s),
        (Some(it), false) if fp.is_some() => s.add(
            "vhdx.locator.without_parent",
            "vhdx parent locator",
            Some(moff + it.2),
            "a parent locator item on a disk without HasParent",
        ),
        (Some(it), true) => {
            let fo = moff + it.2;
            match usize::try_from(it.3)
                .ok()
                .filter(|&l| l as u64 <= u64::from(limits.max_metadata_item_bytes))
                .and_then(|l| b.get(fo, l))
            {
                None => s.add(
                    "vhdx.locator.invalid",
                    "vhdx parent locator",
                    Some(fo),
                    "the item cannot be read",
                ),
                Some(d) => match crate::vhdx::locator::parse_locator(&d, fo) {
                    Err(e) => s.add(
                        "vhdx.locator.invalid",
                        "vhdx parent locator",
                        Some(fo),
                        e.to_string(),
                    ),
                    Ok(l) => {
                        if !l.entries.iter().any(|e| {
                            matches!(
                                e.key.as_str(),
                                "relative_path" | "volume_path" | "absolute_win32_path"
                            ) && e.value.as_deref().is_some_and(|v| !v.is_empty())
                        }) {
                            s.add(
                                "vhdx.locator.no_path",
                                "vhdx parent locator",
                                Some(fo),
                                "no decodable relative_path, volume_path or absolute_win32_path",
                            );
                        }
                    }
                },
            }
        }
        _ => {}
    }
    ok.then_some(Params {
        block_size,
        virtual_size: size,
        logical_sector_size: lss,
        has_parent,
    })
}

fn check_bat(
    b: &Bytes,
    limits: &Limits,
    s: &mut Sink,
    (boff, blen): (u64, u64),
    p: &Params,
    busy: &[(u64, u64, &'static str)],
) {
    let cr = (format::SECTORS_PER_CHUNK * p.logical_sector_size) / p.block_size;
    if cr == 0 {
        return;
    }
    let pb = p.virtual_size.div_ceil(p.block_size);
    let sb = pb.div_ceil(cr);
    let need = if p.has_parent {
        sb * (cr + 1)
    } else {
        pb + pb.saturating_sub(1) / cr
    };
    let need_bytes = need.saturating_mul(8);
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
        return;
    }
    let count = need.min(blen / 8);
    if boff.checked_add(count * 8).is_none_or(|end| end > b.len) {
        return;
    }
    let mut present: Vec<(u64, u64, u64)> = Vec::new(); // start, end, index
    let mut sb_needed: Vec<u64> = Vec::new();
    let mut sb_present: Vec<u64> = Vec::new();
    // The table is read 1 MiB at a time, never held whole.
    const PER_READ: u64 = 1 << 17;
    let mut first = 0u64;
    while first < count {
        let n = (count - first).min(PER_READ);
        let Some(raw) = usize::try_from(n * 8)
            .ok()
            .and_then(|k| b.get(boff + first * 8, k))
        else {
            return;
        };
        for (j, c) in raw.chunks_exact(8).enumerate() {
            let i = first + j as u64;
            let e = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if e == 0 {
                continue;
            }
            let at = boff + 8 * i;
            let state = (e & 7) as u8;
            let off = e & BAT_OFFSET_MASK;
            let is_sb = i % (cr + 1) == cr;
            if e & BAT_RESERVED_MASK != 0 {
                s.add(
                    "vhdx.bat.reserved_bits",
                    BAT,
                    Some(at),
                    format!("entry {i} ({e:#018x}) has reserved bits set"),
                );
            }
            let span = if is_sb {
                let ok = state == format::SB_BLOCK_NOT_PRESENT || state == format::SB_BLOCK_PRESENT;
                if !ok {
                    s.add(
                        "vhdx.bat.state_invalid",
                        BAT,
                        Some(at),
                        format!("sector bitmap entry {i} has state {state} (0 or 6 allowed)"),
                    );
                    continue;
                }
                if state != format::SB_BLOCK_PRESENT {
                    continue;
                }
                sb_present.push(i / (cr + 1));
                MIB
            } else {
                match state {
                    format::PAYLOAD_BLOCK_NOT_PRESENT | format::PAYLOAD_BLOCK_ZERO => {
                        if off != 0 {
                            s.add(
                                "vhdx.bat.offset_reserved",
                                BAT,
                                Some(at),
                                format!("entry {i} has state {state} but file offset {off:#x}"),
                            );
                        }
                        continue;
                    }
                    format::PAYLOAD_BLOCK_UNDEFINED | format::PAYLOAD_BLOCK_UNMAPPED => continue,
                    format::PAYLOAD_BLOCK_FULLY_PRESENT => {}
                    format::PAYLOAD_BLOCK_PARTIALLY_PRESENT if p.has_parent => {
                        sb_needed.push(i / (cr + 1));
                    }
                    _ => {
                        s.add(
                            "vhdx.bat.state_invalid",
                            BAT,
                            Some(at),
                            format!(
                                "payload entry {i} has state {state}{}",
                                if state == format::PAYLOAD_BLOCK_PARTIALLY_PRESENT {
                                    " (partially present) on a disk without a parent"
                                } else {
                                    " (reserved)"
                                }
                            ),
                        );
                        continue;
                    }
                }
                p.block_size
            };
            if off < MIB {
                s.add(
                    "vhdx.bat.offset_invalid",
                    BAT,
                    Some(at),
                    format!("entry {i} is present at file offset {off:#x}, inside the first MiB"),
                );
                continue;
            }
            let end = off.saturating_add(span);
            if end > b.len {
                s.add(
                    "vhdx.bat.past_eof",
                    BAT,
                    Some(at),
                    format!(
                    "entry {i}: block at {off:#x}..{end:#x} ends past the end of the file ({:#x})",
                    b.len
                ),
                );
                continue;
            }
            for (a, z, what) in busy {
                if overlaps((off, end), (*a, *z)) {
                    s.add(
                        "vhdx.bat.overlaps_metadata",
                        BAT,
                        Some(at),
                        format!("entry {i}: block at {off:#x}..{end:#x} overlaps {what}"),
                    );
                }
            }
            present.push((off, end, i));
        }
        first += n;
    }
    present.sort_unstable();
    let mut max_end: Option<(u64, u64)> = None;
    for (start, end, i) in &present {
        if let Some((me, mi)) = max_end {
            if *start < me {
                s.add(
                    "vhdx.bat.overlap",
                    BAT,
                    Some(boff + 8 * i),
                    format!("entry {i} (at {start:#x}) overlaps entry {mi}"),
                );
            }
        }
        if max_end.is_none_or(|(me, _)| *end > me) {
            max_end = Some((*end, *i));
        }
    }
    sb_needed.dedup();
    let sb_present: std::collections::HashSet<u64> = sb_present.into_iter().collect();
    for c in sb_needed {
        if !sb_present.contains(&c) {
            s.add(
                "vhdx.bat.bitmap_missing",
                BAT,
                Some(boff + 8 * (c * (cr + 1) + cr)),
                format!("chunk {c} has partially present blocks but no sector bitmap block"),
            );
        }
    }
}
