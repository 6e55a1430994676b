//! The VHDX log (MS-VHDX 2.3): entry layout and size (`entry`), finding the active sequence
//! ([`find_active_sequence`]), replaying it in memory or to the file (`replay`), and writing
//! entries ([`write`]). Entry sizes come from one function, `entry::entry_length`, for both
//! reading and writing.
//!
//! Memory stays bounded whatever the log's size: the ring is streamed through the source in
//! small chunks, and a decoded sequence keeps each data sector's position, not its bytes.
//!
//! Finding and decoding depend only on `format`, `error`, `guid`, `util` and `source`, and never
//! write;
//! replay to the file goes through `update::Session`, which owns header updates.

mod entry;
mod replay;
mod ring;
mod sequence;
mod view;
mod write;

use uuid::Uuid;

pub use replay::LogReplay;
pub(crate) use replay::{dirty_log, inspect_log, named_log, overlay, replay_log, summary};
pub use sequence::find_active_sequence;
pub(crate) use view::{logged_sector, ReplayMap};
pub(crate) use write::max_data_sectors;
pub(crate) use write::{encode_entry, log_entry_bytes, Counting};

/// One change recorded in a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    /// Write this 4 KiB sector, held in memory, at `file_offset` (for sequences built in
    /// memory; a sequence read from a log uses [`LogWrite::Logged`]). Only tests build
    /// sequences in memory today; replay handles the variant for them.
    #[cfg_attr(not(test), allow(dead_code))]
    Data {
        /// Target, 4 KiB aligned.
        file_offset: u64,
        /// The rebuilt sector (4096 bytes).
        sector: Box<[u8]>,
    },
    /// Write the 4 KiB sector at `file_offset` whose first 8 and last 4 bytes are
    /// `leading_bytes` and `trailing_bytes` and whose middle 4084 bytes are those of the log
    /// data sector at `data_sector_offset`. The payload stays in the file, so a sequence costs
    /// tens of bytes per sector however much it writes.
    Logged {
        /// Target, 4 KiB aligned.
        file_offset: u64,
        /// Absolute file offset of the log data sector (inside the log, 4 KiB aligned).
        data_sector_offset: u64,
        /// The target sector's first 8 bytes (from the data descriptor).
        leading_bytes: [u8; 8],
        /// The target sector's last 4 bytes (from the data descriptor).
        trailing_bytes: [u8; 4],
    },
    /// Zero `length` bytes at `file_offset`.
    Zero {
        /// Target, 4 KiB aligned.
        file_offset: u64,
        /// 4 KiB multiple.
        length: u64,
    },
}

impl LogWrite {
    /// The 4 KiB sector a data write puts at its target, a logged one read from `file` (the
    /// file whose log holds it); `None` for a zero write.
    #[cfg(test)]
    pub fn sector(&self, file: &dyn crate::source::Source) -> std::io::Result<Option<Box<[u8]>>> {
        let mut out = vec![0u8; entry::SECTOR];
        Ok(logged_sector(file, self, &mut out)?.then(|| out.into_boxed_slice()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

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
        let o = overlay(Box::new(base.clone()), &seq).unwrap();
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
}
