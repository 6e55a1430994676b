//! One parse of a VHD for every use: the reader ([`super::VhdFile`]) and the writer
//! ([`super::write::VhdWriter`]) both start from [`parse`], so the footer, the dynamic header and
//! the BAT are checked by the same code whatever the file is opened for.
//!
//! Order: footer (end copy, 511-byte fallback, front copy), the writer's refusals
//! ([`Purpose::Write`]), current size, then for dynamic and differencing disks the dynamic
//! header and the BAT. Parent locators are the reader's business (the writer never uses them).

use super::bitmap::BitOrder;
use super::footer::{self, CheckedFooter};
use super::{bat, dynamic, format};
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::Source;

/// What the file is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Reading: every readable file is accepted, oddities become warnings.
    Read,
    /// Writing: files vhdkit would have to guess about are refused.
    Write,
}

/// The dynamic header and BAT of a dynamic or differencing disk.
#[derive(Debug)]
pub(crate) struct Sparse {
    /// The checked dynamic header.
    pub header: dynamic::CheckedHeader,
    /// Allocated blocks (the BAT itself is checked, not kept: readers read it on demand).
    pub allocated: u64,
    /// Bitmap bytes in front of each block.
    pub bitmap_bytes: u64,
}

/// A parsed VHD.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// The footer copy in use.
    pub footer: CheckedFooter,
    /// Storage type.
    pub disk_type: DiskType,
    /// Virtual size (the footer's current size).
    pub virtual_size: u64,
    /// Bit order of the sector bitmaps.
    pub bit_order: BitOrder,
    /// Problems that did not stop the open.
    pub warnings: Vec<String>,
    /// Dynamic and differencing disks only.
    pub sparse: Option<Sparse>,
}

/// Parse the VHD in `src`, `file_size` bytes long.
pub(crate) fn parse(
    src: &dyn Source,
    file_size: u64,
    opts: &OpenOptions,
    purpose: Purpose,
) -> Result<Parsed> {
    let ft = footer::read_footer(src, file_size)?;
    if purpose == Purpose::Write {
        refuse_for_writing(&ft)?;
    }
    let mut warnings = ft.warnings.clone();
    let f = &ft.raw;
    let disk_type = match f.disk_type {
        format::DISK_TYPE_FIXED => DiskType::Fixed,
        format::DISK_TYPE_DYNAMIC => DiskType::Dynamic,
        _ => DiskType::Differencing,
    };
    let virtual_size = f.current_size;
    let size_at = ft
        .offset
        .saturating_add(format::footer_fields::CURRENT_SIZE);
    if virtual_size == 0 {
        return Err(
            Error::corrupt(footer_structure(&ft), size_at, "current size is 0")
                .with_code("vhd.footer.size_zero"),
        );
    }
    let chs = format::chs_bytes(f.cylinders, f.heads, f.sectors_per_track);
    if f.creator_application == format::CREATOR_VPC && chs != virtual_size {
        warnings.push(format!(
            "Virtual PC disk: CHS geometry gives {chs} bytes, current size {virtual_size}; \
             using current size (qemu would use the CHS size)"
        ));
    }
    let bit_order = if lsb_first_tapdisk(f) {
        BitOrder::LsbFirst
    } else {
        BitOrder::MsbFirst
    };
    let sparse = if disk_type == DiskType::Fixed {
        if virtual_size > ft.end_offset {
            return Err(Error::corrupt(
                "vhd footer",
                size_at,
                format!(
                    "fixed disk current size {virtual_size} is larger than the {} bytes \
                     of data before the footer",
                    ft.end_offset
                ),
            )
            .with_code("vhd.fixed.size_mismatch"));
        }
        None
    } else {
        Some(parse_sparse(src, &ft, opts)?)
    };
    Ok(Parsed {
        footer: ft,
        disk_type,
        virtual_size,
        bit_order,
        warnings,
        sparse,
    })
}

/// The dynamic header and the BAT.
fn parse_sparse(src: &dyn Source, ft: &CheckedFooter, opts: &OpenOptions) -> Result<Sparse> {
    let header = dynamic::read_header(src, ft.raw.data_offset, ft.end_offset)?;
    let h = &header.raw;
    let bitmap_bytes = format::bitmap_bytes(h.block_size);
    let layout = bat::BatLayout {
        table_offset: h.table_offset,
        entries: h.max_table_entries,
        block_size: h.block_size,
        bitmap_bytes,
        virtual_size: ft.raw.current_size,
        data_end: ft.end_offset,
        header_offset: header.offset,
    };
    let allocated = bat::check_bat(src, &layout, &opts.limits)?;
    Ok(Sparse {
        header,
        allocated,
        bitmap_bytes,
    })
}

/// Old tapdisk files keep their sector bitmaps least significant bit first (A.8).
fn lsb_first_tapdisk(f: &format::Footer) -> bool {
    f.creator_application == format::CREATOR_TAP
        && f.creator_version == format::TAP_LSB_BITMAP_VERSION
}

/// The writer refuses files it would have to guess about: a damaged or 511-byte end footer,
/// old LSB-first tapdisk bitmaps, a disk in a saved state, a size that is not whole sectors.
fn refuse_for_writing(ft: &CheckedFooter) -> Result<()> {
    if ft.short_footer {
        return Err(Error::unsupported(
            "writing a VHD with an old 511-byte footer (convert it first)",
        ));
    }
    if ft.offset != ft.end_offset {
        return Err(Error::unsupported(
            "writing a VHD whose end footer is damaged (repair it first)",
        ));
    }
    if ft.raw.saved_state != 0 {
        return Err(Error::unsupported(
            "writing a VHD whose footer says a virtual machine is in a saved state",
        ));
    }
    if lsb_first_tapdisk(&ft.raw) {
        return Err(Error::unsupported(
            "writing an old tapdisk VHD with least-significant-bit-first bitmaps",
        ));
    }
    let size = ft.raw.current_size;
    if size == 0 || size % format::SECTOR_BYTES != 0 {
        return Err(Error::unsupported(format!(
            "writing a VHD whose current size {size} is not a non-zero multiple of 512"
        )));
    }
    Ok(())
}

/// The structure name of the footer copy in use.
fn footer_structure(ft: &CheckedFooter) -> &'static str {
    if ft.offset == 0 {
        "vhd footer (copy at offset 0)"
    } else {
        "vhd footer"
    }
}
