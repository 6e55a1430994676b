//! Removing a differencing VHDX's link to its parent, the last step of `flatten`: once the
//! child holds every sector of its virtual disk, it becomes a dynamic disk in one log entry
//! (`update::Session::commit` through `reparent::apply`), so a crash leaves it differencing or
//! dynamic, never in between.
//!
//! What changes (MS-VHDX 2.5.1, 2.6.1; FORMAT.md B.6, B.8):
//! - file parameters: HasParent is cleared (LeaveBlockAllocated and the block size stay);
//! - the metadata table: the parent locator's entry is removed (the entries after it move up
//!   one, the freed last entry is zeroed, the entry count drops by one), and the item's bytes
//!   are zeroed, so no stale path remains;
//! - the BAT: every SB_BLOCK_PRESENT entry becomes SB_BLOCK_NOT_PRESENT (fixed and dynamic files
//!   keep them all at 0; the bitmap blocks stay in the file, unreferenced), and a
//!   PARTIALLY_PRESENT block whose bitmap already has every sector set becomes FULLY_PRESENT. A
//!   PARTIALLY_PRESENT block with a clear bit is a refusal: its sectors would change meaning
//!   (the caller fills every block first).
//!
//! The header DataWriteGuid is not changed by this step. The simulated result must open as a
//! dynamic disk with the same size, sector sizes, id and DataWriteGuid, before the plan is
//! returned.

use super::bat::sb_index;
use super::bitmap::block_bitmap_range;
use super::format::{
    self, FileParameters, MetadataTableHeader, BAT_ENTRY_SIZE, BAT_OFFSET_MASK, BAT_STATE_MASK,
    FP_HAS_PARENT, METADATA_TABLE_ENTRY_SIZE, METADATA_TABLE_HEADER_SIZE, PARENT_LOCATOR_GUID,
    PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT, SB_BLOCK_NOT_PRESENT,
    SB_BLOCK_PRESENT,
};
use super::reparent::{child_of, clean_headers, log_cost, Planned};
use super::VhdxFile;
use crate::bitmap::{self as bits, BitOrder};
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::simulate::same as check;
use crate::source::read_struct;
use crate::txn::{FieldChange, Plan, WriteOp};

const TABLE: &str = "vhdx metadata table";
const FP: &str = "vhdx metadata item file parameters";
const BAT: &str = "vhdx block allocation table";
/// The file parameters item: block size and flags, a `u32` each.
const FP_BYTES: u64 = 8;

/// Plan the removal of `file`'s parent linkage (it must be a differencing disk).
/// With `preview`, a PARTIALLY_PRESENT block with clear bits is left out instead of refused:
/// the plan of a dry run, made before the copy fills it.
pub(crate) fn plan_unlink(file: VhdxFile, opts: &OpenOptions, preview: bool) -> Result<Planned> {
    let child = child_of(file)?;
    let mut p = Plan {
        old_len: child.file_len,
        new_len: child.file_len,
        ..Plan::default()
    };
    file_parameters(&child.file, &mut p)?;
    metadata_table(&child.file, &mut p)?;
    bat_entries(&child.file, &mut p, preview)?;
    let predicted_bytes = log_cost(&p.writes, child.log_length)?;
    let guard = child.guard.clone();
    if !preview {
        simulate(child, &p, opts)?;
    }
    Ok(Planned {
        plan: p,
        guard,
        predicted_bytes,
        simulated: crate::simulate::Simulated::none(),
        notes: Vec::new(),
        warnings: Vec::new(),
    })
}

fn change(p: &mut Plan, structure: &str, field: &str, old: String, new: String) {
    p.changes.push(FieldChange {
        structure: structure.into(),
        field: field.into(),
        old,
        new,
    });
}

fn read(f: &VhdxFile, at: u64, len: u64, what: &'static str) -> Result<Vec<u8>> {
    let n = usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("a {len}-byte read is too large")))?;
    let mut b = vec![0u8; n];
    read_struct(&*f.src, at, &mut b, what)?;
    Ok(b)
}

/// HasParent cleared in the file parameters item.
fn file_parameters(f: &VhdxFile, p: &mut Plan) -> Result<()> {
    let item = f
        .metadata_items
        .iter()
        .find(|i| i.name == Some("file_parameters") && !i.is_user())
        .ok_or_else(|| {
            Error::corrupt(TABLE, f.metadata_region.file_offset, "no file parameters")
        })?;
    let old = read(f, item.file_offset, FP_BYTES, FP)?;
    let mut fp: FileParameters = format::parse(&old, FP, item.file_offset)?;
    let before = fp.flags;
    fp.flags &= !FP_HAS_PARENT;
    change(
        p,
        FP,
        "flags",
        format!("{before:#x}"),
        format!("{:#x}", fp.flags),
    );
    p.writes.push(WriteOp {
        offset: item.file_offset,
        old,
        data: format::encode(&fp),
        what: "file parameters: HasParent cleared".into(),
    });
    Ok(())
}

/// The parent locator's table entry removed, and its item zeroed.
fn metadata_table(f: &VhdxFile, p: &mut Plan) -> Result<()> {
    let items = &f.metadata_items;
    let at = f.metadata_region.file_offset;
    let idx = items
        .iter()
        .position(|i| i.raw_id == PARENT_LOCATOR_GUID && !i.is_user())
        .ok_or_else(|| Error::corrupt(TABLE, at, "HasParent is set but no parent locator"))?;
    let count = items.len() as u64;
    let len = METADATA_TABLE_HEADER_SIZE + METADATA_TABLE_ENTRY_SIZE * count;
    let old = read(f, at, len, TABLE)?;
    let mut h: MetadataTableHeader = format::parse(&old, TABLE, at)?;
    h.entry_count = h.entry_count.saturating_sub(1);
    let mut new = format::encode(&h);
    let entry = |i: u64| {
        let s = (METADATA_TABLE_HEADER_SIZE + METADATA_TABLE_ENTRY_SIZE * i) as usize;
        old.get(s..s + METADATA_TABLE_ENTRY_SIZE as usize)
    };
    for i in (0..count).filter(|&i| i != idx as u64) {
        new.extend_from_slice(entry(i).ok_or_else(|| Error::internal("table entry"))?);
    }
    new.resize(old.len(), 0);
    change(
        p,
        TABLE,
        "entry count",
        count.to_string(),
        (count - 1).to_string(),
    );
    change(
        p,
        TABLE,
        "parent locator entry",
        "present".into(),
        "(removed)".into(),
    );
    p.writes.push(WriteOp {
        offset: at,
        old,
        data: new,
        what: "metadata table: parent locator entry removed".into(),
    });
    let Some(item) = items.get(idx) else {
        return Err(Error::internal("parent locator entry"));
    };
    if item.length > 0 {
        let old = read(f, item.file_offset, u64::from(item.length), TABLE)?;
        p.writes.push(WriteOp {
            offset: item.file_offset,
            data: vec![0; old.len()],
            old,
            what: "parent locator item zeroed".into(),
        });
    }
    Ok(())
}

/// Sector bitmap entries cleared; full PARTIALLY_PRESENT blocks made FULLY_PRESENT.
fn bat_entries(f: &VhdxFile, p: &mut Plan, preview: bool) -> Result<()> {
    let cr = f.bat.chunk_ratio;
    let bat_at = f.bat.table.offset();
    let mut edits: Vec<(u64, u64, u64)> = Vec::new();
    f.bat.table.scan(&*f.src, 0, |i, e| {
        let state = u8::try_from(e & BAT_STATE_MASK).unwrap_or(u8::MAX);
        if i % (cr + 1) == cr {
            if state == SB_BLOCK_PRESENT {
                edits.push((i, e, u64::from(SB_BLOCK_NOT_PRESENT)));
            }
        } else if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT {
            let b = i - i / (cr + 1);
            if !bitmap_full(f, b)? {
                if preview {
                    return Ok(());
                }
                return Err(Error::refused(format!(
                    "block {b} still reads some sectors from the parent (BAT entry {i} is \
                     PARTIALLY_PRESENT with a clear bit); the copy must finish first"
                )));
            }
            let full = (e & BAT_OFFSET_MASK) | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
            edits.push((i, e, full));
        }
        Ok(())
    })?;
    for (i, old, new) in edits {
        change(
            p,
            BAT,
            &format!("entry {i}"),
            format!("{old:#x}"),
            format!("{new:#x}"),
        );
        p.writes.push(WriteOp {
            offset: bat_at.saturating_add(i.saturating_mul(BAT_ENTRY_SIZE)),
            old: old.to_le_bytes().to_vec(),
            data: new.to_le_bytes().to_vec(),
            what: format!("BAT entry {i}"),
        });
    }
    Ok(())
}

/// Whether every sector of payload block `b` inside the virtual disk has its bit set.
fn bitmap_full(f: &VhdxFile, b: u64) -> Result<bool> {
    let cr = f.bat.chunk_ratio;
    let sb = f.bat.table.get(&*f.src, sb_index(b / cr, cr))?;
    if u8::try_from(sb & BAT_STATE_MASK).ok() != Some(SB_BLOCK_PRESENT) {
        return Ok(false);
    }
    let (rel, len) = block_bitmap_range(b, cr);
    let bm = read(
        f,
        (sb & BAT_OFFSET_MASK).saturating_add(rel),
        len,
        "vhdx sector bitmap",
    )?;
    let start = b.saturating_mul(f.bat.block_size);
    let ls = u64::from(f.logical_sector_size).max(1);
    let n = f
        .bat
        .block_size
        .min(f.shape.virtual_size.saturating_sub(start))
        / ls;
    Ok(bits::run(&bm, 0, n, BitOrder::LsbFirst) == (true, n))
}

/// The result must open as a dynamic disk keeping everything a reader of it sees.
fn simulate(child: super::reparent::Child, plan: &Plan, opts: &OpenOptions) -> Result<()> {
    let mut sim: Vec<(u64, Vec<u8>)> = plan.write_pairs();
    if child.guard.log_dirty {
        sim.extend(clean_headers(&*child.file.src)?);
    }
    let b = &child.file;
    let before = (
        b.shape.virtual_size,
        b.logical_sector_size,
        b.physical_sector_size,
        b.data_write_guid,
    );
    let src = Box::new(b.src.clone());
    let after = crate::simulate::reopen(src, sim, child.file_len, |s| VhdxFile::open(s, opts))?;
    check(after.shape.disk_type == DiskType::Dynamic, "disk type")?;
    check(after.linkage.is_none(), "parent linkage")?;
    check(after.locators.is_empty(), "set of parent locators")?;
    let got = (
        after.shape.virtual_size,
        after.logical_sector_size,
        after.physical_sector_size,
        after.data_write_guid,
    );
    // The table's entry count differs: a differencing BAT ends with a whole chunk, a dynamic
    // one at the last payload block (FORMAT.md B.8); the region holds both.
    check(got == before, "geometry or DataWriteGuid")
}
