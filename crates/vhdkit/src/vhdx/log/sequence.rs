//! Finding the active sequence in the log ring (MS-VHDX 2.3.2 / SX 2.3.2).

use super::entry::{parse_entry, EntrySummary, LOGE};
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
            let slot = match parse_entry(&self.ring, pos, false) {
                Ok((s, _)) => Slot::Entry(s),
                Err(e) if !e.is_corruption() => {
                    self.failure.get_or_insert(e);
                    Slot::Rejected
                }
                Err(e) => {
                    let m = e.to_string();
                    // A slot that is not an entry at all is the normal case; keep real damage.
                    if self.first_error.is_none() && !m.contains("expected \"loge\"") {
                        self.first_error = Some(m);
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
