//! One log entry: its size, and validating and decoding it from the ring (MS-VHDX 2.3.1).

use super::ring::Ring;
use super::{LogEntry, LogPlace, LogWrite};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::vhdx::format::{
    self, LogDataSectorHead, LogDescriptor, LogEntryHeader, CHECKSUM_OFFSET,
    DATA_DESCRIPTOR_SIGNATURE, DATA_SECTOR_SIGNATURE, LOG_DATA_SECTOR_DATA_OFFSET,
    LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET, LOG_DESCRIPTOR_SIZE, LOG_ENTRY_HEADER_SIZE,
    LOG_ENTRY_SIGNATURE, LOG_MIN_TARGET, LOG_SECTOR_SIZE, ZERO_DESCRIPTOR_SIGNATURE,
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

/// One entry being validated as its sectors stream past: what its header says, the CRC so
/// far, and what its descriptors say. Descriptor sectors come before data sectors, so every
/// data sector's descriptor is known by the time the sector arrives.
struct Entry<'p> {
    place: &'p LogPlace,
    pos: u64,
    at: u64,
    sequence_number: u64,
    entry_length: u64,
    count: u64,
    desc_sectors: u64,
    full: bool,
    crc: u32,
    /// Descriptor index of each data descriptor, in order: data sector `k` is `data_desc[k]`'s.
    data_desc: Vec<u64>,
    writes: Vec<LogWrite>,
    next_descriptor: u64,
    /// The first bad descriptor; later ones are not read, as a sequential check would stop.
    descriptor_error: Option<Error>,
    /// The first bad data sector; it belongs to a descriptor before any bad descriptor.
    data_error: Option<Error>,
}

impl Entry<'_> {
    /// Descriptor `i` from its 32 bytes, checked; returns it and the bytes it targets.
    fn descriptor(&self, raw: &[u8], i: u64) -> Result<(LogDescriptor, u64)> {
        let at = self.at;
        let rel = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * i;
        let d: LogDescriptor = format::parse(raw, LOGE, at.saturating_add(rel))?;
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
        let place = self.place;
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

    /// Take in descriptor `i` (its 32 bytes): remember where its data sector is.
    fn take_descriptor(&mut self, raw: &[u8], i: u64) -> Result<()> {
        let (d, length) = self.descriptor(raw, i)?;
        if d.signature != DATA_DESCRIPTOR_SIGNATURE {
            if self.full {
                self.writes.push(LogWrite::Zero {
                    file_offset: d.file_offset,
                    length,
                });
            }
            return Ok(());
        }
        let index = self
            .desc_sectors
            .saturating_add(self.data_desc.len() as u64);
        if index >= self.entry_length / LOG_SECTOR_SIZE {
            return Err(bad(
                self.at,
                format!(
                    "descriptor {i} has no data sector inside the {:#x}-byte entry",
                    self.entry_length
                ),
            ));
        }
        self.data_desc.push(i);
        if self.full {
            let rel = self.pos.saturating_add(index * LOG_SECTOR_SIZE);
            let ring_pos = rel.checked_rem(self.place.length).unwrap_or(0);
            self.writes.push(LogWrite::Logged {
                file_offset: d.file_offset,
                data_sector_offset: self.place.offset.saturating_add(ring_pos),
                leading_bytes: d.leading_bytes,
                trailing_bytes: d.trailing_bytes,
            });
        }
        Ok(())
    }

    /// Check the data sector at entry sector `index` against descriptor `i`.
    fn data_sector(&self, sec: &[u8], index: u64, i: u64) -> Result<()> {
        let sector_at = index * LOG_SECTOR_SIZE;
        let at = self.at.saturating_add(sector_at);
        let sh: LogDataSectorHead = format::parse(sec.get(..HEAD_BYTES).unwrap_or(&[]), LOGE, at)?;
        let low = crate::util::le_u32(sec, LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET);
        let seq = (u64::from(sh.sequence_high) << 32) | u64::from(low);
        if sh.signature != DATA_SECTOR_SIGNATURE || seq != self.sequence_number {
            return Err(bad(
                at,
                format!(
                    "data sector for descriptor {i}: signature {:02x?} and sequence {seq}, \
                     expected \"data\" and {}",
                    sh.signature, self.sequence_number
                ),
            ));
        }
        Ok(())
    }

    /// One sector of the entry, in order.
    fn visit(&mut self, index: u64, sec: &[u8]) {
        self.crc = if index == 0 {
            format::crc32c_with_zeroed(sec, CHECKSUM_OFFSET)
        } else {
            crc32c::crc32c_append(self.crc, sec)
        };
        let sectors = self.entry_length / LOG_SECTOR_SIZE;
        if self.desc_sectors > sectors {
            return; // reported after the checksum, like any damage
        }
        if index < self.desc_sectors {
            self.descriptors_in(index, sec);
            return;
        }
        let k = index - self.desc_sectors;
        let owner = usize::try_from(k).ok().and_then(|k| self.data_desc.get(k));
        if let (Some(&i), None) = (owner, &self.data_error) {
            self.data_error = self.data_sector(sec, index, i).err();
        }
    }

    /// The descriptors that sit in descriptor sector `index`.
    fn descriptors_in(&mut self, index: u64, sec: &[u8]) {
        let sector_end = index.saturating_add(1).saturating_mul(LOG_SECTOR_SIZE);
        while self.descriptor_error.is_none() && self.next_descriptor < self.count {
            let i = self.next_descriptor;
            let rel = LOG_ENTRY_HEADER_SIZE + LOG_DESCRIPTOR_SIZE * i;
            if rel >= sector_end {
                break;
            }
            // Descriptors are 32-byte aligned, so one never straddles two sectors.
            let within = usize::try_from(rel - index * LOG_SECTOR_SIZE).unwrap_or(usize::MAX);
            let raw = sec
                .get(within..within.saturating_add(DESCRIPTOR_BYTES))
                .unwrap_or(&[]);
            self.descriptor_error = self.take_descriptor(raw, i).err();
            self.next_descriptor = i + 1;
        }
    }
}

/// [`LOG_DESCRIPTOR_SIZE`] as a slice length.
const DESCRIPTOR_BYTES: usize = LOG_DESCRIPTOR_SIZE as usize;

/// The header at ring offset `pos`, decoded but not yet checked.
fn read_header(ring: &Ring, pos: u64) -> Result<LogEntryHeader> {
    let place = ring.place;
    let at = place.offset.saturating_add(pos);
    let mut head = [0u8; LOG_ENTRY_HEADER_SIZE as usize];
    if pos >= place.length {
        return Err(bad(at, "outside the log".into()));
    }
    ring.read(pos, &mut head, LOGE)?;
    format::parse(&head, LOGE, at)
}

/// The summary of the entry at ring offset `pos` (validated as `parse_entry` does), or
/// `None` when the slot lacks the entry signature. Most slots of a ring are not entries at
/// all: the scan tells them apart by the field, so it builds no error for them.
pub(super) fn scan_entry(ring: &Ring, pos: u64) -> Result<Option<EntrySummary>> {
    let h = read_header(ring, pos)?;
    if h.signature != LOG_ENTRY_SIGNATURE {
        return Ok(None);
    }
    Ok(Some(parse_header(ring, pos, &h, false)?.0))
}

/// Validate the entry at ring offset `pos`, streaming it through a bounded buffer; `full` also
/// decodes its descriptors into writes (data sectors by position, never by content).
pub(super) fn parse_entry(
    ring: &Ring,
    pos: u64,
    full: bool,
) -> Result<(EntrySummary, Option<LogEntry>)> {
    let h = read_header(ring, pos)?;
    parse_header(ring, pos, &h, full)
}

/// `parse_entry` once the header `h` at `pos` is read.
fn parse_header(
    ring: &Ring,
    pos: u64,
    h: &LogEntryHeader,
    full: bool,
) -> Result<(EntrySummary, Option<LogEntry>)> {
    let place = ring.place;
    let at = place.offset.saturating_add(pos);
    let (entry_length, tail) = check_header(h, at, place)?;
    let count = u64::from(h.descriptor_count);
    let mut entry = Entry {
        place,
        pos,
        at,
        sequence_number: h.sequence_number,
        entry_length,
        count,
        desc_sectors: descriptor_sectors(count).unwrap_or(u64::MAX),
        full,
        crc: 0,
        data_desc: Vec::new(),
        writes: Vec::new(),
        next_descriptor: 0,
        descriptor_error: None,
        data_error: None,
    };
    ring.each_sector(pos, entry_length, |i, s| entry.visit(i, s))?;
    if entry.crc != h.checksum {
        return Err(bad(
            at,
            format!(
                "checksum {:#010x}, computed {:#010x} over {entry_length:#x} bytes",
                h.checksum, entry.crc
            ),
        ));
    }
    let sectors = entry_length / LOG_SECTOR_SIZE;
    if entry.desc_sectors > sectors {
        return Err(bad(
            at,
            format!(
                "{count} descriptors need {} sectors but the entry has {sectors}",
                entry.desc_sectors
            ),
        ));
    }
    if let Some(e) = entry.data_error.or(entry.descriptor_error) {
        return Err(e);
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
        writes: entry.writes,
    });
    Ok((summary, entry))
}
#[cfg(test)]
mod tests {
    use super::*;

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
