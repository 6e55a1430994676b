//! The VHDX log: finding the active sequence and replaying it into an in-memory overlay.
//!
//! Depends only on `format`, `error` and `source`, so a later writable open can apply the same
//! parsed [`LogSequence`] to the file itself. Nothing here ever writes to the file.

use std::collections::BTreeMap;
use std::io;

use uuid::Uuid;

use super::format::{
    self, LogDataSectorHead, LogDescriptor, LogEntryHeader, DATA_DESCRIPTOR_SIGNATURE,
    DATA_SECTOR_SIGNATURE, KIB4, LOG_ENTRY_SIGNATURE, LOG_MIN_TARGET, MIB,
    ZERO_DESCRIPTOR_SIGNATURE,
};
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len, Source};

const LOGE: &str = "vhdx log entry";
const SECTOR: usize = 4096;

/// One change recorded in a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Write this 4 KiB sector at `file_offset`.
    Data {
        /// Target, 4 KiB aligned.
        file_offset: u64,
        /// The rebuilt sector (4096 bytes).
        sector: Box<[u8]>,
    },
    /// Zero `length` bytes at `file_offset`.
    Zero {
        /// Target, 4 KiB aligned.
        file_offset: u64,
        /// 4 KiB multiple.
        length: u64,
    },
}

/// One valid log entry.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Offset of the entry inside the log ring.
    pub ring_offset: u64,
    /// Sequence number.
    pub sequence_number: u64,
    /// File size known stable when the entry was written.
    pub flushed_file_offset: u64,
    /// Size every allocated structure fits in.
    pub last_file_offset: u64,
    /// The changes, in descriptor order.
    pub writes: Vec<LogWrite>,
}

/// The active sequence: tail entry first, head last.
#[derive(Debug, Clone)]
pub struct LogSequence {
    /// Entries to replay, in order.
    pub entries: Vec<LogEntry>,
}

impl LogSequence {
    /// Sequence number of the first and last entry.
    pub fn sequence_range(&self) -> (u64, u64) {
        (
            self.entries.first().map_or(0, |e| e.sequence_number),
            self.entries.last().map_or(0, |e| e.sequence_number),
        )
    }
}

/// The log's placement, from the current header.
#[derive(Debug, Clone, Copy)]
pub struct LogPlace {
    /// Absolute offset of the ring.
    pub offset: u64,
    /// Ring length in bytes.
    pub length: u64,
    /// The header's LogGuid (non-zero).
    pub guid: Uuid,
}

/// Light summary used while searching for runs.
#[derive(Debug, Clone, Copy)]
struct EntrySummary {
    sequence_number: u64,
    entry_length: u64,
    tail: u64,
}

fn bad(at: u64, detail: String) -> Error {
    Error::corrupt(LOGE, at, detail)
}

/// Copy `len` bytes starting at ring offset `start`, wrapping at the end of the ring.
fn ring_bytes(ring: &[u8], start: u64, len: u64) -> Option<Vec<u8>> {
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

/// Validate the entry at ring offset `pos`; `full` also decodes descriptors into writes.
fn parse_entry(
    ring: &[u8],
    pos: u64,
    place: &LogPlace,
    full: bool,
) -> Result<(EntrySummary, Option<LogEntry>)> {
    let at = place.offset.saturating_add(pos);
    let head = ring_bytes(ring, pos, 64).ok_or_else(|| bad(at, "outside the log".into()))?;
    let h: LogEntryHeader = format::parse(&head, LOGE, at)?;
    if h.signature != LOG_ENTRY_SIGNATURE {
        return Err(bad(
            at,
            format!("signature {:02x?}, expected \"loge\"", h.signature),
        ));
    }
    let entry_length = u64::from(h.entry_length);
    if entry_length == 0 || entry_length % KIB4 != 0 || entry_length > place.length {
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
    if tail >= place.length || tail % KIB4 != 0 {
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
    let guid = crate::guid::from_vhdx_bytes(h.log_guid);
    if guid != place.guid {
        return Err(bad(
            at,
            format!("log guid {guid} does not match the header's {}", place.guid),
        ));
    }
    let bytes = ring_bytes(ring, pos, entry_length).ok_or_else(|| {
        bad(
            at,
            format!("entry of {entry_length:#x} bytes outside the log"),
        )
    })?;
    let crc = format::crc32c_with_zeroed(&bytes, 4);
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
    let desc_sectors = (64 + 32 * count).div_ceil(KIB4);
    let sectors = entry_length / KIB4;
    if desc_sectors > sectors {
        return Err(bad(
            at,
            format!("{count} descriptors need {desc_sectors} sectors but the entry has {sectors}"),
        ));
    }
    let mut data_index = desc_sectors;
    let mut writes = Vec::new();
    let log_end = place.offset.saturating_add(place.length);
    for i in 0..count {
        let rel = 64 + 32 * i;
        let r = usize::try_from(rel).map_err(|_| bad(at, "descriptor offset".into()))?;
        let d: LogDescriptor = format::parse(
            bytes.get(r..r.saturating_add(32)).unwrap_or(&[]),
            LOGE,
            at.saturating_add(rel),
        )?;
        if d.sequence_number != h.sequence_number {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} sequence number {} differs from the entry's {}",
                    d.sequence_number, h.sequence_number
                ),
            ));
        }
        let length = if d.signature == DATA_DESCRIPTOR_SIGNATURE {
            KIB4
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
        if d.file_offset % KIB4 != 0 || length % KIB4 != 0 || length == 0 {
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
        if d.file_offset < LOG_MIN_TARGET || (d.file_offset < log_end && place.offset < end) {
            return Err(bad(
                at,
                format!(
                    "descriptor {i} targets {:#x}+{length:#x}, inside the headers or the log",
                    d.file_offset
                ),
            ));
        }
        if d.signature == DATA_DESCRIPTOR_SIGNATURE {
            if data_index >= sectors {
                return Err(bad(
                    at,
                    format!(
                        "descriptor {i} has no data sector inside the {entry_length:#x}-byte entry"
                    ),
                ));
            }
            let s = usize::try_from(data_index * KIB4)
                .map_err(|_| bad(at, "data sector offset".into()))?;
            let sec = bytes
                .get(s..s.saturating_add(SECTOR))
                .ok_or_else(|| bad(at, "data sector outside the entry".into()))?;
            let sh: LogDataSectorHead = format::parse(
                sec.get(..8).unwrap_or(&[]),
                LOGE,
                at.saturating_add(data_index * KIB4),
            )?;
            let mut low = [0u8; 4];
            low.copy_from_slice(sec.get(4092..4096).unwrap_or(&[0; 4]));
            let seq = (u64::from(sh.sequence_high) << 32) | u64::from(u32::from_le_bytes(low));
            if sh.signature != DATA_SECTOR_SIGNATURE || seq != h.sequence_number {
                return Err(bad(
                    at.saturating_add(data_index * KIB4),
                    format!(
                        "data sector for descriptor {i}: signature {:02x?} and sequence {seq}, \
                         expected \"data\" and {}",
                        sh.signature, h.sequence_number
                    ),
                ));
            }
            data_index += 1;
            if full {
                let mut sector = vec![0u8; SECTOR].into_boxed_slice();
                if let (Some(dst), Some(src)) = (sector.get_mut(..8), Some(&d.leading_bytes)) {
                    dst.copy_from_slice(src);
                }
                if let (Some(dst), Some(src)) = (sector.get_mut(8..4092), sec.get(8..4092)) {
                    dst.copy_from_slice(src);
                }
                if let Some(dst) = sector.get_mut(4092..4096) {
                    dst.copy_from_slice(&d.trailing_bytes);
                }
                writes.push(LogWrite::Data {
                    file_offset: d.file_offset,
                    sector,
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

/// Read the log ring and find the active sequence (SX 2.3.2). `file_len` is the file's real
/// length. Errors when no complete sequence exists or the file is shorter than the head's
/// FlushedFileOffset.
pub fn find_active_sequence(
    src: &dyn Source,
    place: &LogPlace,
    max_bytes: u64,
) -> Result<LogSequence> {
    let file_len = source_len(src)?;
    let hdr = "vhdx header";
    if place.offset % MIB != 0 || place.offset < MIB || place.length % MIB != 0 || place.length == 0
    {
        return Err(Error::corrupt(
            hdr,
            place.offset,
            format!(
                "log at {:#x}+{:#x}: offset and length must be non-zero multiples of 1 MiB, offset >= 1 MiB",
                place.offset, place.length
            ),
        ));
    }
    match place.offset.checked_add(place.length) {
        Some(end) if end <= file_len => {}
        _ => {
            return Err(Error::corrupt(
                hdr,
                place.offset,
                format!(
                    "log at {:#x}+{:#x} ends past the end of the file ({file_len:#x})",
                    place.offset, place.length
                ),
            ))
        }
    }
    if place.length > max_bytes {
        return Err(Error::limit(
            LOGE,
            place.offset,
            "log length",
            place.length,
            max_bytes,
        ));
    }
    let len = usize::try_from(place.length)
        .map_err(|_| Error::corrupt(LOGE, place.offset, "log too large"))?;
    let mut ring = vec![0u8; len];
    read_struct(src, place.offset, &mut ring, LOGE)?;

    let slots = usize::try_from(place.length / KIB4).unwrap_or(0);
    // Each position is validated at most once.
    let mut cache: Vec<Option<std::result::Result<EntrySummary, String>>> = vec![None; slots];
    let mut first_error: Option<String> = None;
    let mut summary_at = |pos: u64, first_error: &mut Option<String>| -> Option<EntrySummary> {
        let idx = usize::try_from(pos / KIB4).ok()?;
        let slot = cache.get_mut(idx)?;
        if slot.is_none() {
            let r = parse_entry(&ring, pos, place, false).map(|(s, _)| s);
            *slot = Some(r.map_err(|e| e.to_string()));
        }
        match slot.as_ref()? {
            Ok(s) => Some(*s),
            Err(m) => {
                if first_error.is_none() && !m.contains("expected \"loge\"") {
                    *first_error = Some(m.clone());
                }
                None
            }
        }
    };

    // Best complete sequence: (head sequence number, ring offsets of tail..=head).
    let mut best: Option<(u64, Vec<u64>)> = None;
    let mut pos = 0u64;
    while pos < place.length {
        let mut run: Vec<(u64, EntrySummary)> = Vec::new();
        let mut total = 0u64;
        let mut cur = pos;
        let mut found = false;
        while let Some(s) = summary_at(cur, &mut first_error) {
            if let Some((_, last)) = run.last() {
                if last.sequence_number.checked_add(1) != Some(s.sequence_number) {
                    break;
                }
            }
            let Some(t) = total
                .checked_add(s.entry_length)
                .filter(|&t| t <= place.length)
            else {
                break;
            };
            total = t;
            run.push((cur, s));
            if let Some(ti) = run.iter().position(|(p, _)| *p == s.tail) {
                found = true;
                if !matches!(&best, Some((seq, _)) if *seq >= s.sequence_number) {
                    let offs = run
                        .get(ti..)
                        .unwrap_or(&[])
                        .iter()
                        .map(|(p, _)| *p)
                        .collect();
                    best = Some((s.sequence_number, offs));
                }
            }
            cur = (cur + s.entry_length) % place.length;
        }
        if found {
            pos = match pos.checked_add(total) {
                Some(p) => p,
                None => break,
            };
        } else {
            pos += KIB4;
        }
    }
    let Some((_, offsets)) = best else {
        return Err(Error::corrupt(
            LOGE,
            place.offset,
            format!(
                "log is corrupt or torn: no complete entry sequence with log guid {} in the \
                 {:#x}-byte log{}",
                place.guid,
                place.length,
                first_error.map_or_else(String::new, |m| format!(" (first rejected entry: {m})"))
            ),
        ));
    };
    let mut entries = Vec::with_capacity(offsets.len());
    let mut replay_bytes = 0u64;
    for p in offsets {
        let (_, e) = parse_entry(&ring, p, place, true)?;
        if let Some(e) = e {
            for w in &e.writes {
                let n = match w {
                    LogWrite::Data { .. } => KIB4,
                    LogWrite::Zero { length, .. } => *length,
                };
                replay_bytes = replay_bytes.saturating_add(n);
            }
            entries.push(e);
        }
    }
    if replay_bytes > max_bytes {
        return Err(Error::limit(
            LOGE,
            place.offset,
            "bytes to replay from the log",
            replay_bytes,
            max_bytes,
        ));
    }
    if let Some(head) = entries.last() {
        if file_len < head.flushed_file_offset {
            return Err(Error::corrupt(
                LOGE,
                place.offset.saturating_add(head.ring_offset),
                format!(
                    "the file is truncated: it has {file_len:#x} bytes but the log's head entry \
                     (sequence {}) says {:#x} bytes were flushed",
                    head.sequence_number, head.flushed_file_offset
                ),
            ));
        }
    }
    Ok(LogSequence { entries })
}

/// A read-only view of a file with a replayed log laid over it. Bytes past the end of the base
/// file (up to the new length) read as zeros unless the log wrote them.
#[derive(Debug)]
pub struct OverlaySource {
    base: Box<dyn Source>,
    base_len: u64,
    /// 4 KiB-aligned file offset -> sector contents (`None`: zeros).
    sectors: BTreeMap<u64, Option<Box<[u8]>>>,
    len: u64,
}

impl OverlaySource {
    /// Replay `seq` over `base` in memory.
    pub fn replay(base: Box<dyn Source>, seq: &LogSequence) -> Result<OverlaySource> {
        let base_len = source_len(&*base)?;
        let mut len = base_len;
        let mut sectors = BTreeMap::new();
        for e in &seq.entries {
            for w in &e.writes {
                match w {
                    LogWrite::Data {
                        file_offset,
                        sector,
                    } => {
                        sectors.insert(*file_offset, Some(sector.clone()));
                        len = len.max(file_offset.saturating_add(KIB4));
                    }
                    LogWrite::Zero {
                        file_offset,
                        length,
                    } => {
                        let mut o = *file_offset;
                        let end = file_offset.saturating_add(*length);
                        while o < end {
                            sectors.insert(o, None);
                            o = o.saturating_add(KIB4);
                        }
                        len = len.max(end);
                    }
                }
            }
            len = len.max(e.last_file_offset);
        }
        Ok(OverlaySource {
            base,
            base_len,
            sectors,
            len,
        })
    }

    /// Length of the file underneath.
    pub fn base_len(&self) -> u64 {
        self.base_len
    }
}

impl Source for OverlaySource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let total = u64::try_from(buf.len()).map_err(|_| eof())?;
        let end = offset.checked_add(total).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        let mut pos = offset;
        let mut done = 0usize;
        while pos < end {
            let sector = pos - pos % KIB4;
            let in_sector = usize::try_from(pos - sector).map_err(|_| eof())?;
            let (piece_end, content) = match self.sectors.get(&sector) {
                Some(c) => ((sector + KIB4).min(end), Some(c)),
                None => {
                    let next = self.sectors.range(sector..).next().map_or(end, |(k, _)| *k);
                    (next.min(end), None)
                }
            };
            let n = usize::try_from(piece_end - pos).map_err(|_| eof())?;
            let dst = buf.get_mut(done..done + n).ok_or_else(eof)?;
            match content {
                Some(Some(data)) => {
                    dst.copy_from_slice(data.get(in_sector..in_sector + n).ok_or_else(eof)?);
                }
                Some(None) => dst.fill(0),
                None => {
                    // Base bytes up to its end, zeros after.
                    let from_base = if pos < self.base_len {
                        usize::try_from(self.base_len.min(piece_end) - pos).map_err(|_| eof())?
                    } else {
                        0
                    };
                    let (b, z) = dst.split_at_mut(from_base);
                    if !b.is_empty() {
                        self.base.read_exact_at(b, pos)?;
                    }
                    z.fill(0);
                }
            }
            done += n;
            pos = piece_end;
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_merges_sectors_and_extends_with_zeros() {
        let base: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
        let seq = LogSequence {
            entries: vec![LogEntry {
                ring_offset: 0,
                sequence_number: 1,
                flushed_file_offset: 0,
                last_file_offset: 6 * 4096,
                writes: vec![
                    LogWrite::Data {
                        file_offset: 4096,
                        sector: vec![0xAB; 4096].into_boxed_slice(),
                    },
                    LogWrite::Zero {
                        file_offset: 8192,
                        length: 4096,
                    },
                ],
            }],
        };
        let o = OverlaySource::replay(Box::new(base.clone()), &seq).unwrap();
        assert_eq!(Source::len(&o).unwrap(), 6 * 4096);
        let mut all = vec![0u8; 6 * 4096];
        o.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(&all[..4096], &base[..4096]);
        assert!(all[4096..8192].iter().all(|&b| b == 0xAB));
        assert!(all[8192..].iter().all(|&b| b == 0));
        let mut mid = [0u8; 10];
        o.read_exact_at(&mut mid, 4090).unwrap();
        assert_eq!(&mid[..6], &base[4090..4096]);
        assert_eq!(&mid[6..], &[0xAB; 4]);
        assert!(o.read_exact_at(&mut mid, 6 * 4096 - 5).is_err());
    }

    #[test]
    fn ring_bytes_wraps() {
        let ring: Vec<u8> = (0..8).collect();
        assert_eq!(ring_bytes(&ring, 6, 4).unwrap(), vec![6, 7, 0, 1]);
        assert!(ring_bytes(&ring, 6, 9).is_none());
        assert!(ring_bytes(&ring, 8, 1).is_none());
    }
}
