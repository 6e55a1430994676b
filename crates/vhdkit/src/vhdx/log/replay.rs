//! Replaying the active sequence: in memory for a read-only open, or to the file itself before
//! any other change (MS-VHDX 2.3.3). The one place the header's LogVersion is checked.

use super::view::LogView;
use super::{find_active_sequence, LogPlace, LogSequence};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::Source;
use crate::txn::Sink;
use crate::vhdx::format::HEADER_LOG_VERSION_OFFSET;
use crate::vhdx::header::{read_headers, Headers, ParsedHeader};
use crate::vhdx::update::Session;

/// A dirty log that was (or would be) replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LogReplay {
    /// Entries in the active sequence.
    pub entries: u64,
    /// Sequence number of its first entry.
    pub first_sequence: u64,
    /// Sequence number of its head entry.
    pub last_sequence: u64,
}

/// What replaying `seq` does.
pub(crate) fn summary(seq: &LogSequence) -> LogReplay {
    let (a, b) = seq.sequence_range();
    LogReplay {
        entries: u64::try_from(seq.entries.len()).unwrap_or(u64::MAX),
        first_sequence: a,
        last_sequence: b,
    }
}

/// The log header `h` names, or `None` when its LogGuid is zero (clean). `slot` is the header's
/// (name, file offset) when known, for the error when LogVersion is not 0.
pub(crate) fn named_log(
    h: &ParsedHeader,
    slot: Option<(&'static str, u64)>,
) -> Result<Option<LogPlace>> {
    if h.log_guid.is_nil() {
        return Ok(None);
    }
    if h.log_version != 0 {
        let (structure, at) = slot.map_or(("vhdx header", 0), |(name, offset)| {
            (name, offset.saturating_add(HEADER_LOG_VERSION_OFFSET))
        });
        return Err(Error::corrupt(
            structure,
            at,
            format!("log version {}, expected 0", h.log_version),
        )
        .with_code("vhdx.header.log_version"));
    }
    Ok(Some(LogPlace {
        offset: h.log_offset,
        length: u64::from(h.log_length),
        guid: h.log_guid,
    }))
}

/// The active log sequence of a file whose current header is `headers.current`, or `None` when
/// the log is clean. A dirty log must be replayed before any other change (MS-VHDX 2.3.3); see
/// [`Session::replay_to_disk`].
pub(crate) fn dirty_log(
    src: &dyn Source,
    headers: &Headers,
    max_replay_bytes: u64,
) -> Result<Option<LogSequence>> {
    let slot = (headers.current_name(), headers.current_offset());
    let place = named_log(&headers.current, Some(slot))?;
    place
        .map(|p| find_active_sequence(src, &p, max_replay_bytes))
        .transpose()
}

/// `base` with `seq` replayed over it, read-only. The length grows to cover every write and
/// each entry's LastFileOffset; bytes past the end of `base` read as zeros unless written.
/// Logged sectors are read from `base` when asked for, never copied.
pub(crate) fn overlay(base: Box<dyn Source>, seq: &LogSequence) -> Result<LogView> {
    LogView::new(base, seq)
}

/// Replay a dirty log of the VHDX file `sink` to the file itself (a new FileWriteGuid, the
/// logged sectors written, both headers marked clean). `Ok(None)` when the log is clean.
pub(crate) fn replay_log(sink: &dyn Sink, limits: &Limits) -> Result<Option<LogReplay>> {
    let headers = read_headers(sink)?;
    let Some(seq) = dirty_log(sink, &headers, limits.max_log_replay_bytes)? else {
        return Ok(None);
    };
    let mut s = Session::new(sink, headers.current, headers.current_index);
    s.replay_to_disk(&seq)?;
    Ok(Some(summary(&seq)))
}

/// What a dirty log would replay, without writing. `Ok(None)` when the log is clean.
pub(crate) fn inspect_log(src: &dyn Source, limits: &Limits) -> Result<Option<LogReplay>> {
    let headers = read_headers(src)?;
    Ok(dirty_log(src, &headers, limits.max_log_replay_bytes)?.map(|s| summary(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn header(log_guid: Uuid, log_version: u16) -> ParsedHeader {
        ParsedHeader {
            sequence_number: 1,
            file_write_guid: Uuid::nil(),
            data_write_guid: Uuid::nil(),
            log_guid,
            log_version,
            log_length: 1 << 20,
            log_offset: 1 << 20,
        }
    }

    #[test]
    fn log_version_is_checked_only_for_a_dirty_log() {
        let clean = header(Uuid::nil(), 7);
        assert!(named_log(&clean, Some(("vhdx header 2", 0x20000)))
            .unwrap()
            .is_none());
        let dirty = header(Uuid::from_u128(1), 0);
        let place = named_log(&dirty, None).unwrap().unwrap();
        assert_eq!((place.offset, place.length), (1 << 20, 1 << 20));
        let bad = header(Uuid::from_u128(1), 1);
        let e = named_log(&bad, Some(("vhdx header 2", 0x20000))).unwrap_err();
        assert!(e.is_corruption());
        assert!(
            e.to_string().contains("vhdx header 2 at offset 0x20040"),
            "{e}"
        );
        assert!(e.to_string().contains("log version 1, expected 0"), "{e}");
    }
}
