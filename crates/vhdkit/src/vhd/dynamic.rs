//! The dynamic disk header (FORMAT.md A.6): read, check, decode the parent name.
//!
//! A bad checksum is an error here (qemu ignores it and libvhdi checks neither checksum): the
//! header holds the BAT position and block size, so a damaged one cannot be trusted, and there is
//! no second copy to fall back on.

use std::io::Cursor;

use binrw::BinRead;

use super::format::{self, DynamicHeader};
use crate::error::{Error, Result};
use crate::source::{read_struct, Source};

const STRUCTURE: &str = "vhd dynamic header";

/// A dynamic header that passed its checks.
#[derive(Debug, Clone)]
pub struct CheckedHeader {
    /// The parsed fields.
    pub raw: DynamicHeader,
    /// Absolute offset of the header.
    pub offset: u64,
    /// Checksum computed over the bytes read.
    pub computed_checksum: u32,
    /// The parent unicode name, decoded.
    pub parent_name: ParentName,
}

/// The parent unicode name field, decoded from UTF-16 big-endian.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentName {
    /// The name with trailing NULs trimmed, or `None` when it is not valid UTF-16.
    pub name: Option<String>,
    /// Why it could not be decoded.
    pub error: Option<String>,
    /// The raw bytes, trailing zero code units trimmed.
    pub raw: Vec<u8>,
    /// True when the field was stored little-endian (VirtualBox 2.x, early tapdisk) and was
    /// read as such; see [`little_endian_name`].
    pub little_endian: bool,
}

/// The parent name read little-endian, when that reading is certain: every big-endian code
/// unit has a zero low byte (so read big-endian it would be a run of CJK or punctuation
/// characters that all end in 00), while read little-endian it is printable ASCII ending in a
/// VHD extension. VirtualBox 2.x wrote the host's (little-endian) UTF-16 here, and so did
/// tapdisk 0.1 (blktap reads `tap` 0.1 names as native UTF-16).
pub fn little_endian_name(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let mut name = String::with_capacity(raw.len() / 2);
    for c in raw.chunks_exact(2) {
        match c {
            [lo, 0] if lo.is_ascii_graphic() || *lo == b' ' => name.push(char::from(*lo)),
            _ => return None,
        }
    }
    let lower = name.to_ascii_lowercase();
    (lower.ends_with(".vhd") || lower.ends_with(".avhd")).then_some(name)
}

/// Decode the parent unicode name field (UTF-16 **big-endian**, zero-padded).
pub fn decode_parent_name(field: &[u8]) -> ParentName {
    let mut units: Vec<u16> = field
        .chunks_exact(2)
        .map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect();
    while units.last() == Some(&0) {
        units.pop();
    }
    let raw = field.get(..units.len() * 2).unwrap_or_default().to_vec();
    if let Some(name) = little_endian_name(&raw) {
        return ParentName {
            name: Some(name),
            error: None,
            raw,
            little_endian: true,
        };
    }
    match String::from_utf16(&units) {
        Ok(s) => ParentName {
            name: Some(s),
            error: None,
            raw,
            little_endian: false,
        },
        Err(_) => ParentName {
            name: None,
            error: Some(format!(
                "invalid UTF-16 (big-endian) in the parent unicode name: unpaired surrogate at code unit {}",
                first_bad_unit(&units)
            )),
            raw,
            little_endian: false,
        },
    }
}

/// Index of the first code unit that makes a UTF-16 sequence invalid.
pub fn first_bad_unit(units: &[u16]) -> usize {
    let mut i = 0;
    for r in char::decode_utf16(units.iter().copied()) {
        match r {
            Ok(c) => i += c.len_utf16(),
            Err(_) => return i,
        }
    }
    i
}

/// Read and check the dynamic header at `offset` in a file whose data area ends at `data_end`
/// (the end footer's offset).
pub fn read_header(src: &dyn Source, offset: u64, data_end: u64) -> Result<CheckedHeader> {
    let size = format::DYNAMIC_HEADER_BYTES as u64;
    let end = offset.checked_add(size).ok_or_else(|| {
        Error::corrupt(
            STRUCTURE,
            offset,
            "footer data offset overflows (header would end past 2^64)",
        )
        .with_code("vhd.footer.data_offset")
    })?;
    if offset < format::FOOTER_BYTES as u64 || end > data_end {
        return Err(Error::corrupt(
            STRUCTURE,
            offset,
            format!(
                "footer data offset {offset:#x} puts the 1024-byte header outside the file area \
                 between the front footer copy (ends 0x200) and the end footer ({data_end:#x})"
            ),
        )
        // As `check` tells them: an offset that cannot hold a header at all is the footer's
        // fault, one that runs into the end footer is a cut-off header.
        .with_code(if offset < format::FOOTER_BYTES as u64 {
            "vhd.footer.data_offset"
        } else {
            "vhd.header.truncated"
        }));
    }
    let mut buf = [0u8; format::DYNAMIC_HEADER_BYTES];
    read_struct(src, offset, &mut buf, STRUCTURE)?;
    if buf.get(..format::COOKIE_BYTES) != Some(&format::DYNAMIC_COOKIE[..]) {
        return Err(Error::corrupt(
            STRUCTURE,
            offset,
            format!(
                "bad cookie {:?} (expected \"cxsparse\")",
                String::from_utf8_lossy(buf.get(..format::COOKIE_BYTES).unwrap_or_default())
            ),
        )
        .with_code("vhd.header.cookie"));
    }
    let computed = format::checksum(&buf, format::DYNAMIC_CHECKSUM_OFFSET);
    let raw = DynamicHeader::read(&mut Cursor::new(&buf[..]))
        .map_err(|e| Error::corrupt(STRUCTURE, offset, format!("unreadable: {}", crate::util::binrw_text(&e))).with_code("vhd.header.truncated"))?;
    let at = |rel: u64| offset.saturating_add(rel);
    if raw.checksum != computed {
        return Err(Error::corrupt(
            STRUCTURE,
            at(format::DYNAMIC_CHECKSUM_OFFSET as u64),
            format!(
                "bad checksum {:#010x} (computed {computed:#010x})",
                raw.checksum
            ),
        )
        .with_code("vhd.header.checksum"));
    }
    if raw.header_version >> 16 != 1 {
        return Err(Error::corrupt(
            STRUCTURE,
            at(format::dynamic_header_fields::HEADER_VERSION),
            format!(
                "header version {:#010x} is not 1.x (expected 0x00010000)",
                raw.header_version
            ),
        )
        .with_code("vhd.header.version"));
    }
    let bs = raw.block_size;
    if bs < 512 || !bs.is_power_of_two() || bs > format::MAX_BLOCK_BYTES {
        return Err(Error::corrupt(
            STRUCTURE,
            at(format::dynamic_header_fields::BLOCK_SIZE),
            format!(
                "block size {bs} is not a power of two between 512 and {} bytes",
                format::MAX_BLOCK_BYTES
            ),
        )
        .with_code("vhd.header.block_size"));
    }
    let parent_name = decode_parent_name(&raw.parent_unicode_name);
    Ok(CheckedHeader {
        raw,
        offset,
        computed_checksum: computed,
        parent_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(s: &str) -> Vec<u8> {
        let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
        v.resize(512, 0);
        v
    }

    #[test]
    fn parent_name_is_big_endian_and_trimmed() {
        let p = decode_parent_name(&be(r"C:\x\fat-parent.vhd"));
        assert_eq!(p.name.as_deref(), Some(r"C:\x\fat-parent.vhd"));
        assert_eq!(p.raw.len(), 2 * 19);
        assert!(p.error.is_none());
    }

    #[test]
    fn parent_name_unpaired_surrogate_is_recorded() {
        let mut f = be("ab");
        f[4..6].copy_from_slice(&0xD800u16.to_be_bytes());
        f[6..8].copy_from_slice(&0x0041u16.to_be_bytes());
        let p = decode_parent_name(&f);
        assert!(p.name.is_none());
        assert!(p.error.unwrap().contains("code unit 2"));
        assert_eq!(p.raw.len(), 8);
    }

    #[test]
    fn little_endian_parent_name_is_recognised_only_when_certain() {
        let le: Vec<u8> = "base.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .chain([0u8; 8])
            .collect();
        let p = decode_parent_name(&le);
        assert_eq!(p.name.as_deref(), Some("base.vhd"));
        assert!(p.little_endian);
        // Big-endian ASCII is never mistaken for it.
        let p = decode_parent_name(&be("base.vhd"));
        assert_eq!(p.name.as_deref(), Some("base.vhd"));
        assert!(!p.little_endian);
        // Without a VHD extension the reading is not certain: big-endian as the spec says.
        let le: Vec<u8> = "base".encode_utf16().flat_map(u16::to_le_bytes).collect();
        let p = decode_parent_name(&le);
        assert!(!p.little_endian);
        assert_ne!(p.name.as_deref(), Some("base"));
    }

    #[test]
    fn empty_parent_name() {
        let p = decode_parent_name(&[0u8; 512]);
        assert_eq!(p.name.as_deref(), Some(""));
    }
}
