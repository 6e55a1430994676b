//! Writing the virtual disk of a VHDX (fixed, dynamic, differencing), crash-safely.
//!
//! **Opening** replays a dirty log into the file first (`Session::replay_to_disk`, which
//! takes a new FileWriteGuid), then reads regions, metadata and the BAT from the file.
//!
//! **GUIDs** (MS-VHDX 2.2.2). Before the first data write of a session the header gets a new
//! FileWriteGuid and then a new DataWriteGuid (two header updates, each synced). A disk that
//! has children must therefore not be written: their `parent_linkage` names the old
//! DataWriteGuid and they would no longer open. Checking that is the caller's business (the
//! file does not know its children).
//!
//! **Allocation.** A write into a FULLY_PRESENT block goes in place. A write into a block in
//! any other state allocates a new block at the end of the file (1 MiB-aligned; the file is
//! grown first, so the rest of the block is a hole of zeros) and writes the data there:
//! - fixed and dynamic disks, and differencing blocks in state ZERO/UNMAPPED/UNDEFINED (which
//!   read as zeros, not from the parent): the block becomes FULLY_PRESENT;
//! - differencing NOT_PRESENT blocks: only the logical sectors written are written, and marked
//!   in the block's sector bitmap bits (LSB first); a partial sector is completed from its old
//!   contents (the parent where its bit is clear). The block becomes PARTIALLY_PRESENT, or
//!   FULLY_PRESENT if every sector ends up written by the time of the flush. A chunk's sector
//!   bitmap block is allocated (1 MiB at the end) when one of its blocks first needs it.
//!
//! **Metadata.** BAT entries and sector bitmap bytes stay in memory until [`flush`], which
//! commits them through the log (`Session::commit`: sync, log entry, header = commit point,
//! apply, clear). Payload data is never logged; it is written before any metadata points at it
//! (the commit syncs first). A flush whose changes do not fit one log entry commits them in
//! several batches, ordered so that every prefix is consistent: sector bitmap bytes first, then
//! sector bitmap BAT entries, then payload BAT entries.
//!
//! Until a flush, data written into newly allocated blocks (or into sectors whose bitmap bit
//! is still clear) is invisible on disk; data written in place is visible at once, sector by
//! sector, as on any disk. What waits for the commit is bounded: after 64Ki allocations, or
//! 4 MiB of changed sector bitmaps, the write that reached the bound flushes by itself (so a
//! conversion that writes a whole disk before its only flush holds a few MiB, not a table).
//!
//! The BAT is read from the file on demand (`Table::lazy`): only the entries changed since the
//! last commit are held. That relies on the commit applying the log to the BAT before it
//! returns (`Session::commit` does), so the entries it forgets are on disk.
//!
//! [`flush`]: WritableImage::flush

use std::collections::BTreeSet;

use uuid::Uuid;

use super::bat::{chunk_ratio, is_sb_index, payload_index, sb_index};
use super::bitmap::block_bitmap_range;
use super::format::{
    self, BAT_OFFSET_MASK, KIB4, MIB, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT, SB_BLOCK_PRESENT, SECTOR_BITMAP_BLOCK_SIZE,
};
use super::header;
use super::header::ParsedHeader;
use super::log::{dirty_log, max_data_sectors};
use super::update::{Session, SessionState};
use super::{read_layout, Layout};
use crate::bitmap::{self as bits, BitOrder};
use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len};
use crate::txn::Sink;
use crate::view::Shape;
use crate::write::engine::{usize_of, Engine, Geometry, Place, SparseFormat, State, Table};
use crate::write::{ParentRead, WritableImage};

/// Bytes of clean sector bitmaps kept in memory before the cache is emptied (8192 bitmaps of
/// 2 MiB blocks; fewer of larger blocks, whose bitmaps are larger). Dirty ones stay until the
/// next flush.
const BITMAP_CACHE_BYTES: u64 = 4 << 20;
/// Blocks allocated since the last flush after which a write flushes by itself, so the BAT
/// entries and sector bitmaps held until the commit stay bounded (a conversion writes a whole
/// disk before its only flush).
const MAX_UNFLUSHED_ALLOCATIONS: u64 = 64 << 10;

/// A VHDX opened for writing.
#[derive(Debug)]
pub struct VhdxWriter<S: Sink> {
    shape: Shape,
    engine: Engine<Payload<S>>,
}

/// Most 4 KiB sectors one log entry carries (8 MiB): an entry is built in memory, so a file
/// declaring a huge log region (up to `Limits::max_log_replay_bytes`) still commits in entries
/// of bounded size, several per flush when needed.
const MAX_SECTORS_PER_ENTRY: usize = 2048;

/// Data sectors per log entry for a log of `log_length` bytes: what fits, at most
/// [`MAX_SECTORS_PER_ENTRY`].
fn entry_sectors(log_length: u64) -> usize {
    max_data_sectors(log_length).min(MAX_SECTORS_PER_ENTRY)
}

/// The VHDX part of a sparse writer: block states, allocation at the end of the file, the new
/// GUIDs of a session and the commit through the log.
#[derive(Debug)]
struct Payload<S: Sink> {
    /// The file; the engine's table reads the entries not changed since the last commit
    /// through it.
    sink: S,
    session: SessionState,
    data_write_guid_changed: bool,
    /// The DataWriteGuid the first write sets instead of a random one (a merge announces it to
    /// the child above first).
    next_data_write_guid: Option<Uuid>,
    differencing: bool,
    virtual_size: u64,
    block_size: u64,
    logical: u64,
    cr: u64,
    bat_offset: u64,
    /// Where the next allocation goes (1 MiB-aligned, at or past the end of the file).
    file_end: u64,
    /// Most 4 KiB sectors one log entry can carry.
    max_sectors_per_commit: usize,
    /// Blocks (payload and sector bitmap) allocated since the last commit.
    unflushed: u64,
    /// Allocations (or dirty sector bitmaps) after which a write flushes by itself.
    max_unflushed: u64,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

/// Replay a dirty log into the file (a new FileWriteGuid): the session to write with and the
/// header it starts from.
fn replay<S: Sink>(sink: &S, opts: &OpenOptions) -> Result<(SessionState, ParsedHeader)> {
    header::read_file_identifier(sink)?;
    let hdrs = header::read_headers(sink)?;
    let mut session = Session::new(sink, hdrs.current.clone(), hdrs.current_index);
    if let Some(seq) = dirty_log(sink, &hdrs, opts.limits.max_log_replay_bytes)? {
        session.replay_to_disk(&seq)?;
    }
    Ok((session.state(), session.current().clone()))
}

/// Where the next allocation goes: 1 MiB-aligned past the end of the file, the log, every
/// region and every block.
fn allocation_start(l: &Layout, file_len: u64) -> Result<u64> {
    l.structures_end()
        .max(file_len)
        .checked_next_multiple_of(MIB)
        .ok_or_else(|| Error::unsupported("file too large"))
}

/// The state bits of a BAT entry.
fn state(e: u64) -> u8 {
    u8::try_from(e & format::BAT_STATE_MASK).unwrap_or(u8::MAX)
}

impl<S: Sink> VhdxWriter<S> {
    /// Open a VHDX for writing: a dirty log is replayed into the file first.
    pub fn open(sink: S, opts: &OpenOptions) -> Result<VhdxWriter<S>> {
        let (session, cur) = replay(&sink, opts)?;
        let file_len = source_len(&sink)?;
        let layout = read_layout(&sink, file_len, &cur, &opts.limits)?;
        let meta = &layout.meta;
        let cr = chunk_ratio(meta.logical_sector_size, meta.block_size);
        let block_size = u64::from(meta.block_size);
        let geo = Geometry {
            block_size,
            sector: u64::from(meta.logical_sector_size),
            order: BitOrder::LsbFirst,
            max_cached_bitmaps: usize_of(
                (BITMAP_CACHE_BYTES / (SECTOR_BITMAP_BLOCK_SIZE / cr.max(1)).max(1)).max(1),
            )?,
        };
        let payload = Payload {
            file_end: allocation_start(&layout, file_len)?,
            max_sectors_per_commit: entry_sectors(u64::from(cur.log_length)),
            unflushed: 0,
            max_unflushed: MAX_UNFLUSHED_ALLOCATIONS,
            sink,
            session,
            data_write_guid_changed: false,
            next_data_write_guid: None,
            differencing: meta.has_parent,
            virtual_size: meta.virtual_disk_size,
            block_size,
            logical: geo.sector,
            cr,
            bat_offset: layout.regions.bat.file_offset,
        };
        Ok(VhdxWriter {
            shape: layout.shape(),
            engine: Engine::new(payload, Table::lazy(layout.bat.table), geo),
        })
    }

    /// For writes that leave every sector reading as before (flatten copying the chain's data
    /// into the child): the DataWriteGuid is kept, so the differencing disks whose
    /// `parent_linkage` names this file stay valid. MS-VHDX 2.2.2 asks for a new one before a
    /// change to the virtual disk's contents; these writes change its representation only.
    pub(crate) fn preserving_contents(mut self) -> Self {
        self.engine.fmt.data_write_guid_changed = true;
        self
    }

    /// The first write of the session sets DataWriteGuid `guid` instead of a random one, and
    /// nothing when the header has it already (a merge resumed after the change): a merge
    /// records `guid` in the child's `parent_linkage2` first (MS-VHDX footnote 12).
    pub(crate) fn with_data_write_guid(mut self, guid: Uuid) -> Self {
        self.engine.fmt.next_data_write_guid = Some(guid);
        self
    }

    /// The file underneath.
    #[cfg(any(test, feature = "test-support"))]
    pub fn sink(&self) -> &S {
        &self.engine.fmt.sink
    }

    /// Lower the number of 4 KiB sectors one log entry may carry (at least 1), so tests can
    /// make a flush commit in several batches.
    #[doc(hidden)]
    #[cfg(any(test, feature = "test-support"))]
    pub fn limit_sectors_per_commit(&mut self, n: usize) {
        let p = &mut self.engine.fmt;
        p.max_sectors_per_commit = p.max_sectors_per_commit.min(n.max(1));
    }

    /// Lower the allocations (or dirty sector bitmaps) after which a write flushes by itself,
    /// so tests can see it happen.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn limit_unflushed(&mut self, n: u64) {
        self.engine.fmt.max_unflushed = n.max(1);
    }

    /// Whether the metadata held until the next commit reached its bound.
    fn over_bound(&self) -> bool {
        let p = &self.engine.fmt;
        let bitmap_bytes = SECTOR_BITMAP_BLOCK_SIZE / p.cr.max(1);
        let dirty = self.engine.st.bitmaps.dirty().len() as u64;
        p.unflushed >= p.max_unflushed
            || dirty >= p.max_unflushed
            || dirty.saturating_mul(bitmap_bytes) >= BITMAP_CACHE_BYTES
    }
}

impl<S: Sink> Payload<S> {
    /// `len` bytes (a multiple of 1 MiB) at the end of the file; the file is grown over them.
    fn allocate(&mut self, len: u64) -> Result<u64> {
        self.unflushed += 1;
        let at = self.file_end;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= BAT_OFFSET_MASK)
            .ok_or_else(|| Error::unsupported("the file would grow past what a BAT can address"))?;
        self.sink
            .set_len(end)
            .map_err(io(format!("growing the vhdx to {end:#x}")))?;
        self.file_end = end;
        Ok(at)
    }

    /// Sectors of block `b` inside the virtual disk.
    fn sectors_in_block(&self, b: u64) -> u64 {
        let start = b * self.block_size;
        self.block_size.min(self.virtual_size.saturating_sub(start)) / self.logical
    }

    /// The metadata writes of a flush, in commit order: sector bitmap bytes, sector bitmap
    /// entries, payload entries. Decides each dirty differencing block's final state first.
    fn pending_writes(&mut self, st: &mut State<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let cr = self.cr;
        let mut bitmap_writes = Vec::new();
        let dirty: Vec<u64> = st.bitmaps.dirty().iter().copied().collect();
        for b in dirty {
            let idx = payload_index(b, cr);
            let e = st.table.get(&self.sink, idx)?;
            if state(e) != PAYLOAD_BLOCK_PARTIALLY_PRESENT {
                continue;
            }
            let n = self.sectors_in_block(b);
            let full = st
                .bitmaps
                .get(b)
                .is_some_and(|bm| bits::run(bm, 0, n, BitOrder::LsbFirst) == (true, n));
            if full {
                let whole = (e & BAT_OFFSET_MASK) | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
                st.table.set(idx, whole)?;
                continue;
            }
            let si = sb_index(b / cr, cr);
            let mut sb = st.table.get(&self.sink, si)?;
            if state(sb) != SB_BLOCK_PRESENT {
                let at = self.allocate(SECTOR_BITMAP_BLOCK_SIZE)?;
                sb = at | u64::from(SB_BLOCK_PRESENT);
                st.table.set(si, sb)?;
            }
            let (rel, _) = block_bitmap_range(b, cr);
            if let Some(bm) = st.bitmaps.get(b) {
                bitmap_writes.push(((sb & BAT_OFFSET_MASK) + rel, bm.clone()));
            }
        }
        let (mut sb_writes, mut payload_writes) = (Vec::new(), Vec::new());
        for i in st.table.dirty() {
            let w = (
                self.bat_offset + i * format::BAT_ENTRY_SIZE,
                st.table.get(&self.sink, i)?.to_le_bytes().to_vec(),
            );
            if is_sb_index(i, cr) {
                sb_writes.push(w);
            } else {
                payload_writes.push(w);
            }
        }
        bitmap_writes.append(&mut sb_writes);
        bitmap_writes.append(&mut payload_writes);
        Ok(bitmap_writes)
    }

    fn commit_batch(&mut self, batch: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut s = Session::resume(&self.sink, self.session.clone());
        let r = s.commit(batch);
        self.session = s.state();
        r
    }
}

impl<S: Sink> SparseFormat for Payload<S> {
    type Entry = u64;

    fn place(&self, st: &State<u64>, b: u64) -> Result<Place> {
        let e = st.table.get(&self.sink, payload_index(b, self.cr))?;
        let data_at = e & BAT_OFFSET_MASK;
        Ok(match state(e) {
            PAYLOAD_BLOCK_FULLY_PRESENT => Place::Whole { data_at },
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => Place::Sectors { data_at },
            PAYLOAD_BLOCK_NOT_PRESENT if self.differencing => Place::Parent,
            _ => Place::Zero,
        })
    }

    fn place_for_write(&mut self, st: &mut State<u64>, b: u64) -> Result<Place> {
        let idx = payload_index(b, self.cr);
        let e = st.table.get(&self.sink, idx)?;
        let data_at = e & BAT_OFFSET_MASK;
        match state(e) {
            PAYLOAD_BLOCK_FULLY_PRESENT => Ok(Place::Whole { data_at }),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT if self.differencing => Ok(Place::Sectors { data_at }),
            PAYLOAD_BLOCK_NOT_PRESENT if self.differencing => {
                let at = self.allocate(self.block_size)?;
                st.table
                    .set(idx, at | u64::from(PAYLOAD_BLOCK_PARTIALLY_PRESENT))?;
                let n = usize_of(SECTOR_BITMAP_BLOCK_SIZE / self.cr)?;
                st.bitmaps.insert(b, vec![0u8; n], true);
                Ok(Place::Sectors { data_at: at })
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => Err(Error::corrupt(
                "vhdx block allocation table",
                self.bat_offset + idx * format::BAT_ENTRY_SIZE,
                "PARTIALLY_PRESENT block in a disk without a parent",
            )
            .with_code("vhdx.bat.state_invalid")),
            _ => {
                // Reads as zeros now: a fresh block (zeros but for the data) keeps that.
                let at = self.allocate(self.block_size)?;
                st.table
                    .set(idx, at | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT))?;
                Ok(Place::Whole { data_at: at })
            }
        }
    }

    fn read_bitmap(&self, st: &State<u64>, b: u64) -> Result<Vec<u8>> {
        let (rel, len) = block_bitmap_range(b, self.cr);
        let mut bm = vec![0u8; usize_of(len)?];
        let sb = st.table.get(&self.sink, sb_index(b / self.cr, self.cr))?;
        if state(sb) == SB_BLOCK_PRESENT {
            read_struct(
                &self.sink,
                (sb & BAT_OFFSET_MASK) + rel,
                &mut bm,
                "vhdx sector bitmap",
            )?;
        }
        Ok(bm)
    }

    fn read_data(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_struct(&self.sink, at, buf, "vhdx payload block")
    }

    fn write_data(&self, data: &[u8], at: u64) -> Result<()> {
        self.sink
            .write_all_at(data, at)
            .map_err(io(format!("writing vhdx payload at offset {at:#x}")))
    }

    /// Before the first data change of the session: new FileWriteGuid, new DataWriteGuid.
    fn before_write(&mut self) -> Result<()> {
        if self.data_write_guid_changed {
            return Ok(());
        }
        let mut s = Session::resume(&self.sink, self.session.clone());
        let r = match self.next_data_write_guid {
            Some(g) if s.current().data_write_guid == g => Ok(()),
            Some(g) => s.change_data_write_guid(g),
            None => s.change_data_write_guid(Uuid::new_v4()),
        };
        self.session = s.state();
        r?;
        self.data_write_guid_changed = true;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.sink.sync().map_err(io("flushing the vhdx"))
    }

    fn commit(&mut self, st: &mut State<u64>) -> Result<()> {
        let writes = self.pending_writes(st)?;
        for batch in batches(writes, self.max_sectors_per_commit.max(1)) {
            self.commit_batch(&batch)?;
        }
        self.unflushed = 0;
        Ok(())
    }
}

/// Split `writes` into consecutive batches touching at most `max` distinct 4 KiB sectors each.
fn batches(writes: Vec<(u64, Vec<u8>)>, max: usize) -> Vec<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut sectors: BTreeSet<u64> = BTreeSet::new();
    for w in writes {
        let first = w.0 / KIB4;
        let last = (w.0 + w.1.len().max(1) as u64 - 1) / KIB4;
        let new: Vec<u64> = (first..=last).filter(|s| !sectors.contains(s)).collect();
        if !cur.is_empty() && sectors.len() + new.len() > max {
            out.push(std::mem::take(&mut cur));
            sectors.clear();
            sectors.extend(first..=last);
        } else {
            sectors.extend(new);
        }
        cur.push(w);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl<S: Sink> WritableImage for VhdxWriter<S> {
    fn shape(&self) -> Shape {
        self.shape
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8], parent: &mut ParentRead<'_>) -> Result<()> {
        self.engine.read_at(offset, buf, parent)
    }

    fn write_at(&mut self, offset: u64, data: &[u8], parent: &mut ParentRead<'_>) -> Result<()> {
        self.engine.write_at(offset, data, parent)?;
        if self.over_bound() {
            self.engine.flush()?;
        }
        Ok(())
    }

    fn place_for_copy(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        let at = self.engine.place_for_copy(offset, len)?;
        if self.over_bound() {
            self.engine.flush()?;
        }
        Ok(at)
    }

    fn stored_at(&self, offset: u64) -> Result<Option<u64>> {
        self.engine.stored_at(offset)
    }

    fn flush(&mut self) -> Result<()> {
        self.engine.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_megabyte_log_entry_capacity() {
        let n = max_data_sectors(MIB);
        // n data sectors + descriptor sectors + one free sector fill at most 256 sectors.
        assert!(n as u64 + (64 + 32 * n as u64).div_ceil(4096) < 256);
        assert!(n as u64 + 1 + (64 + 32 * (n as u64 + 1)).div_ceil(4096) + 1 > 256);
    }

    #[test]
    fn log_entries_stay_bounded_whatever_the_log_size() {
        // Windows' 1 MiB log: every sector that fits, as before.
        assert_eq!(entry_sectors(MIB), max_data_sectors(MIB));
        assert!(entry_sectors(MIB) < MAX_SECTORS_PER_ENTRY);
        // The largest log the readers accept: 8 MiB entries, not 256 MiB ones.
        let big = crate::limits::Limits::default().max_log_replay_bytes;
        assert!(max_data_sectors(big) > 60_000);
        assert_eq!(entry_sectors(big), MAX_SECTORS_PER_ENTRY);
    }

    #[test]
    fn batches_respect_the_sector_limit_and_keep_order() {
        let w: Vec<(u64, Vec<u8>)> = (0..10u64).map(|i| (i * 4096, vec![1u8; 8])).collect();
        let b = batches(w.clone(), 3);
        assert_eq!(b.len(), 4);
        assert_eq!(b.concat(), w);
        // Writes into the same sector share it.
        let w: Vec<(u64, Vec<u8>)> = (0..100u64).map(|i| (i * 8, vec![1u8; 8])).collect();
        assert_eq!(batches(w, 1).len(), 1);
    }
}
