//! One log entry: its size, and validating and decoding it from the ring (MS-VHDX 2.3.1).

use super::{LogEntry, LogPlace, LogWrite};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::vhdx::format::{
    self, LogDataSectorHead, LogDescriptor, LogEntryHeader, CHECKSUM_OFFSET,
    DATA_DESCRIPTOR_SIGNATURE, DATA_SECTOR_SIGNATURE, LOG_DATA_SECTOR_DATA_OFFSET,
    LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET, LOG_DESCRIPTOR_SIZE, LOG_ENTRY_HEADER_SIZE,
    LOG_ENTRY_SIGNATURE, LOG_LEADING_BYTES, LOG_MIN_TARGET, LOG_SECTOR_SIZE,
    ZERO_DESCRIPTOR_SIGNATURE,
};

pub(super) const LOGE: &str = "vhdx log entry";
/// [`LOG_SECTOR_SIZE`] as a buffer length.
pub(super) const SECTOR: usize = 4096;
const HEAD_BYTES: usize = LOG_DATA_SECTOR_DATA_OFFSET;

/// Sectors holding the entry header and `descriptors` descriptors, or `None` on overflow.
pub(crate) fn descriptor_sectors(descriptors: u64) -> Option<u64> {
    descriptors
        .checked_mul(LOG_DESCRIPTOR_SIZE)?
        .checked_add(LOG_ENTRY_HEADER_SIZE)
        .map(|b| b.div_ceil(LOG_SECTOR_SIZE))
}

/// Bytes of an entry with `descriptors` descriptors of which `data_sectors` are data
/// descriptors (each with its 4 KiB data sector): the one place the entry size is computed.
pub(crate) fn entry_length(descriptors: u64, data_sectors: u64) -> Option<u64> {
    descriptor_sectors(descriptors)?
        .checked_add(data_sectors)?
        .checked_mul(LOG_SECTOR_SIZE)
}

/// Light summary used while searching for runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct EntrySummary {
    pub sequence_number: u64,
    pub entry_length: u64,
    pub tail: u64,
}

pub(super) fn bad(at: u64, detail: String) -> Error {
    Error::corrupt(LOGE, at, detail)
}

/// Copy `len` bytes starting at ring offset `start`, wrapping at the end of the ring.
pub(super) fn ring_bytes(ring: &[u8], start: u64, len: u64) -> Option<Vec<u8>> {
    let rlen = u64::try_from(ring.len()).ok()?;
    if len > rlen || start >= rlen {
        return None;
    }
    let s = usize::try_from(start).ok()?;
    let l = usize::try_from(len).ok()?;
    let first = l.min(ring.len().checked_sub(s)?);
    let mut out = Vec::with_capacity(l);
    out.extend_from_slice(ring.get(s..s.checked_add(first)?)?);
    out.extend_from_slice(ring.get(..l.checked_sub(first)?)?);
    Some(out)
}

/// The header's own rules; returns (entry length, tail).
fn check_header(h: &LogEntryHeader, at: u64, place: &LogPlace) -> Result<(u64, u64)> {
    if h.signature != LOG_ENTRY_SIGNATURE {
        return Err(bad(
            at,
            format!("signature {:02x?}, expected \"loge\"", h.signature),
        ));
    }
    let entry_length = u64::from(h.entry_length);
    if entry_length == 0 || entry_length % LOG_SECTOR_SIZE != 0 || entry_length > place.length {
        return Err(bad(
            at,
            format!(
                "entry length {entry_length:#x}: must be a non-zero multiple of 4 KiB up to the \
                 log length {:#x}",
                place.length
            ),
        ));
    }
    let tail = u64::from(h.tail);
    if tail >= place.length || tail % LOG_SECTOR_SIZE != 0 {
        return Err(bad(
            at,
            format!(
                "tail {tail:#x}: must be 4 KiB aligned and below the log length {:#x}",
                place.length
            ),
        ));
    }
    if h.sequence_number == 0 {
        return Err(bad(at, "sequence number 0".into()));
    }
    let guid = from_vhdx_bytes(h.log_guid);
    if guid != place.guid {
        return Err(bad(
            at,
            format!("log guid {guid} does not match the header's {}", place.guid),
        ));
    }
    Ok((entry_length, tail))
}

/// One entry's bytes and what its header says, while its descriptors are decoded.
struct Entry<'a> {
    bytes: &'a [u8],
    at: u64,
    sequence_number: u64,
    entry_length: u64,
}

impl Entry<'_> {
    /// Descriptor `i`, checked; returns it and the bytes it targets.
    fn descriptor(&self, i: u64, place: &LogPlace) -> Result<(LogDescriptor, u64)> {
        let at = self.at;
        let rel = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * i;
        let raw = usize::try_from(rel)
            .ok()
            .and_then(|r| self.bytes.get(r..))
            .unwrap_or(&[]);
        let d: LogDescriptor = format::parse(
            raw.get(..DESCRIPTOR_BYTES).unwrap_or(raw),
            LOGE,
            at.saturating_add(rel),
        )?;
        if d.sequence_number != self.sequence_number {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} sequence number {} differs from the entry's {}",
                    d.sequence_number, self.sequence_number
                ),
            ));
        }
        let length = if d.signature == DATA_DESCRIPTOR_SIGNATURE {
            LOG_SECTOR_SIZE
        } else if d.signature == ZERO_DESCRIPTOR_SIGNATURE {
            u64::from_le_bytes(d.leading_bytes)
        } else {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} signature {:02x?}, expected \"desc\" or \"zero\"",
                    d.signature
                ),
            ));
        };
        if d.file_offset % LOG_SECTOR_SIZE != 0 || length % LOG_SECTOR_SIZE != 0 || length == 0 {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} targets {:#x}+{length:#x}: both must be non-zero multiples of 4 KiB",
                    d.file_offset
                ),
            ));
        }
        let end = d
            .file_offset
            .checked_add(length)
            .ok_or_else(|| bad(at, format!("descriptor {i} range overflows")))?;
        let log_end = place.offset.saturating_add(place.length);
        if d.file_offset < LOG_MIN_TARGET || (d.file_offset < log_end && place.offset < end) {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} targets {:#x}+{length:#x}, inside the headers or the log",
                    d.file_offset
                ),
            ));
        }
        Ok((d, length))
    }

    /// The data sector at entry sector `index` for descriptor `i`, checked.
    fn data_sector(&self, index: u64, i: u64) -> Result<&[u8]> {
        let at = self.at;
        if index >= self.entry_length / LOG_SECTOR_SIZE {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} has no data sector inside the {:#x}-byte entry",
                    self.entry_length
                ),
            ));
        }
        let sector_at = index * LOG_SECTOR_SIZE;
        let s = usize::try_from(sector_at).map_err(|_| bad(at, "data sector offset".into()))?;
        let sec = self
            .bytes
            .get(s..s.saturating_add(SECTOR))
            .ok_or_else(|| bad(at, "data sector outside the entry".into()))?;
        let sh: LogDataSectorHead = format::parse(
            sec.get(..HEAD_BYTES).unwrap_or(&[]),
            LOGE,
            at.saturating_add(sector_at),
        )?;
        let low = crate::util::le_u32(sec, LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET);
        let seq = (u64::from(sh.sequence_high) << 32) | u64::from(low);
        if sh.signature != DATA_SECTOR_SIGNATURE || seq != self.sequence_number {
            return Err(bad(
                at.saturating_add(sector_at),
                format!(
                    "data sector for descriptor {i}: signature {:02x?} and sequence {seq}, \
                     expected \"data\" and {}",
                    sh.signature, self.sequence_number
                ),
            ));
        }
        Ok(sec)
    }
}

/// [`LOG_DESCRIPTOR_SIZE`] as a slice length.
const DESCRIPTOR_BYTES: usize = LOG_DESCRIPTOR_SIZE as usize;

/// The target sector a data descriptor and its data sector describe together.
fn rebuild_sector(d: &LogDescriptor, sec: &[u8]) -> Box<[u8]> {
    let mut sector = vec![0u8; SECTOR].into_boxed_slice();
    let data = LOG_DATA_SECTOR_DATA_OFFSET..LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET;
    if let Some(dst) = sector.get_mut(..LOG_LEADING_BYTES) {
        dst.copy_from_slice(&d.leading_bytes);
    }
    if let (Some(dst), Some(src)) = (sector.get_mut(data.clone()), sec.get(data)) {
        dst.copy_from_slice(src);
    }
    if let Some(dst) = sector.get_mut(LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET..) {
        dst.copy_from_slice(&d.trailing_bytes);
    }
    sector
}

/// Validate the entry at ring offset `pos`; `full` also decodes descriptors into writes.
pub(super) fn parse_entry(
    ring: &[u8],
    pos: u64,
    place: &LogPlace,
    full: bool,
) -> Result<(EntrySummary, Option<LogEntry>)> {
    let at = place.offset.saturating_add(pos);
    let head = ring_bytes(ring, pos, LOG_ENTRY_HEADER_SIZE)
        .ok_or_else(|| bad(at, "outside the log".into()))?;
    let h: LogEntryHeader = format::parse(&head, LOGE, at)?;
    let (entry_length, tail) = check_header(&h, at, place)?;
    let bytes = ring_bytes(ring, pos, entry_length).ok_or_else(|| {
        bad(
            at,
            format!("entry of {entry_length:#x} bytes outside the log"),
        )
    })?;
    let crc = format::crc32c_with_zeroed(&bytes, CHECKSUM_OFFSET);
    if crc != h.checksum {
        return Err(bad(
            at,
            format!(
                "checksum {:#010x}, computed {crc:#010x} over {entry_length:#x} bytes",
                h.checksum
            ),
        ));
    }
    let count = u64::from(h.descriptor_count);
    let desc_sectors = descriptor_sectors(count).unwrap_or(u64::MAX);
    let sectors = entry_length / LOG_SECTOR_SIZE;
    if desc_sectors > sectors {
        return Err(bad(
            at,
            format!("{count} descriptors need {desc_sectors} sectors but the entry has {sectors}"),
        ));
    }
    let entry = Entry {
        bytes: &bytes,
        at,
        sequence_number: h.sequence_number,
        entry_length,
    };
    let mut data_index = desc_sectors;
    let mut writes = Vec::new();
    for i in 0..count {
        let (d, length) = entry.descriptor(i, place)?;
        if d.signature == DATA_DESCRIPTOR_SIGNATURE {
            let sec = entry.data_sector(data_index, i)?;
            data_index += 1;
            if full {
                writes.push(LogWrite::Data {
                    file_offset: d.file_offset,
                    sector: rebuild_sector(&d, sec),
                });
            }
        } else if full {
            writes.push(LogWrite::Zero {
                file_offset: d.file_offset,
                length,
            });
        }
    }
    let summary = EntrySummary {
        sequence_number: h.sequence_number,
        entry_length,
        tail,
    };
    let entry = full.then_some(LogEntry {
        ring_offset: pos,
        sequence_number: h.sequence_number,
        flushed_file_offset: h.flushed_file_offset,
        last_file_offset: h.last_file_offset,
        writes,
    });
    Ok((summary, entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_bytes_wraps() {
        let ring: Vec<u8> = (0..8).collect();
        assert_eq!(ring_bytes(&ring, 6, 4).unwrap(), vec![6, 7, 0, 1]);
        assert!(ring_bytes(&ring, 6, 9).is_none());
        assert!(ring_bytes(&ring, 8, 1).is_none());
    }

    #[test]
    fn entry_sizes() {
        assert_eq!(entry_length(1, 1), Some(8192));
        // 126 descriptors fit the first sector with the 64-byte header; 127 need two.
        assert_eq!(entry_length(126, 126), Some(127 * 4096));
        assert_eq!(entry_length(127, 127), Some(129 * 4096));
        assert_eq!(entry_length(0, 0), Some(4096));
        assert_eq!(entry_length(u64::MAX, 0), None);
    }
}
