//! The metadata region: table, item placement rules, and the known system items.

use uuid::Uuid;

use super::format::{
    self, FileParameters, MetadataTableEntry, MetadataTableHeader, FILE_PARAMETERS_GUID,
    FP_HAS_PARENT, FP_LEAVE_BLOCK_ALLOCATED, KIB64, LOGICAL_SECTOR_SIZE_GUID, MAX_BLOCK_SIZE,
    MAX_METADATA_ENTRIES, MAX_METADATA_ITEM_BYTES, MAX_VIRTUAL_DISK_SIZE, METADATA_TABLE_SIZE,
    META_IS_REQUIRED, META_IS_USER, MIN_BLOCK_SIZE, PARENT_LOCATOR_GUID, PHYSICAL_SECTOR_SIZE_GUID,
    VIRTUAL_DISK_ID_GUID, VIRTUAL_DISK_SIZE_GUID,
};
use super::locator::{self, Locator};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::limits::Limits;
use crate::source::{read_struct, Source};

const TABLE: &str = "vhdx metadata table";

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
        ));
    }
    let len = usize::try_from(item.length)
        .map_err(|_| Error::corrupt(structure, item.file_offset, "length"))?;
    let mut buf = vec![0u8; len];
    read_struct(src, item.file_offset, &mut buf, structure)?;
    Ok(buf)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(..4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(..8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Read and check the metadata region at `region_offset` (`region_length` bytes).
pub(crate) fn read_metadata(
    src: &dyn Source,
    region_offset: u64,
    region_length: u64,
    limits: &Limits,
) -> Result<Metadata> {
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    read_struct(src, region_offset, &mut table, TABLE)?;
    let h: MetadataTableHeader = format::parse(&table, TABLE, region_offset)?;
    if h.signature != format::METADATA_TABLE_SIGNATURE {
        return Err(Error::corrupt(
            TABLE,
            region_offset,
            format!("signature {:02x?}, expected \"metadata\"", h.signature),
        ));
    }
    if h.entry_count > MAX_METADATA_ENTRIES {
        return Err(Error::corrupt(
            TABLE,
            region_offset + 10,
            format!(
                "entry count {}, allowed 0..={MAX_METADATA_ENTRIES}",
                h.entry_count
            ),
        ));
    }
    let item_limit = limits.max_metadata_item_bytes.min(MAX_METADATA_ITEM_BYTES);
    let mut items: Vec<Item> = Vec::new();
    for i in 0..usize::from(h.entry_count) {
        let rel = 32 + 32 * i;
        let at = region_offset + u64::try_from(rel).unwrap_or(0);
        let bytes = table
            .get(rel..rel + 32)
            .ok_or_else(|| Error::corrupt(TABLE, at, "entry outside the table"))?;
        let e: MetadataTableEntry = format::parse(bytes, TABLE, at)?;
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
            ));
        }
        if e.length > 0 && u64::from(e.offset) < KIB64 {
            return Err(Error::corrupt(
                TABLE,
                at,
                format!(
                    "item {guid} offset {:#x} inside the 64 KiB table (must be >= 0x10000)",
                    e.offset
                ),
            ));
        }
        let end = u64::from(e.offset) + u64::from(e.length);
        if end > region_length {
            return Err(Error::corrupt(
                TABLE,
                at,
                format!(
                    "item {guid} at {:#x}+{:#x} ends past the metadata region ({region_length:#x} bytes)",
                    e.offset, e.length
                ),
            ));
        }
        if items
            .iter()
            .any(|o| o.raw_id == e.item_id && o.is_user() == is_user)
        {
            return Err(Error::corrupt(
                TABLE,
                at,
                format!("item {guid} (is_user {is_user}) listed more than once"),
            ));
        }
        if e.length > 0 {
            if let Some(o) = items.iter().find(|o| {
                o.length > 0
                    && u64::from(e.offset) < u64::from(o.offset) + u64::from(o.length)
                    && u64::from(o.offset) < end
            }) {
                return Err(Error::corrupt(
                    TABLE,
                    at,
                    format!(
                        "item {guid} at {:#x}+{:#x} overlaps item {} at {:#x}+{:#x}",
                        e.offset, e.length, o.guid, o.offset, o.length
                    ),
                ));
            }
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
        if name.is_some() && e.length > item_limit {
            return Err(Error::limit(
                TABLE,
                at,
                "metadata item length",
                u64::from(e.length),
                u64::from(item_limit),
            ));
        }
        items.push(Item {
            guid,
            raw_id: e.item_id,
            name,
            offset: e.offset,
            file_offset: region_offset + u64::from(e.offset),
            length: e.length,
            flags: e.flags,
        });
    }
    let find = |n: &str| items.iter().find(|i| i.name == Some(n));
    let missing = |what: &str| {
        Error::corrupt(
            TABLE,
            region_offset,
            format!("required metadata item {what} is missing"),
        )
    };

    const FP: &str = "vhdx metadata item file parameters";
    let fp_item = find("file_parameters").ok_or_else(|| missing("file parameters"))?;
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
        ));
    }
    let mut warnings = Vec::new();
    if fp.flags & !(FP_LEAVE_BLOCK_ALLOCATED | FP_HAS_PARENT) != 0 {
        warnings.push(format!(
            "file parameters flags {:#x} have reserved bits set",
            fp.flags
        ));
    }
    let has_parent = fp.flags & FP_HAS_PARENT != 0;

    const LS: &str = "vhdx metadata item logical sector size";
    let ls_item = find("logical_sector_size").ok_or_else(|| missing("logical sector size"))?;
    let logical = le_u32(&read_item(src, ls_item, LS, 4)?);
    if logical != 512 && logical != 4096 {
        return Err(Error::corrupt(
            LS,
            ls_item.file_offset,
            format!("logical sector size {logical}: must be 512 or 4096"),
        ));
    }
    const PS: &str = "vhdx metadata item physical sector size";
    let ps_item = find("physical_sector_size").ok_or_else(|| missing("physical sector size"))?;
    let physical = le_u32(&read_item(src, ps_item, PS, 4)?);
    if physical != 512 && physical != 4096 {
        return Err(Error::corrupt(
            PS,
            ps_item.file_offset,
            format!("physical sector size {physical}: must be 512 or 4096"),
        ));
    }
    const VS: &str = "vhdx metadata item virtual disk size";
    let vs_item = find("virtual_disk_size").ok_or_else(|| missing("virtual disk size"))?;
    let size = le_u64(&read_item(src, vs_item, VS, 8)?);
    if size == 0 || size > MAX_VIRTUAL_DISK_SIZE || size % u64::from(logical) != 0 {
        return Err(Error::corrupt(
            VS,
            vs_item.file_offset,
            format!(
                "virtual disk size {size}: must be a non-zero multiple of the logical sector size \
                 ({logical}) up to 64 TiB"
            ),
        ));
    }
    const VI: &str = "vhdx metadata item virtual disk id";
    let vi_item = find("virtual_disk_id").ok_or_else(|| missing("virtual disk id"))?;
    let mut id = [0u8; 16];
    if let Some(s) = read_item(src, vi_item, VI, 16)?.get(..16) {
        id.copy_from_slice(s);
    }
    let locator = match (find("parent_locator"), has_parent) {
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
        (None, true) => return Err(missing("parent locator (the file has HasParent set)")),
        (Some(_), false) => {
            warnings.push(
                "a parent locator is present but HasParent is clear; it is ignored".to_string(),
            );
            None
        }
        (None, false) => None,
    };
    Ok(Metadata {
        items,
        block_size: fp.block_size,
        leave_block_allocated: fp.flags & FP_LEAVE_BLOCK_ALLOCATED != 0,
        has_parent,
        virtual_disk_size: size,
        virtual_disk_id: from_vhdx_bytes(id),
        logical_sector_size: logical,
        physical_sector_size: physical,
        locator,
        warnings,
    })
}
