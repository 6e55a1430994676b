//! The metadata region: table, item placement rules, and the known system items.

use uuid::Uuid;

use super::format::{
    self, FileParameters, MetadataTableEntry, MetadataTableHeader, FILE_PARAMETERS_GUID,
    FP_HAS_PARENT, FP_LEAVE_BLOCK_ALLOCATED, KIB64, LOGICAL_SECTOR_SIZE_GUID, MAX_BLOCK_SIZE,
    MAX_METADATA_ENTRIES, MAX_METADATA_ITEM_BYTES, MAX_VIRTUAL_DISK_SIZE,
    METADATA_TABLE_ENTRY_COUNT_OFFSET, METADATA_TABLE_ENTRY_SIZE, METADATA_TABLE_HEADER_SIZE,
    METADATA_TABLE_SIZE, META_IS_REQUIRED, META_IS_USER, MIN_BLOCK_SIZE, PARENT_LOCATOR_GUID,
    PHYSICAL_SECTOR_SIZE_GUID, VIRTUAL_DISK_ID_GUID, VIRTUAL_DISK_SIZE_GUID,
};
use super::locator::{self, Locator};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::limits::Limits;
use crate::source::{read_struct, Source};
use crate::util::overlaps;

const TABLE: &str = "vhdx metadata table";
/// [`METADATA_TABLE_ENTRY_SIZE`] as a slice length.
const ENTRY_BYTES: usize = METADATA_TABLE_ENTRY_SIZE as usize;

/// One metadata table entry, checked, for `info`.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub guid: Uuid,
    pub raw_id: [u8; 16],
    pub name: Option<&'static str>,
    pub offset: u32,
    pub file_offset: u64,
    pub length: u32,
    pub flags: u32,
}

impl Item {
    pub fn is_user(&self) -> bool {
        self.flags & META_IS_USER != 0
    }
}

/// The parsed metadata.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub items: Vec<Item>,
    pub block_size: u32,
    pub leave_block_allocated: bool,
    pub has_parent: bool,
    pub virtual_disk_size: u64,
    pub virtual_disk_id: Uuid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub locator: Option<Locator>,
    pub warnings: Vec<String>,
}

fn known_name(id: &[u8; 16]) -> Option<&'static str> {
    Some(match *id {
        FILE_PARAMETERS_GUID => "file_parameters",
        VIRTUAL_DISK_SIZE_GUID => "virtual_disk_size",
        VIRTUAL_DISK_ID_GUID => "virtual_disk_id",
        LOGICAL_SECTOR_SIZE_GUID => "logical_sector_size",
        PHYSICAL_SECTOR_SIZE_GUID => "physical_sector_size",
        PARENT_LOCATOR_GUID => "parent_locator",
        _ => return None,
    })
}

fn read_item(
    src: &dyn Source,
    item: &Item,
    structure: &'static str,
    min_len: u32,
) -> Result<Vec<u8>> {
    if item.length < min_len {
        return Err(Error::corrupt(
            structure,
            item.file_offset,
            format!("length {}, at least {min_len} needed", item.length),
        )
        .with_code("vhdx.metadata.missing_item"));
    }
    let len = usize::try_from(item.length).map_err(|_| {
        Error::corrupt(structure, item.file_offset, "length")
            .with_code("vhdx.metadata.missing_item")
    })?;
    let mut buf = vec![0u8; len];
    read_struct(src, item.file_offset, &mut buf, structure)?;
    Ok(buf)
}

/// Where the metadata region is and what it may hold.
struct Place {
    region_offset: u64,
    region_length: u64,
    item_limit: u32,
}

/// Check one table entry against the entries before it; returns the checked item.
fn check_entry(p: &Place, e: &MetadataTableEntry, at: u64, items: &[Item]) -> Result<Item> {
    let guid = from_vhdx_bytes(e.item_id);
    let is_user = e.flags & META_IS_USER != 0;
    if e.length > MAX_METADATA_ITEM_BYTES {
        return Err(Error::corrupt(
            TABLE,
            at,
            format!(
                "item {guid} length {}, allowed 0..={MAX_METADATA_ITEM_BYTES}",
                e.length
            ),
        )
        .with_code("vhdx.metadata.item_bounds"));
    }
    if e.length > 0 && u64::from(e.offset) < KIB64 {
        return Err(Error::corrupt(
            TABLE,
            at,
            format!(
                "item {guid} offset {:#x} inside the 64 KiB table (must be >= 0x10000)",
                e.offset
            ),
        )
        .with_code("vhdx.metadata.item_bounds"));
    }
    let span = u64::from(e.offset)..u64::from(e.offset) + u64::from(e.length);
    if span.end > p.region_length {
        return Err(Error::corrupt(
            TABLE,
            at,
            format!(
                "item {guid} at {:#x}+{:#x} ends past the metadata region ({:#x} bytes)",
                e.offset, e.length, p.region_length
            ),
        )
        .with_code("vhdx.metadata.item_bounds"));
    }
    if items
        .iter()
        .any(|o| o.raw_id == e.item_id && o.is_user() == is_user)
    {
        return Err(Error::corrupt(
            TABLE,
            at,
            format!("item {guid} (is_user {is_user}) listed more than once"),
        )
        .with_code("vhdx.metadata.duplicate"));
    }
    let other = |o: &&Item| {
        let o_span = u64::from(o.offset)..u64::from(o.offset) + u64::from(o.length);
        o.length > 0 && overlaps(&span, &o_span)
    };
    if let Some(o) = items.iter().find(other).filter(|_| e.length > 0) {
        return Err(Error::corrupt(
            TABLE,
            at,
            format!(
                "item {guid} at {:#x}+{:#x} overlaps item {} at {:#x}+{:#x}",
                e.offset, e.length, o.guid, o.offset, o.length
            ),
        )
        .with_code("vhdx.metadata.item_overlap"));
    }
    let name = if is_user {
        None
    } else {
        known_name(&e.item_id)
    };
    if name.is_none() && e.flags & META_IS_REQUIRED != 0 {
        return Err(Error::unsupported(format!(
            "unknown required vhdx metadata item {guid} (flags {:#x})",
            e.flags
        )));
    }
    if name.is_some() && e.length > p.item_limit {
        return Err(Error::limit(
            TABLE,
            at,
            "metadata item length",
            u64::from(e.length),
            u64::from(p.item_limit),
        ));
    }
    Ok(Item {
        guid,
        raw_id: e.item_id,
        name,
        offset: e.offset,
        file_offset: p.region_offset + u64::from(e.offset),
        length: e.length,
        flags: e.flags,
    })
}

/// Read the 64 KiB table at the start of the region and check every entry.
fn read_table(src: &dyn Source, p: &Place) -> Result<Vec<Item>> {
    let region_offset = p.region_offset;
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    read_struct(src, region_offset, &mut table, TABLE)?;
    let h: MetadataTableHeader = format::parse(&table, TABLE, region_offset)?;
    if h.signature != format::METADATA_TABLE_SIGNATURE {
        return Err(Error::corrupt(
            TABLE,
            region_offset,
            format!("signature {:02x?}, expected \"metadata\"", h.signature),
        )
        .with_code("vhdx.metadata.signature"));
    }
    if h.entry_count > MAX_METADATA_ENTRIES {
        return Err(Error::corrupt(
            TABLE,
            region_offset + METADATA_TABLE_ENTRY_COUNT_OFFSET,
            format!(
                "entry count {}, allowed 0..={MAX_METADATA_ENTRIES}",
                h.entry_count
            ),
        )
        .with_code("vhdx.metadata.entry_count"));
    }
    let mut items: Vec<Item> = Vec::new();
    for i in 0..u64::from(h.entry_count) {
        let rel = METADATA_TABLE_HEADER_SIZE + METADATA_TABLE_ENTRY_SIZE * i;
        let at = region_offset + rel;
        let bytes = usize::try_from(rel)
            .ok()
            .and_then(|r| table.get(r..)?.get(..ENTRY_BYTES))
            .ok_or_else(|| {
                Error::corrupt(TABLE, at, "entry outside the table")
                    .with_code("vhdx.metadata.entry_count")
            })?;
        let e: MetadataTableEntry = format::parse(bytes, TABLE, at)?;
        let item = check_entry(p, &e, at, &items)?;
        items.push(item);
    }
    Ok(items)
}

/// The known system items, found in the table.
struct Found<'a> {
    items: &'a [Item],
    region_offset: u64,
}

impl Found<'_> {
    fn get(&self, name: &str, what: &str) -> Result<&Item> {
        self.items
            .iter()
            .find(|i| i.name == Some(name))
            .ok_or_else(|| self.missing(what))
    }

    fn missing(&self, what: &str) -> Error {
        Error::corrupt(
            TABLE,
            self.region_offset,
            format!("required metadata item {what} is missing"),
        )
        .with_code("vhdx.metadata.missing_item")
    }
}

fn read_file_parameters(src: &dyn Source, f: &Found<'_>) -> Result<FileParameters> {
    const FP: &str = "vhdx metadata item file parameters";
    let fp_item = f.get("file_parameters", "file parameters")?;
    let fp: FileParameters =
        format::parse(&read_item(src, fp_item, FP, 8)?, FP, fp_item.file_offset)?;
    if !fp.block_size.is_power_of_two()
        || fp.block_size < MIN_BLOCK_SIZE
        || fp.block_size > MAX_BLOCK_SIZE
    {
        return Err(Error::corrupt(
            FP,
            fp_item.file_offset,
            format!(
                "block size {}: must be a power of two from 1 MiB to 256 MiB",
                fp.block_size
            ),
        )
        .with_code("vhdx.metadata.block_size"));
    }
    Ok(fp)
}

/// A logical or physical sector size item: 512 or 4096.
fn read_sector_size(src: &dyn Source, f: &Found<'_>, name: &str, what: &str) -> Result<u32> {
    let structure = if name == "logical_sector_size" {
        "vhdx metadata item logical sector size"
    } else {
        "vhdx metadata item physical sector size"
    };
    let item = f.get(name, what)?;
    let v: u32 = format::parse(
        &read_item(src, item, structure, 4)?,
        structure,
        item.file_offset,
    )?;
    if v != 512 && v != 4096 {
        return Err(Error::corrupt(
            structure,
            item.file_offset,
            format!("{what} {v}: must be 512 or 4096"),
        )
        .with_code("vhdx.metadata.sector_size"));
    }
    Ok(v)
}

fn read_virtual_disk_size(src: &dyn Source, f: &Found<'_>, logical: u32) -> Result<u64> {
    const VS: &str = "vhdx metadata item virtual disk size";
    let vs_item = f.get("virtual_disk_size", "virtual disk size")?;
    let size: u64 = format::parse(&read_item(src, vs_item, VS, 8)?, VS, vs_item.file_offset)?;
    if size == 0 || size > MAX_VIRTUAL_DISK_SIZE || size % u64::from(logical) != 0 {
        return Err(Error::corrupt(
            VS,
            vs_item.file_offset,
            format!(
                "virtual disk size {size}: must be a non-zero multiple of the logical sector size \
                 ({logical}) up to 64 TiB"
            ),
        )
        .with_code("vhdx.metadata.virtual_size"));
    }
    Ok(size)
}

fn read_virtual_disk_id(src: &dyn Source, f: &Found<'_>) -> Result<Uuid> {
    const VI: &str = "vhdx metadata item virtual disk id";
    let vi_item = f.get("virtual_disk_id", "virtual disk id")?;
    let id: [u8; 16] = format::parse(&read_item(src, vi_item, VI, 16)?, VI, vi_item.file_offset)?;
    Ok(from_vhdx_bytes(id))
}

/// The parent locator when HasParent is set (required then), ignored with a warning otherwise.
fn read_locator(
    src: &dyn Source,
    f: &Found<'_>,
    has_parent: bool,
    limits: &Limits,
    warnings: &mut Vec<String>,
) -> Result<Option<Locator>> {
    let item = f.items.iter().find(|i| i.name == Some("parent_locator"));
    Ok(match (item, has_parent) {
        (Some(item), true) => {
            const PL: &str = "vhdx parent locator";
            if item.length > limits.max_locator_bytes {
                return Err(Error::limit(
                    PL,
                    item.file_offset,
                    "parent locator length",
                    u64::from(item.length),
                    u64::from(limits.max_locator_bytes),
                ));
            }
            let bytes = read_item(src, item, PL, 20)?;
            Some(locator::parse_locator(&bytes, item.file_offset)?)
        }
        (None, true) => return Err(f.missing("parent locator (the file has HasParent set)")),
        (Some(_), false) => {
            warnings.push(
                "a parent locator is present but HasParent is clear; it is ignored".to_string(),
            );
            None
        }
        (None, false) => None,
    })
}

/// Read and check the metadata region at `region_offset` (`region_length` bytes).
pub(crate) fn read_metadata(
    src: &dyn Source,
    region_offset: u64,
    region_length: u64,
    limits: &Limits,
) -> Result<Metadata> {
    let place = Place {
        region_offset,
        region_length,
        item_limit: limits.max_metadata_item_bytes.min(MAX_METADATA_ITEM_BYTES),
    };
    let items = read_table(src, &place)?;
    let found = Found {
        items: &items,
        region_offset,
    };
    let fp = read_file_parameters(src, &found)?;
    let mut warnings = Vec::new();
    if fp.flags & !(FP_LEAVE_BLOCK_ALLOCATED | FP_HAS_PARENT) != 0 {
        warnings.push(format!(
            "file parameters flags {:#x} have reserved bits set",
            fp.flags
        ));
    }
    let has_parent = fp.flags & FP_HAS_PARENT != 0;
    let logical = read_sector_size(src, &found, "logical_sector_size", "logical sector size")?;
    let physical = read_sector_size(src, &found, "physical_sector_size", "physical sector size")?;
    let size = read_virtual_disk_size(src, &found, logical)?;
    let virtual_disk_id = read_virtual_disk_id(src, &found)?;
    let locator = read_locator(src, &found, has_parent, limits, &mut warnings)?;
    Ok(Metadata {
        items,
        block_size: fp.block_size,
        leave_block_allocated: fp.flags & FP_LEAVE_BLOCK_ALLOCATED != 0,
        has_parent,
        virtual_disk_size: size,
        virtual_disk_id,
        logical_sector_size: logical,
        physical_sector_size: physical,
        locator,
        warnings,
    })
}
