//! The sparse writer engine shared by the VHD and VHDX writers.
//!
//! The engine owns what does not depend on the format: splitting a virtual range into
//! per-block pieces, reading a block sector run by sector run from its bitmap, completing
//! partial sectors (read-modify-write) before a differencing write, setting the written
//! sectors' bits, the sector bitmap cache (bounded: clean bitmaps are forgotten when it is
//! full, dirty ones stay until the next flush) and the dirty sets of the table and the bitmaps.
//!
//! A format ([`SparseFormat`]) supplies only its BAT entry encoding ([`SparseFormat::place`]),
//! allocation ([`SparseFormat::place_for_write`]), where a block's bitmap lives
//! ([`SparseFormat::read_bitmap`]), its bit order ([`Geometry::order`]) and its commit
//! ([`SparseFormat::commit`]: ordered syncs for VHD, the log for VHDX). Crash safety is the
//! format's: the engine never writes metadata, only data through [`SparseFormat::write_data`].
//!
//! Ranges are checked once, by [`crate::write::WritableDisk`]; the engine relies on
//! `offset + len <= virtual size` (a block past the table is still an error, not a panic).

use std::collections::{BTreeMap, BTreeSet};

use crate::bitmap::{self, BitOrder};
use crate::error::{Error, Result};
use crate::source::Source;
use crate::table::LazyTable;
use crate::write::ParentRead;

/// A memory size from a file value, or an error when it does not fit.
pub(crate) fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} bytes do not fit memory")))
}

/// Where the sectors of one block come from, as the format's table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Every sector is stored in this file, the block's data starting at `data_at`.
    Whole {
        /// File offset of the block's first byte.
        data_at: u64,
    },
    /// Sectors whose bitmap bit is set are stored at `data_at`; the others are the parent's.
    Sectors {
        /// File offset of the block's first byte.
        data_at: u64,
    },
    /// Nothing stored: the parent's contents.
    Parent,
    /// Nothing stored: zeros.
    Zero,
}

/// Block geometry, fixed at open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Virtual bytes per block.
    pub block_size: u64,
    /// Bytes per bitmap bit (512 for VHD, the logical sector size for VHDX).
    pub sector: u64,
    /// Bit order of the sector bitmaps.
    pub order: BitOrder,
    /// Clean bitmaps kept in memory before the cache is emptied.
    pub max_cached_bitmaps: usize,
}

/// One table entry as a format keeps it: converts to and from the raw value on disk.
pub(crate) trait Entry: Copy {
    /// The entry a raw on-disk value encodes.
    fn from_raw(raw: u64) -> Self;
    /// The raw on-disk value.
    fn to_raw(self) -> u64;
}

impl Entry for u32 {
    fn from_raw(raw: u64) -> u32 {
        // VHD entries are read as 4 bytes: a wider raw value is never produced.
        u32::try_from(raw).unwrap_or(u32::MAX)
    }
    fn to_raw(self) -> u64 {
        u64::from(self)
    }
}

impl Entry for u64 {
    fn from_raw(raw: u64) -> u64 {
        raw
    }
    fn to_raw(self) -> u64 {
        self
    }
}

/// Where the entries not changed since the last commit come from.
#[derive(Debug)]
enum Backing<E> {
    /// Held whole: the engine's own tests, whose format has no file.
    #[cfg_attr(not(test), allow(dead_code))]
    Mem(Vec<E>),
    /// Read from the file on demand, so memory does not grow with the table.
    Lazy(LazyTable),
}

/// A block allocation table as it is now (including entries not yet on disk), and which
/// entries changed since the last commit. Only the changed entries are held in memory; the
/// others are read from the backing.
#[derive(Debug)]
pub(crate) struct Table<E> {
    backing: Backing<E>,
    changed: BTreeMap<u64, E>,
}

impl<E: Entry> Table<E> {
    /// A table held whole: nothing dirty.
    #[cfg(test)]
    pub fn new(entries: Vec<E>) -> Table<E> {
        Table {
            backing: Backing::Mem(entries),
            changed: BTreeMap::new(),
        }
    }

    /// A table read from the file on demand: nothing dirty.
    pub fn lazy(table: LazyTable) -> Table<E> {
        Table {
            backing: Backing::Lazy(table),
            changed: BTreeMap::new(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        match &self.backing {
            Backing::Mem(v) => v.len() as u64,
            Backing::Lazy(t) => t.len(),
        }
    }

    /// Entry `index`; a lazy table reads it through `src` (the file the format writes).
    pub fn get(&self, src: &dyn Source, index: u64) -> Result<E> {
        if let Some(e) = self.changed.get(&index) {
            return Ok(*e);
        }
        match &self.backing {
            Backing::Mem(v) => usize::try_from(index)
                .ok()
                .and_then(|i| v.get(i))
                .copied()
                .ok_or_else(|| outside(index)),
            Backing::Lazy(t) if index < t.len() => t.get(src, index).map(E::from_raw),
            Backing::Lazy(_) => Err(outside(index)),
        }
    }

    /// Change entry `index` in memory and remember it for the commit.
    pub fn set(&mut self, index: u64, value: E) -> Result<()> {
        if index >= self.len() {
            return Err(outside(index));
        }
        self.changed.insert(index, value);
        Ok(())
    }

    /// Entries changed since the last commit.
    pub fn dirty(&self) -> impl Iterator<Item = u64> + '_ {
        self.changed.keys().copied()
    }

    /// True when no entry changed since the last commit.
    pub fn is_clean(&self) -> bool {
        self.changed.is_empty()
    }

    /// The changed entries are on disk now (the format committed them to their place in the
    /// table): fold them into the backing and forget them.
    fn settle(&mut self) {
        let changed = std::mem::take(&mut self.changed);
        for (i, e) in changed {
            match &mut self.backing {
                Backing::Mem(v) => {
                    if let Some(slot) = usize::try_from(i).ok().and_then(|i| v.get_mut(i)) {
                        *slot = e;
                    }
                }
                Backing::Lazy(t) => t.patch(i, e.to_raw()),
            }
        }
    }
}

fn outside(index: u64) -> Error {
    Error::InvalidArgument(format!("BAT entry {index} outside the table"))
}

/// Sector bitmaps loaded so far (block -> bitmap bytes), and which changed since the last
/// commit.
#[derive(Debug)]
pub(crate) struct Bitmaps {
    map: BTreeMap<u64, Vec<u8>>,
    dirty: BTreeSet<u64>,
    max_clean: usize,
}

impl Bitmaps {
    fn new(max_clean: usize) -> Bitmaps {
        Bitmaps {
            map: BTreeMap::new(),
            dirty: BTreeSet::new(),
            max_clean,
        }
    }

    /// The bitmap of `block`, when loaded.
    pub fn get(&self, block: u64) -> Option<&Vec<u8>> {
        self.map.get(&block)
    }

    /// Put the bitmap of a block just allocated (no eviction: the write that follows uses it).
    pub fn insert(&mut self, block: u64, bitmap: Vec<u8>, dirty: bool) {
        self.map.insert(block, bitmap);
        if dirty {
            self.dirty.insert(block);
        }
    }

    /// Blocks whose bitmaps changed since the last commit.
    pub fn dirty(&self) -> &BTreeSet<u64> {
        &self.dirty
    }

    /// Cache a bitmap read from the file.
    fn load(&mut self, block: u64, bitmap: Vec<u8>) {
        if self.map.len() >= self.max_clean {
            // Keep memory bounded: forget clean bitmaps (dirty ones wait for the commit).
            let dirty = &self.dirty;
            self.map.retain(|b, _| dirty.contains(b));
        }
        self.map.insert(block, bitmap);
    }
}

/// The metadata a format keeps in memory between commits: its table and the sector bitmaps.
#[derive(Debug)]
pub(crate) struct State<E> {
    /// The block allocation table.
    pub table: Table<E>,
    /// The sector bitmap cache.
    pub bitmaps: Bitmaps,
}

/// What a sparse format supplies to the engine.
pub(crate) trait SparseFormat {
    /// One table entry as kept in memory.
    type Entry: Entry;
    /// Where the sectors of `block` are read from now.
    fn place(&self, st: &State<Self::Entry>, block: u64) -> Result<Place>;
    /// Where a write into `block` goes, allocating the block first when it has no room for
    /// data: [`Place::Whole`] or [`Place::Sectors`].
    fn place_for_write(&mut self, st: &mut State<Self::Entry>, block: u64) -> Result<Place>;
    /// Read the sector bitmap of an allocated `block` from the file.
    fn read_bitmap(&self, st: &State<Self::Entry>, block: u64) -> Result<Vec<u8>>;
    /// Read file bytes of a data block.
    fn read_data(&self, buf: &mut [u8], at: u64) -> Result<()>;
    /// Write file bytes of a data block.
    fn write_data(&self, data: &[u8], at: u64) -> Result<()>;
    /// Whether a block stored whole still keeps a sector bitmap that writes must mark (a
    /// dynamic VHD: a clear bit says the sector was never written and reads as zeros, and
    /// readers such as libvhdi honour it).
    fn marks_whole_blocks(&self) -> bool {
        false
    }
    /// Called once per write call, before any data is written.
    fn before_write(&mut self) -> Result<()> {
        Ok(())
    }
    /// Make the file durable when no metadata changed.
    fn sync(&self) -> Result<()>;
    /// Commit the dirty table entries and bitmaps durably, in the format's crash-safe order.
    /// On success the engine forgets the dirty sets.
    fn commit(&mut self, st: &mut State<Self::Entry>) -> Result<()>;
}

/// A format's sparse writer: the format, its in-memory metadata and the block geometry.
#[derive(Debug)]
pub(crate) struct Engine<F: SparseFormat> {
    /// The format.
    pub fmt: F,
    /// Its table and bitmaps.
    pub st: State<F::Entry>,
    geo: Geometry,
}

impl<F: SparseFormat> Engine<F> {
    /// An engine over `fmt`, whose table is `table` as read from the file.
    pub fn new(fmt: F, table: Table<F::Entry>, geo: Geometry) -> Engine<F> {
        Engine {
            fmt,
            st: State {
                table,
                bitmaps: Bitmaps::new(geo.max_cached_bitmaps),
            },
            geo,
        }
    }

    /// Split `[offset, offset + len)` into per-block pieces: (block, offset in block, start in
    /// the caller's buffer, length).
    fn pieces(&self, offset: u64, len: usize) -> Result<Vec<(u64, u64, usize, usize)>> {
        let bs = self.geo.block_size;
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let in_block = pos % bs;
            let n = usize_of(bs - in_block)?.min(len - done);
            out.push((pos / bs, in_block, done, n));
            done += n;
        }
        Ok(out)
    }

    /// Read the virtual range at `offset` as the image holds it now.
    pub fn read_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        for (block, in_block, start, n) in self.pieces(offset, buf.len())? {
            let chunk = buf
                .get_mut(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
            let virt = block * self.geo.block_size + in_block;
            match self.fmt.place(&self.st, block)? {
                Place::Whole { data_at } => self.fmt.read_data(chunk, data_at + in_block)?,
                Place::Sectors { data_at } => {
                    self.read_sectors(block, data_at, in_block, chunk, parent)?
                }
                Place::Parent => parent(virt, chunk)?,
                Place::Zero => chunk.fill(0),
            }
        }
        Ok(())
    }

    /// Write `data` at the virtual offset `offset`.
    pub fn write_at(
        &mut self,
        offset: u64,
        data: &[u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.fmt.before_write()?;
        for (block, in_block, start, n) in self.pieces(offset, data.len())? {
            let piece = data
                .get(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("write outside the buffer".into()))?;
            match self.fmt.place_for_write(&mut self.st, block)? {
                Place::Whole { data_at } => {
                    self.fmt.write_data(piece, data_at + in_block)?;
                    if self.fmt.marks_whole_blocks() {
                        self.mark_written(block, in_block, n as u64)?;
                    }
                }
                Place::Sectors { data_at } => {
                    self.write_sectors(block, data_at, in_block, piece, parent)?
                }
                Place::Parent | Place::Zero => {
                    return Err(Error::InvalidArgument(format!(
                        "block {block} has no room for data after allocation"
                    )))
                }
            }
        }
        Ok(())
    }

    /// See [`crate::write::WritableImage::place_for_copy`]: the file offset of `offset` when
    /// `len` bytes stay inside its block (allocated now if need be) and that block stores them
    /// whole, or tracks sectors and they are whole sectors (their bits are set now).
    pub fn place_for_copy(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        let bs = self.geo.block_size;
        let in_block = offset % bs;
        if len == 0 || len > bs - in_block {
            return Ok(None);
        }
        self.fmt.before_write()?;
        let block = offset / bs;
        match self.fmt.place_for_write(&mut self.st, block)? {
            Place::Whole { data_at } => {
                // The bytes copied there are written sectors: a block that was allocated
                // before (a merge into an existing block) may still have clear bits.
                if self.fmt.marks_whole_blocks() {
                    self.mark_written(block, in_block, len)?;
                }
                Ok(data_at.checked_add(in_block))
            }
            // Whole sectors of a block tracking them: present once their bits are committed,
            // as after `write_sectors` (the bytes copied must be in place before the flush).
            Place::Sectors { data_at }
                if in_block % self.geo.sector == 0 && len % self.geo.sector == 0 =>
            {
                self.load_bitmap(block)?;
                let ls = self.geo.sector;
                let order = self.geo.order;
                if let Some(bm) = self.st.bitmaps.map.get_mut(&block) {
                    if bitmap::set_range(bm, in_block / ls, (in_block + len) / ls, order) {
                        self.st.bitmaps.dirty.insert(block);
                    }
                }
                Ok(data_at.checked_add(in_block))
            }
            _ => Ok(None),
        }
    }

    /// The file offset where the byte at virtual `offset` is stored by this image now (its
    /// block's data start plus its place in the block), or `None` when the block stores
    /// nothing; for a block tracking sectors, whether that sector is present is the bitmap's.
    pub fn stored_at(&self, offset: u64) -> Result<Option<u64>> {
        let bs = self.geo.block_size;
        match self.fmt.place(&self.st, offset / bs)? {
            Place::Whole { data_at } | Place::Sectors { data_at } => {
                Ok(data_at.checked_add(offset % bs))
            }
            Place::Parent | Place::Zero => Ok(None),
        }
    }

    /// Commit every change durably.
    pub fn flush(&mut self) -> Result<()> {
        if self.st.table.is_clean() && self.st.bitmaps.dirty.is_empty() {
            return self.fmt.sync();
        }
        self.fmt.commit(&mut self.st)?;
        self.st.table.settle();
        self.st.bitmaps.dirty.clear();
        Ok(())
    }

    fn load_bitmap(&mut self, block: u64) -> Result<()> {
        if self.st.bitmaps.map.contains_key(&block) {
            return Ok(());
        }
        let bm = self.fmt.read_bitmap(&self.st, block)?;
        self.st.bitmaps.load(block, bm);
        Ok(())
    }

    fn bit(&self, block: u64, sector: u64) -> bool {
        self.st
            .bitmaps
            .get(block)
            .is_some_and(|bm| bitmap::bit(bm, sector, self.geo.order))
    }

    /// Set the bitmap bits of the sectors `[in_block, in_block + len)` of a block stored
    /// whole touches; the bitmap is written at the next flush only when a bit changed (a block
    /// this writer allocated has every bit set already).
    fn mark_written(&mut self, block: u64, in_block: u64, len: u64) -> Result<()> {
        self.load_bitmap(block)?;
        let ls = self.geo.sector;
        let (first, end) = (in_block / ls, (in_block + len).div_ceil(ls));
        let order = self.geo.order;
        if let Some(bm) = self.st.bitmaps.map.get_mut(&block) {
            if bitmap::set_range(bm, first, end, order) {
                self.st.bitmaps.dirty.insert(block);
            }
        }
        Ok(())
    }

    /// A block with a sector bitmap: each run of sectors from this file or from the parent.
    fn read_sectors(
        &mut self,
        block: u64,
        data_at: u64,
        in_block: u64,
        buf: &mut [u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        self.load_bitmap(block)?;
        let ls = self.geo.sector;
        let limit = (in_block + buf.len() as u64).div_ceil(ls);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = in_block + done as u64;
            let s = pos / ls;
            let (set, run_end) = match self.st.bitmaps.get(block) {
                Some(bm) => bitmap::run(bm, s, limit, self.geo.order),
                None => (false, limit),
            };
            let n = usize_of(run_end * ls - pos)?.min(buf.len() - done);
            let chunk = buf
                .get_mut(done..done + n)
                .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
            if set {
                self.fmt.read_data(chunk, data_at + pos)?;
            } else {
                parent(block * self.geo.block_size + pos, chunk)?;
            }
            done += n;
        }
        Ok(())
    }

    /// A block with a sector bitmap: write whole sectors (completing partial ones from their
    /// current contents) and set their bits.
    fn write_sectors(
        &mut self,
        block: u64,
        data_at: u64,
        in_block: u64,
        data: &[u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        self.load_bitmap(block)?;
        let ls = self.geo.sector;
        let first = in_block / ls;
        let end = (in_block + data.len() as u64).div_ceil(ls);
        let span_at = first * ls;
        let head = usize_of(in_block - span_at)?;
        let span_len = usize_of((end - first) * ls)?;
        let owned;
        let out: &[u8] = if head == 0 && data.len() == span_len {
            data
        } else {
            let mut buf = vec![0u8; span_len];
            self.complete_edges(block, data_at, first, end, &mut buf, parent)?;
            if let Some(d) = buf.get_mut(head..head + data.len()) {
                d.copy_from_slice(data);
            }
            owned = buf;
            &owned
        };
        self.fmt.write_data(out, data_at + span_at)?;
        let order = self.geo.order;
        if let Some(bm) = self.st.bitmaps.map.get_mut(&block) {
            if bitmap::set_range(bm, first, end, order) {
                self.st.bitmaps.dirty.insert(block);
            }
        }
        Ok(())
    }

    /// Fill the first and the last sector of the span `first..end` (in `buf`) with their
    /// current contents: this file's where the sector's bit is set, the parent's otherwise.
    fn complete_edges(
        &self,
        block: u64,
        data_at: u64,
        first: u64,
        end: u64,
        buf: &mut [u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        let ls = self.geo.sector;
        let mut edges = vec![first];
        if end - 1 != first {
            edges.push(end - 1);
        }
        for s in edges {
            let rel = usize_of((s - first) * ls)?;
            let dst = buf
                .get_mut(rel..rel + usize_of(ls)?)
                .ok_or_else(|| Error::InvalidArgument("sector outside the span".into()))?;
            if self.bit(block, s) {
                self.fmt.read_data(dst, data_at + s * ls)?;
            } else {
                parent(block * self.geo.block_size + s * ls, dst)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A differencing format in memory: block `b` stores its sectors at `b * BS` of `file`
    /// once allocated (entry 1); bitmaps start clear.
    #[derive(Debug)]
    struct Mem {
        file: RefCell<Vec<u8>>,
        bitmap_reads: RefCell<usize>,
    }

    const BS: u64 = 4096;
    const SECTOR: u64 = 512;

    /// The Mem backing never reads the file.
    const NO_FILE: &[u8] = &[];

    impl SparseFormat for Mem {
        type Entry = u32;
        fn place(&self, st: &State<u32>, block: u64) -> Result<Place> {
            Ok(match st.table.get(&NO_FILE, block)? {
                0 => Place::Parent,
                _ => Place::Sectors {
                    data_at: block * BS,
                },
            })
        }
        fn place_for_write(&mut self, st: &mut State<u32>, block: u64) -> Result<Place> {
            if st.table.get(&NO_FILE, block)? == 0 {
                st.table.set(block, 1)?;
                st.bitmaps.insert(block, vec![0; 1], true);
            }
            self.place(st, block)
        }
        fn read_bitmap(&self, _st: &State<u32>, _block: u64) -> Result<Vec<u8>> {
            *self.bitmap_reads.borrow_mut() += 1;
            Ok(vec![0; 1])
        }
        fn read_data(&self, buf: &mut [u8], at: u64) -> Result<()> {
            let at = at as usize;
            buf.copy_from_slice(&self.file.borrow()[at..at + buf.len()]);
            Ok(())
        }
        fn write_data(&self, data: &[u8], at: u64) -> Result<()> {
            let at = at as usize;
            self.file.borrow_mut()[at..at + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn sync(&self) -> Result<()> {
            Ok(())
        }
        fn commit(&mut self, _st: &mut State<u32>) -> Result<()> {
            Ok(())
        }
    }

    fn engine(blocks: usize, max_cached: usize) -> Engine<Mem> {
        let mem = Mem {
            file: RefCell::new(vec![0; blocks * BS as usize]),
            bitmap_reads: RefCell::new(0),
        };
        let geo = Geometry {
            block_size: BS,
            sector: SECTOR,
            order: BitOrder::MsbFirst,
            max_cached_bitmaps: max_cached,
        };
        Engine::new(mem, Table::new(vec![0; blocks]), geo)
    }

    fn parent(o: u64, b: &mut [u8]) -> Result<()> {
        for (i, x) in b.iter_mut().enumerate() {
            *x = ((o + i as u64) % 251) as u8 | 1;
        }
        Ok(())
    }

    #[test]
    fn partial_sectors_are_completed_from_the_parent_and_marked() {
        let mut e = engine(2, 16);
        // Bytes 100..1100 of block 1: sectors 0 and 2 are partial, sector 1 whole.
        e.write_at(BS + 100, &[0xEE; 1000], &mut parent).unwrap();
        let mut back = vec![0u8; 2 * SECTOR as usize + 512];
        e.read_at(BS, &mut back, &mut parent).unwrap();
        let mut want = vec![0u8; back.len()];
        parent(BS, &mut want).unwrap();
        want[100..1100].fill(0xEE);
        assert_eq!(back, want);
        // Sectors 0..3 set (MSB first), the rest of the block still the parent's.
        assert_eq!(e.st.bitmaps.get(1), Some(&vec![0xE0]));
        assert!(e.st.bitmaps.dirty().contains(&1));
        let mut tail = vec![0u8; 512];
        e.read_at(BS + 3 * SECTOR, &mut tail, &mut parent).unwrap();
        let mut want = vec![0u8; 512];
        parent(BS + 3 * SECTOR, &mut want).unwrap();
        assert_eq!(tail, want);
        e.flush().unwrap();
        assert!(e.st.bitmaps.dirty().is_empty());
        assert!(e.st.table.is_clean());
    }

    #[test]
    fn a_full_cache_forgets_clean_bitmaps_only() {
        let mut e = engine(4, 2);
        e.write_at(0, &[1; 512], &mut parent).unwrap(); // block 0: dirty
        e.flush().unwrap(); // block 0 clean now
        e.write_at(BS, &[1; 512], &mut parent).unwrap(); // block 1: dirty
        e.st.table.set(2, 1).unwrap();
        e.st.table.set(3, 1).unwrap();
        let mut b = [0u8; 512];
        e.read_at(2 * BS, &mut b, &mut parent).unwrap(); // cache full (0, 1): loads 2
        assert!(e.st.bitmaps.get(2).is_some());
        e.read_at(3 * BS, &mut b, &mut parent).unwrap(); // full again: keeps dirty 1 only
        assert!(e.st.bitmaps.get(0).is_none());
        assert!(e.st.bitmaps.get(1).is_some());
        assert!(e.st.bitmaps.get(3).is_some());
        assert_eq!(*e.fmt.bitmap_reads.borrow(), 2);
    }

    #[test]
    fn a_lazy_table_holds_only_changed_entries_until_they_settle() {
        use crate::table::{LazyTable, Width};
        let file: Vec<u8> = (0u32..1000).flat_map(|i| (i * 3).to_be_bytes()).collect();
        let src = file;
        let mut t: Table<u32> = Table::lazy(LazyTable::new(0, 1000, Width::U32Be, "t"));
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get(&src, 7).unwrap(), 21);
        t.set(7, 5).unwrap();
        t.set(999, 6).unwrap();
        assert!(t.set(1000, 1).is_err());
        assert!(t.get(&src, 1000).is_err());
        assert_eq!(t.dirty().collect::<Vec<_>>(), vec![7, 999]);
        assert_eq!((t.get(&src, 7).unwrap(), t.get(&src, 999).unwrap()), (5, 6));
        t.settle();
        assert!(t.is_clean());
        // The page read before holds the settled value; the file itself was not written here.
        assert_eq!(t.get(&src, 7).unwrap(), 5);
    }
}
