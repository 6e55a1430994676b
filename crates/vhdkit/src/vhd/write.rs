//! Writing the virtual disk of a VHD (fixed, dynamic, differencing).
//!
//! **Allocation** (FORMAT.md A.8). A write to an unallocated block puts the block where the end
//! footer is: the block *data* starts at the next 4 KiB boundary that leaves room for the sector
//! bitmap in front of it (Windows' placement), the footer moves to the last 512 bytes of the
//! 4 KiB unit after the block (Windows pads files to 4 KiB). The new range lies past the old end
//! of the file, so the parts of the block never written are holes and read as zeros, as the spec
//! requires for dynamic disks; nothing is zero-filled explicitly.
//!
//! **Ordering.** At allocation: the footer is written at the new end first (so the file always
//! ends in a valid footer), then the block's bitmap (over the old footer) and its data. The BAT
//! entry is *not* written then: it stays in memory until [`VhdWriter::flush`], which does
//! 1. write the bitmaps of blocks allocated since the last flush,
//! 2. sync (every data byte and new bitmap is durable),
//! 3. write changed bitmaps of blocks allocated earlier, and changed BAT entries,
//! 4. sync.
//!
//! So a crash at any point leaves a file whose BAT points only at blocks whose bitmap and data are
//! durable, and whose end footer is valid (or, if the OS lost the footer write, a valid front
//! copy that every reader falls back to). Until a flush, data written into new blocks is
//! invisible on disk (old contents); data written in place into sectors already present is
//! visible immediately (old or new per sector, as on any disk). The writer also flushes on its
//! own once it has allocated 64Ki blocks or holds 4 MiB of changed bitmaps since the last flush,
//! so what it keeps in memory stays bounded whatever is written (the file ends the same).
//!
//! **Memory.** The BAT is never held: entries are read on demand through a small page cache
//! (`crate::table`) sharing the file with the writer; only entries changed since the last flush
//! are kept, and the flush writes them to the table before the cache takes them in.
//!
//! **Bitmaps.** Dynamic disks: a new block's bitmap is all ones (what qemu and Windows write).
//! Differencing disks: exactly the sectors written are marked; a write that covers part of a
//! sector reads the rest of the sector first, from this file when the sector's bit is set, from
//! the parent otherwise.
//!
//! The front footer copy is never rewritten: no field of the footer changes when data is written.

use std::collections::BTreeSet;
use std::io::Cursor;

use binrw::BinWrite;

use super::create::{align_up, ALIGN_BYTES};
use super::format;
use super::open::{self, Purpose};
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len};
use crate::table::{LazyTable, Width};
use crate::txn::Sink;
use crate::view::Shape;
use crate::write::engine::{usize_of, Engine, Geometry, Place, SparseFormat, State, Table};
use crate::write::{ParentRead, WritableImage};

const SECTOR: u64 = format::SECTOR_BYTES;
/// Clean sector bitmaps kept in memory before the cache is emptied (4096 x 512 bytes = 2 MiB
/// with 2 MiB blocks). Dirty bitmaps stay until the next flush.
const MAX_CACHED_BITMAPS: usize = 4096;
/// Bytes of sector bitmaps kept in memory, clean or dirty, whatever the block size.
const MAX_BITMAP_BYTES: u64 = 4 << 20;
/// Blocks allocated before the writer commits on its own: what it holds between commits (the
/// changed BAT entries and the new blocks) stays a few MiB however much is written.
const MAX_NEW_BLOCKS: usize = 64 << 10;

/// A VHD opened for writing.
#[derive(Debug)]
pub struct VhdWriter<S: Sink> {
    shape: Shape,
    body: Body<S>,
}

#[derive(Debug)]
enum Body<S: Sink> {
    /// A fixed disk: virtual offsets are file offsets.
    Fixed(S),
    /// A dynamic or differencing disk.
    Sparse(Box<Engine<Blocks<S>>>),
}

/// The VHD part of a sparse writer: allocation at the end of the file and the ordered commit.
#[derive(Debug)]
struct Blocks<S: Sink> {
    /// The file; the table reads the entries not changed through it.
    sink: S,
    differencing: bool,
    block_size: u64,
    bitmap_bytes: u64,
    table_offset: u64,
    /// The end footer's bytes (written again at every new end).
    footer: [u8; format::FOOTER_BYTES],
    /// Current offset of the end footer.
    footer_at: u64,
    /// Blocks allocated since the last flush.
    new_blocks: BTreeSet<u64>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

impl<S: Sink> VhdWriter<S> {
    /// Open a VHD for writing. Refuses files vhdkit would have to guess about: a damaged or
    /// 511-byte end footer, old LSB-first tapdisk bitmaps, a disk in a saved state.
    pub fn open(sink: S, opts: &OpenOptions) -> Result<VhdWriter<S>> {
        let len = source_len(&sink)?;
        let p = open::parse(&sink, len, opts, Purpose::Write)?;
        let shape = super::shape(&p);
        let mut footer = Cursor::new([0u8; format::FOOTER_BYTES]);
        p.footer
            .raw
            .write(&mut footer)
            .map_err(|e| Error::internal(format!("encoding the vhd footer: {e}")))?;
        let body = match p.sparse {
            None => Body::Fixed(sink),
            Some(sp) => {
                let block_size = u64::from(sp.header.raw.block_size);
                let geo = Geometry {
                    block_size,
                    sector: SECTOR,
                    order: p.bit_order,
                    max_cached_bitmaps: max_bitmaps(sp.bitmap_bytes),
                };
                let table = LazyTable::new(
                    sp.header.raw.table_offset,
                    u64::from(sp.header.raw.max_table_entries),
                    Width::U32Be,
                    "vhd block allocation table",
                );
                let blocks = Blocks {
                    sink,
                    differencing: p.disk_type == DiskType::Differencing,
                    block_size,
                    bitmap_bytes: sp.bitmap_bytes,
                    table_offset: sp.header.raw.table_offset,
                    footer: footer.into_inner(),
                    footer_at: p.footer.offset,
                    new_blocks: BTreeSet::new(),
                };
                Body::Sparse(Box::new(Engine::new(blocks, Table::lazy(table), geo)))
            }
        };
        Ok(VhdWriter { shape, body })
    }

    /// The file underneath.
    #[cfg(any(test, feature = "test-support"))]
    pub fn sink(&self) -> &S {
        match &self.body {
            Body::Fixed(s) => s,
            Body::Sparse(e) => &e.fmt.sink,
        }
    }
}

/// Sector bitmaps the cache keeps: [`MAX_CACHED_BITMAPS`], fewer when blocks are so large that
/// their bitmaps would pass [`MAX_BITMAP_BYTES`].
fn max_bitmaps(bitmap_bytes: u64) -> usize {
    let n = MAX_BITMAP_BYTES / bitmap_bytes.max(1);
    usize::try_from(n).map_or(MAX_CACHED_BITMAPS, |n| n.clamp(1, MAX_CACHED_BITMAPS))
}

/// Whether the writer has allocated or changed so much since its last commit that it commits
/// now, to keep what it holds bounded (the result on disk is the same as committing later).
fn commit_due<S: Sink>(e: &Engine<Blocks<S>>) -> bool {
    let dirty_bitmaps = e.st.bitmaps.dirty().len() as u64;
    e.fmt.new_blocks.len() >= MAX_NEW_BLOCKS
        || dirty_bitmaps.saturating_mul(e.fmt.bitmap_bytes) >= MAX_BITMAP_BYTES
}

impl<S: Sink> Blocks<S> {
    fn write(&self, data: &[u8], at: u64, what: &str) -> Result<()> {
        self.sink
            .write_all_at(data, at)
            .map_err(io(format!("writing the {what} at offset {at:#x}")))
    }

    fn sync(&self, what: &str) -> Result<()> {
        self.sink.sync().map_err(io(format!("flushing the {what}")))
    }

    fn place_of(&self, bitmap_at: u64) -> Place {
        let data_at = bitmap_at + self.bitmap_bytes;
        if self.differencing {
            Place::Sectors { data_at }
        } else {
            Place::Whole { data_at }
        }
    }

    /// Allocate `block` at the end of the file; returns its bitmap's file offset.
    fn allocate(&mut self, st: &mut State<u32>, block: u64) -> Result<u64> {
        let overflow = || Error::unsupported("the file would grow past what a VHD BAT can address");
        let old_footer = self.footer_at;
        let data_at = align_up(old_footer + self.bitmap_bytes, ALIGN_BYTES).ok_or_else(overflow)?;
        let bitmap_at = data_at - self.bitmap_bytes;
        let data_end = data_at.checked_add(self.block_size).ok_or_else(overflow)?;
        let new_len =
            align_up(data_end + format::FOOTER_BYTES as u64, ALIGN_BYTES).ok_or_else(overflow)?;
        let entry = u32::try_from(bitmap_at / SECTOR)
            .ok()
            .filter(|&e| e != format::BAT_UNALLOCATED)
            .ok_or_else(overflow)?;
        let new_footer_at = new_len - format::FOOTER_BYTES as u64;
        // 1. The footer at the new end: the file keeps ending in a valid footer.
        self.sink
            .write_all_at(&self.footer, new_footer_at)
            .map_err(io(format!("moving the vhd footer to {new_footer_at:#x}")))?;
        self.footer_at = new_footer_at;
        // 2. Clear what is left of the old footer, then the bitmap.
        if bitmap_at > old_footer {
            let gap = vec![0u8; usize_of(bitmap_at - old_footer)?];
            self.sink
                .write_all_at(&gap, old_footer)
                .map_err(io(format!("clearing the old footer at {old_footer:#x}")))?;
        }
        let fill = if self.differencing { 0u8 } else { u8::MAX };
        let bm = vec![fill; usize_of(self.bitmap_bytes)?];
        self.sink
            .write_all_at(&bm, bitmap_at)
            .map_err(io(format!("writing a block bitmap at {bitmap_at:#x}")))?;
        st.table.set(block, entry)?;
        self.new_blocks.insert(block);
        if self.differencing {
            st.bitmaps.insert(block, bm, false);
        }
        Ok(bitmap_at)
    }

    /// The changed BAT entries, one 512-byte BAT sector at a time.
    fn write_bat_sectors(&self, st: &State<u32>) -> Result<()> {
        let sectors: BTreeSet<u64> = st
            .table
            .dirty()
            .map(|b| b * format::BAT_ENTRY_BYTES / SECTOR)
            .collect();
        let per_sector = SECTOR / format::BAT_ENTRY_BYTES;
        for s in sectors {
            let first = s.saturating_mul(per_sector);
            let last = first.saturating_add(per_sector).min(st.table.len());
            let mut bytes = Vec::with_capacity(usize_of(SECTOR)?);
            for i in first..last {
                bytes.extend_from_slice(&st.table.get(&self.sink, i)?.to_be_bytes());
            }
            self.write(
                &bytes,
                self.table_offset + s * SECTOR,
                "block allocation table",
            )?;
        }
        Ok(())
    }
}

impl<S: Sink> SparseFormat for Blocks<S> {
    type Entry = u32;

    fn place(&self, st: &State<u32>, block: u64) -> Result<Place> {
        let entry = st.table.get(&self.sink, block)?;
        if entry == format::BAT_UNALLOCATED {
            return Ok(if self.differencing {
                Place::Parent
            } else {
                Place::Zero
            });
        }
        Ok(self.place_of(u64::from(entry) * SECTOR))
    }

    fn place_for_write(&mut self, st: &mut State<u32>, block: u64) -> Result<Place> {
        let entry = st.table.get(&self.sink, block)?;
        let bitmap_at = if entry == format::BAT_UNALLOCATED {
            self.allocate(st, block)?
        } else {
            u64::from(entry) * SECTOR
        };
        Ok(self.place_of(bitmap_at))
    }

    fn marks_whole_blocks(&self) -> bool {
        !self.differencing
    }

    fn read_bitmap(&self, st: &State<u32>, block: u64) -> Result<Vec<u8>> {
        let at = u64::from(st.table.get(&self.sink, block)?) * SECTOR;
        let mut bm = vec![0u8; usize_of(self.bitmap_bytes)?];
        read_struct(&self.sink, at, &mut bm, "vhd sector bitmap")?;
        Ok(bm)
    }

    fn read_data(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_struct(&self.sink, at, buf, "vhd data block")
    }

    fn write_data(&self, data: &[u8], at: u64) -> Result<()> {
        self.write(data, at, "data block")
    }

    fn sync(&self) -> Result<()> {
        Blocks::sync(self, "vhd")
    }

    /// 1. bitmaps of new blocks; 2. sync; 3. bitmaps of old blocks and BAT sectors; 4. sync.
    fn commit(&mut self, st: &mut State<u32>) -> Result<()> {
        // 1. Bitmaps of new blocks: durable before any BAT entry points at them.
        let mut late = Vec::new();
        for &b in st.bitmaps.dirty() {
            let Some(bm) = st.bitmaps.get(b) else {
                continue;
            };
            let entry = st
                .table
                .get(&self.sink, b)
                .unwrap_or(format::BAT_UNALLOCATED);
            let at = u64::from(entry) * SECTOR;
            if self.new_blocks.contains(&b) {
                self.write(bm, at, "block bitmap")?;
            } else {
                late.push((at, bm));
            }
        }
        // 2. Every data byte and new bitmap durable.
        Blocks::sync(self, "vhd data")?;
        // 3. Bitmaps of old blocks, then BAT entries, grouped by 512-byte BAT sector.
        for (at, bm) in late {
            self.write(bm, at, "block bitmap")?;
        }
        self.write_bat_sectors(st)?;
        // 4. Durable.
        Blocks::sync(self, "vhd metadata")?;
        self.new_blocks.clear();
        Ok(())
    }
}

impl<S: Sink> WritableImage for VhdWriter<S> {
    fn shape(&self) -> Shape {
        self.shape
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8], parent: &mut ParentRead<'_>) -> Result<()> {
        match &mut self.body {
            Body::Fixed(sink) => read_struct(sink, offset, buf, "vhd data block"),
            Body::Sparse(e) => e.read_at(offset, buf, parent),
        }
    }

    fn write_at(&mut self, offset: u64, data: &[u8], parent: &mut ParentRead<'_>) -> Result<()> {
        match &mut self.body {
            Body::Fixed(sink) => sink.write_all_at(data, offset).map_err(io(format!(
                "writing the fixed disk data at offset {offset:#x}"
            ))),
            Body::Sparse(e) => {
                e.write_at(offset, data, parent)?;
                if commit_due(e) {
                    e.flush()?;
                }
                Ok(())
            }
        }
    }

    fn place_for_copy(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        match &mut self.body {
            // A fixed disk's data starts the file.
            Body::Fixed(_) => Ok(Some(offset)),
            Body::Sparse(e) => {
                let at = e.place_for_copy(offset, len)?;
                if commit_due(e) {
                    e.flush()?;
                }
                Ok(at)
            }
        }
    }

    fn stored_at(&self, offset: u64) -> Result<Option<u64>> {
        match &self.body {
            Body::Fixed(_) => Ok(Some(offset)),
            Body::Sparse(e) => e.stored_at(offset),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match &mut self.body {
            Body::Fixed(sink) => sink.sync().map_err(io("flushing the vhd")),
            Body::Sparse(e) => e.flush(),
        }
    }
}
