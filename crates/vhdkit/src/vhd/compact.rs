//! The VHD side of `compact`: the file map (footer copy, dynamic header, table, locator data,
//! blocks) and the table changes, made through the redo journal beside the file; the end
//! footer moves down last.
//!
//! Trimming: the footer is written at the new end (past every structure still in use), synced,
//! then the file is cut just after it. Until the cut the old footer still ends the file, so
//! every reader sees a valid file whenever a crash comes; a rerun finds the cut still to do.

use super::format::{self, BAT_UNALLOCATED, FOOTER_BYTES, SECTOR_BYTES};
use super::locator::data_space_bytes;
use super::open::{self, Purpose};
use crate::compact::layout::{Alloc, Change, FileMap, MAX_TRACKED_BLOCKS};
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len};
use crate::table::{scan_table, Width};
use crate::txn::journal::{self, JournalStore};
use crate::txn::{Plan, Sink, WriteOp};

/// Most table entries one journal carries (about 40 bytes each in the journal).
const MAX_ENTRIES_PER_JOURNAL: usize = 1 << 16;

/// A VHD opened for compaction.
pub(crate) struct Editor<'a> {
    sink: &'a dyn Sink,
    store: &'a dyn JournalStore,
    table_offset: u64,
    footer: [u8; FOOTER_BYTES],
    /// The type, and the map as the file was when opened.
    pub disk_type: DiskType,
    pub map: FileMap,
}

impl<'a> Editor<'a> {
    /// Read the map of the VHD in `sink` (its journal, if any, finished by the caller).
    pub(crate) fn open(
        sink: &'a dyn Sink,
        store: &'a dyn JournalStore,
        opts: &OpenOptions,
    ) -> Result<Editor<'a>> {
        let file_len = source_len(sink)?;
        let p = open::parse(sink, file_len, opts, Purpose::Write)?;
        let mut footer = [0u8; FOOTER_BYTES];
        read_struct(sink, p.footer.offset, &mut footer, "vhd footer")?;
        let mut map = FileMap {
            align: SECTOR_BYTES,
            len_align: SECTOR_BYTES,
            tail: FOOTER_BYTES as u64,
            file_len,
            ..FileMap::default()
        };
        let Some(sp) = p.sparse else {
            return Ok(Editor {
                sink,
                store,
                table_offset: 0,
                footer,
                disk_type: p.disk_type,
                map,
            });
        };
        let h = &sp.header.raw;
        map.block_size = u64::from(h.block_size);
        map.span = sp.bitmap_bytes.saturating_add(map.block_size);
        map.fixed = fixed_spans(&sp.header);
        map.blocks = allocated(sink, h)?;
        Ok(Editor {
            sink,
            store,
            table_offset: h.table_offset,
            footer,
            disk_type: p.disk_type,
            map,
        })
    }

    fn write_op(&self, c: &Change) -> Result<WriteOp> {
        let (a, new) = match *c {
            Change::DropZero(a) | Change::DropToParent(a) | Change::Clear(a) => {
                (a, BAT_UNALLOCATED)
            }
            Change::Move(a, to) => {
                let sector = u32::try_from(to / SECTOR_BYTES).map_err(|_| {
                    Error::internal(format!("a block moved to {to:#x}, past a VHD table entry"))
                })?;
                (a, sector)
            }
        };
        let old = u32::try_from(a.raw).unwrap_or(BAT_UNALLOCATED);
        let offset = a
            .block
            .checked_mul(format::BAT_ENTRY_BYTES)
            .and_then(|o| o.checked_add(self.table_offset))
            .ok_or_else(|| Error::internal("a table entry past 2^64"))?;
        Ok(WriteOp {
            offset,
            data: new.to_be_bytes().to_vec(),
            old: old.to_be_bytes().to_vec(),
            what: format!("table entry {}", a.block),
        })
    }

    /// Make `changes` through the journal, in bounded batches; returns the table bytes
    /// changed.
    pub(crate) fn commit(&mut self, changes: &[Change]) -> Result<u64> {
        let mut bytes = 0u64;
        for part in changes.chunks(MAX_ENTRIES_PER_JOURNAL) {
            let len = source_len(self.sink)?;
            let mut plan = Plan {
                old_len: len,
                new_len: len,
                ..Plan::default()
            };
            for c in part {
                plan.writes.push(self.write_op(c)?);
            }
            bytes = bytes.saturating_add(plan.bytes_written());
            journal::apply(self.sink, self.store, &plan)?;
        }
        Ok(bytes)
    }

    /// Move the end footer down so the file is `len` bytes long (see the module docs).
    pub(crate) fn trim(&mut self, len: u64) -> Result<()> {
        let file_len = source_len(self.sink)?;
        if len >= file_len {
            return Ok(());
        }
        let at = len.saturating_sub(FOOTER_BYTES as u64);
        self.sink
            .write_all_at(&self.footer, at)
            .map_err(|e| Error::io(format!("writing the vhd footer at {at:#x}"), e))?;
        self.sink
            .sync()
            .map_err(|e| Error::io("flushing the vhd footer", e))?;
        self.sink
            .set_len(len)
            .map_err(|e| Error::io(format!("truncating the vhd to {len} bytes"), e))?;
        self.sink
            .sync()
            .map_err(|e| Error::io("flushing the truncated vhd", e))
    }
}

/// Every structure but the blocks and the end footer: the footer copy, the dynamic header, the
/// table (whole sectors) and each parent locator's data space.
fn fixed_spans(hdr: &super::dynamic::CheckedHeader) -> Vec<(u64, u64)> {
    let h = &hdr.raw;
    let table_bytes = u64::from(h.max_table_entries)
        .saturating_mul(format::BAT_ENTRY_BYTES)
        .next_multiple_of(SECTOR_BYTES);
    let header_end = hdr
        .offset
        .saturating_add(format::DYNAMIC_HEADER_BYTES as u64);
    let mut fixed = vec![
        (0, FOOTER_BYTES as u64),
        (hdr.offset, header_end),
        (h.table_offset, h.table_offset.saturating_add(table_bytes)),
    ];
    for l in h
        .parent_locators
        .iter()
        .filter(|l| l.platform_code != [0; 4])
    {
        let len = data_space_bytes(l.platform_data_space)
            .unwrap_or(0)
            .max(u64::from(l.platform_data_length));
        let at = l.platform_data_offset;
        fixed.push((at, at.saturating_add(len)));
    }
    fixed
}

/// The allocated blocks of the table, at most [`MAX_TRACKED_BLOCKS`].
fn allocated(src: &dyn Sink, h: &format::DynamicHeader) -> Result<Vec<Alloc>> {
    let mut blocks = Vec::new();
    scan_table(
        src,
        h.table_offset,
        u64::from(h.max_table_entries),
        Width::U32Be,
        "vhd block allocation table",
        0,
        &mut |i, e| {
            if e == u64::from(BAT_UNALLOCATED) {
                return Ok(());
            }
            if blocks.len() >= MAX_TRACKED_BLOCKS {
                return Err(Error::unsupported(format!(
                    "more than {MAX_TRACKED_BLOCKS} allocated blocks: too many to compact"
                )));
            }
            blocks.push(Alloc {
                block: i,
                at: e.saturating_mul(SECTOR_BYTES),
                raw: e,
            });
            Ok(())
        },
    )?;
    Ok(blocks)
}
