//! The file type identifier and the two headers: validity, and which one is current.

use uuid::Uuid;

use super::format::{
    self, FileIdentifier, Header, CHECKSUM_OFFSET, FILE_IDENTIFIER_SIGNATURE, FILE_IDENTIFIER_SIZE,
    HEADER_OFFSETS, HEADER_SIGNATURE, HEADER_SIZE, HEADER_VERSION,
};
use crate::error::{Error, Result};
use crate::guid::{from_vhdx_bytes, to_vhdx_bytes};
use crate::source::{read_struct, Source};

const IDENT: &str = "vhdx file identifier";
const HEADER_NAMES: [&str; 2] = ["vhdx header 1", "vhdx header 2"];

/// Read the file identifier; returns the creator string (lossy for bad UTF-16).
pub(crate) fn read_file_identifier(src: &dyn Source) -> Result<String> {
    let mut buf = [0u8; FILE_IDENTIFIER_SIZE];
    read_struct(src, 0, &mut buf, IDENT)?;
    let id: FileIdentifier = format::parse(&buf, IDENT, 0)?;
    if id.signature != FILE_IDENTIFIER_SIGNATURE {
        return Err(Error::corrupt(
            IDENT,
            0,
            format!("signature {:02x?}, expected \"vhdxfile\"", id.signature),
        )
        .with_code("vhdx.ident.signature"));
    }
    let end = id
        .creator
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(id.creator.len());
    Ok(String::from_utf16_lossy(
        id.creator.get(..end).unwrap_or(&[]),
    ))
}

/// A header that passed the validity checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedHeader {
    pub sequence_number: u64,
    pub file_write_guid: Uuid,
    pub data_write_guid: Uuid,
    pub log_guid: Uuid,
    pub log_version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// What was found in one header slot.
#[derive(Debug, Clone)]
pub(crate) struct HeaderSlot {
    pub offset: u64,
    pub header: Option<ParsedHeader>,
    pub error: Option<String>,
}

/// Both headers and the choice between them.
#[derive(Debug, Clone)]
pub(crate) struct Headers {
    pub slots: [HeaderSlot; 2],
    /// 0 or 1.
    pub current_index: usize,
    pub current: ParsedHeader,
    pub warnings: Vec<String>,
}

impl Headers {
    /// Name of the current header's slot, for errors.
    pub fn current_name(&self) -> &'static str {
        HEADER_NAMES
            .get(self.current_index)
            .copied()
            .unwrap_or("vhdx header")
    }

    /// File offset of the current header.
    pub fn current_offset(&self) -> u64 {
        HEADER_OFFSETS.get(self.current_index).copied().unwrap_or(0)
    }
}

/// The on-disk bytes of a header (4 KiB, reserved bytes zero), checksum included.
pub(crate) fn encode_header(h: &ParsedHeader) -> Vec<u8> {
    let mut b = format::encode(&Header {
        signature: HEADER_SIGNATURE,
        checksum: 0,
        sequence_number: h.sequence_number,
        file_write_guid: to_vhdx_bytes(&h.file_write_guid),
        data_write_guid: to_vhdx_bytes(&h.data_write_guid),
        log_guid: to_vhdx_bytes(&h.log_guid),
        log_version: h.log_version,
        version: HEADER_VERSION,
        log_length: h.log_length,
        log_offset: h.log_offset,
    });
    b.resize(HEADER_SIZE, 0);
    format::set_checksum(&mut b);
    b
}

/// Where a structure was read, for errors.
pub(super) struct Where {
    pub structure: &'static str,
    pub offset: u64,
    /// The `check` codes of a bad signature and of a bad checksum of this structure.
    pub codes: [&'static str; 2],
}

/// The signature and CRC-32C (over all of `buf`, checksum field zeroed) of a header, region
/// table or log entry.
pub(super) fn check_signed(
    buf: &[u8],
    at: &Where,
    signature: &[u8],
    expected: &[u8],
    checksum: u32,
) -> Result<()> {
    if signature != expected {
        return Err(Error::corrupt(
            at.structure,
            at.offset,
            format!(
                "signature {signature:02x?}, expected \"{}\"",
                String::from_utf8_lossy(expected)
            ),
        )
        .with_code(at.codes[0]));
    }
    let crc = format::crc32c_with_zeroed(buf, CHECKSUM_OFFSET);
    if crc != checksum {
        return Err(Error::corrupt(
            at.structure,
            at.offset,
            format!(
                "checksum {checksum:#010x}, computed {crc:#010x} over {} bytes",
                buf.len()
            ),
        )
        .with_code(at.codes[1]));
    }
    Ok(())
}

fn parse_header(buf: &[u8], structure: &'static str, offset: u64) -> Result<ParsedHeader> {
    let h: Header = format::parse(buf, structure, offset)?;
    let at = Where {
        structure,
        offset,
        codes: ["vhdx.header.signature", "vhdx.header.checksum"],
    };
    check_signed(buf, &at, &h.signature, &HEADER_SIGNATURE, h.checksum)?;
    if h.version != HEADER_VERSION {
        return Err(Error::corrupt(
            structure,
            offset,
            format!("version {}, expected 1", h.version),
        )
        .with_code("vhdx.header.version"));
    }
    Ok(ParsedHeader {
        sequence_number: h.sequence_number,
        file_write_guid: from_vhdx_bytes(h.file_write_guid),
        data_write_guid: from_vhdx_bytes(h.data_write_guid),
        log_guid: from_vhdx_bytes(h.log_guid),
        log_version: h.log_version,
        log_length: h.log_length,
        log_offset: h.log_offset,
    })
}

/// Read both headers and choose the current one.
pub(crate) fn read_headers(src: &dyn Source) -> Result<Headers> {
    let mut raws: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut results: Vec<Result<ParsedHeader>> = Vec::with_capacity(2);
    for (i, &off) in HEADER_OFFSETS.iter().enumerate() {
        let name = HEADER_NAMES.get(i).copied().unwrap_or("vhdx header");
        let mut buf = vec![0u8; HEADER_SIZE];
        let r = read_struct(src, off, &mut buf, name).and_then(|()| parse_header(&buf, name, off));
        if let Some(slot) = raws.get_mut(i) {
            *slot = buf;
        }
        results.push(r);
    }
    let mut it = results.into_iter();
    let (r1, r2) = match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err(Error::internal("two headers read, fewer results")),
    };
    let mut warnings = Vec::new();
    let slot = |off: u64, r: &Result<ParsedHeader>| HeaderSlot {
        offset: off,
        header: r.as_ref().ok().cloned(),
        error: r.as_ref().err().map(|e| e.to_string()),
    };
    let slots = [slot(HEADER_OFFSETS[0], &r1), slot(HEADER_OFFSETS[1], &r2)];
    let current_index = match (&r1, &r2) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                0
            } else if b.sequence_number > a.sequence_number {
                1
            } else if raws[0] == raws[1] {
                // Disk2vhd writes two identical headers with the same sequence number.
                0
            } else {
                // Named at header 1, as `check` reports it: the fault is the pair.
                return Err(Error::corrupt(
                    "vhdx header",
                    HEADER_OFFSETS[0],
                    format!(
                        "both headers have sequence number {} but differ; cannot tell which is current",
                        a.sequence_number
                    ),
                )
                .with_code("vhdx.header.tie"));
            }
        }
        (Ok(_), Err(e)) => {
            warnings.push(format!("header 2 is damaged ({e}); using header 1"));
            0
        }
        (Err(e), Ok(_)) => {
            warnings.push(format!("header 1 is damaged ({e}); using header 2"));
            1
        }
        (Err(e1), Err(e2)) => {
            return Err(Error::corrupt(
                HEADER_NAMES[0],
                HEADER_OFFSETS[0],
                format!("no valid header: header 1: {e1}; header 2: {e2}"),
            )
            .with_code("vhdx.header.none_valid"));
        }
    };
    let current = slots
        .get(current_index)
        .and_then(|s| s.header.clone())
        .ok_or_else(|| {
            Error::corrupt(HEADER_NAMES[0], HEADER_OFFSETS[0], "no valid header")
                .with_code("vhdx.header.none_valid")
        })?;
    Ok(Headers {
        slots,
        current_index,
        current,
        warnings,
    })
}
