//! VHD (version 1, "conectix") files, read-only.
//!
//! Opening runs, in order: footer (`footer`: end copy, 511-byte fallback, front copy), then
//! for dynamic and differencing disks the dynamic header (`dynamic`) and the block allocation
//! table (`bat`) -- the parse the writer (`write`) shares -- and last the parent locators
//! (`locator`). Reads map virtual ranges to file ranges; differencing disks consult the sector
//! bitmap (`bitmap`) of allocated blocks.
//!
//! **Virtual size.** vhdkit uses the footer's *current size* for every creator, including
//! Virtual PC (`vpc `), and also reports the CHS product (`chs_size`). Reasons: the spec defines
//! current size as the disk size; libvhdi and Windows use it; the BAT is sized for it; and in
//! every sample the CHS product is smaller (Hyper-V, Disk2vhd) or equal, so current size never
//! hides stored data. qemu instead uses the CHS product for `vpc ` and `qemu` creators (A.4); on
//! `virtualpc-dynamic.vhd` that gives 136363130880 where vhdkit (like libvhdi) says 136365211648.
//! `VhdInfo::size_source` says which was used and why, and when the two differ for `vpc `.
//!
//! **Dynamic disks ignore the bitmap**: a whole allocated block is data (unwritten sectors are
//! zeros on disk per the spec, and qemu sets the bitmap to all ones). Differencing disks honour
//! it bit by bit.

pub(crate) mod bat;
pub(crate) mod bitmap;
pub(crate) mod compact;
support_mod!(create);
support_mod!(dynamic);
support_mod!(footer);
support_mod!(format);
pub(crate) mod link;
support_mod!(locator);
support_mod!(name_style);
mod open;
pub(crate) mod reparent;
// `vhdkit resize` (issue 14).
pub(crate) mod resize;
support_mod!(write);

use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::disk::{
    DiskFormat, DiskType, Extent, FormatInfo, Image, ImageParts, OpenOptions, ParentLinkage,
    ParentLocator, PathStyle,
};
use crate::error::{Error, Result};
use crate::guid;
use crate::source::{read_struct, source_len, Source};
use crate::table::{LazyTable, Width};
use crate::view::Shape;

pub use bitmap::BitOrder;
pub use footer::FooterCopies;
pub use locator::LocatorSlot;
pub use name_style::{NameStyle, ParentNameStyle};

/// A checksum as stored and as computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChecksumInfo {
    /// The stored value.
    pub stored: u32,
    /// The value computed over the bytes read.
    pub computed: u32,
    /// Whether they agree.
    pub ok: bool,
}

/// CHS geometry from the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: u16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

/// Facts from the dynamic header, for dynamic and differencing disks.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DynamicInfo {
    /// Absolute offset of the header.
    pub header_offset: u64,
    /// Header version (raw).
    pub header_version: u32,
    /// Header checksum.
    pub checksum: ChecksumInfo,
    /// Absolute offset of the BAT.
    pub table_offset: u64,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Number of allocated blocks.
    pub allocated_blocks: u64,
    /// Data bytes per block.
    pub block_size: u32,
    /// Bitmap bytes in front of each block.
    pub bitmap_bytes: u64,
    /// Bit order of the sector bitmaps.
    pub bitmap_order: BitOrder,
    /// Parent unique id (raw bytes displayed big-endian, see `guid::from_vhd_bytes`).
    pub parent_unique_id: Uuid,
    /// Parent time stamp (seconds since 2000-01-01 UTC).
    pub parent_time_stamp: u32,
    /// The parent time stamp in ISO 8601 UTC.
    pub parent_time_stamp_utc: String,
    /// Parent unicode name (UTF-16 big-endian), when it decodes.
    pub parent_unicode_name: Option<String>,
    /// Why the parent unicode name did not decode.
    pub parent_unicode_name_error: Option<String>,
    /// Non-empty locator slots, in slot order.
    pub locators: Vec<LocatorSlot>,
}

/// VHD facts for `info`. Boxed parts keep [`FormatInfo`] small.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct VhdInfo {
    /// Footer time stamp: seconds since 2000-01-01 00:00:00 UTC (creation time).
    pub timestamp: u32,
    /// Footer facts.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub footer: Box<FooterInfo>,
    /// Dynamic header facts (dynamic and differencing disks).
    pub dynamic: Option<Box<DynamicInfo>>,
}

/// Footer facts.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FooterInfo {
    /// Footer cookie (`conectix`).
    pub cookie: String,
    /// Footer features (bit 0 temporary, bit 1 reserved).
    pub features: u32,
    /// Whether the temporary bit is set.
    pub temporary: bool,
    /// File format version (raw, 0x00010000).
    pub file_format_version: u32,
    /// Footer data offset (dynamic header position; all ones for fixed).
    pub data_offset: u64,
    /// The footer time stamp in ISO 8601 UTC.
    pub timestamp_utc: String,
    /// Creator application as text (`win `, `vpc `, `d2v\x00`).
    pub creator_application: String,
    /// Creator application bytes as hex.
    pub creator_application_hex: String,
    /// Creator version as `major.minor`.
    pub creator_version: String,
    /// Creator version (raw).
    pub creator_version_raw: u32,
    /// Creator host OS as text (`Wi2k`, `Mac `).
    pub creator_host_os: String,
    /// Original size in bytes.
    pub original_size: u64,
    /// Current size in bytes.
    pub current_size: u64,
    /// CHS geometry.
    pub geometry: Geometry,
    /// Cylinders x heads x sectors per track x 512.
    pub chs_size: u64,
    /// The virtual size vhdkit uses.
    pub virtual_size: u64,
    /// Which size is used, and why.
    pub size_source: String,
    /// Footer disk type (2 fixed, 3 dynamic, 4 differencing).
    pub disk_type_code: u32,
    /// Footer checksum of the copy in use.
    pub footer_checksum: ChecksumInfo,
    /// Footer saved-state byte.
    pub saved_state: u8,
    /// Status of the two footer copies.
    pub footer_copies: FooterCopies,
    /// Absolute offset of the footer copy in use.
    pub footer_offset: u64,
    /// True when the end footer is the old 511-byte form.
    pub footer_511: bool,
    /// Footer unique id.
    pub unique_id: Uuid,
}

/// A sector-bitmap cache entry: block number and its bitmap.
type BitmapCache = Mutex<Option<(u32, Vec<u8>)>>;

/// An opened VHD file.
#[derive(Debug)]
pub(crate) struct VhdFile {
    /// The file (shared with the simulated re-open of a link plan); the table reads its
    /// entries through it.
    src: Arc<dyn Source>,
    file_size: u64,
    shape: Shape,
    footer: footer::CheckedFooter,
    header: Option<dynamic::CheckedHeader>,
    slots: Vec<LocatorSlot>,
    /// The BAT, read on demand (dynamic and differencing disks).
    bat: Option<LazyTable>,
    /// Allocated blocks, counted when the table was checked.
    allocated: u64,
    bitmap_bytes: u64,
    bit_order: BitOrder,
    cache: BitmapCache,
    warnings: Vec<String>,
}

/// The reader's and the writer's description of the parsed disk.
pub(crate) fn shape(p: &open::Parsed) -> Shape {
    Shape {
        format: DiskFormat::Vhd,
        disk_type: p.disk_type,
        virtual_size: p.virtual_size,
        block_size: p
            .sparse
            .as_ref()
            .map(|sp| u64::from(sp.header.raw.block_size)),
    }
}

/// True when `conectix` is at EOF-512, EOF-511, or offset 0.
pub(crate) fn looks_like_vhd(src: &dyn Source, len: u64) -> Result<bool> {
    footer::looks_like_vhd(src, len)
}

impl VhdFile {
    /// Open and check a VHD file.
    pub(crate) fn open(src: Box<dyn Source>, opts: &OpenOptions) -> Result<VhdFile> {
        let src: Arc<dyn Source> = Arc::from(src);
        let file_size = source_len(&*src)?;
        let p = open::parse(&*src, file_size, opts, open::Purpose::Read)?;
        let shape = shape(&p);
        let mut warnings = p.warnings;
        let Some(sp) = p.sparse else {
            return Ok(VhdFile {
                src,
                file_size,
                shape,
                footer: p.footer,
                header: None,
                slots: Vec::new(),
                bat: None,
                allocated: 0,
                bitmap_bytes: 0,
                bit_order: p.bit_order,
                cache: Mutex::new(None),
                warnings,
            });
        };
        let hdr = sp.header;
        let slots = locator::read_slots(
            &*src,
            &hdr.raw.parent_locators,
            hdr.offset,
            file_size,
            opts.limits.max_locator_bytes,
        );
        for s in &slots {
            if let Some(e) = &s.error {
                if s.code != "Mac " {
                    warnings.push(format!("parent locator {} ({}): {e}", s.index, s.code));
                }
            }
        }
        if p.disk_type == DiskType::Differencing {
            if let Some(e) = &hdr.parent_name.error {
                warnings.push(e.clone());
            }
            if hdr.parent_name.little_endian {
                warnings.push(little_endian_warning(&hdr.parent_name));
            }
        }
        let bat = LazyTable::new(
            hdr.raw.table_offset,
            u64::from(hdr.raw.max_table_entries),
            Width::U32Be,
            "vhd block allocation table",
        );
        Ok(VhdFile {
            src,
            file_size,
            shape,
            footer: p.footer,
            header: Some(hdr),
            slots,
            bat: Some(bat),
            allocated: sp.allocated,
            bitmap_bytes: sp.bitmap_bytes,
            bit_order: p.bit_order,
            cache: Mutex::new(None),
            warnings,
        })
    }

    /// Block size, for dynamic and differencing disks.
    /// Run `f` on the sector bitmap of `block`, whose bitmap starts at `at`.
    fn with_bitmap<T>(&self, block: u32, at: u64, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let mut guard = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((b, bm)) = guard.as_ref() {
            if *b == block {
                return Ok(f(bm));
            }
        }
        let n = usize::try_from(self.bitmap_bytes).map_err(|_| {
            Error::corrupt("vhd sector bitmap", at, "bitmap larger than memory")
                .with_code("vhd.header.block_size")
        })?;
        let mut bm = vec![0u8; n];
        read_struct(&*self.src, at, &mut bm, "vhd sector bitmap")?;
        let out = f(&bm);
        *guard = Some((block, bm));
        Ok(out)
    }

    /// A run of `len` unallocated bytes that ends with `block`, followed on by the unallocated
    /// blocks after it, up to `max_len` bytes: one scan of the table, a page at a time, so a
    /// long hole costs a few lookups rather than one per block.
    fn unallocated_after(&self, block: u64, len: u64, max_len: u64) -> u64 {
        let (Some(t), Some(bs)) = (&self.bat, self.shape.block_size) else {
            return len;
        };
        let more = max_len.saturating_sub(len);
        if more == 0 || bs == 0 {
            return len;
        }
        let free = u64::from(format::BAT_UNALLOCATED);
        let blocks = t.run_len(
            &*self.src,
            block.saturating_add(1),
            more.div_ceil(bs),
            |_, e| e == free,
        );
        len.saturating_add(blocks.saturating_mul(bs).min(more))
    }

    fn info(&self) -> VhdInfo {
        VhdInfo {
            timestamp: self.footer.raw.time_stamp,
            footer: self.footer_info(),
            dynamic: self.header.as_ref().map(|h| self.dynamic_info(h)),
        }
    }

    fn dynamic_info(&self, h: &dynamic::CheckedHeader) -> Box<DynamicInfo> {
        Box::new(DynamicInfo {
            header_offset: h.offset,
            header_version: h.raw.header_version,
            checksum: ChecksumInfo {
                stored: h.raw.checksum,
                computed: h.computed_checksum,
                ok: h.raw.checksum == h.computed_checksum,
            },
            table_offset: h.raw.table_offset,
            max_table_entries: h.raw.max_table_entries,
            allocated_blocks: self.allocated,
            block_size: h.raw.block_size,
            bitmap_bytes: self.bitmap_bytes,
            bitmap_order: self.bit_order,
            parent_unique_id: guid::from_vhd_bytes(h.raw.parent_unique_id),
            parent_time_stamp: h.raw.parent_time_stamp,
            parent_time_stamp_utc: vhd_time_utc(h.raw.parent_time_stamp),
            parent_unicode_name: h.parent_name.name.clone(),
            parent_unicode_name_error: h.parent_name.error.clone(),
            locators: self.slots.clone(),
        })
    }

    fn footer_info(&self) -> Box<FooterInfo> {
        let f = &self.footer.raw;
        let chs_size = format::chs_bytes(f.cylinders, f.heads, f.sectors_per_track);
        let size_source = if f.creator_application == format::CREATOR_VPC
            && chs_size != f.current_size
        {
            format!(
                "current_size (vhdkit uses it for every creator; this Virtual PC disk's CHS \
                 product is {chs_size}, which qemu would use)"
            )
        } else {
            "current_size (vhdkit uses it for every creator; chs_size is informational)".to_string()
        };
        Box::new(FooterInfo {
            cookie: "conectix".to_string(),
            features: f.features,
            temporary: f.features & format::FEATURE_TEMPORARY != 0,
            file_format_version: f.file_format_version,
            data_offset: f.data_offset,
            timestamp_utc: vhd_time_utc(f.time_stamp),
            creator_application: locator::code_text(f.creator_application),
            creator_application_hex: hex(&f.creator_application),
            creator_version: format!(
                "{}.{}",
                f.creator_version >> 16,
                f.creator_version & u32::from(u16::MAX)
            ),
            creator_version_raw: f.creator_version,
            creator_host_os: locator::code_text(f.creator_host_os),
            original_size: f.original_size,
            current_size: f.current_size,
            geometry: Geometry {
                cylinders: f.cylinders,
                heads: f.heads,
                sectors_per_track: f.sectors_per_track,
            },
            chs_size,
            virtual_size: self.shape.virtual_size,
            size_source,
            disk_type_code: f.disk_type,
            footer_checksum: ChecksumInfo {
                stored: f.checksum,
                computed: self.footer.computed_checksum,
                ok: f.checksum == self.footer.computed_checksum,
            },
            saved_state: f.saved_state,
            footer_copies: self.footer.copies,
            footer_offset: self.footer.offset,
            footer_511: self.footer.short_footer,
            unique_id: guid::from_vhd_bytes(f.unique_id),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Render a VHD time stamp (seconds since 2000-01-01 UTC) as ISO 8601 UTC.
pub(crate) fn vhd_time_utc(ts: u32) -> String {
    const VHD_EPOCH_DAYS: i64 = 10_957; // 1970-01-01 .. 2000-01-01
    let secs = i64::from(ts);
    let days = secs / 86_400 + VHD_EPOCH_DAYS;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Image for VhdFile {
    fn shape(&self) -> Shape {
        self.shape
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        512
    }
    fn identity(&self) -> Uuid {
        guid::from_vhd_bytes(self.footer.raw.unique_id)
    }
    fn parent_linkage(&self) -> Option<ParentLinkage> {
        if self.shape.disk_type != DiskType::Differencing {
            return None;
        }
        let h = self.header.as_ref()?;
        Some(ParentLinkage {
            id: guid::from_vhd_bytes(h.raw.parent_unique_id),
            alternate_id: None,
            timestamp: Some(h.raw.parent_time_stamp),
            locators: self.parent_locators(),
        })
    }
    fn parent_locators(&self) -> Vec<ParentLocator> {
        if self.shape.disk_type != DiskType::Differencing {
            return Vec::new();
        }
        let mut slots: Vec<&LocatorSlot> = self.slots.iter().collect();
        slots.sort_by_key(|s| (s.rank(), s.index));
        let mut out: Vec<ParentLocator> = slots.iter().map(|s| s.to_parent_locator()).collect();
        if let Some(h) = &self.header {
            let n = &h.parent_name;
            let (path, error) = match (&n.name, &n.error) {
                (Some(p), _) if p.is_empty() => {
                    (None, Some("the parent unicode name is empty".to_string()))
                }
                (Some(p), _) => (Some(p.clone()), None),
                (None, e) => (None, e.clone()),
            };
            out.push(ParentLocator {
                kind: crate::chain::LocatorKind::ParentName,
                path,
                style: PathStyle::Name,
                file_offset: Some(h.offset.saturating_add(format::PARENT_NAME_OFFSET as u64)),
                error,
            });
        }
        out
    }
    fn map(&self, offset: u64, max_len: u64) -> Result<(Extent, u64)> {
        let Some(bs) = self.shape.block_size else {
            return Ok((
                Extent::Data {
                    file_offset: offset,
                },
                max_len,
            ));
        };
        let block = offset / bs;
        let in_block = offset % bs;
        let n = max_len.min(bs - in_block);
        let entry_at = self
            .header
            .as_ref()
            .map_or(0, |h| h.raw.table_offset)
            .saturating_add(block.saturating_mul(format::BAT_ENTRY_BYTES));
        let entry = match &self.bat {
            Some(t) if block < t.len() => t.get(&*self.src, block)?,
            _ => {
                return Err(Error::corrupt(
                    "vhd block allocation table",
                    entry_at,
                    format!("no entry for block {block}"),
                )
                .with_code("vhd.bat.too_small"))
            }
        };
        if entry == u64::from(format::BAT_UNALLOCATED) {
            return Ok((
                Extent::Unallocated,
                self.unallocated_after(block, n, max_len),
            ));
        }
        let bitmap_at = entry * format::SECTOR_BYTES;
        let data_at = bitmap_at + self.bitmap_bytes;
        if self.shape.disk_type != DiskType::Differencing {
            return Ok((
                Extent::Data {
                    file_offset: data_at + in_block,
                },
                n,
            ));
        }
        let first = in_block / format::SECTOR_BYTES;
        let limit = (in_block + n).div_ceil(format::SECTOR_BYTES);
        let block32 = u32::try_from(block).unwrap_or(u32::MAX);
        let (set, end_sector) = self.with_bitmap(block32, bitmap_at, |bm| {
            bitmap::run(bm, first, limit, self.bit_order)
        })?;
        let len = (end_sector * format::SECTOR_BYTES - in_block).min(n);
        // Sectors absent up to the end of the block run on into unallocated blocks.
        let len = if !set && in_block + len == bs {
            self.unallocated_after(block, len, max_len)
        } else {
            len
        };
        Ok(Extent::bitmap_run(set, data_at + in_block, len))
    }
    fn details(&self) -> FormatInfo {
        FormatInfo::Vhd(self.info())
    }
    fn parts(&self) -> ImageParts<'_> {
        ImageParts::new(&*self.src, "vhd data block", self.file_size, &self.warnings)
    }
}

/// The warning for a parent unicode name stored little-endian.
pub(crate) fn little_endian_warning(n: &dynamic::ParentName) -> String {
    format!(
        "the parent unicode name is stored little-endian (as VirtualBox 2.x and tapdisk 0.1 \
         wrote it), not big-endian as the VHD spec says; read as {:?}",
        n.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_rendering() {
        assert_eq!(vhd_time_utc(0), "2000-01-01T00:00:00Z");
        // 2016-02-19 from SOURCES (hyperv2012r2): 509_155_200 = 2016-02-19T00:00:00Z.
        assert_eq!(vhd_time_utc(509_155_200), "2016-02-19T00:00:00Z");
        assert_eq!(vhd_time_utc(u32::MAX), "2136-02-07T06:28:15Z");
    }
}
