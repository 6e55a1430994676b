//! Structural checks of a VHDX file (FORMAT.md Part B).
//!
//! Headers, region tables, the metadata table and its items are read as the raw structs of
//! [`crate::vhdx::format`], not validated, and each field is judged on its own, so one broken
//! field does not hide the findings about the others. Here: the file identifier, headers, log
//! and region tables; [`metadata`] and [`bat`] check what the regions hold.

mod bat;
mod metadata;

use std::ops::Range;

use binrw::BinRead;

use super::{Bytes, Finding, Findings};
use crate::guid::from_vhdx_bytes;
use crate::limits::Limits;
use crate::util::overlaps;
use crate::vhdx::format::{
    self, parse, region_table_fields as rt, Header, RegionTableEntry, RegionTableHeader,
    BAT_REGION_GUID, HEADER_OFFSETS, HEADER_SIZE, KIB4, MAX_REGION_ENTRIES, METADATA_REGION_GUID,
    MIB, REGION_TABLE_ENTRY_SIZE, REGION_TABLE_HEADER_SIZE, REGION_TABLE_OFFSETS,
    REGION_TABLE_SIZE,
};
use crate::vhdx::log::{self, LogPlace, LogWrite};

const HEADER_NAMES: [&str; 2] = ["vhdx header 1", "vhdx header 2"];
const REGION_NAMES: [&str; 2] = ["vhdx region table 1", "vhdx region table 2"];

/// A broken header or region table: the finding code and its message.
pub(crate) type Broken = (&'static str, String);

/// A structure at a fixed place with a signature and a CRC-32C: what to call it, and the codes
/// of its findings.
struct Checksummed {
    /// "header" or "region table".
    what: &'static str,
    signature: &'static [u8],
    /// Where the checksum field starts.
    checksum_at: usize,
    signature_code: &'static str,
    checksum_code: &'static str,
}

const HEADER: Checksummed = Checksummed {
    what: "header",
    signature: &format::HEADER_SIGNATURE,
    checksum_at: format::CHECKSUM_OFFSET,
    signature_code: "vhdx.header.signature",
    checksum_code: "vhdx.header.checksum",
};

const REGION_TABLE: Checksummed = Checksummed {
    what: "region table",
    signature: &format::REGION_TABLE_SIGNATURE,
    checksum_at: format::CHECKSUM_OFFSET,
    signature_code: "vhdx.region.signature",
    checksum_code: "vhdx.region.checksum",
};

/// The `size` bytes of `c` at `off` and the struct `T` at their start, when the signature and
/// checksum (`stored` gives the one in `T`) are right.
fn read_checksummed<T>(
    b: &Bytes,
    off: u64,
    size: usize,
    name: &'static str,
    c: &Checksummed,
    stored: fn(&T) -> u32,
) -> std::result::Result<(T, Vec<u8>), Broken>
where
    T: for<'a> BinRead<Args<'a> = ()>,
{
    let Some(bytes) = b.get(off, size) else {
        return Err((
            c.signature_code,
            format!("the file ends before this {}", c.what),
        ));
    };
    let signature = bytes.get(..c.signature.len()).unwrap_or(&[]);
    if signature != c.signature {
        return Err((
            c.signature_code,
            format!(
                "signature {signature:02x?}, expected \"{}\"",
                String::from_utf8_lossy(c.signature)
            ),
        ));
    }
    let v: T = parse(&bytes, name, off).map_err(|e| (c.signature_code, e.to_string()))?;
    let (crc, stored) = (
        format::crc32c_with_zeroed(&bytes, c.checksum_at),
        stored(&v),
    );
    if crc != stored {
        return Err((
            c.checksum_code,
            format!("checksum {stored:#010x}, computed {crc:#010x}"),
        ));
    }
    Ok((v, bytes))
}

/// Check one header slot: its fields, or what is wrong with it.
pub(crate) fn header_status(b: &Bytes, slot: usize) -> std::result::Result<Header, Broken> {
    let (off, name) = (HEADER_OFFSETS[slot & 1], HEADER_NAMES[slot & 1]);
    let (header, _) =
        read_checksummed(b, off, HEADER_SIZE, name, &HEADER, |h: &Header| h.checksum)?;
    if header.version != 1 {
        return Err((
            "vhdx.header.version",
            format!("version {}, expected 1", header.version),
        ));
    }
    Ok(header)
}

/// Check one region table slot: its header and bytes, or what is wrong with it.
pub(crate) fn region_status(
    b: &Bytes,
    slot: usize,
) -> std::result::Result<(RegionTableHeader, Vec<u8>), Broken> {
    let (off, name) = (REGION_TABLE_OFFSETS[slot & 1], REGION_NAMES[slot & 1]);
    let (header, t) = read_checksummed(
        b,
        off,
        REGION_TABLE_SIZE,
        name,
        &REGION_TABLE,
        |h: &RegionTableHeader| h.checksum,
    )?;
    let n = header.entry_count;
    if n > MAX_REGION_ENTRIES {
        return Err((
            "vhdx.region.entry_count",
            format!("{n} entries, at most {MAX_REGION_ENTRIES} allowed"),
        ));
    }
    Ok((header, t))
}

pub(super) fn check(mut b: Bytes, limits: &Limits) -> Vec<Finding> {
    let mut s = Findings::default();
    check_into(&mut b, limits, &mut s);
    s.finish()
}

fn check_into(b: &mut Bytes, limits: &Limits, s: &mut Findings) {
    check_identifier(b, s);
    let Some(current) = check_headers(b, s) else {
        return;
    };
    let log = check_log_placement(b, s, &current);
    // Log: replay in memory when dirty, so the rest is checked as a reader would see it.
    if let Some(place) = log.as_ref().filter(|l| !l.guid.is_nil()) {
        replay_log(b, limits, s, place);
    }
    let log_range = log
        .filter(|l| l.length > 0)
        .map(|l| l.offset..l.offset + l.length);
    let Some((slot, header, table)) = check_region_tables(b, s) else {
        return;
    };
    let regions = check_regions(b, s, slot, &header, &table, log_range.as_ref());
    let (Some(meta), Some(batr)) = (regions.metadata.clone(), regions.bat.clone()) else {
        s.add(
            "vhdx.region.missing",
            REGION_NAMES[slot],
            Some(REGION_TABLE_OFFSETS[slot]),
            format!(
                "missing (or unusable) {}",
                match (&regions.metadata, &regions.bat) {
                    (None, None) => "BAT and metadata regions",
                    (None, _) => "metadata region",
                    _ => "BAT region",
                }
            ),
        );
        return;
    };
    let Some(params) = metadata::check(b, limits, s, meta) else {
        return;
    };
    let busy = regions.busy(log_range);
    bat::check(b, limits, s, batr, &params, &busy);
}

/// The file is at least 1 MiB and starts with `vhdxfile`.
fn check_identifier(b: &Bytes, s: &mut Findings) {
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
    let signature = format::FILE_IDENTIFIER_SIGNATURE;
    if b.get(0, signature.len()).as_deref() != Some(&signature[..]) {
        s.add(
            "vhdx.ident.signature",
            "vhdx file identifier",
            Some(0),
            "signature is not \"vhdxfile\"",
        );
    }
}

/// Both header slots; the current header (the valid one with the larger sequence number), or
/// `None` when neither is valid.
fn check_headers(b: &Bytes, s: &mut Findings) -> Option<Header> {
    let mut valid: Vec<Header> = Vec::new();
    for slot in 0..2 {
        match header_status(b, slot) {
            Ok(h) => {
                if h.sequence_number == u64::MAX {
                    s.add(
                        "vhdx.header.sequence_exhausted",
                        HEADER_NAMES[slot],
                        Some(HEADER_OFFSETS[slot]),
                        "sequence number at its maximum: no header update can follow it",
                    );
                }
                valid.push(h);
            }
            Err((code, m)) => s.add(code, HEADER_NAMES[slot], Some(HEADER_OFFSETS[slot]), m),
        }
    }
    match valid.as_slice() {
        [] => {
            s.add(
                "vhdx.header.none_valid",
                "vhdx header",
                Some(HEADER_OFFSETS[0]),
                "neither header is valid",
            );
            None
        }
        [one] => Some(one.clone()),
        [a, c, ..] => {
            if a.sequence_number == c.sequence_number && a != c {
                s.add(
                    "vhdx.header.tie",
                    "vhdx header",
                    Some(HEADER_OFFSETS[0]),
                    format!(
                        "both headers have sequence number {} but differ",
                        a.sequence_number
                    ),
                );
            }
            Some(if c.sequence_number > a.sequence_number {
                c.clone()
            } else {
                a.clone()
            })
        }
    }
}

/// The log version and placement of the current header: the log, when it lies where a log may.
fn check_log_placement(b: &Bytes, s: &mut Findings, current: &Header) -> Option<LogPlace> {
    const CURRENT: &str = "vhdx header (current)";
    let guid = from_vhdx_bytes(current.log_guid);
    if current.log_version != 0 && !guid.is_nil() {
        s.add(
            "vhdx.header.log_version",
            CURRENT,
            None,
            format!("log version {}, expected 0", current.log_version),
        );
    }
    let offset = current.log_offset;
    let length = u64::from(current.log_length);
    let ok = offset % MIB == 0
        && offset >= MIB
        && length % MIB == 0
        && (length > 0 || guid.is_nil())
        && offset.checked_add(length).is_some_and(|e| e <= b.base_len);
    if !ok {
        s.add(
            "vhdx.header.log_placement",
            CURRENT,
            None,
            format!(
                "log at {offset:#x}+{length:#x}: must be 1 MiB aligned, after the first MiB and inside the {}-byte file",
                b.base_len
            ),
        );
        return None;
    }
    Some(LogPlace {
        offset,
        length,
        guid,
    })
}

/// Replay the active log sequence over `b` in memory (a dirty log), or report it corrupt.
fn replay_log(b: &mut Bytes, limits: &Limits, s: &mut Findings, place: &LogPlace) {
    let seq = match log::find_active_sequence(b.src, place, limits.max_log_replay_bytes) {
        Ok(seq) => seq,
        Err(e) => {
            s.add(
                "vhdx.log.corrupt",
                "vhdx log",
                Some(place.offset),
                format!("the log cannot be replayed: {e}"),
            );
            return;
        }
    };
    let (first, last) = seq.sequence_range();
    s.add(
        "vhdx.log.dirty",
        "vhdx log",
        Some(place.offset),
        format!(
            "the log holds {} unapplied entries (sequence {first}..{last}); checked as replayed",
            seq.entries.len()
        ),
    );
    for e in &seq.entries {
        b.len = b.len.max(e.last_file_offset);
        for w in &e.writes {
            let (offset, length) = match w {
                LogWrite::Data { file_offset, .. } | LogWrite::Logged { file_offset, .. } => {
                    (*file_offset, KIB4)
                }
                LogWrite::Zero {
                    file_offset,
                    length,
                } => (*file_offset, *length),
            };
            b.len = b.len.max(offset.saturating_add(length));
        }
    }
    b.replay = Some(log::ReplayMap::new(&seq));
}

/// Both region table slots: the slot of the first valid table, its header and its bytes.
fn check_region_tables(b: &Bytes, s: &mut Findings) -> Option<(usize, RegionTableHeader, Vec<u8>)> {
    let mut tables: Vec<(usize, RegionTableHeader, Vec<u8>)> = Vec::new();
    for slot in 0..2 {
        match region_status(b, slot) {
            Ok((h, t)) => tables.push((slot, h, t)),
            Err((code, m)) => s.add(
                code,
                REGION_NAMES[slot],
                Some(REGION_TABLE_OFFSETS[slot]),
                m,
            ),
        }
    }
    if let [(_, _, a), (_, _, c)] = tables.as_slice() {
        if a != c {
            s.add(
                "vhdx.region.copies_differ",
                REGION_NAMES[1],
                Some(REGION_TABLE_OFFSETS[1]),
                "the two region tables are both valid but differ",
            );
        }
    }
    if tables.is_empty() {
        s.add(
            "vhdx.region.none_valid",
            "vhdx region table",
            Some(REGION_TABLE_OFFSETS[0]),
            "neither region table is valid",
        );
    }
    tables.into_iter().next()
}

/// The usable regions of a table: each one's GUID and range, and where the two known ones are.
#[derive(Default)]
struct Regions {
    all: Vec<([u8; 16], Range<u64>)>,
    bat: Option<Range<u64>>,
    metadata: Option<Range<u64>>,
}

impl Regions {
    /// What no payload or bitmap block may overlap: the first MiB, the log, every region.
    fn busy(&self, log: Option<Range<u64>>) -> Vec<(Range<u64>, &'static str)> {
        let mut busy = vec![(0..MIB, "the first MiB")];
        busy.extend(log.map(|l| (l, "the log")));
        for (guid, r) in &self.all {
            let what = if *guid == BAT_REGION_GUID {
                "the BAT region"
            } else if *guid == METADATA_REGION_GUID {
                "the metadata region"
            } else {
                "a region"
            };
            busy.push((r.clone(), what));
        }
        busy
    }
}

/// Every entry of the region table in `slot`.
fn check_regions(
    b: &Bytes,
    s: &mut Findings,
    slot: usize,
    header: &RegionTableHeader,
    table: &[u8],
    log: Option<&Range<u64>>,
) -> Regions {
    let (name, toff) = (REGION_NAMES[slot], REGION_TABLE_OFFSETS[slot]);
    let mut regions = Regions::default();
    let count = usize::try_from(header.entry_count).unwrap_or(usize::MAX);
    let (first, size) = (
        REGION_TABLE_HEADER_SIZE as usize,
        REGION_TABLE_ENTRY_SIZE as usize,
    );
    for rel in (first..).step_by(size).take(count) {
        let Some(e) = table
            .get(rel..rel + size)
            .and_then(|e| parse::<RegionTableEntry>(e, name, toff).ok())
        else {
            break;
        };
        let at = toff + rel as u64;
        if let Some(range) = check_region(b, s, name, at, &e, &regions, log) {
            if e.guid == BAT_REGION_GUID {
                regions.bat = Some(range.clone());
            } else if e.guid == METADATA_REGION_GUID {
                regions.metadata = Some(range.clone());
            }
            regions.all.push((e.guid, range));
        }
    }
    regions
}

/// One region entry (at `at`); its range when it is usable.
fn check_region(
    b: &Bytes,
    s: &mut Findings,
    name: &'static str,
    at: u64,
    e: &RegionTableEntry,
    regions: &Regions,
    log: Option<&Range<u64>>,
) -> Option<Range<u64>> {
    let guid = e.guid;
    if regions.all.iter().any(|r| r.0 == guid) {
        s.add(
            "vhdx.region.duplicate",
            name,
            Some(at),
            format!("region {} appears twice", from_vhdx_bytes(guid)),
        );
        return None;
    }
    let known = guid == BAT_REGION_GUID || guid == METADATA_REGION_GUID;
    if !known && e.flags & format::REGION_REQUIRED != 0 {
        s.add(
            "vhdx.region.unknown_required",
            name,
            Some(at),
            format!(
                "unknown region {} is marked required",
                from_vhdx_bytes(guid)
            ),
        );
    }
    let (off, len) = (e.file_offset, u64::from(e.length));
    let at = Some(at + rt::ENTRY_FILE_OFFSET);
    if off % MIB != 0 || len % MIB != 0 || off < MIB || len == 0 {
        s.add(
            "vhdx.region.unaligned",
            name,
            at,
            format!(
                "region at {off:#x}+{len:#x} is not 1 MiB aligned, empty, or inside the first MiB"
            ),
        );
        return None;
    }
    let Some(range) = off
        .checked_add(len)
        .filter(|&end| end <= b.len)
        .map(|end| off..end)
    else {
        s.add(
            "vhdx.region.past_eof",
            name,
            at,
            format!(
                "region at {off:#x}+{len:#x} ends past the end of the file ({:#x})",
                b.len
            ),
        );
        return None;
    };
    report_region_overlaps(s, name, at, &range, regions, log);
    Some(range)
}

/// A usable region (entry field at `at`) that overlaps the log or a region before it.
fn report_region_overlaps(
    s: &mut Findings,
    name: &'static str,
    at: Option<u64>,
    range: &Range<u64>,
    regions: &Regions,
    log: Option<&Range<u64>>,
) {
    let (off, len) = (range.start, range.end - range.start);
    if log.is_some_and(|l| overlaps(range, l)) {
        s.add(
            "vhdx.region.overlap",
            name,
            at,
            format!("region at {off:#x}+{len:#x} overlaps the log"),
        );
    }
    for (_, r) in &regions.all {
        if overlaps(range, r) {
            s.add(
                "vhdx.region.overlap",
                name,
                at,
                format!(
                    "region at {off:#x}+{len:#x} overlaps the region at {:#x}+{:#x}",
                    r.start,
                    r.end - r.start
                ),
            );
        }
    }
}
