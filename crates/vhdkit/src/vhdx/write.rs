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
//! sector, as on any disk.
//!
//! [`flush`]: WritableImage::flush

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::bat::{self, chunk_ratio, payload_index, sb_index};
use super::bitmap::{bit_run, block_bitmap_range};
use super::format::{
    self, BAT_OFFSET_MASK, KIB4, MIB, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_NOT_PRESENT,
    PAYLOAD_BLOCK_PARTIALLY_PRESENT, SB_BLOCK_PRESENT, SECTOR_BITMAP_BLOCK_SIZE,
};
use super::update::{Session, SessionState};
use super::{header, log, metadata, region};
use crate::disk::{DiskFormat, DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len};
use crate::txn::Sink;
use crate::write::{ParentRead, WritableImage};

/// Clean sector bitmaps kept in memory before the cache is emptied. Dirty ones stay until the
/// next flush.
const MAX_CACHED_BITMAPS: usize = 8192;

/// A VHDX opened for writing.
#[derive(Debug)]
pub struct VhdxWriter<S: Sink> {
    sink: S,
    session: SessionState,
    data_write_guid_changed: bool,
    disk_type: DiskType,
    virtual_size: u64,
    block_size: u64,
    logical: u64,
    cr: u64,
    bat_offset: u64,
    /// The BAT as it is now (including entries not yet committed).
    bat: Vec<u64>,
    /// BAT indices changed since the last flush.
    dirty_entries: BTreeSet<u64>,
    /// Where the next allocation goes (1 MiB-aligned, at or past the end of the file).
    file_end: u64,
    /// Differencing: sector bitmap bytes of payload blocks loaded so far.
    bitmaps: BTreeMap<u64, Vec<u8>>,
    /// Differencing: bitmaps changed since the last flush.
    dirty_bitmaps: BTreeSet<u64>,
    /// Most 4 KiB sectors one log entry can carry.
    max_sectors_per_commit: usize,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} bytes do not fit memory")))
}

/// Most data sectors `n` with `descriptor sectors + n` sectors plus one free sector in the log.
fn sectors_per_entry(log_length: u64) -> usize {
    let total = log_length / KIB4;
    let mut n = total.saturating_sub(2);
    while n > 0 && (n + (64 + 32 * n).div_ceil(KIB4) + 1) > total {
        n -= 1;
    }
    usize::try_from(n).unwrap_or(0)
}

impl<S: Sink> VhdxWriter<S> {
    /// Open a VHDX for writing: a dirty log is replayed into the file first.
    pub fn open(sink: S, opts: &OpenOptions) -> Result<VhdxWriter<S>> {
        header::read_file_identifier(&sink)?;
        let hdrs = header::read_headers(&sink)?;
        let cur = hdrs.current.clone();
        let mut session = Session::new(&sink, cur.clone(), hdrs.current_index);
        if !cur.log_guid.is_nil() {
            if cur.log_version != 0 {
                return Err(Error::corrupt(
                    "vhdx header",
                    format::HEADER_OFFSETS[hdrs.current_index & 1] + 64,
                    format!("log version {}, expected 0", cur.log_version),
                ));
            }
            let place = log::LogPlace {
                offset: cur.log_offset,
                length: u64::from(cur.log_length),
                guid: cur.log_guid,
            };
            let seq = log::find_active_sequence(&sink, &place, opts.limits.max_log_replay_bytes)?;
            session.replay_to_disk(&seq)?;
        }
        let state = session.state();
        let cur = session.current().clone();
        let file_len = source_len(&sink)?;
        let log_length = u64::from(cur.log_length);
        let log_span = (log_length > 0).then_some((cur.log_offset, log_length));
        let regions = region::read_regions(&sink, file_len, log_span)?;
        let meta = metadata::read_metadata(
            &sink,
            regions.metadata.file_offset,
            regions.metadata.length,
            &opts.limits,
        )?;
        let mut reserved: Vec<(u64, u64, String)> = vec![(0, MIB, "the first MiB".to_string())];
        let mut end = file_len;
        if let Some((o, l)) = log_span {
            reserved.push((o, o.saturating_add(l), "the log".to_string()));
            end = end.max(o.saturating_add(l));
        }
        for r in &regions.all {
            let e = r.file_offset.saturating_add(r.length);
            reserved.push((
                r.file_offset,
                e,
                format!("region {}", r.name.unwrap_or("?")),
            ));
            end = end.max(e);
        }
        let table = bat::read_bat(
            &sink,
            &bat::BatParams {
                region_offset: regions.bat.file_offset,
                region_length: regions.bat.length,
                virtual_size: meta.virtual_disk_size,
                block_size: meta.block_size,
                logical_sector_size: meta.logical_sector_size,
                differencing: meta.has_parent,
                file_len,
                max_bat_bytes: opts.limits.max_bat_bytes,
                reserved: &reserved,
            },
        )?;
        let cr = chunk_ratio(meta.logical_sector_size, meta.block_size);
        let block_size = u64::from(meta.block_size);
        for (i, &e) in table.entries.iter().enumerate() {
            let off = e & BAT_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let is_sb = (i as u64 + 1) % (cr + 1) == 0;
            let len = if is_sb {
                SECTOR_BITMAP_BLOCK_SIZE
            } else {
                block_size
            };
            end = end.max(off.saturating_add(len));
        }
        let file_end = end
            .checked_next_multiple_of(MIB)
            .ok_or_else(|| Error::unsupported("file too large"))?;
        let disk_type = if meta.has_parent {
            DiskType::Differencing
        } else if meta.leave_block_allocated {
            DiskType::Fixed
        } else {
            DiskType::Dynamic
        };
        Ok(VhdxWriter {
            max_sectors_per_commit: sectors_per_entry(log_length),
            sink,
            session: state,
            data_write_guid_changed: false,
            disk_type,
            virtual_size: meta.virtual_disk_size,
            block_size,
            logical: u64::from(meta.logical_sector_size),
            cr,
            bat_offset: regions.bat.file_offset,
            bat: table.entries,
            dirty_entries: BTreeSet::new(),
            file_end,
            bitmaps: BTreeMap::new(),
            dirty_bitmaps: BTreeSet::new(),
        })
    }

    /// The file underneath.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Lower the number of 4 KiB sectors one log entry may carry (at least 1), so tests can
    /// make a flush commit in several batches.
    #[doc(hidden)]
    pub fn limit_sectors_per_commit(&mut self, n: usize) {
        self.max_sectors_per_commit = self.max_sectors_per_commit.min(n.max(1));
    }

    fn entry(&self, index: u64) -> Result<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.bat.get(i))
            .copied()
            .ok_or_else(|| Error::InvalidArgument(format!("BAT entry {index} outside the table")))
    }

    fn set_entry(&mut self, index: u64, value: u64) -> Result<()> {
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| self.bat.get_mut(i))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("BAT entry {index} outside the table"))
            })?;
        *slot = value;
        self.dirty_entries.insert(index);
        Ok(())
    }

    fn write_file(&self, data: &[u8], at: u64) -> Result<()> {
        self.sink
            .write_all_at(data, at)
            .map_err(io(format!("writing vhdx payload at offset {at:#x}")))
    }

    fn read_file(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_struct(&self.sink, at, buf, "vhdx payload block")
    }

    /// `len` bytes (a multiple of 1 MiB) at the end of the file; the file is grown over them.
    fn allocate(&mut self, len: u64) -> Result<u64> {
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

    /// Before the first data change of the session: new FileWriteGuid, new DataWriteGuid.
    fn before_data_change(&mut self) -> Result<()> {
        if self.data_write_guid_changed {
            return Ok(());
        }
        let mut s = Session::resume(&self.sink, self.session.clone());
        let r = s.change_data_write_guid(Uuid::new_v4());
        self.session = s.state();
        r?;
        self.data_write_guid_changed = true;
        Ok(())
    }

    fn bitmap_len(&self) -> u64 {
        SECTOR_BITMAP_BLOCK_SIZE / self.cr
    }

    /// The sector bitmap bytes of block `b` (loaded on first use).
    fn load_bitmap(&mut self, b: u64) -> Result<()> {
        if self.bitmaps.contains_key(&b) {
            return Ok(());
        }
        let (rel, len) = block_bitmap_range(b, self.cr);
        let mut bm = vec![0u8; usize_of(len)?];
        let sb = self.entry(sb_index(b / self.cr, self.cr))?;
        if sb & 7 == u64::from(SB_BLOCK_PRESENT) {
            read_struct(
                &self.sink,
                (sb & BAT_OFFSET_MASK) + rel,
                &mut bm,
                "vhdx sector bitmap",
            )?;
        }
        if self.bitmaps.len() >= MAX_CACHED_BITMAPS {
            let dirty = &self.dirty_bitmaps;
            self.bitmaps.retain(|k, _| dirty.contains(k));
        }
        self.bitmaps.insert(b, bm);
        Ok(())
    }

    fn bit(&self, b: u64, s: u64) -> bool {
        self.bitmaps
            .get(&b)
            .and_then(|bm| bm.get(usize::try_from(s / 8).ok()?))
            .is_some_and(|byte| byte >> (s % 8) & 1 == 1)
    }

    /// Sectors of block `b` inside the virtual disk.
    fn sectors_in_block(&self, b: u64) -> u64 {
        let start = b * self.block_size;
        self.block_size.min(self.virtual_size.saturating_sub(start)) / self.logical
    }

    /// Write `data` at `within` of block `b` (the piece stays inside the block).
    fn write_piece(
        &mut self,
        b: u64,
        within: u64,
        data: &[u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        let idx = payload_index(b, self.cr);
        let e = self.entry(idx)?;
        let state = u8::try_from(e & 7).unwrap_or(u8::MAX);
        let diff = self.disk_type == DiskType::Differencing;
        match state {
            PAYLOAD_BLOCK_FULLY_PRESENT => self.write_file(data, (e & BAT_OFFSET_MASK) + within),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT if diff => {
                self.write_sectors(b, e & BAT_OFFSET_MASK, within, data, parent)
            }
            PAYLOAD_BLOCK_NOT_PRESENT if diff => {
                let at = self.allocate(self.block_size)?;
                self.set_entry(idx, at | u64::from(PAYLOAD_BLOCK_PARTIALLY_PRESENT))?;
                let n = usize_of(self.bitmap_len())?;
                self.bitmaps.insert(b, vec![0u8; n]);
                self.dirty_bitmaps.insert(b);
                self.write_sectors(b, at, within, data, parent)
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => Err(Error::corrupt(
                "vhdx block allocation table",
                self.bat_offset + idx * 8,
                "PARTIALLY_PRESENT block in a disk without a parent",
            )),
            _ => {
                // Reads as zeros now: a fresh block (zeros but for the data) keeps that.
                let at = self.allocate(self.block_size)?;
                self.set_entry(idx, at | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT))?;
                self.write_file(data, at + within)
            }
        }
    }

    /// Differencing: write whole logical sectors (completing partial ones) into the block at
    /// `at` and set their bits.
    fn write_sectors(
        &mut self,
        b: u64,
        at: u64,
        within: u64,
        data: &[u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        self.load_bitmap(b)?;
        let ls = self.logical;
        let first = within / ls;
        let end = (within + data.len() as u64).div_ceil(ls);
        let span_at = first * ls;
        let head = usize_of(within - span_at)?;
        let span_len = usize_of((end - first) * ls)?;
        let owned;
        let out: &[u8] = if head == 0 && data.len() == span_len {
            data
        } else {
            let mut buf = vec![0u8; span_len];
            let mut edges = vec![first];
            if end - 1 != first {
                edges.push(end - 1);
            }
            for s in edges {
                let rel = usize_of((s - first) * ls)?;
                let dst = buf
                    .get_mut(rel..rel + usize_of(ls)?)
                    .ok_or_else(|| Error::InvalidArgument("sector outside the span".into()))?;
                if self.bit(b, s) {
                    self.read_file(dst, at + s * ls)?;
                } else {
                    parent(b * self.block_size + s * ls, dst)?;
                }
            }
            if let Some(d) = buf.get_mut(head..head + data.len()) {
                d.copy_from_slice(data);
            }
            owned = buf;
            &owned
        };
        self.write_file(out, at + span_at)?;
        let mut changed = false;
        if let Some(bm) = self.bitmaps.get_mut(&b) {
            for s in first..end {
                if let Some(byte) = bm.get_mut(usize_of(s / 8)?) {
                    let mask = 1u8 << (s % 8);
                    if *byte & mask == 0 {
                        *byte |= mask;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.dirty_bitmaps.insert(b);
        }
        Ok(())
    }

    fn read_piece(
        &mut self,
        b: u64,
        within: u64,
        buf: &mut [u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        let virt = b * self.block_size + within;
        let e = self.entry(payload_index(b, self.cr))?;
        let at = e & BAT_OFFSET_MASK;
        match u8::try_from(e & 7).unwrap_or(u8::MAX) {
            PAYLOAD_BLOCK_FULLY_PRESENT => self.read_file(buf, at + within),
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                self.load_bitmap(b)?;
                let ls = self.logical;
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = within + done as u64;
                    let s = pos / ls;
                    let limit = (within + buf.len() as u64).div_ceil(ls);
                    let (set, run) = match self.bitmaps.get(&b) {
                        Some(bm) => bit_run(bm, s, limit - s),
                        None => (false, limit - s),
                    };
                    let n = usize_of((s + run) * ls - pos)?.min(buf.len() - done);
                    let chunk = buf
                        .get_mut(done..done + n)
                        .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
                    if set {
                        self.read_file(chunk, at + pos)?;
                    } else {
                        parent(b * self.block_size + pos, chunk)?;
                    }
                    done += n;
                }
                Ok(())
            }
            PAYLOAD_BLOCK_NOT_PRESENT if self.disk_type == DiskType::Differencing => {
                parent(virt, buf)
            }
            _ => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Split `[offset, offset + len)` into per-block pieces: (block, offset in block, start in
    /// the caller's buffer, length).
    fn pieces(&self, offset: u64, len: usize) -> Result<Vec<(u64, u64, usize, usize)>> {
        let bs = self.block_size;
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let within = pos % bs;
            let n = usize_of(bs - within)?.min(len - done);
            out.push((pos / bs, within, done, n));
            done += n;
        }
        Ok(out)
    }

    /// The metadata writes of a flush, in commit order: sector bitmap bytes, sector bitmap
    /// entries, payload entries. Decides each dirty differencing block's final state first.
    fn pending_writes(&mut self) -> Result<Vec<(u64, Vec<u8>)>> {
        let cr = self.cr;
        let mut bitmap_writes = Vec::new();
        let dirty: Vec<u64> = self.dirty_bitmaps.iter().copied().collect();
        for b in dirty {
            let idx = payload_index(b, cr);
            let e = self.entry(idx)?;
            if e & 7 != u64::from(PAYLOAD_BLOCK_PARTIALLY_PRESENT) {
                continue;
            }
            let n = self.sectors_in_block(b);
            let full = self
                .bitmaps
                .get(&b)
                .is_some_and(|bm| bit_run(bm, 0, n) == (true, n));
            if full {
                self.set_entry(
                    idx,
                    (e & BAT_OFFSET_MASK) | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT),
                )?;
                continue;
            }
            let si = sb_index(b / cr, cr);
            let mut sb = self.entry(si)?;
            if sb & 7 != u64::from(SB_BLOCK_PRESENT) {
                let at = self.allocate(SECTOR_BITMAP_BLOCK_SIZE)?;
                sb = at | u64::from(SB_BLOCK_PRESENT);
                self.set_entry(si, sb)?;
            }
            let (rel, _) = block_bitmap_range(b, cr);
            if let Some(bm) = self.bitmaps.get(&b) {
                bitmap_writes.push(((sb & BAT_OFFSET_MASK) + rel, bm.clone()));
            }
        }
        let (mut sb_writes, mut payload_writes) = (Vec::new(), Vec::new());
        for &i in &self.dirty_entries {
            let w = (
                self.bat_offset + i * 8,
                self.entry(i)?.to_le_bytes().to_vec(),
            );
            if (i + 1) % (cr + 1) == 0 {
                sb_writes.push(w);
            } else {
                payload_writes.push(w);
            }
        }
        bitmap_writes.append(&mut sb_writes);
        bitmap_writes.append(&mut payload_writes);
        Ok(bitmap_writes)
    }

    fn commit(&mut self, batch: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut s = Session::resume(&self.sink, self.session.clone());
        let r = s.commit(batch);
        self.session = s.state();
        r
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

impl<S: Sink + 'static> WritableImage for VhdxWriter<S> {
    fn format(&self) -> DiskFormat {
        DiskFormat::Vhdx
    }

    fn disk_type(&self) -> DiskType {
        self.disk_type
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8], parent: &mut ParentRead<'_>) -> Result<()> {
        for (b, within, start, n) in self.pieces(offset, buf.len())? {
            let chunk = buf
                .get_mut(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
            self.read_piece(b, within, chunk, parent)?;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8], parent: &mut ParentRead<'_>) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.virtual_size)
        {
            return Err(Error::InvalidArgument(format!(
                "write of {} bytes at {offset:#x} past the end of the virtual disk",
                data.len()
            )));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.before_data_change()?;
        for (b, within, start, n) in self.pieces(offset, data.len())? {
            let piece = data
                .get(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("write outside the buffer".into()))?;
            self.write_piece(b, within, piece, parent)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.dirty_entries.is_empty() && self.dirty_bitmaps.is_empty() {
            return self.sink.sync().map_err(io("flushing the vhdx"));
        }
        let writes = self.pending_writes()?;
        for batch in batches(writes, self.max_sectors_per_commit.max(1)) {
            self.commit(&batch)?;
        }
        self.dirty_entries.clear();
        self.dirty_bitmaps.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_megabyte_log_entry_capacity() {
        let n = sectors_per_entry(MIB);
        // n data sectors + descriptor sectors + one free sector fill at most 256 sectors.
        assert!(n as u64 + (64 + 32 * n as u64).div_ceil(4096) < 256);
        assert!(n as u64 + 1 + (64 + 32 * (n as u64 + 1)).div_ceil(4096) + 1 > 256);
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
