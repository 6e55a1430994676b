//! The metadata region of a VHDX file: the table, the bounds of its items, and the values of
//! the known items (file parameters, sizes, parent locator).

use std::io::Cursor;
use std::ops::Range;

use binrw::BinRead;

use crate::check::{Bytes, Findings};
use crate::guid::from_vhdx_bytes;
use crate::limits::Limits;
use crate::util::overlaps;
use crate::vhdx::format::{
    self, file_parameters_fields as fpf, metadata_item_bytes as item_bytes, parse, FileParameters,
    MetadataTableEntry, MetadataTableHeader, FILE_PARAMETERS_GUID, LOGICAL_SECTOR_SIZE_GUID,
    MAX_BLOCK_SIZE, MAX_METADATA_ENTRIES, MAX_METADATA_ITEM_BYTES, MAX_VIRTUAL_DISK_SIZE,
    METADATA_TABLE_SIZE, MIN_BLOCK_SIZE, PARENT_LOCATOR_GUID, PHYSICAL_SECTOR_SIZE_GUID,
    VIRTUAL_DISK_ID_GUID, VIRTUAL_DISK_SIZE_GUID,
};

const META: &str = "vhdx metadata table";
const LOCATOR: &str = "vhdx parent locator";

/// The items the spec defines; an unknown item may not be required.
const KNOWN_ITEMS: [[u8; 16]; 6] = [
    FILE_PARAMETERS_GUID,
    VIRTUAL_DISK_SIZE_GUID,
    VIRTUAL_DISK_ID_GUID,
    LOGICAL_SECTOR_SIZE_GUID,
    PHYSICAL_SECTOR_SIZE_GUID,
    PARENT_LOCATOR_GUID,
];

/// The values the BAT check needs.
pub(super) struct Params {
    pub block_size: u64,
    pub virtual_size: u64,
    pub logical_sector_size: u64,
    pub has_parent: bool,
}

/// One metadata table entry that passed the bounds checks.
struct Item {
    guid: [u8; 16],
    is_user: bool,
    /// From the start of the region.
    offset: u64,
    length: u64,
}

/// A known item's bytes and their file offset.
type ItemData = (Vec<u8>, u64);

/// The items of one metadata table, and where to read them.
struct Table<'a> {
    b: &'a Bytes<'a>,
    /// File offset of the region (and of the table at its start).
    region_offset: u64,
    items: Vec<Item>,
}

impl Table<'_> {
    /// The system item `guid`, when it has `want` bytes (if given) and can be read.
    fn read(&self, guid: [u8; 16], want: Option<u64>) -> Option<ItemData> {
        let it = self.find(guid)?;
        if want.is_some_and(|w| w != it.length) {
            return None;
        }
        let at = self.region_offset + it.offset;
        Some((self.b.get(at, usize::try_from(it.length).ok()?)?, at))
    }

    fn find(&self, guid: [u8; 16]) -> Option<&Item> {
        self.items.iter().find(|it| it.guid == guid && !it.is_user)
    }

    fn missing(&self, s: &mut Findings, name: &str) {
        s.add(
            "vhdx.metadata.missing_item",
            META,
            Some(self.region_offset),
            format!("required item {name} is missing, has the wrong length, or cannot be read"),
        );
    }
}

/// A little-endian value at the start of an item (zero when the item is too short, which the
/// length check before rules out).
fn value<T: for<'a> BinRead<Args<'a> = ()> + Default>(d: &[u8]) -> T {
    T::read_le(&mut Cursor::new(d)).unwrap_or_default()
}

/// Check the metadata region: `None` when the disk's geometry cannot be known from it.
pub(super) fn check(
    b: &Bytes,
    limits: &Limits,
    s: &mut Findings,
    region: Range<u64>,
) -> Option<Params> {
    let moff = region.start;
    let (header, t) = read_table(b, s, moff)?;
    let table = Table {
        b,
        region_offset: moff,
        items: read_items(s, &header, &t, &region),
    };
    if table
        .read(VIRTUAL_DISK_ID_GUID, Some(item_bytes::VIRTUAL_DISK_ID))
        .is_none()
    {
        table.missing(s, "Virtual Disk ID");
    }
    let fp = table.read(FILE_PARAMETERS_GUID, Some(fpf::BYTES));
    let (block_size, has_parent, fp_ok) = check_file_parameters(s, &table, fp.as_ref());
    let (lss, lss_ok) = check_sector_sizes(s, &table);
    let (size, size_ok) = check_virtual_size(s, &table, lss);
    check_parent_locator(limits, s, &table, has_parent, fp.is_some());
    (fp_ok && lss_ok && size_ok).then_some(Params {
        block_size,
        virtual_size: size,
        logical_sector_size: lss,
        has_parent,
    })
}

/// The table header at the start of the region; `None` (after a finding) when unusable.
fn read_table(b: &Bytes, s: &mut Findings, moff: u64) -> Option<(MetadataTableHeader, Vec<u8>)> {
    let Some(t) = b.get(moff, METADATA_TABLE_SIZE) else {
        s.add(
            "vhdx.metadata.signature",
            META,
            Some(moff),
            "the metadata table is outside the file",
        );
        return None;
    };
    let signature = t
        .get(..format::METADATA_TABLE_SIGNATURE.len())
        .unwrap_or(&[]);
    if signature != format::METADATA_TABLE_SIGNATURE {
        s.add(
            "vhdx.metadata.signature",
            META,
            Some(moff),
            format!("signature {signature:02x?}, expected \"metadata\""),
        );
        return None;
    }
    let header: MetadataTableHeader = parse(&t, META, moff).ok()?;
    let n = header.entry_count;
    if n > MAX_METADATA_ENTRIES {
        s.add(
            "vhdx.metadata.entry_count",
            META,
            Some(moff + format::METADATA_TABLE_ENTRY_COUNT_OFFSET),
            format!("{n} entries, at most {MAX_METADATA_ENTRIES} allowed"),
        );
        return None;
    }
    Some((header, t))
}

/// Every table entry: duplicates, unknown required items, bounds and overlaps. The entries
/// that lie inside the region.
fn read_items(
    s: &mut Findings,
    header: &MetadataTableHeader,
    t: &[u8],
    region: &Range<u64>,
) -> Vec<Item> {
    let mut items: Vec<Item> = Vec::new();
    let size = format::METADATA_TABLE_ENTRY_SIZE as usize;
    let entries = (format::METADATA_TABLE_HEADER_SIZE as usize..).step_by(size);
    for rel in entries.take(usize::from(header.entry_count)) {
        let at = region.start + rel as u64;
        let Some(e) = t
            .get(rel..rel + size)
            .and_then(|e| parse::<MetadataTableEntry>(e, META, at).ok())
        else {
            break;
        };
        if let Some(item) = check_item(s, &e, at, &items, region.end - region.start) {
            items.push(item);
        }
    }
    items
}

/// One table entry (at `at`) against the items before it; the item when it is in bounds.
fn check_item(
    s: &mut Findings,
    e: &MetadataTableEntry,
    at: u64,
    items: &[Item],
    region_len: u64,
) -> Option<Item> {
    let guid = e.item_id;
    let (off, len) = (u64::from(e.offset), u64::from(e.length));
    let is_user = e.flags & format::META_IS_USER != 0;
    if items
        .iter()
        .any(|it| it.guid == guid && it.is_user == is_user)
    {
        s.add(
            "vhdx.metadata.duplicate",
            META,
            Some(at),
            format!("item {} appears twice", from_vhdx_bytes(guid)),
        );
        return None;
    }
    if !is_user && !KNOWN_ITEMS.contains(&guid) && e.flags & format::META_IS_REQUIRED != 0 {
        s.add(
            "vhdx.metadata.unknown_required",
            META,
            Some(at),
            format!("unknown item {} is marked required", from_vhdx_bytes(guid)),
        );
    }
    let bad = len != 0
        && (off < METADATA_TABLE_SIZE as u64
            || len > u64::from(MAX_METADATA_ITEM_BYTES)
            || off + len > region_len);
    if bad {
        s.add(
            "vhdx.metadata.item_bounds",
            META,
            Some(at + format::METADATA_ENTRY_PLACE_OFFSET),
            format!(
                "item {} at region offset {off:#x}+{len:#x} is out of bounds",
                from_vhdx_bytes(guid)
            ),
        );
        return None;
    }
    if len > 0 {
        for it in items.iter().filter(|it| it.length > 0) {
            if overlaps(&(off..off + len), &(it.offset..it.offset + it.length)) {
                s.add(
                    "vhdx.metadata.item_overlap",
                    META,
                    Some(at + format::METADATA_ENTRY_PLACE_OFFSET),
                    format!(
                        "item {} at {off:#x}+{len:#x} overlaps item {}",
                        from_vhdx_bytes(guid),
                        from_vhdx_bytes(it.guid)
                    ),
                );
            }
        }
    }
    Some(Item {
        guid,
        is_user,
        offset: off,
        length: len,
    })
}

/// Block size and flags: (block size, HasParent, usable).
fn check_file_parameters(
    s: &mut Findings,
    table: &Table,
    fp: Option<&ItemData>,
) -> (u64, bool, bool) {
    const FP: &str = "vhdx file parameters";
    let Some((p, fo)) =
        fp.and_then(|(d, fo)| Some((parse::<FileParameters>(d, FP, *fo).ok()?, *fo)))
    else {
        table.missing(s, "File Parameters");
        return (0, false, false);
    };
    let bs = p.block_size;
    let mut ok = true;
    if !(bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)) {
        s.add(
            "vhdx.metadata.block_size",
            FP,
            Some(fo),
            format!("block size {bs}, must be a power of two from 1 to 256 MiB"),
        );
        ok = false;
    }
    if p.flags & !fpf::KNOWN_FLAGS != 0 {
        s.add(
            "vhdx.metadata.file_parameters",
            FP,
            Some(fo + fpf::FLAGS),
            format!("flags {:#x} have reserved bits set", p.flags),
        );
    }
    (u64::from(bs), p.flags & format::FP_HAS_PARENT != 0, ok)
}

/// Logical and physical sector sizes: (logical sector size, usable).
fn check_sector_sizes(s: &mut Findings, table: &Table) -> (u64, bool) {
    let mut lss = 0u64;
    let mut ok = true;
    match table.read(LOGICAL_SECTOR_SIZE_GUID, Some(item_bytes::SECTOR_SIZE)) {
        None => {
            table.missing(s, "Logical Sector Size");
            ok = false;
        }
        Some((d, fo)) => {
            lss = u64::from(value::<u32>(&d));
            if lss != 512 && lss != 4096 {
                s.add(
                    "vhdx.metadata.sector_size",
                    "vhdx logical sector size",
                    Some(fo),
                    format!("logical sector size {lss}, expected 512 or 4096"),
                );
                ok = false;
            }
        }
    }
    match table.read(PHYSICAL_SECTOR_SIZE_GUID, Some(item_bytes::SECTOR_SIZE)) {
        None => table.missing(s, "Physical Sector Size"),
        Some((d, fo)) => {
            let p = value::<u32>(&d);
            if p != 512 && p != 4096 {
                s.add(
                    "vhdx.metadata.sector_size",
                    "vhdx physical sector size",
                    Some(fo),
                    format!("physical sector size {p}, expected 512 or 4096"),
                );
            }
        }
    }
    (lss, ok)
}

/// Virtual size against the spec's bounds and the logical sector size: (size, usable).
fn check_virtual_size(s: &mut Findings, table: &Table, lss: u64) -> (u64, bool) {
    let Some((d, fo)) = table.read(VIRTUAL_DISK_SIZE_GUID, Some(item_bytes::VIRTUAL_DISK_SIZE))
    else {
        table.missing(s, "Virtual Disk Size");
        return (0, false);
    };
    let size = value::<u64>(&d);
    if size == 0 || size > MAX_VIRTUAL_DISK_SIZE || (lss > 0 && size % lss != 0) {
        s.add(
            "vhdx.metadata.virtual_size",
            "vhdx virtual disk size",
            Some(fo),
            format!("virtual size {size}: must be non-zero, at most 64 TiB and a multiple of the logical sector size"),
        );
        return (size, false);
    }
    (size, true)
}

/// The parent locator item against HasParent; its keys when the disk has a parent.
fn check_parent_locator(
    limits: &Limits,
    s: &mut Findings,
    table: &Table,
    has_parent: bool,
    fp_present: bool,
) {
    let loc = table.find(PARENT_LOCATOR_GUID);
    let it = match (loc, has_parent) {
        (None, true) => return table.missing(s, "Parent Locator (the disk has a parent)"),
        (Some(it), false) if fp_present => {
            return s.add(
                "vhdx.locator.without_parent",
                LOCATOR,
                Some(table.region_offset + it.offset),
                "a parent locator item on a disk without HasParent",
            )
        }
        (Some(it), true) => it,
        _ => return,
    };
    let fo = table.region_offset + it.offset;
    let Some(d) = usize::try_from(it.length)
        .ok()
        .filter(|&l| l as u64 <= u64::from(limits.max_metadata_item_bytes))
        .and_then(|l| table.b.get(fo, l))
    else {
        return s.add(
            "vhdx.locator.invalid",
            LOCATOR,
            Some(fo),
            "the item cannot be read",
        );
    };
    let l = match crate::vhdx::locator::parse_locator(&d, fo) {
        Ok(l) => l,
        Err(e) => return s.add("vhdx.locator.invalid", LOCATOR, Some(fo), e.to_string()),
    };
    let has_path = l.entries.iter().any(|e| {
        matches!(
            e.key.as_str(),
            "relative_path" | "volume_path" | "absolute_win32_path"
        ) && e.value.as_deref().is_some_and(|v| !v.is_empty())
    });
    if !has_path {
        s.add(
            "vhdx.locator.no_path",
            LOCATOR,
            Some(fo),
            "no decodable relative_path, volume_path or absolute_win32_path",
        );
    }
}
