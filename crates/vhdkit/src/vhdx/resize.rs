//! The VHDX side of `crate::resize`: one log entry with the virtual disk size item and the BAT
//! entries that change (see the module docs of `crate::resize`).

use super::bat::{is_sb_index, payload_index, required_entries};
use super::format::{
    BAT_ENTRY_SIZE, BAT_OFFSET_MASK, BAT_STATE_MASK, MAX_VIRTUAL_DISK_SIZE, MIB,
    PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT, REGION_TABLE_OFFSETS,
    VIRTUAL_DISK_SIZE_GUID,
};
use super::region::with_bat_moved;
use super::reparent::{log_cost, HeaderGuard};
use super::VhdxFile;
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::source::{read_struct, source_len};
use crate::txn::{FieldChange, Plan, WriteOp};
use crate::util::round_up;

const BAT: &str = "vhdx block allocation table";
const SIZE_ITEM: &str = "vhdx metadata item virtual disk size";

/// A VHDX resize: the plan committed through the log, the header it was made on, and for a
/// fixed disk the length the file takes first (its new blocks, a hole).
#[derive(Debug)]
pub(crate) struct VhdxResize {
    pub disk_type: DiskType,
    pub old_size: u64,
    pub plan: Plan,
    pub guard: HeaderGuard,
    pub extend_to: Option<u64>,
    /// The BAT's new region when the table outgrows its own.
    pub bat_move: Option<BatMove>,
    /// (file offset, length) of bytes the block the old end splits holds past that end, not
    /// all zeros: zeroed before the log entry (nothing reads them until the size grows), so
    /// the grown range reads as zeros.
    pub zero_tail: Option<(u64, u64)>,
}

/// A BAT that outgrows its region moves whole to a new, larger region past every structure
/// (1 MiB aligned): the table is written there first, where nothing points yet, and the log
/// entry that changes the size item also switches both region tables to it, so a crash leaves
/// the old disk (with unreferenced bytes at its end) or the new one. The old region becomes
/// free space. Moving the table, not what follows it, writes the table once and moves no
/// payload; Hyper-V and qemu read a BAT region wherever the region table puts it.
#[derive(Debug)]
pub(crate) struct BatMove {
    /// The old region: offset and length.
    pub from: u64,
    pub old_length: u64,
    /// The new region's offset.
    pub to: u64,
    /// The whole new region: the entries, then zeros to its 1 MiB-multiple length.
    pub region: Vec<u8>,
}

fn overflow() -> Error {
    Error::InvalidArgument("the resized layout overflows".into())
}

/// Plan resizing `file` (parsed with `opts`) to `new_size`.
pub(crate) fn plan(file: &VhdxFile, new_size: u64, opts: &OpenOptions) -> Result<VhdxResize> {
    let lss = u64::from(file.logical_sector_size).max(1);
    if new_size == 0 || new_size % lss != 0 || new_size > MAX_VIRTUAL_DISK_SIZE {
        return Err(Error::InvalidArgument(format!(
            "new size {new_size} is not a non-zero multiple of the {lss}-byte logical sector \
             up to the VHDX maximum of 64 TiB"
        )));
    }
    let file_len = source_len(&*file.src)?;
    let mut r = VhdxResize {
        disk_type: file.shape.disk_type,
        old_size: file.shape.virtual_size,
        plan: Plan {
            old_len: file_len,
            new_len: file_len,
            ..Plan::default()
        },
        guard: HeaderGuard::of(file)?,
        extend_to: None,
        bat_move: None,
        zero_tail: None,
    };
    size_item(file, new_size, &mut r.plan)?;
    bat(file, new_size, opts, &mut r)?;
    log_cost(&r.plan.writes, file.info.log.log_length)?;
    Ok(r)
}

/// The virtual disk size metadata item.
fn size_item(file: &VhdxFile, new_size: u64, p: &mut Plan) -> Result<()> {
    let item = file
        .metadata_items
        .iter()
        .find(|i| i.raw_id == VIRTUAL_DISK_SIZE_GUID && !i.is_user())
        .ok_or_else(|| {
            Error::corrupt(
                "vhdx metadata table",
                file.metadata_region.file_offset,
                "no virtual disk size item",
            )
        })?;
    let mut old = [0u8; 8];
    read_struct(&*file.src, item.file_offset, &mut old, SIZE_ITEM)?;
    p.changes.push(FieldChange {
        structure: SIZE_ITEM.into(),
        field: "virtual disk size".into(),
        old: u64::from_le_bytes(old).to_string(),
        new: new_size.to_string(),
    });
    p.writes.push(WriteOp {
        offset: item.file_offset,
        data: new_size.to_le_bytes().to_vec(),
        old: old.to_vec(),
        what: "virtual disk size".into(),
    });
    Ok(())
}

/// The BAT region's length, from the region table in use.
fn bat_region_len(file: &VhdxFile) -> Result<u64> {
    file.info
        .region_tables
        .iter()
        .filter(|t| t.valid)
        .flat_map(|t| t.entries.iter())
        .find(|e| e.name.as_deref() == Some("bat"))
        .map(|e| e.length)
        .ok_or_else(|| Error::internal("no bat region in a parsed vhdx"))
}

/// Every BAT entry that changes: entries past the new end cleared (an allocated block there is
/// a refusal), new entries written (zero; a fixed disk's new blocks present, at the end). A table
/// that outgrows its region is moved (see [`BatMove`]).
fn bat(file: &VhdxFile, new_size: u64, opts: &OpenOptions, r: &mut VhdxResize) -> Result<()> {
    let cr = file.bat.chunk_ratio.max(1);
    let bs = file.bat.block_size.max(1);
    let new_pb = new_size.div_ceil(bs);
    let old_req = file.bat.table.len();
    let new_req = required_entries(new_pb, cr, r.disk_type == DiskType::Differencing);
    let region_len = bat_region_len(file)?;
    let capacity = region_len / BAT_ENTRY_SIZE;
    let n = old_req.max(new_req);
    opts.limits
        .check_new_table(n.checked_mul(BAT_ENTRY_SIZE).ok_or_else(overflow)?)?;
    let at = file.bat.table.offset();
    let old = read_entries(file, at, n.min(capacity), n)?;
    let mut new = old.clone();
    // Past every structure: a moved table first, then a fixed disk's new blocks.
    let mut next = round_up(file.structures_end, MIB).ok_or_else(overflow)?;
    if new_req > capacity {
        let length = region_bytes(new_req)?;
        r.bat_move = Some(BatMove {
            from: at,
            old_length: region_len,
            to: next,
            region: Vec::new(),
        });
        next = next.checked_add(length).ok_or_else(overflow)?;
    }
    if r.disk_type == DiskType::Fixed {
        // The new blocks must read as zeros: a hole past the file's end.
        next = round_up(next.max(r.plan.old_len), MIB).ok_or_else(overflow)?;
    }
    let grow = Entries {
        cr,
        bs,
        old_req,
        new_req,
        old_pb: r.old_size.div_ceil(bs),
        new_pb,
        fixed: r.disk_type == DiskType::Fixed,
    };
    r.zero_tail = stale_tail(file, &old, r.old_size, new_size)?;
    let blocks_from = next;
    let blocks_end = grow.set(&mut new, next)?;
    let end = match (&r.bat_move, blocks_end > blocks_from) {
        (_, true) => blocks_end,
        (Some(mv), false) => mv
            .to
            .checked_add(region_bytes(new_req)?)
            .ok_or_else(overflow)?,
        (None, false) => 0,
    };
    if end > r.plan.old_len {
        r.extend_to = Some(end);
        r.plan.old_len = end;
        r.plan.new_len = end;
    }
    match r.bat_move.take() {
        Some(mv) => move_table(file, mv, &new, r),
        None => {
            push_runs(&mut r.plan, at, &old, &new);
            Ok(())
        }
    }
}

/// What decides each entry of the resized table.
struct Entries {
    cr: u64,
    bs: u64,
    old_req: u64,
    new_req: u64,
    old_pb: u64,
    new_pb: u64,
    fixed: bool,
}

impl Entries {
    /// Set the entries of `new` (the table as read); a fixed disk's new blocks are placed from
    /// `next` on. Returns where the next block would go.
    fn set(&self, new: &mut [u64], mut next: u64) -> Result<u64> {
        for (i, e) in new.iter_mut().enumerate() {
            let i = i as u64;
            let state = u8::try_from(*e & BAT_STATE_MASK).unwrap_or(u8::MAX);
            let b = i - i / (self.cr + 1);
            if is_sb_index(i, self.cr) {
                // Past the table, or new: no sector bitmap block.
                if i >= self.new_req || i >= self.old_req {
                    *e = 0;
                }
                continue;
            }
            if b >= self.new_pb {
                if state == PAYLOAD_BLOCK_FULLY_PRESENT || state == PAYLOAD_BLOCK_PARTIALLY_PRESENT
                {
                    return Err(Error::refused(format!(
                        "block {b} (virtual offset {:#x}, file offset {:#x}) is allocated past \
                         the new end; nothing was written",
                        b.saturating_mul(self.bs),
                        *e & BAT_OFFSET_MASK
                    )));
                }
                *e = 0;
            } else if b >= self.old_pb {
                // New to the disk: whatever a stale entry said, the block reads as zeros.
                *e = 0;
                if self.fixed {
                    *e = next | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
                    next = next.checked_add(self.bs).ok_or_else(overflow)?;
                }
            }
        }
        Ok(next)
    }
}

/// The moved table's region (`new` then zeros) and, through the log, both region tables
/// pointing at it.
fn move_table(file: &VhdxFile, mut mv: BatMove, new: &[u64], r: &mut VhdxResize) -> Result<()> {
    let length = region_bytes(new.len() as u64)?;
    mv.region = new.iter().flat_map(|e| e.to_le_bytes()).collect();
    mv.region
        .resize(usize::try_from(length).map_err(|_| overflow())?, 0);
    let table = with_bat_moved(&*file.src, mv.to, length)?;
    for (i, at) in REGION_TABLE_OFFSETS.iter().enumerate() {
        let mut old = vec![0u8; table.len()];
        read_struct(&*file.src, *at, &mut old, "vhdx region table")?;
        r.plan.writes.push(WriteOp {
            offset: *at,
            data: table.clone(),
            old,
            what: format!("region table {}", i + 1),
        });
    }
    r.plan.changes.push(FieldChange {
        structure: "vhdx region table".into(),
        field: "BAT region".into(),
        old: format!("{:#x}, {} bytes", mv.from, mv.old_length),
        new: format!("{:#x}, {length} bytes", mv.to),
    });
    r.bat_move = Some(mv);
    Ok(())
}

/// Where the present block that the old end splits holds bytes past that end that are not
/// zeros (another tool's shrink may leave them; a grow would show them).
fn stale_tail(file: &VhdxFile, entries: &[u64], old: u64, new: u64) -> Result<Option<(u64, u64)>> {
    let bs = file.bat.block_size.max(1);
    let within = old % bs;
    if new <= old || within == 0 {
        return Ok(None);
    }
    let idx = payload_index(old / bs, file.bat.chunk_ratio.max(1));
    let Some(&e) = usize::try_from(idx).ok().and_then(|i| entries.get(i)) else {
        return Ok(None);
    };
    let state = u8::try_from(e & BAT_STATE_MASK).unwrap_or(u8::MAX);
    if state != PAYLOAD_BLOCK_FULLY_PRESENT && state != PAYLOAD_BLOCK_PARTIALLY_PRESENT {
        return Ok(None);
    }
    let at = (e & BAT_OFFSET_MASK)
        .checked_add(within)
        .ok_or_else(overflow)?;
    let len = (bs - within).min(new - old);
    let mut buf = vec![0u8; usize::try_from(len.min(MIB)).map_err(|_| overflow())?];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(MIB);
        let b = buf.get_mut(..n as usize).unwrap_or_default();
        read_struct(&*file.src, at + done, b, "vhdx payload block")?;
        if b.iter().any(|&x| x != 0) {
            return Ok(Some((at, len)));
        }
        done += n;
    }
    Ok(None)
}

/// The bytes of a BAT region holding `entries`: a whole number of MiB.
fn region_bytes(entries: u64) -> Result<u64> {
    let bytes = entries.checked_mul(BAT_ENTRY_SIZE).ok_or_else(overflow)?;
    round_up(bytes, MIB).ok_or_else(overflow)
}

/// `n` entries from `at`: the first `read` from the file, the rest zero.
fn read_entries(file: &VhdxFile, at: u64, read: u64, n: u64) -> Result<Vec<u64>> {
    let len = usize::try_from(read.checked_mul(BAT_ENTRY_SIZE).ok_or_else(overflow)?)
        .map_err(|_| overflow())?;
    let mut raw = vec![0u8; len];
    read_struct(&*file.src, at, &mut raw, BAT)?;
    let mut v: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    v.resize(usize::try_from(n).map_err(|_| overflow())?, 0);
    Ok(v)
}
/// One write per run of changed entries.
fn push_runs(p: &mut Plan, at: u64, old: &[u64], new: &[u64]) {
    let mut i = 0usize;
    let mut changed = 0u64;
    while i < new.len() {
        if old.get(i) == new.get(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < new.len() && old.get(i) != new.get(i) {
            i += 1;
        }
        changed += (i - start) as u64;
        let bytes = |v: &[u64]| -> Vec<u8> {
            v.get(start..i)
                .unwrap_or(&[])
                .iter()
                .flat_map(|e| e.to_le_bytes())
                .collect()
        };
        p.writes.push(WriteOp {
            offset: at + start as u64 * BAT_ENTRY_SIZE,
            data: bytes(new),
            old: bytes(old),
            what: format!("BAT entries {start}..{i}"),
        });
    }
    if changed > 0 {
        p.changes.push(FieldChange {
            structure: BAT.into(),
            field: "entries".into(),
            old: format!("{} in use", old.len()),
            new: format!("{changed} changed"),
        });
    }
}
