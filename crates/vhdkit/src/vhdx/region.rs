//! The two region tables: validity, the copy in use, and the placement rules of each region.

use uuid::Uuid;

use super::format::{
    self, RegionTableEntry, RegionTableHeader, BAT_REGION_GUID, MAX_REGION_ENTRIES,
    METADATA_REGION_GUID, MIB, REGION_REQUIRED, REGION_TABLE_ENTRY_COUNT_OFFSET,
    REGION_TABLE_ENTRY_SIZE, REGION_TABLE_HEADER_SIZE, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE,
};
use super::header::{check_signed, Where};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::source::{read_struct, Source};
use crate::util::overlaps;

const NAMES: [&str; 2] = ["vhdx region table 1", "vhdx region table 2"];
/// [`REGION_TABLE_ENTRY_SIZE`] as a slice length.
const ENTRY_BYTES: usize = REGION_TABLE_ENTRY_SIZE as usize;

/// One region entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Region {
    pub guid: Uuid,
    pub file_offset: u64,
    pub length: u64,
    pub required: bool,
    pub name: Option<&'static str>,
}

/// What was found in one region table copy.
#[derive(Debug, Clone)]
pub(crate) struct TableCopy {
    pub offset: u64,
    pub entries: Option<Vec<Region>>,
    pub error: Option<String>,
}

/// The region tables.
#[derive(Debug, Clone)]
pub(crate) struct Regions {
    pub copies: [TableCopy; 2],
    pub bat: Region,
    pub metadata: Region,
    pub all: Vec<Region>,
    pub warnings: Vec<String>,
}

fn name_of(guid: &[u8; 16]) -> Option<&'static str> {
    if *guid == BAT_REGION_GUID {
        Some("bat")
    } else if *guid == METADATA_REGION_GUID {
        Some("metadata")
    } else {
        None
    }
}

fn parse_table(buf: &[u8], structure: &'static str, offset: u64) -> Result<Vec<Region>> {
    let h: RegionTableHeader = format::parse(buf, structure, offset)?;
    let at = Where {
        structure,
        offset,
        codes: ["vhdx.region.signature", "vhdx.region.checksum"],
    };
    check_signed(
        buf,
        &at,
        &h.signature,
        &format::REGION_TABLE_SIGNATURE,
        h.checksum,
    )?;
    if h.entry_count > MAX_REGION_ENTRIES {
        return Err(Error::corrupt(
            structure,
            offset + REGION_TABLE_ENTRY_COUNT_OFFSET,
            format!(
                "entry count {}, allowed 0..={MAX_REGION_ENTRIES}",
                h.entry_count
            ),
        )
        .with_code("vhdx.region.entry_count"));
    }
    let mut out = Vec::new();
    for i in 0..h.entry_count {
        let rel = entry_offset(u64::from(i));
        let at = offset + rel;
        let bytes = usize::try_from(rel)
            .ok()
            .and_then(|start| buf.get(start..)?.get(..ENTRY_BYTES))
            .ok_or_else(|| {
                Error::corrupt(structure, at, "entry outside the table")
                    .with_code("vhdx.region.entry_count")
            })?;
        let e: RegionTableEntry = format::parse(bytes, structure, at)?;
        out.push(Region {
            guid: from_vhdx_bytes(e.guid),
            file_offset: e.file_offset,
            length: u64::from(e.length),
            required: e.flags & REGION_REQUIRED != 0,
            name: name_of(&e.guid),
        });
    }
    Ok(out)
}

/// Offset of entry `i` from the start of a region table (`i` is below 2048).
fn entry_offset(i: u64) -> u64 {
    REGION_TABLE_HEADER_SIZE + REGION_TABLE_ENTRY_SIZE * i
}

/// Read both copies; each is kept for `info` with its parse result.
fn read_copies(src: &dyn Source) -> ([TableCopy; 2], [Result<Vec<Region>>; 2]) {
    let read = |i: usize| {
        let name = NAMES.get(i).copied().unwrap_or("vhdx region table");
        let off = REGION_TABLE_OFFSETS.get(i).copied().unwrap_or(0);
        let mut buf = vec![0u8; REGION_TABLE_SIZE];
        let r = read_struct(src, off, &mut buf, name).and_then(|()| parse_table(&buf, name, off));
        let copy = TableCopy {
            offset: off,
            entries: r.as_ref().ok().cloned(),
            error: r.as_ref().err().map(|e| e.to_string()),
        };
        (copy, r)
    };
    let (c1, r1) = read(0);
    let (c2, r2) = read(1);
    ([c1, c2], [r1, r2])
}

/// The copy in use: the first valid one (SX: both must match; a difference is a warning).
fn choose(
    t1: Result<Vec<Region>>,
    t2: Result<Vec<Region>>,
    warnings: &mut Vec<String>,
) -> Result<(usize, Vec<Region>)> {
    Ok(match (t1, t2) {
        (Ok(a), Ok(b)) => {
            if a != b {
                warnings.push("region tables 1 and 2 differ; using region table 1".to_string());
            }
            (0, a)
        }
        (Ok(a), Err(e)) => {
            warnings.push(format!(
                "region table 2 is damaged ({e}); using region table 1"
            ));
            (0, a)
        }
        (Err(e), Ok(b)) => {
            warnings.push(format!(
                "region table 1 is damaged ({e}); using region table 2"
            ));
            (1, b)
        }
        (Err(e1), Err(_)) => return Err(e1),
    })
}

/// Where the table in use sits, for errors.
struct TableAt {
    structure: &'static str,
    offset: u64,
}

/// Check one entry's own rules (unique, known if required, aligned, inside the file, no overlap
/// with `spans`); returns its end.
fn check_entry(
    t: &TableAt,
    table: &[Region],
    i: usize,
    file_len: u64,
    spans: &[(u64, u64, String)],
) -> Result<u64> {
    let Some(r) = table.get(i) else {
        return Err(Error::internal(format!(
            "{} at offset {:#x}: entry {i} not in the table",
            t.structure, t.offset
        )));
    };
    let structure = t.structure;
    let at = t.offset + entry_offset(u64::try_from(i).unwrap_or(0));
    let label = r.name.map_or_else(|| r.guid.to_string(), str::to_string);
    if table.iter().take(i).any(|other| other.guid == r.guid) {
        return Err(Error::corrupt(
            structure,
            at,
            format!("region {label} listed more than once"),
        )
        .with_code("vhdx.region.duplicate"));
    }
    if r.name.is_none() && r.required {
        return Err(Error::unsupported(format!(
            "unknown required vhdx region {} at offset {:#x}",
            r.guid, r.file_offset
        )));
    }
    if r.file_offset % MIB != 0 || r.file_offset < MIB {
        return Err(Error::corrupt(
            structure,
            at,
            format!(
                "region {label} file offset {:#x}: must be a multiple of 1 MiB and at least 1 MiB",
                r.file_offset
            ),
        )
        .with_code("vhdx.region.unaligned"));
    }
    if r.length % MIB != 0 || r.length < MIB {
        return Err(Error::corrupt(
            structure,
            at,
            format!(
                "region {label} length {:#x}: must be a non-zero multiple of 1 MiB",
                r.length
            ),
        )
        .with_code("vhdx.region.unaligned"));
    }
    let end = r
        .file_offset
        .checked_add(r.length)
        .filter(|&e| e <= file_len)
        .ok_or_else(|| {
            Error::corrupt(
                structure,
                at,
                format!(
                    "region {label} at {:#x}+{:#x} ends past the end of the file ({file_len:#x})",
                    r.file_offset, r.length
                ),
            )
            .with_code("vhdx.region.past_eof")
        })?;
    if let Some((_, _, what)) = spans
        .iter()
        .find(|(s, e, _)| overlaps(&(r.file_offset..end), &(*s..*e)))
    {
        return Err(Error::corrupt(
            structure,
            at,
            format!(
                "region {label} at {:#x}+{:#x} overlaps {what}",
                r.file_offset, r.length
            ),
        )
        .with_code("vhdx.region.overlap"));
    }
    Ok(end)
}

/// Read both region tables and check the one in use. `log` is the log's (offset, length) when it
/// has a non-zero length; `file_len` the (overlaid) file length.
pub(crate) fn read_regions(
    src: &dyn Source,
    file_len: u64,
    log: Option<(u64, u64)>,
) -> Result<Regions> {
    let (copies, [t1, t2]) = read_copies(src);
    let mut warnings = Vec::new();
    let (index, table) = choose(t1, t2, &mut warnings)?;
    let t = TableAt {
        structure: NAMES.get(index).copied().unwrap_or("vhdx region table"),
        offset: REGION_TABLE_OFFSETS.get(index).copied().unwrap_or(0),
    };
    let mut bat = None;
    let mut metadata = None;
    // (start, end, what) of everything that must not overlap; the first MiB counts.
    let mut spans: Vec<(u64, u64, String)> = vec![(0, MIB, "the first MiB".to_string())];
    if let Some((lo, ll)) = log {
        if let Some(end) = lo.checked_add(ll) {
            spans.push((lo, end, "the log".to_string()));
        }
    }
    for (i, r) in table.iter().enumerate() {
        let end = check_entry(&t, &table, i, file_len, &spans)?;
        let label = r.name.map_or_else(|| r.guid.to_string(), str::to_string);
        spans.push((r.file_offset, end, format!("region {label}")));
        match r.name {
            Some("bat") => bat = Some(r.clone()),
            Some("metadata") => metadata = Some(r.clone()),
            _ => {}
        }
    }
    let bat = bat.ok_or_else(|| {
        Error::corrupt(t.structure, t.offset, "no BAT region").with_code("vhdx.region.missing")
    })?;
    let metadata = metadata.ok_or_else(|| {
        Error::corrupt(t.structure, t.offset, "no metadata region").with_code("vhdx.region.missing")
    })?;
    Ok(Regions {
        copies,
        bat,
        metadata,
        all: table,
        warnings,
    })
}

/// The region table in use (the first copy that is valid, as [`read_regions`] chooses) with the
/// BAT entry moved to `offset` and `length` and its checksum recomputed, every other byte kept:
/// what a resize that outgrows the BAT region writes over both copies, through the log.
pub(crate) fn with_bat_moved(src: &dyn Source, offset: u64, length: u64) -> Result<Vec<u8>> {
    let length = u32::try_from(length)
        .map_err(|_| Error::InvalidArgument(format!("a BAT region of {length} bytes")))?;
    let mut chosen = None;
    for (i, name) in NAMES.iter().enumerate() {
        let at = REGION_TABLE_OFFSETS.get(i).copied().unwrap_or(0);
        let mut buf = vec![0u8; REGION_TABLE_SIZE];
        if read_struct(src, at, &mut buf, name).is_ok() && parse_table(&buf, name, at).is_ok() {
            chosen = Some((buf, *name, at));
            break;
        }
    }
    let (mut buf, name, at) =
        chosen.ok_or_else(|| Error::corrupt(NAMES[0], REGION_TABLE_OFFSETS[0], "no valid copy"))?;
    let h: RegionTableHeader = format::parse(&buf, name, at)?;
    let mut moved = false;
    for i in 0..u64::from(h.entry_count.min(MAX_REGION_ENTRIES)) {
        let rel = usize::try_from(entry_offset(i)).unwrap_or(usize::MAX);
        let Some(bytes) = buf.get_mut(rel..).and_then(|b| b.get_mut(..ENTRY_BYTES)) else {
            break;
        };
        let mut e: RegionTableEntry = format::parse(bytes, name, at + entry_offset(i))?;
        if e.guid == BAT_REGION_GUID {
            e.file_offset = offset;
            e.length = length;
            bytes.copy_from_slice(&format::encode(&e));
            moved = true;
        }
    }
    if !moved {
        return Err(Error::corrupt(name, at, "no BAT region").with_code("vhdx.region.missing"));
    }
    format::set_checksum(&mut buf);
    parse_table(&buf, name, at)?;
    Ok(buf)
}

impl Regions {
    /// Spans (start, end, what) that BAT entries must not overlap: the first MiB, the log (when
    /// `log` is its (offset, length)) and every region.
    pub(crate) fn reserved_spans(&self, log: Option<(u64, u64)>) -> Vec<(u64, u64, String)> {
        let mut reserved: Vec<(u64, u64, String)> = vec![(0, MIB, "the first MiB".to_string())];
        if let Some((o, l)) = log {
            reserved.push((o, o.saturating_add(l), "the log".to_string()));
        }
        for r in &self.all {
            reserved.push((
                r.file_offset,
                r.file_offset.saturating_add(r.length),
                format!("region {}", r.name.unwrap_or("unknown")),
            ));
        }
        reserved
    }
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

    #[test]
    fn moving_the_bat_changes_its_entry_only() {
        let bytes = VhdxBuilder::new(Kind::Dynamic, 8 << 20, 1 << 20, 512)
            .build()
            .bytes;
        let before = read_regions(&bytes, bytes.len() as u64, None).unwrap();
        let moved = with_bat_moved(&bytes, 64 * MIB, 2 * MIB).unwrap();
        let after = parse_table(&moved, "moved", 0).unwrap();
        assert_eq!(after.len(), before.all.len());
        for (a, b) in after.iter().zip(&before.all) {
            if a.name == Some("bat") {
                assert_eq!((a.file_offset, a.length), (64 * MIB, 2 * MIB));
                assert_eq!((a.guid, a.required), (b.guid, b.required));
            } else {
                assert_eq!(a, b);
            }
        }
        // A damaged first copy: the second is the one moved.
        let mut broken = bytes.clone();
        broken[REGION_TABLE_OFFSETS[0] as usize + 100] ^= 1;
        assert_eq!(with_bat_moved(&broken, 64 * MIB, 2 * MIB).unwrap(), moved);
        // A BAT region too large for the entry's 32-bit length is refused.
        assert!(with_bat_moved(&bytes, 64 * MIB, 1 << 32).is_err());
    }
}
