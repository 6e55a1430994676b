//! VHDX files, read-only: headers, log replay into memory, region tables, metadata, parent
//! locator, BAT and sector bitmaps (MS-VHDX; FORMAT.md Part B).
//!
//! Opening order follows SX 2.3.3: file identifier, headers, then the log (a dirty log is
//! replayed into a read-only view that maps each logged sector to its place in the log, in
//! bounded memory; the file is never written), and only then everything else, read through
//! that view (`read_layout`, shared with the writable open).
//!
//! Writes (reparent) go through the crash-safe session of the `update` module: header updates
//! and the log.
//!
//! Read semantics per BAT state (FORMAT.md B.8): FULLY_PRESENT is file data; PARTIALLY_PRESENT
//! (differencing only) follows the sector bitmap; NOT_PRESENT is [`Extent::Unallocated`] (the
//! parent for a differencing disk, zeros otherwise); ZERO, UNDEFINED, UNMAPPED and the reserved
//! state 5 read as zeros ([`Extent::Zero`]) for every disk type: their contents are undefined
//! by the spec, and zeros are what qemu and dissect return.

pub(crate) mod bat;
mod bitmap;
pub(crate) mod compact;
support_mod!(create);
pub(crate) mod format;
pub(crate) mod header;
pub(crate) mod locator;
pub(crate) mod log;
mod metadata;
mod region;
pub(crate) mod reparent;
pub(crate) mod update;
// Flatten's last step: a differencing disk becomes dynamic.
pub(crate) mod unlink;
// `vhdkit resize` (issue 14).
pub(crate) mod resize;
support_mod!(write);

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::disk::{
    DiskFormat, DiskType, Extent, FormatInfo, Image, ImageParts, OpenOptions, ParentLinkage,
    ParentLocator,
};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::{read_struct, source_len, Source};
use crate::view::Shape;

pub use bat::BatSummary;
pub use locator::LocatorEntry;
pub use log::LogReplay;

use format::{
    PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT,
    SECTORS_PER_CHUNK,
};

/// State of the log when the file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum LogState {
    /// LogGuid was zero: nothing to replay.
    Clean,
    /// The active sequence was replayed into memory; the file is unchanged.
    ReplayedInMemory,
}

/// The log part of [`VhdxInfo`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LogInfo {
    /// Clean or replayed.
    pub state: LogState,
    /// Entries replayed.
    pub entries: u64,
    /// Sequence number of the first replayed entry.
    pub first_sequence: Option<u64>,
    /// Sequence number of the last (head) replayed entry.
    pub last_sequence: Option<u64>,
    /// Absolute offset of the log region.
    pub log_offset: u64,
    /// Length of the log region.
    pub log_length: u64,
}

/// One header slot.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct HeaderInfo {
    /// File offset.
    pub offset: u64,
    /// Signature, checksum and version are right.
    pub valid: bool,
    /// Sequence number, when valid.
    pub sequence_number: Option<u64>,
    /// This is the header in use.
    pub current: bool,
    /// Why it is not valid.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

/// One region table entry.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RegionInfo {
    /// Region GUID.
    pub guid: Uuid,
    /// `bat` or `metadata` when known.
    pub name: Option<String>,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Required flag.
    pub required: bool,
}

/// One region table copy.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RegionTableInfo {
    /// File offset.
    pub offset: u64,
    /// Signature, checksum and entry count are right.
    pub valid: bool,
    /// Entries, when valid.
    pub entries: Vec<RegionInfo>,
    /// Why it is not valid.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

/// One metadata table entry.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MetadataItemInfo {
    /// Item GUID.
    pub guid: Uuid,
    /// Name when known (`file_parameters`, `virtual_disk_size`, ...).
    pub name: Option<String>,
    /// Offset from the start of the metadata region.
    pub offset: u32,
    /// Absolute file offset.
    pub file_offset: u64,
    /// Length in bytes.
    pub length: u32,
    /// Raw flags (IsUser 1, IsVirtualDisk 2, IsRequired 4).
    pub flags: u32,
    /// IsUser.
    pub is_user: bool,
    /// IsVirtualDisk.
    pub is_virtual_disk: bool,
    /// IsRequired.
    pub is_required: bool,
}

/// The parent locator item, raw.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ParentLocatorInfo {
    /// Locator type GUID.
    pub locator_type: Uuid,
    /// Key/value pairs in file order.
    pub entries: Vec<LocatorEntry>,
}

/// VHDX facts for `info` (flattened into the top level of the JSON).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct VhdxInfo {
    /// File identifier creator string.
    pub creator: String,
    /// Current header DataWriteGuid.
    pub data_write_guid: Uuid,
    /// Current header FileWriteGuid.
    pub file_write_guid: Uuid,
    /// Current header LogGuid.
    pub log_guid: Uuid,
    /// Log state.
    pub log: Box<LogInfo>,
    /// Virtual disk id metadata item.
    pub virtual_disk_id: Uuid,
    /// Both headers.
    pub headers: Vec<HeaderInfo>,
    /// Both region tables.
    pub region_tables: Vec<RegionTableInfo>,
    /// Every metadata item.
    pub metadata_items: Vec<MetadataItemInfo>,
    /// File parameters LeaveBlockAllocated.
    pub leave_block_allocated: bool,
    /// File parameters HasParent.
    pub has_parent: bool,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// BAT entry counts.
    pub bat: Box<BatSummary>,
    /// The parent locator, for a differencing disk.
    pub parent_locator: Option<Box<ParentLocatorInfo>>,
}

/// An open VHDX file.
#[derive(Debug)]
pub(crate) struct VhdxFile {
    /// The file, or the view of it with a dirty log replayed; the BAT reads its entries
    /// through it, and a reparent's simulated re-open shares it.
    src: Arc<dyn Source>,
    real_file_len: u64,
    shape: Shape,
    logical_sector_size: u32,
    physical_sector_size: u32,
    bat: bat::Bat,
    linkage: Option<ParentLinkage>,
    locators: Vec<ParentLocator>,
    data_write_guid: Uuid,
    warnings: Vec<String>,
    info: VhdxInfo,
    /// The checked metadata region and its table entries, in table order: the positions the
    /// link editor rewrites (`info` is only a view of them).
    metadata_region: region::Region,
    metadata_items: Vec<metadata::Item>,
    /// End of the last byte the log, a region or a block uses ([`Layout::structures_end`]):
    /// past it the file holds nothing any structure points at.
    structures_end: u64,
    /// Last payload block's bitmap bytes read: (block index, bytes).
    bitmap_cache: Mutex<Option<(u64, Vec<u8>)>>,
}

/// The parent linkage, locators and raw locator item of a differencing disk's metadata.
type ParentParts = (
    Option<ParentLinkage>,
    Vec<ParentLocator>,
    Option<Box<ParentLocatorInfo>>,
);

/// Replay a dirty log read-only (SX 2.3.3: before anything after the headers is read).
/// Returns the source to read everything else through, and what the log held.
fn open_log(
    src: Box<dyn Source>,
    headers: &header::Headers,
    limits: &Limits,
    warnings: &mut Vec<String>,
) -> Result<(Box<dyn Source>, LogInfo)> {
    let cur = &headers.current;
    let mut log_info = LogInfo {
        state: LogState::Clean,
        entries: 0,
        first_sequence: None,
        last_sequence: None,
        log_offset: cur.log_offset,
        log_length: u64::from(cur.log_length),
    };
    let Some(seq) = log::dirty_log(&*src, headers, limits.max_log_replay_bytes)? else {
        return Ok((src, log_info));
    };
    let (a, b) = seq.sequence_range();
    let n = seq.entries.len();
    warnings.push(format!(
        "log replayed in memory ({n} entries, seq {a}..{b}); the file itself is unchanged"
    ));
    log_info.state = LogState::ReplayedInMemory;
    log_info.entries = u64::try_from(n).unwrap_or(u64::MAX);
    log_info.first_sequence = Some(a);
    log_info.last_sequence = Some(b);
    Ok((Box::new(log::overlay(src, &seq)?), log_info))
}

/// Linkage, locators and the raw item, from the parsed locator (warnings added).
fn parent_parts(meta: &metadata::Metadata, warnings: &mut Vec<String>) -> ParentParts {
    let Some(l) = &meta.locator else {
        return (None, Vec::new(), None);
    };
    warnings.extend(l.warnings.iter().cloned());
    (
        Some(ParentLinkage {
            id: l.parent_linkage,
            alternate_id: l.parent_linkage2,
            timestamp: None,
            locators: l.parent_locators(),
        }),
        l.parent_locators(),
        Some(Box::new(ParentLocatorInfo {
            locator_type: l.locator_type,
            entries: l.entries.clone(),
        })),
    )
}

fn header_infos(headers: &header::Headers) -> Vec<HeaderInfo> {
    (0usize..)
        .zip(headers.slots.iter())
        .map(|(i, s)| HeaderInfo {
            offset: s.offset,
            valid: s.header.is_some(),
            sequence_number: s.header.as_ref().map(|h| h.sequence_number),
            current: i == headers.current_index,
            error: s.error.clone(),
        })
        .collect()
}

fn region_table_infos(regions: &region::Regions) -> Vec<RegionTableInfo> {
    regions
        .copies
        .iter()
        .map(|c| RegionTableInfo {
            offset: c.offset,
            valid: c.entries.is_some(),
            entries: c
                .entries
                .iter()
                .flatten()
                .map(|r| RegionInfo {
                    guid: r.guid,
                    name: r.name.map(str::to_string),
                    offset: r.file_offset,
                    length: r.length,
                    required: r.required,
                })
                .collect(),
            error: c.error.clone(),
        })
        .collect()
}

fn metadata_item_infos(meta: &metadata::Metadata) -> Vec<MetadataItemInfo> {
    meta.items
        .iter()
        .map(|i| MetadataItemInfo {
            guid: i.guid,
            name: i.name.map(str::to_string),
            offset: i.offset,
            file_offset: i.file_offset,
            length: i.length,
            flags: i.flags,
            is_user: i.flags & format::META_IS_USER != 0,
            is_virtual_disk: i.flags & format::META_IS_VIRTUAL_DISK != 0,
            is_required: i.flags & format::META_IS_REQUIRED != 0,
        })
        .collect()
}

impl VhdxFile {
    /// Open a VHDX file read-only (replaying a dirty log in memory).
    pub(crate) fn open(src: Box<dyn Source>, opts: &OpenOptions) -> Result<VhdxFile> {
        let creator = header::read_file_identifier(&*src)?;
        let headers = header::read_headers(&*src)?;
        let real_file_len = source_len(&*src)?;
        let mut warnings = headers.warnings.clone();
        let (src, log_info) = open_log(src, &headers, &opts.limits, &mut warnings)?;
        let src: Arc<dyn Source> = Arc::from(src);
        let cur = &headers.current;
        let file_len = source_len(&*src)?;
        let layout = read_layout(&*src, file_len, cur, &opts.limits)?;
        warnings.extend(layout.warnings.iter().cloned());
        let shape = layout.shape();
        let structures_end = layout.structures_end();
        let Layout {
            regions, meta, bat, ..
        } = layout;
        let (linkage, locators, parent_locator) = parent_parts(&meta, &mut warnings);
        let info = VhdxInfo {
            creator,
            data_write_guid: cur.data_write_guid,
            file_write_guid: cur.file_write_guid,
            log_guid: cur.log_guid,
            log: Box::new(log_info),
            virtual_disk_id: meta.virtual_disk_id,
            headers: header_infos(&headers),
            region_tables: region_table_infos(&regions),
            metadata_items: metadata_item_infos(&meta),
            leave_block_allocated: meta.leave_block_allocated,
            has_parent: meta.has_parent,
            chunk_ratio: bat.chunk_ratio,
            bat: Box::new(bat.summary.clone()),
            parent_locator,
        };
        Ok(VhdxFile {
            src,
            real_file_len,
            shape,
            logical_sector_size: meta.logical_sector_size,
            physical_sector_size: meta.physical_sector_size,
            bat,
            linkage,
            locators,
            data_write_guid: cur.data_write_guid,
            warnings,
            info,
            metadata_region: regions.metadata,
            metadata_items: meta.items,
            structures_end,
            bitmap_cache: Mutex::new(None),
        })
    }

    /// VHDX facts.
    pub fn info(&self) -> &VhdxInfo {
        &self.info
    }

    fn entry(&self, index: u64) -> Result<u64> {
        if index >= self.bat.table.len() {
            return Err(Error::corrupt(
                "vhdx block allocation table",
                0,
                format!("entry {index} outside the table"),
            )
            .with_code("vhdx.bat.too_small"));
        }
        self.bat.table.get(&*self.src, index)
    }

    /// A run of `len` bytes of kind `kind` (unallocated or zeros) that ends with block `b`,
    /// followed on by the blocks after it whose state gives the same kind, up to `max_len`
    /// bytes: one scan of the table, a page at a time (sector bitmap entries are stepped over).
    fn run_after(&self, b: u64, len: u64, max_len: u64, kind: Extent) -> u64 {
        let (bs, cr) = (self.bat.block_size, self.bat.chunk_ratio);
        let more = max_len.saturating_sub(len);
        if more == 0 || bs == 0 {
            return len;
        }
        let from = bat::payload_index(b.saturating_add(1), cr);
        let to = bat::payload_index(b.saturating_add(1).saturating_add(more.div_ceil(bs)), cr);
        let n = self
            .bat
            .table
            .run_len(&*self.src, from, to.saturating_sub(from), |idx, e| {
                bat::is_sb_index(idx, cr) || state_extent(e) == Some(kind)
            });
        // Payload blocks among the entries before index `i`.
        let blocks_before = |i: u64| i - i / (cr + 1);
        let blocks = blocks_before(from.saturating_add(n)) - blocks_before(from);
        len.saturating_add(blocks.saturating_mul(bs).min(more))
    }

    /// Run of equal sector-bitmap bits for block `b`, starting at byte `within` of the block,
    /// at most `run` bytes. Returns (present, bytes).
    fn bitmap_run(&self, b: u64, within: u64, run: u64) -> Result<(bool, u64)> {
        let cr = self.bat.chunk_ratio;
        let sector = u64::from(self.logical_sector_size);
        let sb_entry = self.entry(bat::sb_index(b / cr, cr))?;
        let sb_offset = sb_entry & format::BAT_OFFSET_MASK;
        let (rel, len) = bitmap::block_bitmap_range(b, cr);
        let mut cache = self
            .bitmap_cache
            .lock()
            .map_err(|_| Error::io("sector bitmap cache", std::io::Error::other("poisoned")))?;
        let bytes = match cache.as_ref() {
            Some((cb, bytes)) if *cb == b => bytes,
            _ => {
                let n = usize::try_from(len)
                    .map_err(|_| Error::corrupt("vhdx sector bitmap", sb_offset, "size"))?;
                let mut buf = vec![0u8; n];
                read_struct(&*self.src, sb_offset + rel, &mut buf, "vhdx sector bitmap")?;
                &cache.insert((b, buf)).1
            }
        };
        let first = within / sector;
        let last = (within + run).div_ceil(sector);
        let (present, sectors) = bitmap::bit_run(bytes, first, last - first);
        let bytes_len = ((first + sectors) * sector - within).min(run);
        debug_assert!(SECTORS_PER_CHUNK * sector / cr == self.bat.block_size);
        Ok((present, bytes_len))
    }
}

/// What a payload entry `e` reads as when its state places no data: unallocated (NOT_PRESENT)
/// or zeros (ZERO, UNDEFINED, UNMAPPED, reserved 5); `None` for the states holding data.
fn state_extent(e: u64) -> Option<Extent> {
    match u8::try_from(e & format::BAT_STATE_MASK).unwrap_or(u8::MAX) {
        PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT => None,
        PAYLOAD_BLOCK_NOT_PRESENT => Some(Extent::Unallocated),
        _ => Some(Extent::Zero),
    }
}

impl Image for VhdxFile {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn logical_sector_size(&self) -> u32 {
        self.logical_sector_size
    }
    fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }
    fn identity(&self) -> Uuid {
        self.data_write_guid
    }
    fn parent_linkage(&self) -> Option<ParentLinkage> {
        self.linkage.clone()
    }
    fn parent_locators(&self) -> Vec<ParentLocator> {
        self.locators.clone()
    }
    fn map(&self, offset: u64, max_len: u64) -> Result<(Extent, u64)> {
        let bs = self.bat.block_size;
        let cr = self.bat.chunk_ratio;
        let b = offset / bs;
        let within = offset % bs;
        let run = max_len.min(bs - within);
        let e = self.entry(bat::payload_index(b, cr))?;
        let state = u8::try_from(e & format::BAT_STATE_MASK).unwrap_or(u8::MAX);
        let file_offset = e & format::BAT_OFFSET_MASK;
        match state {
            PAYLOAD_BLOCK_FULLY_PRESENT => Ok((
                Extent::Data {
                    file_offset: file_offset + within,
                },
                run,
            )),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                let (present, len) = self.bitmap_run(b, within, run)?;
                // Sectors absent up to the end of the block run on into absent blocks.
                let len = if !present && within + len == bs {
                    self.run_after(b, len, max_len, Extent::Unallocated)
                } else {
                    len
                };
                Ok(Extent::bitmap_run(present, file_offset + within, len))
            }
            PAYLOAD_BLOCK_NOT_PRESENT => Ok((
                Extent::Unallocated,
                self.run_after(b, run, max_len, Extent::Unallocated),
            )),
            // ZERO, and UNDEFINED, UNMAPPED, reserved 5 (validated at open): undefined
            // contents, zeros.
            _ => Ok((Extent::Zero, self.run_after(b, run, max_len, Extent::Zero))),
        }
    }
    fn details(&self) -> FormatInfo {
        FormatInfo::Vhdx(self.info.clone())
    }
    fn parts(&self) -> ImageParts<'_> {
        ImageParts::new(
            &*self.src,
            "vhdx payload block",
            self.real_file_len,
            &self.warnings,
        )
    }
}

/// Regions, metadata and BAT of a VHDX, checked: everything after the headers and the log.
/// Shared by the read-only open and the writable open, so both apply the same rules.
#[derive(Debug)]
pub(crate) struct Layout {
    /// Both region tables and the regions in use.
    pub regions: region::Regions,
    /// The metadata items.
    pub meta: metadata::Metadata,
    /// The BAT.
    pub bat: bat::Bat,
    /// Spans (start, end, what) no block may overlap: the first MiB, the log, every region.
    pub reserved: Vec<(u64, u64, String)>,
    /// Fixed (LeaveBlockAllocated), dynamic or differencing (HasParent).
    pub disk_type: DiskType,
    /// Warnings of the regions, metadata and BAT, in that order (the locator's are in
    /// `meta.locator`).
    pub warnings: Vec<String>,
}

/// Read regions, metadata and the BAT through `src` (`file_len` bytes; a dirty log already
/// replayed into it or onto the file), for the current header `cur`.
pub(crate) fn read_layout(
    src: &dyn Source,
    file_len: u64,
    cur: &header::ParsedHeader,
    limits: &Limits,
) -> Result<Layout> {
    let log_length = u64::from(cur.log_length);
    let log_span = (log_length > 0)
        .then(|| {
            cur.log_offset
                .checked_add(log_length)
                .map(|_| (cur.log_offset, log_length))
        })
        .flatten();
    let regions = region::read_regions(src, file_len, log_span)?;
    let mut warnings = regions.warnings.clone();
    let meta = metadata::read_metadata(
        src,
        regions.metadata.file_offset,
        regions.metadata.length,
        limits,
    )?;
    warnings.extend(meta.warnings.iter().cloned());
    let reserved = regions.reserved_spans(log_span);
    let bat = bat::read_bat(
        src,
        &bat::BatParams {
            region_offset: regions.bat.file_offset,
            region_length: regions.bat.length,
            virtual_size: meta.virtual_disk_size,
            block_size: meta.block_size,
            logical_sector_size: meta.logical_sector_size,
            differencing: meta.has_parent,
            file_len,
            limits,
            reserved: &reserved,
        },
    )?;
    warnings.extend(bat.warnings.iter().cloned());
    let disk_type = if meta.has_parent {
        DiskType::Differencing
    } else if meta.leave_block_allocated {
        // VHDX has no type field; Windows and qemu mark fixed disks with LeaveBlockAllocated.
        DiskType::Fixed
    } else {
        DiskType::Dynamic
    };
    Ok(Layout {
        regions,
        meta,
        bat,
        reserved,
        disk_type,
        warnings,
    })
}

impl Layout {
    /// The reader's and the writer's description of the parsed disk.
    pub(crate) fn shape(&self) -> Shape {
        Shape {
            format: DiskFormat::Vhdx,
            disk_type: self.disk_type,
            virtual_size: self.meta.virtual_disk_size,
            block_size: Some(self.bat.block_size),
        }
    }

    /// End of the last byte any structure uses: the log, every region, and every block a BAT
    /// entry points at (whatever its state). A writer allocates new blocks from here.
    pub(crate) fn structures_end(&self) -> u64 {
        let regions = self.reserved.iter().map(|r| r.1).max().unwrap_or(0);
        regions.max(self.bat.blocks_end)
    }
}
