//! Writing log entries: the bytes of one entry, its size ahead of time, and counting what an
//! apply writes where. Entries are laid out by [`super::entry::entry_length`], the same
//! function that replay checks them with.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use uuid::Uuid;

use super::entry::{descriptor_sectors, entry_length, SECTOR};
use crate::error::{Error, Result};
use crate::guid::to_vhdx_bytes;
use crate::source::Source;
use crate::txn::{Sink, WriteOp};
use crate::vhdx::format::{
    self, LogDataSector, LogDescriptor, LogEntryHeader, DATA_DESCRIPTOR_SIGNATURE,
    DATA_SECTOR_SIGNATURE, HEADER_OFFSETS, HEADER_SIZE, LOG_DATA_BYTES, LOG_ENTRY_SIGNATURE,
    LOG_LEADING_BYTES, LOG_SECTOR_SIZE, LOG_TRAILING_BYTES,
};

const STRUCT: &str = "vhdx log entry (being written)";

fn too_big() -> Error {
    Error::unsupported("metadata update too large for one log entry")
}

/// The 4 KiB sectors the writes touch, and the size of the one log entry that carries them.
pub(crate) fn log_entry_bytes(writes: &[WriteOp]) -> (u64, u64) {
    let mut sectors = BTreeSet::new();
    for w in writes {
        let end = w.offset.saturating_add(w.data.len() as u64);
        let mut s = w.offset / LOG_SECTOR_SIZE;
        while s.saturating_mul(LOG_SECTOR_SIZE) < end {
            sectors.insert(s);
            s += 1;
        }
    }
    let n = sectors.len() as u64;
    (n, entry_length(n, n).unwrap_or(u64::MAX))
}

/// Most data sectors one entry can carry in a log of `log_length` bytes, keeping one sector
/// free so the head never meets the tail (MS-VHDX 2.3).
pub(crate) fn max_data_sectors(log_length: u64) -> usize {
    let total = log_length / LOG_SECTOR_SIZE;
    let mut n = total.saturating_sub(2);
    while n > 0
        && entry_length(n, n)
            .map(|b| b / LOG_SECTOR_SIZE + 1)
            .is_none_or(|s| s > total)
    {
        n -= 1;
    }
    usize::try_from(n).unwrap_or(0)
}

/// Encode one log entry holding a data descriptor and data sector per 4 KiB sector.
pub(crate) fn encode_entry(
    sequence: u64,
    tail: u32,
    log_guid: Uuid,
    flushed_file_offset: u64,
    last_file_offset: u64,
    sectors: &BTreeMap<u64, Vec<u8>>,
) -> Result<Vec<u8>> {
    let count = u64::try_from(sectors.len()).map_err(|_| too_big())?;
    let total = entry_length(count, count).ok_or_else(too_big)?;
    let header = LogEntryHeader {
        signature: LOG_ENTRY_SIGNATURE,
        checksum: 0,
        entry_length: u32::try_from(total).map_err(|_| too_big())?,
        tail,
        sequence_number: sequence,
        descriptor_count: u32::try_from(count).map_err(|_| too_big())?,
        reserved: 0,
        log_guid: to_vhdx_bytes(&log_guid),
        flushed_file_offset,
        last_file_offset,
    };
    let mut descriptors = format::encode(&header);
    let mut data = Vec::new();
    for (off, sector) in sectors {
        let (d, s) = encode_sector(sequence, *off, sector)?;
        descriptors.extend(d);
        data.extend(s);
    }
    let desc_bytes = descriptor_sectors(count)
        .and_then(|s| s.checked_mul(LOG_SECTOR_SIZE))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(too_big)?;
    descriptors.resize(desc_bytes, 0);
    descriptors.extend(data);
    format::set_checksum(&mut descriptors);
    Ok(descriptors)
}

/// The descriptor and data sector of the 4 KiB sector `data` headed for `off`.
fn encode_sector(sequence: u64, off: u64, data: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    // The writer splits changes into sectors itself: anything else is a bug, not bad input.
    let whole = || {
        Error::internal(format!(
            "{STRUCT} at offset {off:#x}: log data must be whole 4 KiB sectors"
        ))
    };
    if data.len() != SECTOR || off % LOG_SECTOR_SIZE != 0 {
        return Err(whole());
    }
    let (leading, rest) = data.split_at_checked(LOG_LEADING_BYTES).ok_or_else(whole)?;
    let (middle, trailing) = rest.split_at_checked(LOG_DATA_BYTES).ok_or_else(whole)?;
    let d = LogDescriptor {
        signature: DATA_DESCRIPTOR_SIGNATURE,
        trailing_bytes: <[u8; LOG_TRAILING_BYTES]>::try_from(trailing).map_err(|_| whole())?,
        leading_bytes: <[u8; LOG_LEADING_BYTES]>::try_from(leading).map_err(|_| whole())?,
        file_offset: off,
        sequence_number: sequence,
    };
    let s = LogDataSector {
        signature: DATA_SECTOR_SIGNATURE,
        sequence_high: u32::try_from(sequence >> 32).unwrap_or(u32::MAX),
        data: <[u8; LOG_DATA_BYTES]>::try_from(middle).map_err(|_| whole())?,
        sequence_low: u32::try_from(sequence & u64::from(u32::MAX)).unwrap_or(u32::MAX),
    };
    Ok((format::encode(&d), format::encode(&s)))
}

/// A [`Sink`] that counts what is written where: the header slots, the log, everything else.
#[derive(Debug)]
pub(crate) struct Counting<'a> {
    pub(crate) inner: &'a dyn Sink,
    pub(crate) log: Range<u64>,
    pub(crate) writes: AtomicUsize,
    pub(crate) syncs: AtomicUsize,
    pub(crate) header_bytes: AtomicU64,
    pub(crate) log_bytes: AtomicU64,
    pub(crate) other_bytes: AtomicU64,
}

impl<'a> Counting<'a> {
    /// Count writes to `inner`, whose log occupies `log`.
    pub(crate) fn new(inner: &'a dyn Sink, log: Range<u64>) -> Self {
        Counting {
            inner,
            log,
            writes: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
            header_bytes: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            other_bytes: AtomicU64::new(0),
        }
    }
}

impl Source for Counting<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

impl Sink for Counting<'_> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)?;
        let n = buf.len() as u64;
        self.writes.fetch_add(1, Ordering::SeqCst);
        let bucket = if HEADER_OFFSETS
            .iter()
            .any(|&h| offset >= h && offset < h + HEADER_SIZE as u64)
        {
            &self.header_bytes
        } else if self.log.contains(&offset) {
            &self.log_bytes
        } else {
            &self.other_bytes
        };
        bucket.fetch_add(n, Ordering::SeqCst);
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        self.inner.sync()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The capacity rule the writer relied on before it moved here.
    fn old_sectors_per_entry(log_length: u64) -> usize {
        let total = log_length / 4096;
        let mut n = total.saturating_sub(2);
        while n > 0 && (n + (64 + 32 * n).div_ceil(4096) + 1) > total {
            n -= 1;
        }
        usize::try_from(n).unwrap_or(0)
    }

    #[test]
    fn capacity_matches_the_entry_size() {
        for mb in [1u64, 2, 3, 8, 64] {
            assert_eq!(max_data_sectors(mb << 20), old_sectors_per_entry(mb << 20));
        }
        assert_eq!(max_data_sectors(0), 0);
    }

    #[test]
    fn encoded_entry_has_the_computed_size_and_parses() {
        let mut sectors = BTreeMap::new();
        let mut a = vec![0u8; 4096];
        a[0] = 1;
        a[4095] = 2;
        a[100] = 3;
        sectors.insert(0x30_0000u64, a.clone());
        sectors.insert(0x30_1000u64, vec![5u8; 4096]);
        let guid = Uuid::from_u128(7);
        let e = encode_entry(0x1_0000_0002, 0, guid, 1 << 20, 4 << 20, &sectors).unwrap();
        assert_eq!(e.len() as u64, entry_length(2, 2).unwrap());
        // The ring at 1 MiB, as in a file.
        let mut file = vec![0u8; 1 << 20];
        file.extend_from_slice(&e);
        file.resize(2 << 20, 0);
        let place = super::super::LogPlace {
            offset: 1 << 20,
            length: 1 << 20,
            guid,
        };
        let ring = super::super::ring::Ring {
            src: &file,
            place: &place,
        };
        let (_, entry) = super::super::entry::parse_entry(&ring, 0, true).unwrap();
        let entry = entry.unwrap();
        assert_eq!(entry.sequence_number, 0x1_0000_0002);
        let w = &entry.writes[0];
        match w {
            super::super::LogWrite::Logged { file_offset, .. } => {
                assert_eq!(*file_offset, 0x30_0000);
                assert_eq!(&w.sector(&file).unwrap().unwrap()[..], &a[..]);
            }
            w => panic!("{w:?}"),
        }
        assert!(encode_entry(
            1,
            0,
            guid,
            0,
            0,
            &BTreeMap::from([(4096u64, vec![0u8; 10])])
        )
        .is_err());
    }
}
