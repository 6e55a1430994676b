//! The VHD side of `crate::resize`: the journaled plan, and for a BAT that needs more room,
//! what is copied out of its way first (see the module docs of `crate::resize`).

use std::io::Cursor;

use binrw::BinWrite;

use super::create::{align_up, geometry, ALIGN_BYTES, MAX_VIRTUAL_BYTES};
use super::format::{self, DynamicHeader, Footer, BAT_ENTRY_BYTES, BAT_UNALLOCATED};
use super::locator::data_space_bytes;
use super::open::{self, Purpose};
use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::resize::Relocation;
use crate::source::{source_len, Source};
use crate::txn::{FieldChange, Plan, WriteOp};

const SECTOR: u64 = format::SECTOR_BYTES;
const FOOTER: u64 = format::FOOTER_BYTES as u64;
const BAT: &str = "vhd block allocation table";

/// A VHD resize: the copies made before the journaled plan (empty unless the BAT needs room),
/// the footer written at the new end before them, and the plan.
#[derive(Debug)]
pub(crate) struct VhdResize {
    pub old_size: u64,
    /// Offset of the end footer before the change.
    pub old_footer_at: u64,
    pub moves: Vec<Relocation>,
    /// The current end footer, written at the new end before the copies.
    pub footer_first: Option<(u64, Vec<u8>)>,
    pub plan: Plan,
}

fn overflow() -> Error {
    Error::InvalidArgument("the resized layout overflows".into())
}

/// Plan resizing the VHD in `src` to `new_size`. `src` must be the file as it is now (after
/// any journal recovery): the copies are planned at its end.
pub(crate) fn plan(src: &dyn Source, new_size: u64, opts: &OpenOptions) -> Result<VhdResize> {
    let len = source_len(src)?;
    let p = open::parse(src, len, opts, Purpose::Write)?;
    if new_size == 0 || new_size % SECTOR != 0 || new_size > MAX_VIRTUAL_BYTES {
        return Err(Error::InvalidArgument(format!(
            "new size {new_size} is not a non-zero multiple of 512 bytes up to the VHD maximum \
             of 2040 GiB ({MAX_VIRTUAL_BYTES} bytes)"
        )));
    }
    check_creator(&p.footer.raw, new_size)?;
    let old_footer = read_padded(src, p.footer.end_offset, FOOTER, len)?;
    let new_footer = footer_bytes(&p.footer.raw, new_size)?;
    let mut r = VhdResize {
        old_size: p.virtual_size,
        old_footer_at: p.footer.end_offset,
        moves: Vec::new(),
        footer_first: None,
        plan: Plan {
            old_len: len,
            new_len: len,
            ..Plan::default()
        },
    };
    footer_changes(&mut r.plan, &p.footer.raw, new_size);
    match &p.sparse {
        None => fixed(
            src,
            &mut r,
            p.footer.end_offset,
            old_footer,
            new_footer,
            new_size,
        )?,
        Some(sp) => {
            let s = Sparse {
                src,
                header: &sp.header.raw,
                header_at: sp.header.offset,
                bitmap_bytes: sp.bitmap_bytes,
                footer_at: p.footer.end_offset,
                file_len: len,
            };
            s.plan(&mut r, new_size, old_footer, new_footer, opts)?;
        }
    }
    Ok(r)
}

/// Virtual PC and qemu take a `vpc ` / `qemu` disk's size from its geometry: it must give the
/// new size exactly (or be the largest geometry, which they read as "use current size").
fn check_creator(f: &Footer, new_size: u64) -> Result<()> {
    let (c, h, s) = geometry(new_size);
    let by_chs = format::chs_bytes(c, h, s);
    let chs_app = matches!(&f.creator_application, b"vpc " | b"qemu");
    if chs_app && by_chs != new_size && (c, h, s) != format::MAX_CHS {
        return Err(Error::refused(format!(
            "the disk's creator is '{}': Virtual PC and qemu read its size from the CHS \
             geometry, which gives {by_chs} bytes for {new_size}, not the size asked; ask for a \
             size the geometry gives exactly (e.g. {by_chs}); nothing was written",
            String::from_utf8_lossy(&f.creator_application)
        )));
    }
    Ok(())
}

/// The footer with the new current size and geometry, checksum included.
fn footer_bytes(f: &Footer, new_size: u64) -> Result<Vec<u8>> {
    let mut f = f.clone();
    f.current_size = new_size;
    (f.cylinders, f.heads, f.sectors_per_track) = geometry(new_size);
    f.checksum = 0;
    encode(&f, format::FOOTER_CHECKSUM_OFFSET)
}

fn encode<T>(v: &T, checksum_at: usize) -> Result<Vec<u8>>
where
    T: BinWrite,
    for<'a> T::Args<'a>: Default,
{
    let mut c = Cursor::new(Vec::new());
    v.write_options(&mut c, binrw::Endian::Big, Default::default())
        .map_err(|e| Error::internal(format!("encoding a vhd structure: {e}")))?;
    let mut b = c.into_inner();
    let sum = format::checksum(&b, checksum_at);
    if let Some(slot) = b.get_mut(checksum_at..checksum_at + 4) {
        slot.copy_from_slice(&sum.to_be_bytes());
    }
    Ok(b)
}

fn footer_changes(p: &mut Plan, f: &Footer, new_size: u64) {
    let (c, h, s) = geometry(new_size);
    let st = "vhd footer";
    push_change(p, st, "current size", f.current_size, new_size);
    p.changes.push(FieldChange {
        structure: st.into(),
        field: "geometry (C/H/S)".into(),
        old: format!("{}/{}/{}", f.cylinders, f.heads, f.sectors_per_track),
        new: format!("{c}/{h}/{s}"),
    });
}

fn push_change(p: &mut Plan, structure: &str, field: &str, old: u64, new: u64) {
    p.changes.push(FieldChange {
        structure: structure.into(),
        field: field.into(),
        old: old.to_string(),
        new: new.to_string(),
    });
}

/// `len` bytes at `at`; bytes past the end of the file (`file_len`) read as zeros.
fn read_padded(src: &dyn Source, at: u64, len: u64, file_len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len).map_err(|_| overflow())?;
    let mut b = vec![0u8; n];
    if at < file_len {
        let avail = usize::try_from((file_len - at).min(len)).map_err(|_| overflow())?;
        if let Some(dst) = b.get_mut(..avail) {
            src.read_exact_at(dst, at)
                .map_err(|e| Error::io(format!("reading the file at {at:#x}"), e))?;
        }
    }
    Ok(b)
}

/// Add the write of `data` at `at` unless the file (`file_len` bytes) holds it already.
fn write(
    p: &mut Plan,
    (src, file_len): (&dyn Source, u64),
    at: u64,
    data: Vec<u8>,
    what: String,
) -> Result<()> {
    let old = read_padded(src, at, data.len() as u64, file_len)?;
    if old != data {
        p.writes.push(WriteOp {
            offset: at,
            data,
            old,
            what,
        });
    }
    Ok(())
}

/// Most a fixed disk shrinks by: a journal never changes a file's length by more (it must not
/// let recovery cut a file arbitrarily, `txn::journal`).
const MAX_FIXED_SHRINK: u64 = 64 << 20;

/// A fixed disk. Growing: the current footer is first written at the new end (the file grows,
/// a hole, and still ends in its footer: the old disk with slack), then the journaled plan
/// rewrites that footer with the new size and zeroes the old footer's sector, the file's length
/// unchanged. A rerun after a stop between the two finds the footer at the new end already.
/// Shrinking: the new footer at the new end and the file cut after it, in one plan (the caller
/// checked the cut range reads zero).
fn fixed(
    src: &dyn Source,
    r: &mut VhdResize,
    footer_at: u64,
    old_footer: Vec<u8>,
    new_footer: Vec<u8>,
    new_size: u64,
) -> Result<()> {
    let old_size = r.old_size;
    let file = (src, r.plan.old_len);
    if footer_at != old_size && footer_at != new_size {
        return Err(Error::refused(format!(
            "the fixed disk's footer lies at {footer_at:#x}, not right after its {old_size}              bytes of data; vhdkit does not resize a fixed disk with slack before its footer"
        )));
    }
    let p = &mut r.plan;
    if new_size < old_size {
        if old_size - new_size > MAX_FIXED_SHRINK || footer_at != old_size {
            return Err(Error::refused(format!(
                "a fixed VHD shrinks by at most {MAX_FIXED_SHRINK} bytes at a time: the cut is                  made by the journal, which never changes a file's length by more; nothing was                  written"
            )));
        }
        p.new_len = new_size.checked_add(FOOTER).ok_or_else(overflow)?;
        return write(
            p,
            file,
            new_size,
            new_footer,
            "footer at the new end".into(),
        );
    }
    let end = new_size.checked_add(FOOTER).ok_or_else(overflow)?;
    let (at_end, stale) = if footer_at == old_size {
        r.footer_first = Some((new_size, old_footer.clone()));
        (old_footer.clone(), old_footer)
    } else {
        // An earlier run stopped after moving the footer: the old one is still at `old_size`.
        let stale = read_padded(src, old_size, FOOTER, p.old_len)?;
        (old_footer, stale)
    };
    (p.old_len, p.new_len) = (end, end);
    p.writes.push(WriteOp {
        offset: new_size,
        data: new_footer,
        old: at_end,
        what: "footer at the new end".into(),
    });
    if stale.iter().any(|&b| b != 0) {
        p.writes.push(WriteOp {
            offset: old_size,
            data: vec![0; stale.len()],
            old: stale,
            what: "old footer zeroed".into(),
        });
    }
    Ok(())
}

/// A dynamic or differencing disk's structures, as parsed.
struct Sparse<'a> {
    src: &'a dyn Source,
    header: &'a DynamicHeader,
    header_at: u64,
    bitmap_bytes: u64,
    footer_at: u64,
    file_len: u64,
}

/// Something in the file that may lie where the grown BAT goes.
struct Item {
    what: String,
    at: u64,
    len: u64,
    /// BAT index of a block, or locator slot.
    kind: ItemKind,
}

enum ItemKind {
    Block(usize),
    Locator(usize),
}

impl Sparse<'_> {
    fn plan(
        &self,
        r: &mut VhdResize,
        new_size: u64,
        old_footer: Vec<u8>,
        new_footer: Vec<u8>,
        opts: &OpenOptions,
    ) -> Result<()> {
        let h = self.header;
        let bs = u64::from(h.block_size);
        let old_entries = u64::from(h.max_table_entries);
        let new_entries = new_size.div_ceil(bs);
        let max = u32::try_from(new_entries).map_err(|_| overflow())?;
        let bat_bytes = new_entries
            .checked_mul(BAT_ENTRY_BYTES)
            .ok_or_else(overflow)?;
        opts.limits.check_new_table(bat_bytes)?;
        let mut bat = self.read_bat(old_entries)?;
        self.refuse_past_end(&bat, new_entries)?;
        bat.resize(
            usize::try_from(new_entries).map_err(|_| overflow())?,
            BAT_UNALLOCATED,
        );
        let span = align_up(bat_bytes, SECTOR).ok_or_else(overflow)?;
        let bat_end = h.table_offset.checked_add(span).ok_or_else(overflow)?;
        let mut header = h.clone();
        header.max_table_entries = max;
        push_change(
            &mut r.plan,
            "vhd dynamic header",
            "max table entries",
            old_entries,
            new_entries,
        );
        if self.footer_at % SECTOR != 0 {
            return Err(Error::unsupported(format!(
                "the end footer at {:#x} is not sector-aligned; vhdkit does not resize such a file",
                self.footer_at
            )));
        }
        let last = self.last_block(r.old_size, new_size);
        let last_before = last.and_then(|i| bat.get(i).copied());
        let cursor = self.place_moves(r, &mut bat, &mut header, bat_end)?;
        if let (Some(i), Some(before)) = (last, last_before) {
            self.zero_stale_tail(r, i, before, &bat, new_size)?;
        }
        let end = cursor.max(bat_end).max(self.footer_at);
        let new_footer_at = if end == self.footer_at {
            self.footer_at
        } else {
            let end = end.checked_add(FOOTER).ok_or_else(overflow)?;
            align_up(end, ALIGN_BYTES).ok_or_else(overflow)? - FOOTER
        };
        if !r.moves.is_empty() {
            r.footer_first = Some((new_footer_at, old_footer.clone()));
        }
        self.journal(
            r,
            &bat,
            &header,
            new_footer,
            old_footer,
            new_footer_at,
            bat_end,
        )
    }

    /// On a grow, the BAT index of the block the old end splits (`None`: the old end is on a
    /// block boundary, or nothing grows).
    fn last_block(&self, old_size: u64, new_size: u64) -> Option<usize> {
        let bs = u64::from(self.header.block_size).max(1);
        (new_size > old_size && old_size % bs != 0)
            .then(|| usize::try_from(old_size / bs).ok())
            .flatten()
    }

    /// Zero what block `i` (entry `before` as read, in `after` as the plan leaves it: it may
    /// have moved) holds past the old end, through the journal, so the grown range reads as
    /// zeros: another tool's shrink, or a writer that fills whole blocks and marks them
    /// present, may have left data there. Nothing is planned when it reads as zeros already.
    fn zero_stale_tail(
        &self,
        r: &mut VhdResize,
        i: usize,
        before: u32,
        after: &[u32],
        new_size: u64,
    ) -> Result<()> {
        let Some(&now) = after.get(i) else {
            return Ok(());
        };
        if before == BAT_UNALLOCATED {
            return Ok(());
        }
        let bs = u64::from(self.header.block_size).max(1);
        let within = r.old_size % bs;
        let len = (bs - within).min(new_size - r.old_size);
        let data_at = |e: u32| {
            (u64::from(e) * SECTOR)
                .checked_add(self.bitmap_bytes + within)
                .ok_or_else(overflow)
        };
        let mut old = vec![0u8; usize::try_from(len).map_err(|_| overflow())?];
        crate::source::read_struct(self.src, data_at(before)?, &mut old, "vhd data block")?;
        if old.iter().all(|&b| b == 0) {
            return Ok(());
        }
        r.plan.writes.push(WriteOp {
            offset: data_at(now)?,
            data: vec![0u8; old.len()],
            old,
            what: format!("block {i} past the old end"),
        });
        r.plan.changes.push(FieldChange {
            structure: "vhd data block".into(),
            field: format!("block {i} past the old end ({len} bytes)"),
            old: "stale data".into(),
            new: "zeros".into(),
        });
        Ok(())
    }

    /// Refuse when a block at or past entry `new_entries` is allocated.
    fn refuse_past_end(&self, bat: &[u32], new_entries: u64) -> Result<()> {
        let bs = u64::from(self.header.block_size);
        let first = usize::try_from(new_entries).map_err(|_| overflow())?;
        match bat
            .iter()
            .enumerate()
            .skip(first)
            .find(|(_, e)| **e != BAT_UNALLOCATED)
        {
            Some((i, e)) => Err(Error::refused(format!(
                "block {i} (virtual offset {:#x}, BAT entry at file offset {:#x} -> sector \
                 {e:#x}) is allocated past the new end; nothing was written",
                (i as u64).saturating_mul(bs),
                self.header
                    .table_offset
                    .saturating_add((i as u64).saturating_mul(BAT_ENTRY_BYTES))
            ))),
            None => Ok(()),
        }
    }

    /// Place the structures in the grown BAT's way past the end footer (or the grown BAT's
    /// end, whichever is further: never over the BAT), as the writer allocates blocks, and
    /// repoint their BAT entries and locator entries; returns the end of the last copy.
    fn place_moves(
        &self,
        r: &mut VhdResize,
        bat: &mut [u32],
        header: &mut DynamicHeader,
        bat_end: u64,
    ) -> Result<u64> {
        let mut cursor = self.footer_at.max(bat_end);
        for it in self.in_the_way(bat, bat_end)? {
            let to = match it.kind {
                ItemKind::Block(i) => {
                    let past = cursor.checked_add(self.bitmap_bytes).ok_or_else(overflow)?;
                    let to = align_up(past, ALIGN_BYTES).ok_or_else(overflow)? - self.bitmap_bytes;
                    let sector = u32::try_from(to / SECTOR).map_err(|_| overflow())?;
                    if let Some(e) = bat.get_mut(i) {
                        *e = sector;
                    }
                    to
                }
                ItemKind::Locator(k) => {
                    let to = align_up(cursor, ALIGN_BYTES).ok_or_else(overflow)?;
                    if let Some(l) = header.parent_locators.get_mut(k) {
                        l.platform_data_offset = to;
                    }
                    to
                }
            };
            cursor = to.checked_add(it.len).ok_or_else(overflow)?;
            r.moves.push(Relocation {
                what: it.what,
                from: it.at,
                to,
                length: it.len,
            });
        }
        Ok(cursor)
    }

    /// The BAT's `n` entries.
    fn read_bat(&self, n: u64) -> Result<Vec<u32>> {
        let raw = read_padded(
            self.src,
            self.header.table_offset,
            n * BAT_ENTRY_BYTES,
            self.file_len,
        )?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Blocks and locator data overlapping the grown BAT (`table_offset..bat_end`), by offset.
    fn in_the_way(&self, bat: &[u32], bat_end: u64) -> Result<Vec<Item>> {
        let t = self.header.table_offset;
        let block_len = self
            .bitmap_bytes
            .saturating_add(u64::from(self.header.block_size));
        let mut out = Vec::new();
        for (i, &e) in bat.iter().enumerate() {
            let at = u64::from(e) * SECTOR;
            if e != BAT_UNALLOCATED && at < bat_end && at.saturating_add(block_len) > t {
                out.push(Item {
                    what: format!("block {i}"),
                    at,
                    len: block_len,
                    kind: ItemKind::Block(i),
                });
            }
        }
        for (k, l) in self.header.parent_locators.iter().enumerate() {
            let space = data_space_bytes(l.platform_data_space).unwrap_or(0);
            let at = l.platform_data_offset;
            if l.platform_code == [0; 4]
                || space == 0
                || at >= bat_end
                || at.saturating_add(space) <= t
            {
                continue;
            }
            out.push(Item {
                what: format!(
                    "parent locator {} ({}) data",
                    k + 1,
                    String::from_utf8_lossy(&l.platform_code)
                ),
                at,
                len: space,
                kind: ItemKind::Locator(k),
            });
        }
        out.sort_by_key(|i| i.at);
        Ok(out)
    }

    /// The journaled plan: BAT sectors, dynamic header, both footers, the old footer zeroed.
    #[allow(clippy::too_many_arguments)]
    fn journal(
        &self,
        r: &mut VhdResize,
        bat: &[u32],
        header: &DynamicHeader,
        new_footer: Vec<u8>,
        old_footer: Vec<u8>,
        new_footer_at: u64,
        bat_end: u64,
    ) -> Result<()> {
        let p = &mut r.plan;
        if let Some((at, _)) = &r.footer_first {
            // The copies extend the file to the new footer first.
            p.old_len = at.saturating_add(FOOTER);
        }
        p.new_len = p.old_len.max(new_footer_at.saturating_add(FOOTER));
        let t = self.header.table_offset;
        let mut table: Vec<u8> = bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        table.resize(
            usize::try_from(bat_end - t).map_err(|_| overflow())?,
            format::BAT_UNALLOCATED_FILL,
        );
        // Only the sectors that change (the journal holds old and new bytes of each).
        let mut i = 0usize;
        let old_table = read_padded(self.src, t, bat_end - t, self.file_len)?;
        let sec = SECTOR as usize;
        while i < table.len() {
            let j = (i..table.len())
                .step_by(sec)
                .find(|&k| table.get(k..k + sec) == old_table.get(k..k + sec))
                .unwrap_or(table.len());
            if j > i {
                let data = table.get(i..j).map(<[u8]>::to_vec).unwrap_or_default();
                let old = old_table.get(i..j).map(<[u8]>::to_vec).unwrap_or_default();
                p.writes.push(WriteOp {
                    offset: t + i as u64,
                    data,
                    old,
                    what: format!("{BAT} sectors at {:#x}", t + i as u64),
                });
                i = j;
            }
            i += sec;
        }
        let mut h = header.clone();
        h.checksum = 0;
        let hb = encode(&h, format::DYNAMIC_CHECKSUM_OFFSET)?;
        let file = (self.src, self.file_len);
        write(p, file, self.header_at, hb, "dynamic header".into())?;
        write(p, file, 0, new_footer.clone(), "front footer copy".into())?;
        if let Some((at, copied)) = &r.footer_first {
            // The copy step wrote the current footer there.
            p.writes.push(WriteOp {
                offset: *at,
                data: new_footer,
                old: copied.clone(),
                what: "end footer".into(),
            });
        } else {
            write(p, file, new_footer_at, new_footer, "end footer".into())?;
        }
        let moved_over = r
            .moves
            .iter()
            .any(|m| m.to <= self.footer_at && self.footer_at < m.to.saturating_add(m.length));
        if new_footer_at != self.footer_at && self.footer_at >= bat_end && !moved_over {
            p.writes.push(WriteOp {
                offset: self.footer_at,
                data: vec![0; old_footer.len()],
                old: old_footer,
                what: "old end footer zeroed".into(),
            });
        }
        Ok(())
    }
}
