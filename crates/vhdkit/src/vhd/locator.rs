//! Parent locator entries (FORMAT.md A.7): interpret the data space, bound-check and read the
//! data, decode the path.
//!
//! A problem in one slot never stops the open: it is recorded in the slot's `error` (so `info`
//! shows it), turned into a warning, and the chain resolver skips slots without a path. That
//! includes data that lies past the end of the file: the disk's own blocks are still readable,
//! and the other locators or the parent name may still find the parent.

use crate::disk::{ParentLocator, PathStyle};
use crate::source::Source;

use super::format::{self, ParentLocatorEntry};

/// One non-empty locator slot, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LocatorSlot {
    /// Slot number, 0..8.
    pub index: usize,
    /// The platform code as text (`W2ru`; non-printable bytes escaped).
    pub code: String,
    /// The platform code bytes as hex.
    pub code_hex: String,
    /// The platform data space as stored.
    pub data_space_raw: u32,
    /// The data space in bytes by the blktap heuristic (value < 512: sectors; multiple of
    /// 512: bytes; else `None`, invalid).
    pub data_space_bytes: Option<u64>,
    /// The platform data length in bytes.
    pub data_length: u32,
    /// Absolute offset of the data.
    pub data_offset: u64,
    /// The decoded path.
    pub path: Option<String>,
    /// Why the slot could not be used, when it could not.
    pub error: Option<String>,
    /// The data bytes as read (empty when they could not be read).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub raw: Vec<u8>,
}

impl LocatorSlot {
    /// The kind string used in [`ParentLocator::kind`].
    pub fn kind(&self) -> String {
        if self.code == "Mac " {
            "Mac".to_string()
        } else {
            self.code.clone()
        }
    }

    /// How the path is to be read.
    pub fn style(&self) -> PathStyle {
        match self.code.as_str() {
            "W2ru" | "Wi2r" => PathStyle::Relative,
            "W2ku" | "Wi2k" => PathStyle::AbsoluteWindows,
            "MacX" => PathStyle::FileUrl,
            _ => PathStyle::Opaque,
        }
    }

    /// Resolution rank: W2ru, W2ku, Wi2r, Wi2k, MacX, Mac, unknown.
    pub fn rank(&self) -> u8 {
        match self.code.as_str() {
            "W2ru" => 0,
            "W2ku" => 1,
            "Wi2r" => 2,
            "Wi2k" => 3,
            "MacX" => 4,
            "Mac " => 5,
            _ => 6,
        }
    }

    /// As a format-neutral locator.
    pub fn to_parent_locator(&self) -> ParentLocator {
        ParentLocator {
            kind: crate::chain::LocatorKind::from_name(&self.kind()),
            path: self.path.clone(),
            style: self.style(),
            file_offset: Some(self.data_offset),
            error: self.error.clone(),
        }
    }
}

/// Printable form of a platform code.
pub fn code_text(code: [u8; 4]) -> String {
    code.iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

/// The blktap heuristic for the data space field (trap 3).
pub fn data_space_bytes(raw: u32) -> Option<u64> {
    let raw = u64::from(raw);
    if raw < format::SECTOR_BYTES {
        Some(raw * format::SECTOR_BYTES)
    } else if raw % format::SECTOR_BYTES == 0 {
        Some(raw)
    } else {
        None
    }
}

/// Decode locator data by platform code; `Err` says why it could not be decoded.
pub fn decode_path(code: [u8; 4], data: &[u8]) -> Result<String, String> {
    match code {
        format::PLATFORM_W2RU | format::PLATFORM_W2KU => {
            if data.len() % 2 != 0 {
                return Err(format!(
                    "UTF-16 data has an odd length of {} bytes",
                    data.len()
                ));
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            // Trailing NULs pad the data; they are not part of the path.
            let end = units.iter().rposition(|&u| u != 0).map_or(0, |i| i + 1);
            let units = units.get(..end).unwrap_or_default();
            String::from_utf16(units).map_err(|_| {
                format!(
                    "invalid UTF-16 (little-endian): unpaired surrogate at code unit {}",
                    super::dynamic::first_bad_unit(units)
                )
            })
        }
        format::PLATFORM_WI2R | format::PLATFORM_WI2K | format::PLATFORM_MACX => {
            let trimmed = match data.iter().rposition(|&b| b != 0) {
                Some(last) => data.get(..=last).unwrap_or(data),
                None => &[],
            };
            std::str::from_utf8(trimmed)
                .map(str::to_string)
                .map_err(|e| {
                    if code == format::PLATFORM_MACX {
                        format!("invalid UTF-8 at byte {}", e.valid_up_to())
                    } else {
                        format!(
                            "8-bit path is not ASCII/UTF-8 at byte {} (its code page is unknown)",
                            e.valid_up_to()
                        )
                    }
                })
        }
        format::PLATFORM_MAC => Err("Mac OS alias record: opaque, not a path".to_string()),
        other => Err(format!("unknown platform code {:?}", code_text(other))),
    }
}

/// Decode every non-empty slot. `file_size` bounds the data; `max_bytes` is
/// `Limits::max_locator_bytes`. Never fails: problems go into each slot's `error`.
pub fn read_slots(
    src: &dyn Source,
    entries: &[ParentLocatorEntry; 8],
    header_offset: u64,
    file_size: u64,
    max_bytes: u32,
) -> Vec<LocatorSlot> {
    let mut out = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        if e.platform_code == [0; 4] {
            continue;
        }
        let mut slot = LocatorSlot {
            index,
            code: code_text(e.platform_code),
            code_hex: e.platform_code.iter().map(|b| format!("{b:02x}")).collect(),
            data_space_raw: e.platform_data_space,
            data_space_bytes: data_space_bytes(e.platform_data_space),
            data_length: e.platform_data_length,
            data_offset: e.platform_data_offset,
            path: None,
            error: None,
            raw: Vec::new(),
        };
        let entry_at = header_offset
            .saturating_add(format::LOCATOR_TABLE_OFFSET as u64)
            .saturating_add((index * format::LOCATOR_ENTRY_BYTES) as u64);
        match read_data(src, e, &slot, file_size, max_bytes) {
            Ok(data) => {
                match decode_path(e.platform_code, &data) {
                    Ok(p) => slot.path = Some(p),
                    Err(why) => slot.error = Some(why),
                }
                slot.raw = data;
            }
            Err(why) => {
                slot.error = Some(format!("{} (entry at offset {entry_at:#x})", why));
            }
        }
        out.push(slot);
    }
    out
}

fn read_data(
    src: &dyn Source,
    e: &ParentLocatorEntry,
    slot: &LocatorSlot,
    file_size: u64,
    max_bytes: u32,
) -> Result<Vec<u8>, String> {
    let len = e.platform_data_length;
    let off = e.platform_data_offset;
    let Some(space) = slot.data_space_bytes else {
        return Err(format!(
            "data space {} is neither a sector count (< 512) nor a multiple of 512 bytes",
            e.platform_data_space
        ));
    };
    if u64::from(len) > space {
        return Err(format!(
            "data length {len} is larger than the data space ({space} bytes)"
        ));
    }
    if len > max_bytes {
        return Err(format!(
            "data length {len} is above the limit of {max_bytes} bytes (Limits::max_locator_bytes)"
        ));
    }
    let end = off.checked_add(u64::from(len));
    if end.is_none_or(|end| end > file_size) || off < format::FOOTER_BYTES as u64 {
        return Err(format!(
            "data at offset {off:#x}, {len} bytes, lies outside the file (0x200..{file_size:#x})"
        ));
    }
    let n = usize::try_from(len).map_err(|_| format!("data length {len} too large"))?;
    let mut buf = vec![0u8; n];
    src.read_exact_at(&mut buf, off)
        .map_err(|err| format!("reading {len} bytes at {off:#x}: {err}"))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_space_heuristic() {
        assert_eq!(data_space_bytes(1), Some(512));
        assert_eq!(data_space_bytes(0), Some(0));
        assert_eq!(data_space_bytes(511), Some(511 * 512));
        assert_eq!(data_space_bytes(512), Some(512));
        assert_eq!(data_space_bytes(65536), Some(65536));
        assert_eq!(data_space_bytes(513), None);
    }

    #[test]
    fn decode_codes() {
        let le: Vec<u8> = r".\p.vhd"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(decode_path(*b"W2ru", &le).unwrap(), r".\p.vhd");
        assert!(decode_path(*b"W2ru", &le[..3]).unwrap_err().contains("odd"));
        let bad: Vec<u8> = [0x41u16, 0xDC00]
            .iter()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert!(decode_path(*b"W2ku", &bad)
            .unwrap_err()
            .contains("unpaired"));
        assert_eq!(decode_path(*b"Wi2r", b"p.vhd\0").unwrap(), "p.vhd");
        assert!(decode_path(*b"Wi2k", &[0xff, 0x41]).is_err());
        assert_eq!(
            decode_path(*b"MacX", b"file://localhost/a/p.vhd").unwrap(),
            "file://localhost/a/p.vhd"
        );
        assert!(decode_path(*b"Mac ", b"x").is_err());
        assert!(decode_path(*b"Zz\x01z", b"x")
            .unwrap_err()
            .contains("\\x01"));
    }
}
