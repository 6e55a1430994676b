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
//! visible immediately (old or new per sector, as on any disk).
//!
//! **Bitmaps.** Dynamic disks: a new block's bitmap is all ones (what qemu and Windows write).
//! Differencing disks: exactly the sectors written are marked; a write that covers part of a
//! sector reads the rest of the sector first, from this file when the sector's bit is set, from
//! the parent otherwise.
//!
//! The front footer copy is never rewritten: no field of the footer changes when data is written.

use std::collections::{BTreeMap, BTreeSet};

use super::bitmap::{self, BitOrder};
use super::create::{align_up, ALIGN_BYTES};
use super::{bat, dynamic, footer, format};
use crate::disk::{DiskFormat, DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::read_struct;
use crate::txn::Sink;
use crate::write::{ParentRead, WritableImage};

const SECTOR: u64 = format::SECTOR_BYTES;
/// Clean sector bitmaps kept in memory before the cache is emptied (4096 x 512 bytes = 2 MiB
/// with 2 MiB blocks). Dirty bitmaps stay until the next flush.
const MAX_CACHED_BITMAPS: usize = 4096;

/// A VHD opened for writing.
#[derive(Debug)]
pub struct VhdWriter<S: Sink> {
    sink: S,
    disk_type: DiskType,
    virtual_size: u64,
    /// The end footer's bytes (written again at every new end).
    footer: [u8; format::FOOTER_BYTES],
    /// Current offset of the end footer.
    footer_at: u64,
    /// Dynamic and differencing only.
    sparse: Option<Sparse>,
}

#[derive(Debug)]
struct Sparse {
    block_size: u64,
    bitmap_bytes: u64,
    table_offset: u64,
    /// The BAT as it is now (including entries not yet on disk).
    bat: Vec<u32>,
    /// Entries changed since the last flush.
    dirty_entries: BTreeSet<u32>,
    /// Blocks allocated since the last flush.
    new_blocks: BTreeSet<u32>,
    /// Differencing: sector bitmaps loaded so far (block -> bitmap).
    bitmaps: BTreeMap<u32, Vec<u8>>,
    /// Differencing: bitmaps changed since the last flush.
    dirty_bitmaps: BTreeSet<u32>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

fn usize_of(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::InvalidArgument(format!("{v} bytes do not fit memory")))
}

impl<S: Sink> VhdWriter<S> {
    /// Open a VHD for writing. Refuses files vhdkit would have to guess about: a damaged or
    /// 511-byte end footer, old LSB-first tapdisk bitmaps, a disk in a saved state.
    pub fn open(sink: S, opts: &OpenOptions) -> Result<VhdWriter<S>> {
        let len = sink.len().map_err(io("reading the file length"))?;
        let ft = footer::read_footer(&sink, len)?;
        if ft.short_footer {
            return Err(Error::unsupported(
                "writing a VHD with an old 511-byte footer (convert it first)",
            ));
        }
        if ft.offset != ft.end_offset {
            return Err(Error::unsupported(
                "writing a VHD whose end footer is damaged (repair it first)",
            ));
        }
        if ft.raw.saved_state != 0 {
            return Err(Error::unsupported(
                "writing a VHD whose footer says a virtual machine is in a saved state",
            ));
        }
        let f = &ft.raw;
        if f.creator_application == format::CREATOR_TAP
            && f.creator_version == format::TAP_LSB_BITMAP_VERSION
        {
            return Err(Error::unsupported(
                "writing an old tapdisk VHD with least-significant-bit-first bitmaps",
            ));
        }
        let mut footer_bytes = [0u8; format::FOOTER_BYTES];
        read_struct(&sink, ft.offset, &mut footer_bytes, "vhd footer")?;
        let disk_type = match f.disk_type {
            format::DISK_TYPE_FIXED => DiskType::Fixed,
            format::DISK_TYPE_DYNAMIC => DiskType::Dynamic,
            _ => DiskType::Differencing,
        };
        let virtual_size = f.current_size;
        if virtual_size == 0 || virtual_size % SECTOR != 0 {
            return Err(Error::unsupported(format!(
                "writing a VHD whose current size {virtual_size} is not a non-zero multiple of 512"
            )));
        }
        let sparse = if disk_type == DiskType::Fixed {
            if virtual_size > ft.end_offset {
                return Err(Error::corrupt(
                    "vhd footer",
                    ft.offset.saturating_add(48),
                    "fixed disk current size is larger than the data before the footer",
                ));
            }
            None
        } else {
            let hdr = dynamic::read_header(&sink, f.data_offset, ft.end_offset)?;
            let h = &hdr.raw;
            let bitmap_bytes = format::bitmap_bytes(h.block_size);
            let layout = bat::BatLayout {
                table_offset: h.table_offset,
                entries: h.max_table_entries,
                block_size: h.block_size,
                bitmap_bytes,
                virtual_size,
                data_end: ft.end_offset,
                header_offset: hdr.offset,
            };
            let bat = bat::read_bat(&sink, &layout, &opts.limits)?;
            Some(Sparse {
                block_size: u64::from(h.block_size),
                bitmap_bytes,
                table_offset: h.table_offset,
                bat,
                dirty_entries: BTreeSet::new(),
                new_blocks: BTreeSet::new(),
                bitmaps: BTreeMap::new(),
                dirty_bitmaps: BTreeSet::new(),
            })
        };
        Ok(VhdWriter {
            sink,
            disk_type,
            virtual_size,
            footer: footer_bytes,
            footer_at: ft.offset,
            sparse,
        })
    }

    /// The file underneath.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    fn write_file(&self, data: &[u8], at: u64, what: &str) -> Result<()> {
        self.sink
            .write_all_at(data, at)
            .map_err(io(format!("writing the {what} at offset {at:#x}")))
    }

    fn read_file(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_struct(&self.sink, at, buf, "vhd data block")
    }

    /// Allocate `block` at the end of the file; returns its bitmap's file offset.
    fn allocate(&mut self, block: u32) -> Result<u64> {
        let diff = self.disk_type == DiskType::Differencing;
        let Some(sp) = self.sparse.as_mut() else {
            return Err(Error::InvalidArgument("a fixed disk has no blocks".into()));
        };
        let overflow = || Error::unsupported("the file would grow past what a VHD BAT can address");
        let old_footer = self.footer_at;
        let data_at = align_up(old_footer + sp.bitmap_bytes, ALIGN_BYTES).ok_or_else(overflow)?;
        let bitmap_at = data_at - sp.bitmap_bytes;
        let data_end = data_at.checked_add(sp.block_size).ok_or_else(overflow)?;
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
        let bm = vec![if diff { 0u8 } else { 0xFF }; usize_of(sp.bitmap_bytes)?];
        self.sink
            .write_all_at(&bm, bitmap_at)
            .map_err(io(format!("writing a block bitmap at {bitmap_at:#x}")))?;
        let slot = sp
            .bat
            .get_mut(block as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} outside the BAT")))?;
        *slot = entry;
        sp.dirty_entries.insert(block);
        sp.new_blocks.insert(block);
        if diff {
            sp.bitmaps.insert(block, bm);
        }
        Ok(bitmap_at)
    }

    fn sparse(&self) -> Result<&Sparse> {
        self.sparse
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("a fixed disk has no blocks".into()))
    }

    /// The bitmap of an allocated differencing block (loaded on first use).
    fn load_bitmap(&mut self, block: u32, bitmap_at: u64) -> Result<()> {
        let sp = self.sparse()?;
        if sp.bitmaps.contains_key(&block) {
            return Ok(());
        }
        let mut bm = vec![0u8; usize_of(sp.bitmap_bytes)?];
        read_struct(&self.sink, bitmap_at, &mut bm, "vhd sector bitmap")?;
        if let Some(sp) = self.sparse.as_mut() {
            if sp.bitmaps.len() >= MAX_CACHED_BITMAPS {
                // Keep memory bounded: forget clean bitmaps (dirty ones wait for the flush).
                let dirty = &sp.dirty_bitmaps;
                sp.bitmaps.retain(|b, _| dirty.contains(b));
            }
            sp.bitmaps.insert(block, bm);
        }
        Ok(())
    }

    fn entry(&self, block: u64) -> Result<u32> {
        let sp = self.sparse()?;
        usize::try_from(block)
            .ok()
            .and_then(|b| sp.bat.get(b))
            .copied()
            .ok_or_else(|| Error::InvalidArgument(format!("block {block} outside the BAT")))
    }

    /// Write `data` at `in_block` of `block` (the piece stays inside the block).
    fn write_piece(
        &mut self,
        block: u64,
        in_block: u64,
        data: &[u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        let block32 = u32::try_from(block)
            .map_err(|_| Error::InvalidArgument(format!("block {block} outside the BAT")))?;
        let (bitmap_bytes, block_size) = {
            let sp = self.sparse()?;
            (sp.bitmap_bytes, sp.block_size)
        };
        let entry = self.entry(block)?;
        let bitmap_at = if entry == format::BAT_UNALLOCATED {
            self.allocate(block32)?
        } else {
            u64::from(entry) * SECTOR
        };
        let data_at = bitmap_at + bitmap_bytes;
        if self.disk_type != DiskType::Differencing {
            return self.write_file(data, data_at + in_block, "data block");
        }
        self.load_bitmap(block32, bitmap_at)?;
        let first = in_block / SECTOR;
        let end = (in_block + data.len() as u64).div_ceil(SECTOR);
        let span_at = first * SECTOR;
        let head = usize_of(in_block - span_at)?;
        let span_len = usize_of((end - first) * SECTOR)?;
        let block_virtual = block * block_size;
        let aligned = head == 0 && data.len() == span_len;
        let mut owned;
        let out: &[u8] = if aligned {
            data
        } else {
            owned = vec![0u8; span_len];
            // Complete the first and the last sector from their current contents.
            let mut edges = vec![first];
            if end - 1 != first {
                edges.push(end - 1);
            }
            for s in edges {
                let rel = usize_of((s - first) * SECTOR)?;
                let dst = owned
                    .get_mut(rel..rel + SECTOR as usize)
                    .ok_or_else(|| Error::InvalidArgument("sector outside the span".into()))?;
                let set = self
                    .sparse()?
                    .bitmaps
                    .get(&block32)
                    .is_some_and(|bm| bitmap::bit(bm, s, BitOrder::MsbFirst));
                if set {
                    self.read_file(dst, data_at + s * SECTOR)?;
                } else {
                    parent(block_virtual + s * SECTOR, dst)?;
                }
            }
            if let Some(d) = owned.get_mut(head..head + data.len()) {
                d.copy_from_slice(data);
            }
            &owned
        };
        self.write_file(out, data_at + span_at, "data block")?;
        let sp = self
            .sparse
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("a fixed disk has no blocks".into()))?;
        if let Some(bm) = sp.bitmaps.get_mut(&block32) {
            let mut changed = false;
            for s in first..end {
                let byte = usize_of(s / 8)?;
                let mask = 0x80u8 >> (s % 8);
                if let Some(b) = bm.get_mut(byte) {
                    if *b & mask == 0 {
                        *b |= mask;
                        changed = true;
                    }
                }
            }
            if changed {
                sp.dirty_bitmaps.insert(block32);
            }
        }
        Ok(())
    }

    fn read_piece(
        &mut self,
        block: u64,
        in_block: u64,
        buf: &mut [u8],
        parent: &mut ParentRead<'_>,
    ) -> Result<()> {
        let (bitmap_bytes, block_size) = {
            let sp = self.sparse()?;
            (sp.bitmap_bytes, sp.block_size)
        };
        let virt = block * block_size + in_block;
        let entry = self.entry(block)?;
        if entry == format::BAT_UNALLOCATED {
            if self.disk_type == DiskType::Differencing {
                return parent(virt, buf);
            }
            buf.fill(0);
            return Ok(());
        }
        let bitmap_at = u64::from(entry) * SECTOR;
        let data_at = bitmap_at + bitmap_bytes;
        if self.disk_type != DiskType::Differencing {
            return self.read_file(buf, data_at + in_block);
        }
        let block32 = u32::try_from(block)
            .map_err(|_| Error::InvalidArgument(format!("block {block} outside the BAT")))?;
        self.load_bitmap(block32, bitmap_at)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = in_block + done as u64;
            let s = pos / SECTOR;
            let limit = (in_block + buf.len() as u64).div_ceil(SECTOR);
            let (set, run_end) = match self.sparse()?.bitmaps.get(&block32) {
                Some(bm) => bitmap::run(bm, s, limit, BitOrder::MsbFirst),
                None => (false, limit),
            };
            let run_bytes = usize_of(run_end * SECTOR - pos)?.min(buf.len() - done);
            let chunk = buf
                .get_mut(done..done + run_bytes)
                .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
            if set {
                self.read_file(chunk, data_at + pos)?;
            } else {
                parent(block * block_size + pos, chunk)?;
            }
            done += run_bytes;
        }
        Ok(())
    }

    /// Split `[offset, offset + len)` into per-block pieces: (block, offset in block, start in
    /// the caller's buffer, length).
    fn pieces(&self, offset: u64, len: usize) -> Result<Vec<(u64, u64, usize, usize)>> {
        let bs = self.sparse()?.block_size;
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
}

impl<S: Sink + 'static> WritableImage for VhdWriter<S> {
    fn format(&self) -> DiskFormat {
        DiskFormat::Vhd
    }

    fn disk_type(&self) -> DiskType {
        self.disk_type
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8], parent: &mut ParentRead<'_>) -> Result<()> {
        if self.sparse.is_none() {
            return self.read_file(buf, offset);
        }
        for (block, in_block, start, n) in self.pieces(offset, buf.len())? {
            let chunk = buf
                .get_mut(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("read outside the buffer".into()))?;
            self.read_piece(block, in_block, chunk, parent)?;
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
        if self.sparse.is_none() {
            return self.write_file(data, offset, "fixed disk data");
        }
        for (block, in_block, start, n) in self.pieces(offset, data.len())? {
            let piece = data
                .get(start..start + n)
                .ok_or_else(|| Error::InvalidArgument("write outside the buffer".into()))?;
            self.write_piece(block, in_block, piece, parent)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some(sp) = self.sparse.as_ref() else {
            return self.sink.sync().map_err(io("flushing the vhd"));
        };
        if sp.dirty_entries.is_empty() && sp.dirty_bitmaps.is_empty() {
            return self.sink.sync().map_err(io("flushing the vhd"));
        }
        // 1. Bitmaps of new blocks: durable before any BAT entry points at them.
        let mut late = Vec::new();
        for &b in &sp.dirty_bitmaps {
            let Some(bm) = sp.bitmaps.get(&b) else {
                continue;
            };
            let entry = sp
                .bat
                .get(b as usize)
                .copied()
                .unwrap_or(format::BAT_UNALLOCATED);
            let at = u64::from(entry) * SECTOR;
            if sp.new_blocks.contains(&b) {
                self.write_file(bm, at, "block bitmap")?;
            } else {
                late.push((at, b));
            }
        }
        // 2. Every data byte and new bitmap durable.
        self.sink.sync().map_err(io("flushing the vhd data"))?;
        // 3. Bitmaps of old blocks, then BAT entries, grouped by 512-byte BAT sector.
        for (at, b) in late {
            if let Some(bm) = sp.bitmaps.get(&b) {
                self.write_file(bm, at, "block bitmap")?;
            }
        }
        let mut sectors: BTreeSet<u64> = BTreeSet::new();
        for &b in &sp.dirty_entries {
            sectors.insert(u64::from(b) * 4 / SECTOR);
        }
        let entries_per_sector = (SECTOR / 4) as usize;
        for s in sectors {
            let first = usize_of(s)? * entries_per_sector;
            let last = (first + entries_per_sector).min(sp.bat.len());
            let bytes: Vec<u8> = sp
                .bat
                .get(first..last)
                .unwrap_or_default()
                .iter()
                .flat_map(|e| e.to_be_bytes())
                .collect();
            self.write_file(
                &bytes,
                sp.table_offset + s * SECTOR,
                "block allocation table",
            )?;
        }
        // 4. Durable.
        self.sink.sync().map_err(io("flushing the vhd metadata"))?;
        if let Some(sp) = self.sparse.as_mut() {
            sp.dirty_entries.clear();
            sp.new_blocks.clear();
            sp.dirty_bitmaps.clear();
        }
        Ok(())
    }
}
