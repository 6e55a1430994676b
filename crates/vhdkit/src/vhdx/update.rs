//! Crash-safe changes to an existing VHDX file: header updates and log-protected metadata writes.
//!
//! Headers are never logged: a new header (sequence number + 1, checked) is written over the
//! *non-current* slot and synced, so a torn header write leaves the old current header in
//! force (MS-VHDX 2.2.2.1).
//!
//! Metadata (BAT, sector bitmaps, metadata region, region tables) changes go through the log
//! (MS-VHDX 2.3), in this order:
//! 1. sync, so payload data written earlier is stable before metadata points at it;
//! 2. on the first change of the session, a header update with a fresh FileWriteGuid;
//! 3. the log entry, under a fresh LogGuid, written into the ring while the header's LogGuid is
//!    still zero (so it is inert), then sync;
//! 4. a header update that sets LogGuid: the commit point. From here a reader replays the
//!    entry; before it, the entry is ignored;
//! 5. the sectors written at their final offsets, the file extended to LastFileOffset, sync;
//! 6. header updates that clear LogGuid (both slots, so they agree), sync.
//!
//! Writing the entry before publishing its GUID closes the window in which a header names a
//! log that holds no valid entry (which MS-VHDX calls a corrupt file, and readers refuse).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::format::{HEADER_OFFSETS, KIB4, LOG_MIN_TARGET, MIB};
pub(crate) use super::header::encode_header;
use super::header::ParsedHeader;
use super::log::{encode_entry, logged_sector, LogSequence, LogWrite};
use crate::error::{Error, Result};
use crate::source::source_len;
use crate::txn::Sink;

const SECTOR: usize = 4096;

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// What a [`Session`] remembers between calls: the current header, its slot, the session's
/// FileWriteGuid and whether it has been written yet.
#[derive(Debug, Clone)]
pub(crate) struct SessionState {
    current: ParsedHeader,
    current_index: usize,
    file_write_guid: Uuid,
    started: bool,
}

/// One session of changes to a VHDX file.
pub(crate) struct Session<'a> {
    sink: &'a dyn Sink,
    current: ParsedHeader,
    current_index: usize,
    session_file_write_guid: Uuid,
    started: bool,
}

impl<'a> Session<'a> {
    /// A session over `sink`, whose current header is `current` in slot `current_index`.
    /// The file's log must be clean (replay it first with [`Session::replay_to_disk`]).
    pub(crate) fn new(sink: &'a dyn Sink, current: ParsedHeader, current_index: usize) -> Self {
        Session {
            sink,
            current,
            current_index,
            session_file_write_guid: Uuid::new_v4(),
            started: false,
        }
    }

    /// The current header as this session last wrote it.
    #[allow(dead_code)] // for VHDX data writes (not yet); reparent does not need it
    pub(crate) fn current(&self) -> &ParsedHeader {
        &self.current
    }

    /// The session's state, to resume it later with [`Session::resume`] (a writer that owns
    /// its file cannot keep a `Session` borrowing it between calls).
    pub(crate) fn state(&self) -> SessionState {
        SessionState {
            current: self.current.clone(),
            current_index: self.current_index,
            file_write_guid: self.session_file_write_guid,
            started: self.started,
        }
    }

    /// Continue a session from [`Session::state`]: the same FileWriteGuid, and no new one
    /// once the session has started.
    pub(crate) fn resume(sink: &'a dyn Sink, state: SessionState) -> Self {
        Session {
            sink,
            current: state.current,
            current_index: state.current_index,
            session_file_write_guid: state.file_write_guid,
            started: state.started,
        }
    }

    /// Write `next` (with the next sequence number) over the non-current slot, then sync.
    fn update_header(&mut self, mut next: ParsedHeader) -> Result<()> {
        next.sequence_number = self.current.sequence_number.checked_add(1).ok_or_else(|| {
            Error::corrupt(
                "vhdx header",
                HEADER_OFFSETS[self.current_index & 1],
                "sequence number at its maximum; the header cannot be updated",
            )
            .with_code("vhdx.header.sequence_exhausted")
        })?;
        let slot = 1 - (self.current_index & 1);
        let offset = HEADER_OFFSETS[slot];
        self.sink
            .write_all_at(&encode_header(&next), offset)
            .map_err(|e| {
                io(
                    &format!("writing vhdx header {} at {offset:#x}", slot + 1),
                    e,
                )
            })?;
        self.sink
            .sync()
            .map_err(|e| io("flushing a vhdx header", e))?;
        self.current = next;
        self.current_index = slot;
        Ok(())
    }

    /// Before the first change of the session: a new FileWriteGuid (MS-VHDX 2.2.2).
    pub(crate) fn begin(&mut self) -> Result<()> {
        if self.started {
            return Ok(());
        }
        let mut h = self.current.clone();
        h.file_write_guid = self.session_file_write_guid;
        self.update_header(h)?;
        self.started = true;
        Ok(())
    }

    /// Before the first change a reader of the virtual disk could see: a new DataWriteGuid.
    /// Never called for metadata-only changes such as locator paths (children link to it).
    #[allow(dead_code)] // for VHDX data writes (not yet); a reparent must never call it
    pub(crate) fn change_data_write_guid(&mut self, guid: Uuid) -> Result<()> {
        self.begin()?;
        let mut h = self.current.clone();
        h.data_write_guid = guid;
        self.update_header(h)
    }

    /// Apply `writes` (absolute offset, bytes) to metadata through the log.
    pub(crate) fn commit(&mut self, writes: &[(u64, Vec<u8>)]) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let len = source_len(self.sink)?;
        let sectors = self.merge_into_sectors(writes, len)?;
        self.sink
            .sync()
            .map_err(|e| io("flushing data before a metadata update", e))?;
        self.begin()?;
        let log_guid = Uuid::new_v4();
        let flushed = len / MIB * MIB;
        let last = len
            .checked_next_multiple_of(MIB)
            .ok_or_else(|| Error::InvalidArgument("file too large".into()))?;
        let entry = encode_entry(1, 0, log_guid, flushed, last, &sectors)?;
        let ring_len = u64::from(self.current.log_length);
        // One 4 KiB sector stays free so the head never meets the tail (MS-VHDX 2.3).
        if (entry.len() as u64).saturating_add(KIB4) > ring_len {
            return Err(Error::unsupported(format!(
                "a metadata update of {} sectors does not fit the {ring_len}-byte log",
                sectors.len()
            )));
        }
        self.sink
            .write_all_at(&entry, self.current.log_offset)
            .map_err(|e| io("writing the vhdx log entry", e))?;
        self.sink
            .sync()
            .map_err(|e| io("flushing the vhdx log", e))?;
        let mut h = self.current.clone();
        h.log_guid = log_guid;
        self.update_header(h)?;
        self.apply_sectors(&sectors, last, len)?;
        self.clear_log()
    }

    fn apply_sectors(&self, sectors: &BTreeMap<u64, Vec<u8>>, last: u64, len: u64) -> Result<()> {
        if len < last {
            self.sink
                .set_len(last)
                .map_err(|e| io("extending the file to LastFileOffset", e))?;
        }
        for (off, data) in sectors {
            self.sink
                .write_all_at(data, *off)
                .map_err(|e| io(&format!("applying a logged sector at {off:#x}"), e))?;
        }
        self.sink
            .sync()
            .map_err(|e| io("flushing applied metadata", e))
    }

    /// Two header updates with LogGuid zero, so both slots agree on a clean log.
    fn clear_log(&mut self) -> Result<()> {
        for _ in 0..2 {
            let mut h = self.current.clone();
            h.log_guid = Uuid::nil();
            self.update_header(h)?;
        }
        Ok(())
    }

    /// Replay a parsed active sequence to the file itself (a writable open of a dirty file),
    /// then mark the log clean.
    pub(crate) fn replay_to_disk(&mut self, seq: &LogSequence) -> Result<()> {
        // The replay modifies the file: new FileWriteGuid first. The header keeps its LogGuid
        // until the replay is durable, so a crash here replays again next time.
        self.begin()?;
        let len = source_len(self.sink)?;
        let mut last = len;
        // One sector at a time, read from the log and written to its target: the log is never
        // a target, so what is still to replay stays intact (a crash replays again).
        let mut sector = vec![0u8; SECTOR];
        for e in &seq.entries {
            last = last.max(e.last_file_offset);
            for w in &e.writes {
                match w {
                    LogWrite::Zero {
                        file_offset,
                        length,
                    } => write_zeros(self.sink, *file_offset, *length),
                    LogWrite::Data { file_offset, .. } | LogWrite::Logged { file_offset, .. } => {
                        logged_sector(self.sink, w, &mut sector)
                            .and_then(|_| self.sink.write_all_at(&sector, *file_offset))
                    }
                }
                .map_err(|e| io("replaying the vhdx log", e))?;
            }
        }
        if source_len(self.sink)? < last {
            self.sink
                .set_len(last)
                .map_err(|e| io("extending the file to LastFileOffset", e))?;
        }
        self.sink
            .sync()
            .map_err(|e| io("flushing the replayed log", e))?;
        self.clear_log()
    }

    /// Read-modify-write: the full 4 KiB sectors covering every write.
    fn merge_into_sectors(
        &self,
        writes: &[(u64, Vec<u8>)],
        len: u64,
    ) -> Result<BTreeMap<u64, Vec<u8>>> {
        let log_start = self.current.log_offset;
        let log_end = log_start.saturating_add(u64::from(self.current.log_length));
        let mut sectors: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for (off, data) in writes {
            let end = off
                .checked_add(data.len() as u64)
                .ok_or_else(|| Error::InvalidArgument("metadata write overflows".into()))?;
            if *off < LOG_MIN_TARGET || (*off < log_end && end > log_start) {
                return Err(Error::InvalidArgument(format!(
                    "metadata write at {off:#x} targets the headers or the log"
                )));
            }
            let mut pos = *off;
            while pos < end {
                let base = pos / KIB4 * KIB4;
                let sector = match sectors.get_mut(&base) {
                    Some(s) => s,
                    None => {
                        let mut s = vec![0u8; SECTOR];
                        if base < len {
                            let avail = usize::try_from((len - base).min(KIB4)).unwrap_or(SECTOR);
                            self.sink
                                .read_exact_at(&mut s[..avail], base)
                                .map_err(|e| io("reading metadata to update", e))?;
                        }
                        sectors.entry(base).or_insert(s)
                    }
                };
                let within = usize::try_from(pos - base).unwrap_or(0);
                let n = usize::try_from((end - pos).min(KIB4 - (pos - base))).unwrap_or(0);
                let src_at = usize::try_from(pos - off).unwrap_or(0);
                let (Some(dst), Some(src)) = (
                    sector.get_mut(within..within + n),
                    data.get(src_at..src_at + n),
                ) else {
                    return Err(Error::InvalidArgument("metadata write out of range".into()));
                };
                dst.copy_from_slice(src);
                pos += n as u64;
            }
        }
        Ok(sectors)
    }
}

/// The active log sequence of a file whose current header is `h` (slot unknown), or `None` when
/// the log is clean. Prefer [`super::log::dirty_log`], which names the header slot in errors.
pub(crate) fn dirty_log(
    src: &dyn crate::source::Source,
    h: &ParsedHeader,
    max_replay_bytes: u64,
) -> Result<Option<LogSequence>> {
    super::log::named_log(h, None)?
        .map(|place| super::log::find_active_sequence(src, &place, max_replay_bytes))
        .transpose()
}

fn write_zeros(sink: &dyn Sink, offset: u64, length: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; SECTOR];
    let mut done = 0u64;
    while done < length {
        let n = (length - done).min(KIB4);
        let n_usize = usize::try_from(n).unwrap_or(SECTOR);
        sink.write_all_at(&zeros[..n_usize], offset + done)?;
        done += n;
    }
    Ok(())
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    use super::*;
    use crate::guid::to_vhdx_bytes;
    use crate::source::Source;
    use crate::txn::fault::{FaultPlan, FaultyFile};
    use crate::{Disk, OpenOptions};
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

    fn base_file() -> Vec<u8> {
        let mut b = VhdxBuilder::new(Kind::Dynamic, 8 << 20, 1 << 20, 512);
        b.write(0, &[0x11; 4096]);
        b.write(3 << 20, &[0x33; 4096]);
        b.build().bytes
    }

    fn headers_of(bytes: &[u8]) -> (ParsedHeader, usize) {
        let h = super::super::header::read_headers(&bytes.to_vec()).unwrap();
        (h.current, h.current_index)
    }

    /// Metadata item offset of the virtual disk id, from `info`.
    fn disk_id_offset(bytes: &[u8]) -> u64 {
        let d = Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default()).unwrap();
        match d.info().details {
            crate::disk::FormatInfo::Vhdx(v) => {
                v.metadata_items
                    .iter()
                    .find(|m| m.name.as_deref() == Some("virtual_disk_id"))
                    .unwrap()
                    .file_offset
            }
            _ => unreachable!(),
        }
    }

    fn virtual_disk_id(bytes: Vec<u8>) -> Uuid {
        let d = Disk::from_source(Box::new(bytes), &OpenOptions::default()).unwrap();
        match d.info().details {
            crate::disk::FormatInfo::Vhdx(v) => v.virtual_disk_id,
            _ => unreachable!(),
        }
    }

    fn contents(bytes: Vec<u8>) -> Vec<u8> {
        let d = Disk::from_source(Box::new(bytes), &OpenOptions::default()).unwrap();
        let v = d.view();
        let mut out = vec![0u8; v.virtual_size() as usize];
        v.read_exact_at(&mut out, 0).unwrap();
        out
    }

    #[test]
    fn header_encoding_round_trips() {
        let bytes = base_file();
        let (h, _) = headers_of(&bytes);
        let enc = encode_header(&h);
        assert_eq!(enc.as_slice(), &bytes[0x20000..0x21000]);
    }

    #[test]
    fn commit_changes_metadata_and_leaves_a_clean_log() {
        let bytes = base_file();
        let at = disk_id_offset(&bytes);
        let new_id = Uuid::from_u128(0x1234);
        let plan = FaultPlan::new(None);
        let f = FaultyFile::new(bytes.clone(), plan);
        let (h, i) = headers_of(&bytes);
        let data_guid = h.data_write_guid;
        let mut s = Session::new(&f, h, i);
        s.commit(&[(at, to_vhdx_bytes(&new_id).to_vec())]).unwrap();
        let after = f.contents_synced();
        assert_eq!(virtual_disk_id(after.clone()), new_id);
        let (h2, _) = headers_of(&after);
        assert!(h2.log_guid.is_nil());
        assert_eq!(
            h2.data_write_guid, data_guid,
            "DataWriteGuid must not change"
        );
        assert_ne!(h2.file_write_guid, headers_of(&bytes).0.file_write_guid);
        assert_eq!(contents(after), contents(bytes));
    }

    /// Fail at every mutating operation; both crash images open and show the old or the new
    /// metadata, never anything else, and the virtual contents never change.
    #[test]
    fn failure_at_every_operation_gives_old_or_new() {
        let bytes = base_file();
        let at = disk_id_offset(&bytes);
        let old_id = virtual_disk_id(bytes.clone());
        let new_id = Uuid::from_u128(0x5678);
        let want = contents(bytes.clone());
        let total = {
            let plan = FaultPlan::new(None);
            let f = FaultyFile::new(bytes.clone(), plan.clone());
            let (h, i) = headers_of(&bytes);
            Session::new(&f, h, i)
                .commit(&[(at, to_vhdx_bytes(&new_id).to_vec())])
                .unwrap();
            plan.count()
        };
        assert!(total >= 8, "{total}");
        let mut saw_new_after_failure = false;
        for k in 1..=total {
            let plan = FaultPlan::new(Some(k));
            let f = FaultyFile::new(bytes.clone(), plan);
            let (h, i) = headers_of(&bytes);
            let r = Session::new(&f, h, i).commit(&[(at, to_vhdx_bytes(&new_id).to_vec())]);
            assert!(r.is_err(), "k={k}");
            for image in [f.contents_all_written(), f.contents_synced()] {
                let id = virtual_disk_id(image.clone());
                assert!(id == old_id || id == new_id, "k={k}: id {id}");
                saw_new_after_failure |= id == new_id;
                assert_eq!(contents(image), want, "k={k}");
            }
        }
        assert!(
            saw_new_after_failure,
            "a late failure should leave the committed change"
        );
    }

    #[test]
    fn refuses_writes_into_headers_or_log() {
        let bytes = base_file();
        let f = FaultyFile::new(bytes.clone(), FaultPlan::new(None));
        let (h, i) = headers_of(&bytes);
        let log = h.log_offset;
        let mut s = Session::new(&f, h, i);
        assert!(s.commit(&[(0x10000, vec![1])]).is_err());
        assert!(s.commit(&[(log + 10, vec![1])]).is_err());
        assert_eq!(f.contents_all_written(), bytes);
    }

    #[test]
    fn replay_to_disk_matches_the_in_memory_replay() {
        let mut b = VhdxBuilder::new(Kind::Dynamic, 8 << 20, 1 << 20, 512);
        b.write(0, &[0x11; 4096]);
        let mut built = b.build();
        let target = built.layout.metadata_offset + 0x10000;
        built.make_dirty(&[target], &[], &Default::default());
        let dirty = built.bytes.clone();
        let in_memory = Disk::from_source(Box::new(dirty.clone()), &OpenOptions::default())
            .unwrap()
            .info();
        let src: Box<dyn Source> = Box::new(dirty.clone());
        let hdrs = super::super::header::read_headers(&*src).unwrap();
        let place = super::super::log::LogPlace {
            offset: hdrs.current.log_offset,
            length: u64::from(hdrs.current.log_length),
            guid: hdrs.current.log_guid,
        };
        let seq = super::super::log::find_active_sequence(&*src, &place, 1 << 20).unwrap();
        let f = FaultyFile::new(dirty, FaultPlan::new(None));
        Session::new(&f, hdrs.current, hdrs.current_index)
            .replay_to_disk(&seq)
            .unwrap();
        let replayed = f.contents_synced();
        let (h, _) = headers_of(&replayed);
        assert!(h.log_guid.is_nil());
        let after = Disk::from_source(Box::new(replayed), &OpenOptions::default())
            .unwrap()
            .info();
        assert_eq!(after.virtual_size, in_memory.virtual_size);
        assert!(after.warnings.is_empty(), "{:?}", after.warnings);
    }
}
