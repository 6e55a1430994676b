//! The VHDX side of `compact`: the file map (regions, log, sector bitmap blocks, payload
//! blocks) and the table changes, committed through the file's own log. A dirty log is
//! replayed into the file first.
//!
//! The DataWriteGuid is kept: a drop leaves every sector reading as before (a zero block in
//! the ZERO state, or NOT_PRESENT where the parent reads the same) and a move changes where
//! data lies, not what it is, so children's `parent_linkage` stays valid.

use std::collections::BTreeMap;

use super::bat::{is_sb_index, payload_index};
use super::bitmap::block_bitmap_range;
use super::format::{
    BAT_ENTRY_SIZE, BAT_OFFSET_MASK, BAT_STATE_MASK, KIB4, MIB, PAYLOAD_BLOCK_FULLY_PRESENT,
    PAYLOAD_BLOCK_NOT_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT, PAYLOAD_BLOCK_ZERO,
    REGION_TABLE_OFFSETS, SB_BLOCK_PRESENT, SECTOR_BITMAP_BLOCK_SIZE,
};
use super::header::{self, ParsedHeader};
use super::region::with_bat_moved;
use super::update::{dirty_log, Session, SessionState};
use crate::compact::layout::{Alloc, Change, FileMap, MAX_TRACKED_BLOCKS};
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::{source_len, Source};
use crate::txn::Sink;

/// Most bytes of 4 KiB sectors one log entry carries (a table entry costs a sector at worst,
/// a cleared bitmap its bytes and a sector on each side): fits the 1 MiB log every writer
/// creates.
const MAX_COMMIT_BYTES: u64 = 128 * KIB4;

/// The map of a VHDX and what editing its table needs.
struct Mapped {
    map: FileMap,
    disk_type: DiskType,
    bat_offset: u64,
    cr: u64,
    /// Chunk -> file offset of its sector bitmap block.
    sb_at: BTreeMap<u64, u64>,
}

/// The type and map of the VHDX in `src`, read only (a dirty log replayed in memory): for plans.
pub(crate) fn plan_map(src: Box<dyn Source>, opts: &OpenOptions) -> Result<(DiskType, FileMap)> {
    header::read_file_identifier(&*src)?;
    let hdrs = header::read_headers(&*src)?;
    let src: Box<dyn Source> =
        match dirty_log(&*src, &hdrs.current, opts.limits.max_log_replay_bytes)? {
            Some(seq) => Box::new(super::log::overlay(src, &seq)?),
            None => src,
        };
    let m = read_map(&*src, &hdrs.current, opts)?;
    Ok((m.disk_type, m.map))
}

/// Regions, log, sector bitmap blocks and payload blocks of the VHDX in `src`.
fn read_map(src: &dyn Source, cur: &ParsedHeader, opts: &OpenOptions) -> Result<Mapped> {
    let file_len = source_len(src)?;
    let layout = super::read_layout(src, file_len, cur, &opts.limits)?;
    let cr = layout.bat.chunk_ratio;
    let block_size = layout.bat.block_size;
    let mut map = FileMap {
        block_size,
        span: block_size,
        align: MIB,
        len_align: MIB,
        tail: 0,
        // The BAT region may come down after the blocks (see `FileMap::table`).
        fixed: layout
            .reserved
            .iter()
            .filter(|r| r.0 != layout.regions.bat.file_offset)
            .map(|r| (r.0, r.1))
            .collect(),
        table: Some((layout.regions.bat.file_offset, layout.regions.bat.length)),
        file_len,
        ..FileMap::default()
    };
    let mut sb_at = BTreeMap::new();
    layout.bat.table.scan(src, 0, |i, e| {
        let at = e & BAT_OFFSET_MASK;
        if is_sb_index(i, cr) {
            if state(e) == SB_BLOCK_PRESENT {
                sb_at.insert(i / (cr + 1), at);
                map.fixed
                    .push((at, at.saturating_add(SECTOR_BITMAP_BLOCK_SIZE)));
            }
            return Ok(());
        }
        let block = i - i / (cr + 1);
        let a = Alloc { block, at, raw: e };
        match state(e) {
            PAYLOAD_BLOCK_FULLY_PRESENT | PAYLOAD_BLOCK_PARTIALLY_PRESENT => map.blocks.push(a),
            _ if at != 0 => map.stale.push(a),
            _ => {}
        }
        if map.blocks.len().saturating_add(map.stale.len()) > MAX_TRACKED_BLOCKS {
            return Err(Error::unsupported(format!(
                "more than {MAX_TRACKED_BLOCKS} allocated blocks: too many to compact"
            )));
        }
        Ok(())
    })?;
    Ok(Mapped {
        map,
        disk_type: layout.disk_type,
        bat_offset: layout.regions.bat.file_offset,
        cr,
        sb_at,
    })
}

/// A VHDX opened for compaction.
pub(crate) struct Editor<'a> {
    sink: &'a dyn Sink,
    session: SessionState,
    bat_offset: u64,
    cr: u64,
    sb_at: BTreeMap<u64, u64>,
    differencing: bool,
    /// The type, and the map as the file was when opened.
    pub disk_type: DiskType,
    pub map: FileMap,
    /// A dirty log was replayed into the file.
    pub replayed: bool,
}

fn state(e: u64) -> u8 {
    u8::try_from(e & BAT_STATE_MASK).unwrap_or(u8::MAX)
}

impl<'a> Editor<'a> {
    /// Replay a dirty log into the file, then read its map.
    pub(crate) fn open(sink: &'a dyn Sink, opts: &OpenOptions) -> Result<Editor<'a>> {
        header::read_file_identifier(sink)?;
        let hdrs = header::read_headers(sink)?;
        let mut session = Session::new(sink, hdrs.current.clone(), hdrs.current_index);
        let log = dirty_log(sink, &hdrs.current, opts.limits.max_log_replay_bytes)?;
        let replayed = log.is_some();
        if let Some(seq) = log {
            session.replay_to_disk(&seq)?;
        }
        let cur = session.current().clone();
        let m = read_map(sink, &cur, opts)?;
        Ok(Editor {
            sink,
            session: session.state(),
            bat_offset: m.bat_offset,
            cr: m.cr,
            sb_at: m.sb_at,
            differencing: m.disk_type == DiskType::Differencing,
            disk_type: m.disk_type,
            map: m.map,
            replayed,
        })
    }

    /// The new raw entry of a change.
    fn entry(&self, c: &Change) -> (u64, u64) {
        match *c {
            Change::DropZero(a) if self.differencing => (a.block, u64::from(PAYLOAD_BLOCK_ZERO)),
            Change::DropZero(a) | Change::DropToParent(a) => {
                (a.block, u64::from(PAYLOAD_BLOCK_NOT_PRESENT))
            }
            Change::Clear(a) => (a.block, a.raw & BAT_STATE_MASK),
            Change::Move(a, to) => (a.block, (to & BAT_OFFSET_MASK) | (a.raw & !BAT_OFFSET_MASK)),
        }
    }

    /// The sector bitmap bytes of a partially present block that stops being present: cleared
    /// in the same entry, so a later writer of the block (which trusts the bits) never takes a
    /// sector of it from this file instead of the parent.
    fn bitmap_write(&self, c: &Change) -> Option<(u64, Vec<u8>)> {
        let a = match *c {
            Change::DropZero(a) | Change::DropToParent(a) => a,
            _ => return None,
        };
        if state(a.raw) != PAYLOAD_BLOCK_PARTIALLY_PRESENT {
            return None;
        }
        let sb = self.sb_at.get(&(a.block / self.cr.max(1)))?;
        let (rel, len) = block_bitmap_range(a.block, self.cr.max(1));
        Some((sb.checked_add(rel)?, vec![0u8; usize::try_from(len).ok()?]))
    }

    /// Commit `changes` through the log, a bounded number per entry; every prefix is a valid
    /// file (each change stands alone). Returns the table and bitmap bytes changed.
    pub(crate) fn commit(&mut self, changes: &[Change]) -> Result<u64> {
        let mut bytes = 0u64;
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut cost = 0u64;
        for c in changes {
            let (block, value) = self.entry(c);
            let at = payload_index(block, self.cr)
                .checked_mul(BAT_ENTRY_SIZE)
                .and_then(|o| o.checked_add(self.bat_offset))
                .ok_or_else(|| Error::internal("a table entry past 2^64"))?;
            let bitmap = self.bitmap_write(c);
            let c_cost = KIB4 + bitmap.as_ref().map_or(0, |b| b.1.len() as u64 + 2 * KIB4);
            if !writes.is_empty() && cost + c_cost > MAX_COMMIT_BYTES {
                self.commit_entry(&writes)?;
                writes.clear();
                cost = 0;
            }
            if let Some(b) = bitmap {
                bytes += b.1.len() as u64;
                writes.push(b);
            }
            writes.push((at, value.to_le_bytes().to_vec()));
            bytes += BAT_ENTRY_SIZE;
            cost += c_cost;
        }
        if !writes.is_empty() {
            self.commit_entry(&writes)?;
        }
        Ok(bytes)
    }

    fn commit_entry(&mut self, writes: &[(u64, Vec<u8>)]) -> Result<()> {
        let mut s = Session::resume(self.sink, self.session.clone());
        let r = s.commit(writes);
        self.session = s.state();
        r
    }

    /// Move the BAT region to `to` (past every block, clear of its old place): the table is
    /// copied there while nothing points at it, then one log entry switches both region tables
    /// to it. A crash before that entry leaves the copy unreferenced.
    pub(crate) fn move_table(&mut self, to: u64) -> Result<u64> {
        let Some((from, len)) = self.map.table else {
            return Ok(0);
        };
        let mut buf = vec![0u8; usize::try_from(len.min(MIB)).unwrap_or(0)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MIB);
            let b = buf
                .get_mut(..usize::try_from(n).unwrap_or(0))
                .unwrap_or_default();
            self.sink
                .read_exact_at(b, from + done)
                .map_err(|e| Error::io("reading the vhdx block allocation table", e))?;
            self.sink
                .write_all_at(b, to + done)
                .map_err(|e| Error::io(format!("copying the BAT to {:#x}", to + done), e))?;
            done += n;
        }
        let table = with_bat_moved(self.sink, to, len)?;
        let writes: Vec<(u64, Vec<u8>)> = REGION_TABLE_OFFSETS
            .iter()
            .map(|&at| (at, table.clone()))
            .collect();
        self.commit_entry(&writes)?;
        self.bat_offset = to;
        self.map.table = Some((to, len));
        Ok(len)
    }

    /// Cut the file to `len` (a whole number of MiB past every structure); the log is clean
    /// after every commit, so no entry names a larger file.
    pub(crate) fn trim(&mut self, len: u64) -> Result<()> {
        if len >= self.map.file_len {
            return Ok(());
        }
        self.sink
            .sync()
            .map_err(|e| Error::io("flushing the vhdx before truncating it", e))?;
        self.sink
            .set_len(len)
            .map_err(|e| Error::io(format!("truncating the vhdx to {len} bytes"), e))?;
        self.sink
            .sync()
            .map_err(|e| Error::io("flushing the truncated vhdx", e))
    }
}
