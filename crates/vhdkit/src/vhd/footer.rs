//! The hard disk footer: find it, check it, choose between its two copies.
//!
//! Rules (FORMAT.md A.2, A.3, traps 4 and 5):
//! - The authoritative copy is at the end: the last 512 bytes, else the last 511 bytes (footer of
//!   products older than Virtual PC 2004).
//! - Dynamic and differencing disks also keep a copy at offset 0. When exactly one copy is damaged
//!   (bad cookie or checksum) the other is used and a warning recorded. When both are valid but
//!   differ, the end copy wins, with a warning.
//! - Offset 0 of a fixed disk is guest data: a front copy is only accepted when it says it is a
//!   dynamic or differencing disk.

use std::io::Cursor;

use binrw::BinRead;

use super::format::{self, Footer};
use crate::error::{Error, Result};
use crate::source::{read_struct, Source};

/// Which footer copies were found and how they relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum FooterCopies {
    /// Fixed disk: only the end copy exists.
    SingleFixed,
    /// Both copies valid and byte-identical.
    Agree,
    /// Both copies valid but different; the end copy is used.
    Differ,
    /// The end copy is damaged; the copy at offset 0 is used.
    EndDamaged,
    /// The copy at offset 0 is damaged; the end copy is used.
    FrontDamaged,
}

impl FooterCopies {
    /// The text `info` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            FooterCopies::SingleFixed => "single (fixed disk)",
            FooterCopies::Agree => "agree",
            FooterCopies::Differ => "differ",
            FooterCopies::EndDamaged => "end damaged",
            FooterCopies::FrontDamaged => "front damaged",
        }
    }
}

/// A footer that passed its own checks.
#[derive(Debug, Clone)]
pub struct CheckedFooter {
    /// The parsed fields.
    pub raw: Footer,
    /// Absolute offset of the copy in use.
    pub offset: u64,
    /// Checksum computed over the bytes read.
    pub computed_checksum: u32,
    /// True when the end footer is the old 511-byte one.
    pub short_footer: bool,
    /// Offset of the end footer (where the data area must stop), whichever copy is used.
    pub end_offset: u64,
    /// Copy status.
    pub copies: FooterCopies,
    /// Problems that did not stop the open.
    pub warnings: Vec<String>,
}

/// A footer copy read from the file and checked in isolation.
struct Copy {
    raw: Footer,
    bytes: [u8; format::FOOTER_BYTES],
    computed: u32,
}

/// The name of the footer copy at offset 0 in errors.
const FRONT: &str = "vhd footer (copy at offset 0)";

/// The `check` code of a rule broken by the end footer (`end`) or the front copy (`front`).
fn pick(structure: &str, end: &'static str, front: &'static str) -> &'static str {
    if structure == FRONT {
        front
    } else {
        end
    }
}

/// Check one copy: cookie, checksum, version, disk type.
fn check_copy(
    bytes: [u8; format::FOOTER_BYTES],
    have: usize,
    structure: &'static str,
    offset: u64,
) -> Result<Copy> {
    if bytes.get(..format::COOKIE_BYTES) != Some(&format::FOOTER_COOKIE[..]) {
        return Err(Error::corrupt(
            structure,
            offset,
            format!(
                "bad cookie {:?} (expected \"conectix\")",
                String::from_utf8_lossy(bytes.get(..format::COOKIE_BYTES).unwrap_or_default())
            ),
        )
        .with_code(pick(structure, "vhd.footer.missing", "vhd.footer_copy.missing")));
    }
    let computed = format::checksum(
        bytes.get(..have).unwrap_or(&bytes),
        format::FOOTER_CHECKSUM_OFFSET,
    );
    let raw = Footer::read(&mut Cursor::new(&bytes[..]))
        .map_err(|e| Error::corrupt(structure, offset, format!("unreadable: {}", crate::util::binrw_text(&e))))?;
    if raw.checksum != computed {
        return Err(Error::corrupt(
            structure,
            offset.saturating_add(format::FOOTER_CHECKSUM_OFFSET as u64),
            format!(
                "bad checksum {:#010x} (computed {computed:#010x})",
                raw.checksum
            ),
        )
        .with_code(pick(structure, "vhd.footer.checksum", "vhd.footer_copy.checksum")));
    }
    if raw.file_format_version >> 16 != 1 {
        return Err(Error::corrupt(
            structure,
            offset.saturating_add(format::footer_fields::FILE_FORMAT_VERSION),
            format!(
                "file format version {:#010x} is not 1.x (expected 0x00010000)",
                raw.file_format_version
            ),
        )
        .with_code("vhd.footer.version"));
    }
    if !matches!(
        raw.disk_type,
        format::DISK_TYPE_FIXED | format::DISK_TYPE_DYNAMIC | format::DISK_TYPE_DIFFERENCING
    ) {
        return Err(Error::corrupt(
            structure,
            offset.saturating_add(format::footer_fields::DISK_TYPE),
            format!(
                "disk type {} is not fixed (2), dynamic (3) or differencing (4)",
                raw.disk_type
            ),
        )
        .with_code("vhd.footer.disk_type"));
    }
    Ok(Copy {
        raw,
        bytes,
        computed,
    })
}

fn has_cookie_at(src: &dyn Source, offset: u64) -> Result<bool> {
    let mut c = [0u8; format::COOKIE_BYTES];
    read_struct(src, offset, &mut c, "vhd footer")?;
    Ok(&c == format::FOOTER_COOKIE)
}

/// True when `conectix` is at EOF-512, EOF-511 or offset 0.
pub fn looks_like_vhd(src: &dyn Source, len: u64) -> Result<bool> {
    let full = format::FOOTER_BYTES as u64;
    let short = format::OLD_FOOTER_BYTES as u64;
    if len >= full && has_cookie_at(src, len - full)? {
        return Ok(true);
    }
    if len >= short && has_cookie_at(src, len - short)? {
        return Ok(true);
    }
    if len >= full && has_cookie_at(src, 0)? {
        return Ok(true);
    }
    Ok(false)
}

/// Read the end footer: `(offset, bytes, bytes present, short)` or why it is not there.
fn read_end(src: &dyn Source, len: u64) -> Result<(u64, [u8; format::FOOTER_BYTES], usize, bool)> {
    let full = format::FOOTER_BYTES as u64;
    let short = format::OLD_FOOTER_BYTES as u64;
    if len < short {
        return Err(Error::corrupt(
            "vhd footer",
            0,
            format!("the file is {len} bytes, too short for a 512-byte footer"),
        )
        .with_code("vhd.file.too_small"));
    }
    let mut buf = [0u8; format::FOOTER_BYTES];
    if len >= full {
        read_struct(src, len - full, &mut buf, "vhd footer")?;
        if buf.get(..format::COOKIE_BYTES) == Some(&format::FOOTER_COOKIE[..]) {
            return Ok((len - full, buf, format::FOOTER_BYTES, false));
        }
    }
    let mut sb = [0u8; format::FOOTER_BYTES];
    if let Some(dst) = sb.get_mut(..format::OLD_FOOTER_BYTES) {
        read_struct(src, len - short, dst, "vhd footer")?;
    }
    if sb.get(..format::COOKIE_BYTES) == Some(&format::FOOTER_COOKIE[..]) {
        return Ok((len - short, sb, format::OLD_FOOTER_BYTES, true));
    }
    // Report the 512-byte position: that is where the footer belongs.
    let at = len.saturating_sub(full);
    Ok((at, buf, format::FOOTER_BYTES, false))
}

/// Find, check and choose the footer of a file of `len` bytes.
pub fn read_footer(src: &dyn Source, len: u64) -> Result<CheckedFooter> {
    let (end_off, end_bytes, have, short) = read_end(src, len)?;
    match check_copy(end_bytes, have, "vhd footer", end_off) {
        Ok(e) => {
            let mut warnings = Vec::new();
            let copies = compare_front(src, &e, end_off, &mut warnings);
            Ok(CheckedFooter {
                raw: e.raw,
                offset: end_off,
                computed_checksum: e.computed,
                short_footer: short,
                end_offset: end_off,
                copies,
                warnings,
            })
        }
        Err(end_err) => fall_back_to_front(src, len, end_off, &end_bytes, end_err),
    }
}

/// The front copy, checked.
fn read_front(src: &dyn Source) -> Result<Copy> {
    let mut b = [0u8; format::FOOTER_BYTES];
    read_struct(src, 0, &mut b, FRONT)?;
    check_copy(b, format::FOOTER_BYTES, FRONT, 0)
}

/// How the front copy relates to a valid end copy at `end_off`.
fn compare_front(
    src: &dyn Source,
    e: &Copy,
    end_off: u64,
    warnings: &mut Vec<String>,
) -> FooterCopies {
    if e.raw.disk_type == format::DISK_TYPE_FIXED {
        return FooterCopies::SingleFixed;
    }
    if end_off < format::FOOTER_BYTES as u64 {
        // No room for a front copy; the dynamic header check fails later.
        warnings.push("no room for a footer copy at offset 0".to_string());
        return FooterCopies::FrontDamaged;
    }
    match read_front(src) {
        Ok(f) if f.bytes == e.bytes => FooterCopies::Agree,
        Ok(_) => {
            warnings.push(
                "the footer copies at offset 0 and at the end of the file differ; \
                 using the copy at the end"
                    .to_string(),
            );
            FooterCopies::Differ
        }
        Err(err) => {
            warnings.push(format!(
                "footer copy at offset 0 is damaged ({}); using the copy at the end of the file",
                short_reason(&err)
            ));
            FooterCopies::FrontDamaged
        }
    }
}

/// The end copy is damaged: use the front copy when it can be believed.
fn fall_back_to_front(
    src: &dyn Source,
    len: u64,
    end_off: u64,
    end_bytes: &[u8],
    end_err: Error,
) -> Result<CheckedFooter> {
    // Offset 0 of a fixed disk is guest data, so only a front copy that says it is
    // dynamic or differencing is believed.
    if len < 2 * format::FOOTER_BYTES as u64 {
        return Err(end_err);
    }
    // A damaged end copy that still has its cookie and says "fixed" means offset 0
    // is guest data, whatever it looks like.
    let end_says_fixed = end_bytes.get(..format::COOKIE_BYTES) == Some(&format::FOOTER_COOKIE[..])
        && end_bytes.get(disk_type_field()) == Some(&format::DISK_TYPE_FIXED.to_be_bytes()[..]);
    if end_says_fixed {
        return Err(end_err);
    }
    match read_front(src) {
        Ok(f) if f.raw.disk_type != format::DISK_TYPE_FIXED => Ok(CheckedFooter {
            raw: f.raw,
            offset: 0,
            computed_checksum: f.computed,
            short_footer: false,
            end_offset: end_off,
            copies: FooterCopies::EndDamaged,
            warnings: vec![format!(
                "footer copy at end of file is damaged ({}); using the copy at offset 0",
                short_reason(&end_err)
            )],
        }),
        _ => Err(end_err),
    }
}

/// The byte range of the footer's disk type field.
fn disk_type_field() -> std::ops::Range<usize> {
    let at = format::footer_fields::DISK_TYPE as usize;
    at..at + std::mem::size_of::<u32>()
}

/// The detail of a corruption error, without its location.
fn short_reason(e: &Error) -> String {
    match e {
        Error::Corrupt { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}
