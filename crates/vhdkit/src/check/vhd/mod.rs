//! Structural checks of a VHD file (FORMAT.md Part A).
//!
//! The footers and the dynamic header are read as raw [`Footer`] / [`DynamicHeader`] structs
//! whatever their checksums hold, and each field is judged on its own, so one broken field does
//! not hide the findings about the others. Here: the footers and the disk type; [`sparse`]
//! checks what a dynamic or differencing disk adds (dynamic header, locators, BAT, blocks).

mod sparse;

use std::io::Cursor;
use std::ops::Range;

use binrw::BinRead;

use super::{Bytes, Finding, Findings};
use crate::limits::Limits;
use crate::vhd::format::{
    self, footer_fields as ff, DynamicHeader, Footer, DISK_TYPE_DIFFERENCING, DISK_TYPE_DYNAMIC,
    DISK_TYPE_FIXED, DYNAMIC_COOKIE, DYNAMIC_HEADER_BYTES, FEATURE_RESERVED, FEATURE_TEMPORARY,
    FOOTER_BYTES, FOOTER_CHECKSUM_OFFSET, FOOTER_COOKIE, MAX_CHS, OLD_FOOTER_BYTES, SECTOR_BYTES,
    VERSION_1_0,
};

const FOOTER: &str = "vhd footer";
const COPY: &str = "vhd footer copy";
const HEADER: &str = "vhd dynamic header";
const BAT: &str = "vhd bat";
const LOCATOR: &str = "vhd parent locator";

/// Largest dynamic/differencing disk (SV; qemu `VHD_MAX_SECTORS`).
const MAX_DYNAMIC_SIZE: u64 = 2040 << 30;

/// The first `len` bytes of `bytes` with `cookie` in place of theirs, so that binrw (whose
/// structs carry the cookie as a `magic`) reads the fields behind a damaged cookie too.
fn with_cookie(bytes: &[u8], len: usize, cookie: &[u8; 8]) -> Option<Vec<u8>> {
    let mut b = bytes.get(..len)?.to_vec();
    b.get_mut(..cookie.len())?.copy_from_slice(cookie);
    Some(b)
}

/// The footer laid out in the first 512 bytes of `bytes`, not validated (the cookie is not
/// looked at); `None` only when there are fewer than 512 bytes.
pub(crate) fn raw_footer(bytes: &[u8]) -> Option<Footer> {
    let b = with_cookie(bytes, FOOTER_BYTES, FOOTER_COOKIE)?;
    Footer::read(&mut Cursor::new(&b)).ok()
}

/// The dynamic header laid out in the first 1024 bytes of `bytes`, not validated (the cookie is
/// not looked at); `None` only when there are fewer than 1024 bytes.
pub(crate) fn raw_dynamic_header(bytes: &[u8]) -> Option<DynamicHeader> {
    let b = with_cookie(bytes, DYNAMIC_HEADER_BYTES, DYNAMIC_COOKIE)?;
    DynamicHeader::read(&mut Cursor::new(&b)).ok()
}

/// A footer as found at some offset.
struct FoundFooter {
    offset: u64,
    /// 512 bytes (a 511-byte footer is padded with a zero).
    bytes: Vec<u8>,
    raw: Footer,
    checksum_ok: bool,
}

impl FoundFooter {
    fn computed_checksum(&self) -> u32 {
        format::checksum(&self.bytes, FOOTER_CHECKSUM_OFFSET)
    }

    fn is_sparse(&self) -> bool {
        is_sparse(self.raw.disk_type)
    }
}

fn is_sparse(disk_type: u32) -> bool {
    disk_type == DISK_TYPE_DYNAMIC || disk_type == DISK_TYPE_DIFFERENCING
}

/// The footer of `n` bytes at `off`, when it starts with the `conectix` cookie.
fn footer_at(b: &Bytes, off: u64, n: usize) -> Option<FoundFooter> {
    let mut bytes = b.get(off, n)?;
    if bytes.get(..FOOTER_COOKIE.len()) != Some(&FOOTER_COOKIE[..]) {
        return None;
    }
    bytes.resize(FOOTER_BYTES, 0);
    let raw = raw_footer(&bytes)?;
    let checksum_ok = format::checksum(&bytes, FOOTER_CHECKSUM_OFFSET) == raw.checksum;
    Some(FoundFooter {
        offset: off,
        bytes,
        raw,
        checksum_ok,
    })
}

/// Byte ranges that hold metadata, with what each is.
type Ranges = Vec<(Range<u64>, &'static str)>;

pub(super) fn check(b: &Bytes, limits: &Limits) -> Vec<Finding> {
    let mut s = Findings::default();
    check_into(b, limits, &mut s);
    s.finish()
}

fn check_into(b: &Bytes, limits: &Limits, s: &mut Findings) {
    if b.len < OLD_FOOTER_BYTES as u64 {
        s.add(
            "vhd.file.too_small",
            FOOTER,
            Some(0),
            format!("the file has {} bytes, less than one footer", b.len),
        );
        return;
    }
    let (end, front) = find_footers(b);
    report_footers(b, s, end.as_ref(), front.as_ref());
    // The footer to trust: a valid end footer, else a valid copy, else whatever is there.
    let (reference, ref_name) = match (&end, &front) {
        (Some(e), _) if e.checksum_ok => (e, FOOTER),
        (_, Some(f)) if f.checksum_ok => (f, COPY),
        (Some(e), _) => (e, FOOTER),
        (None, Some(f)) => (f, COPY),
        (None, None) => return,
    };
    let footer_offset = end.as_ref().map_or(b.len, |e| e.offset);
    compare_copies(s, end.as_ref(), front.as_ref(), reference.is_sparse());
    check_footer_fields(s, reference, ref_name);
    check_size(s, reference, ref_name);
    check_disk_type(b, limits, s, reference, ref_name, footer_offset);
}

/// The end footer (512 or 511 bytes) and the copy at offset 0 (sparse disks only).
fn find_footers(b: &Bytes) -> (Option<FoundFooter>, Option<FoundFooter>) {
    let end = b
        .len
        .checked_sub(FOOTER_BYTES as u64)
        .and_then(|o| footer_at(b, o, FOOTER_BYTES))
        .or_else(|| {
            b.len
                .checked_sub(OLD_FOOTER_BYTES as u64)
                .and_then(|o| footer_at(b, o, OLD_FOOTER_BYTES))
        });
    // On a fixed disk offset 0 is guest data; a footer copy only exists on sparse disks.
    let front = footer_at(b, 0, FOOTER_BYTES)
        .filter(FoundFooter::is_sparse)
        .filter(|f| end.as_ref().is_none_or(|e| e.offset != f.offset));
    (end, front)
}

/// The end footer missing, short or with a bad checksum; the copy with a bad checksum.
fn report_footers(
    b: &Bytes,
    s: &mut Findings,
    end: Option<&FoundFooter>,
    front: Option<&FoundFooter>,
) {
    match end {
        None => s.add(
            "vhd.footer.missing",
            FOOTER,
            Some(b.len.saturating_sub(FOOTER_BYTES as u64)),
            if front.is_some() {
                "no `conectix` cookie in the last 512 (or 511) bytes; the copy at offset 0 survives"
            } else {
                "no `conectix` cookie in the last 512 (or 511) bytes"
            },
        ),
        Some(e) => {
            if e.offset == b.len.saturating_sub(OLD_FOOTER_BYTES as u64) {
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
                    Some(e.offset + FOOTER_CHECKSUM_OFFSET as u64),
                    format!(
                        "checksum {:#010x}, computed {:#010x}",
                        e.raw.checksum,
                        e.computed_checksum()
                    ),
                );
            }
        }
    }
    if let Some(f) = front.filter(|f| !f.checksum_ok) {
        s.add(
            "vhd.footer_copy.checksum",
            COPY,
            Some(FOOTER_CHECKSUM_OFFSET as u64),
            format!(
                "checksum {:#010x}, computed {:#010x}",
                f.raw.checksum,
                f.computed_checksum()
            ),
        );
    }
}

/// Two valid footers that differ; a sparse disk without its copy.
fn compare_copies(
    s: &mut Findings,
    end: Option<&FoundFooter>,
    front: Option<&FoundFooter>,
    sparse: bool,
) {
    if let (Some(e), Some(f)) = (end, front) {
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
    if sparse && front.is_none() && end.is_some() {
        s.add(
            "vhd.footer_copy.missing",
            COPY,
            Some(0),
            "no `conectix` footer copy at offset 0",
        );
    }
}

/// Version, features and the saved-state flag of the trusted footer.
fn check_footer_fields(s: &mut Findings, r: &FoundFooter, name: &'static str) {
    let (f, ro) = (&r.raw, r.offset);
    let version = f.file_format_version;
    if version != VERSION_1_0 {
        s.add(
            "vhd.footer.version",
            name,
            Some(ro + ff::FILE_FORMAT_VERSION),
            format!("file format version {version:#010x}, expected 0x00010000"),
        );
    }
    let features = f.features;
    if features & !(FEATURE_TEMPORARY | FEATURE_RESERVED) != 0 || features & FEATURE_RESERVED == 0 {
        s.add(
            "vhd.footer.features",
            name,
            Some(ro + ff::FEATURES),
            format!("features {features:#010x} (expected bit 1 set and no bits above 1)"),
        );
    }
    if f.saved_state != 0 {
        s.add(
            "vhd.footer.saved_state",
            name,
            Some(ro + ff::SAVED_STATE),
            "the saved-state flag is set (the VM was saved with this disk)",
        );
    }
}

/// Current size and the CHS geometry that should cover it.
fn check_size(s: &mut Findings, r: &FoundFooter, name: &'static str) {
    let (f, ro) = (&r.raw, r.offset);
    let size = f.current_size;
    if size == 0 {
        s.add(
            "vhd.footer.size_zero",
            name,
            Some(ro + ff::CURRENT_SIZE),
            "current size is 0",
        );
    } else if size % SECTOR_BYTES != 0 {
        s.add(
            "vhd.footer.size_unaligned",
            name,
            Some(ro + ff::CURRENT_SIZE),
            format!("current size {size} is not a multiple of 512"),
        );
    }
    let chs = format::chs_bytes(f.cylinders, f.heads, f.sectors_per_track);
    let max_chs = format::chs_bytes(MAX_CHS.0, MAX_CHS.1, MAX_CHS.2);
    let limit = size.min(max_chs);
    // Windows rounds geometry down a little (4 MiB -> 120/4/17); flag only real gaps.
    if chs < limit && limit - chs > limit / 16 {
        s.add(
            "vhd.footer.geometry",
            name,
            Some(ro + ff::DISK_GEOMETRY),
            format!("CHS geometry covers {chs} bytes of the {size}-byte disk"),
        );
    }
}

/// The rules of each disk type: a fixed disk's size and data offset, a sparse disk's header.
fn check_disk_type(
    b: &Bytes,
    limits: &Limits,
    s: &mut Findings,
    r: &FoundFooter,
    name: &'static str,
    footer_offset: u64,
) {
    let (f, ro) = (&r.raw, r.offset);
    let size = f.current_size;
    match f.disk_type {
        DISK_TYPE_FIXED => {
            let data_offset = f.data_offset;
            // All ones, in 64 bits or (some writers) in 32.
            if data_offset != u64::MAX && data_offset != u64::from(u32::MAX) {
                s.add(
                    "vhd.footer.data_offset",
                    name,
                    Some(ro + ff::DATA_OFFSET),
                    format!("fixed disk data offset {data_offset:#x}, expected all ones"),
                );
            }
            if size > footer_offset {
                s.add(
                    "vhd.fixed.size_mismatch",
                    name,
                    Some(ro + ff::CURRENT_SIZE),
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
                    name,
                    Some(ro + ff::CURRENT_SIZE),
                    format!("current size {size} is above the 2040 GiB maximum of sparse VHDs"),
                );
            }
            sparse::check(b, limits, s, f, footer_offset);
        }
        t => s.add(
            "vhd.footer.disk_type",
            name,
            Some(ro + ff::DISK_TYPE),
            format!("disk type {t}, expected 2 (fixed), 3 (dynamic) or 4 (differencing)"),
        ),
    }
}
