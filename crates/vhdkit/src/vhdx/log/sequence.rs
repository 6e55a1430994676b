//! Finding the active sequence in the log ring (MS-VHDX 2.3.2 / SX 2.3.2).

use super::entry::{parse_entry, scan_entry, EntrySummary, LOGE};
use super::ring::Ring;
use super::{LogPlace, LogSequence, LogWrite};
use crate::error::{Error, Result};
use crate::source::{source_len, Source};
use crate::vhdx::format::{LOG_SECTOR_SIZE, MIB};

/// The log's placement rules against the file, and the memory bound.
fn check_place(place: &LogPlace, file_len: u64, max_bytes: u64) -> Result<()> {
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
        )
        .with_code("vhdx.header.log_placement"));
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
            )
            .with_code("vhdx.header.log_placement"))
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
    Ok(())
}

/// What one 4 KiB ring position holds, once validated. Only the first rejection's message is
/// kept, so the cache costs a few bytes per position.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Unknown,
    Entry(EntrySummary),
    Rejected,
}

/// Validates ring positions, each at most once, remembering the first interesting rejection.
struct Scanner<'a> {
    ring: Ring<'a>,
    place: &'a LogPlace,
    cache: Vec<Slot>,
    first_error: Option<String>,
    /// The first read that failed for a reason other than damage (an I/O error): the scan's
    /// answer would depend on it, so it is the result.
    failure: Option<Error>,
}

impl Scanner<'_> {
    fn summary_at(&mut self, pos: u64) -> Option<EntrySummary> {
        let idx = usize::try_from(pos / LOG_SECTOR_SIZE).ok()?;
        if let Slot::Unknown = self.cache.get(idx)? {
            let slot = match scan_entry(&self.ring, pos) {
                Ok(Some(s)) => Slot::Entry(s),
                // Not an entry at all: the normal case, not damage worth reporting.
                Ok(None) => Slot::Rejected,
                Err(e) if !e.is_corruption() => {
                    self.failure.get_or_insert(e);
                    Slot::Rejected
                }
                Err(e) => {
                    // Only the first message is kept: later ones are not worth formatting.
                    if self.first_error.is_none() {
                        self.first_error = Some(e.to_string());
                    }
                    Slot::Rejected
                }
            };
            *self.cache.get_mut(idx)? = slot;
        }
        match self.cache.get(idx)? {
            Slot::Entry(s) => Some(*s),
            Slot::Unknown | Slot::Rejected => None,
        }
    }

    /// Follow consecutive entries from `pos`. Returns the bytes the run covers, whether some
    /// entry's tail closed a complete sequence, and updates `best` (head sequence number,
    /// ring offsets of tail..=head) with the newest complete sequence.
    fn run_from(&mut self, pos: u64, best: &mut Option<(u64, Vec<u64>)>) -> (u64, bool) {
        let length = self.place.length;
        let mut run: Vec<(u64, EntrySummary)> = Vec::new();
        let mut total = 0u64;
        let mut cur = pos;
        let mut found = false;
        while let Some(s) = self.summary_at(cur) {
            if let Some((_, last)) = run.last() {
                if last.sequence_number.checked_add(1) != Some(s.sequence_number) {
                    break;
                }
            }
            let Some(t) = total.checked_add(s.entry_length).filter(|&t| t <= length) else {
                break;
            };
            total = t;
            run.push((cur, s));
            if let Some(ti) = run.iter().position(|(p, _)| *p == s.tail) {
                found = true;
                if !matches!(best, Some((seq, _)) if *seq >= s.sequence_number) {
                    let offs = run.get(ti..).unwrap_or(&[]).iter().map(|(p, _)| *p);
                    *best = Some((s.sequence_number, offs.collect()));
                }
            }
            cur = cur.saturating_add(s.entry_length) % length;
        }
        (total, found)
    }

    /// Ring offsets (tail..=head) of the newest complete sequence.
    fn best_sequence(&mut self) -> Option<Vec<u64>> {
        let mut best: Option<(u64, Vec<u64>)> = None;
        let mut pos = 0u64;
        while pos < self.place.length {
            let (total, found) = self.run_from(pos, &mut best);
            if found {
                pos = match pos.checked_add(total) {
                    Some(p) => p,
                    None => break,
                };
            } else {
                pos += LOG_SECTOR_SIZE;
            }
        }
        best.map(|(_, offsets)| offsets)
    }
}

/// Decode the entries at `offsets`, within the replay budget.
fn decode(ring: &Ring, offsets: Vec<u64>, max_bytes: u64) -> Result<LogSequence> {
    let place = ring.place;
    let mut entries = Vec::with_capacity(offsets.len());
    let mut replay_bytes = 0u64;
    for p in offsets {
        let (_, e) = parse_entry(ring, p, true)?;
        if let Some(e) = e {
            for w in &e.writes {
                let n = match w {
                    LogWrite::Data { .. } | LogWrite::Logged { .. } => LOG_SECTOR_SIZE,
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
    Ok(LogSequence { entries })
}

/// Scan the log ring (through a bounded buffer) and find the active sequence (SX 2.3.2). Errors when no complete
/// sequence exists or the file is shorter than the head's FlushedFileOffset.
pub fn find_active_sequence(
    src: &dyn Source,
    place: &LogPlace,
    max_bytes: u64,
) -> Result<LogSequence> {
    let file_len = source_len(src)?;
    check_place(place, file_len, max_bytes)?;
    let slots = usize::try_from(place.length / LOG_SECTOR_SIZE).map_err(|_| {
        Error::corrupt(LOGE, place.offset, "log too large").with_code("vhdx.log.corrupt")
    })?;
    let mut scanner = Scanner {
        ring: Ring { src, place },
        place,
        cache: vec![Slot::Unknown; slots],
        first_error: None,
        failure: None,
    };
    let best = scanner.best_sequence();
    if let Some(e) = scanner.failure.take() {
        return Err(e);
    }
    let Some(offsets) = best else {
        return Err(Error::corrupt(
            LOGE,
            place.offset,
            format!(
                "log is corrupt or torn: no complete entry sequence with log guid {} in the \
                 {:#x}-byte log{}",
                place.guid,
                place.length,
                scanner
                    .first_error
                    .map_or_else(String::new, |m| format!(" (first rejected entry: {m})"))
            ),
        )
        .with_code("vhdx.log.corrupt"));
    };
    let seq = decode(&scanner.ring, offsets, max_bytes)?;
    if let Some(head) = seq.entries.last() {
        if file_len < head.flushed_file_offset {
            return Err(Error::corrupt(
                LOGE,
                place.offset.saturating_add(head.ring_offset),
                format!(
                    "the file is truncated: it has {file_len:#x} bytes but the log's head entry \
                     (sequence {}) says {:#x} bytes were flushed",
                    head.sequence_number, head.flushed_file_offset
                ),
            )
            .with_code("vhdx.log.corrupt"));
        }
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhdx::log::write::encode_entry;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    const RING: u64 = 1 << 20;

    fn place() -> LogPlace {
        LogPlace {
            offset: RING,
            length: RING,
            guid: Uuid::from_u128(7),
        }
    }

    /// A one-sector entry with log guid `guid`, laid at ring slot `slot` of `file`.
    fn put(file: &mut [u8], slot: u64, guid: Uuid) -> usize {
        let data = BTreeMap::from([(4u64 << 20, vec![9u8; 4096])]);
        let e = encode_entry(5, 0, guid, 4 << 20, 4 << 20, &data).unwrap();
        let at = (RING + slot * LOG_SECTOR_SIZE) as usize;
        file[at..at + e.len()].copy_from_slice(&e);
        at
    }

    #[test]
    fn the_first_damaged_entry_is_reported_and_slots_without_an_entry_are_not() {
        let place = place();
        let mut file = vec![0u8; 3 << 20];
        // Slot 0: junk without the entry signature; slot 1: zeros; slots 2-3: an entry of
        // another log; slots 4-5: an entry of this log with a bad checksum.
        file[RING as usize..][..4096].fill(0x5a);
        put(&mut file, 2, Uuid::from_u128(8));
        let torn = put(&mut file, 4, place.guid);
        file[torn + 5000] ^= 1;
        let ring = Ring {
            src: &file,
            place: &place,
        };
        // Slots 0 and 1 fail on their signature, which is not damage.
        for pos in [0, LOG_SECTOR_SIZE] {
            let e = parse_entry(&ring, pos, false).unwrap_err().to_string();
            assert!(e.contains("expected \"loge\""), "{e}");
            assert!(scan_entry(&ring, pos).unwrap().is_none());
        }
        let first = parse_entry(&ring, 2 * LOG_SECTOR_SIZE, false).unwrap_err();
        assert_eq!(
            first.to_string(),
            format!(
                "vhdx log entry at offset 0x102000: log guid {} does not match the header's {}",
                Uuid::from_u128(8),
                place.guid
            )
        );
        let later = parse_entry(&ring, 4 * LOG_SECTOR_SIZE, false).unwrap_err();
        assert!(later.to_string().contains("checksum"), "{later}");
        let err = find_active_sequence(&file, &place, 1 << 30).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "vhdx log entry at offset 0x100000: log is corrupt or torn: no complete entry \
                 sequence with log guid {} in the 0x100000-byte log (first rejected entry: \
                 {first})",
                place.guid
            )
        );
        // Only slots without the signature: no rejected entry is named.
        file[RING as usize..].fill(0);
        let err = find_active_sequence(&file, &place, 1 << 30).unwrap_err();
        assert!(
            err.to_string().ends_with("in the 0x100000-byte log"),
            "{err}"
        );
    }
}
