//! Removing a differencing VHD's link to its parent, the last step of `flatten`: once the
//! child holds every sector of its virtual disk, it becomes a dynamic disk in one plan applied
//! through the redo journal.
//!
//! What changes (FORMAT.md A.6, A.7):
//! - every parent locator entry is cleared and its data zeroed where the link editor deems it
//!   safe (the same rules as a reparent's dropped locators);
//! - the parent unicode name, parent unique id and parent time stamp become zeros (a dynamic
//!   disk has none), and the dynamic header checksum is recomputed;
//! - both footer copies (offset 0 and the end) get disk type 3 (dynamic) and a new checksum;
//!   nothing else in them changes (the unique id stays).
//!
//! Data blocks, the BAT and the bitmaps are never written. A dynamic VHD reads a whole
//! allocated block as data and ignores its bitmap, so the caller must have filled every sector
//! of every allocated block first (`flatten` does, through the write engine).
//!
//! The simulated result must parse as a dynamic disk with the same table, size and unique id,
//! and no parent linkage, before the plan is returned.

use binrw::BinWrite;

use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::simulate::same as check;
use crate::txn::WriteOp;

use super::super::format;
use super::super::VhdFile;
use super::edit::{self, read_padded};
use super::{require_differencing, DropLocators, LinkEdit, Planned};

/// Plan the removal of `file`'s parent linkage (it must be a differencing disk).
pub(crate) fn plan_unlink(file: VhdFile, opts: &OpenOptions) -> Result<Planned> {
    let file = require_differencing(file)?;
    let edit = LinkEdit {
        absolute: None,
        relative: None,
        drop: DropLocators::AllOthers,
        parent_name: Some(String::new()),
        linkage: Some(([0; 16], 0)),
        sync_footers: false,
    };
    let mut built = edit::build(&file, opts, &edit)?;
    let mut footer = file.footer.raw.clone();
    let old_type = footer.disk_type;
    footer.disk_type = format::DISK_TYPE_DYNAMIC;
    footer.checksum = 0;
    footer.checksum = format::checksum(&footer_bytes(&footer)?, format::FOOTER_CHECKSUM_OFFSET);
    let new = footer_bytes(&footer)?;
    let len = built.plan.new_len;
    for (at, what) in [
        (0, "footer copy at offset 0"),
        (file.footer.end_offset, "end footer"),
    ] {
        let old = read_padded(&*file.src, at, format::FOOTER_BYTES as u64, len)?;
        if old != new {
            built.plan.writes.push(WriteOp {
                offset: at,
                old,
                data: new.clone(),
                what: format!("{what}: disk type dynamic"),
            });
        }
    }
    built.plan.changes.push(crate::txn::FieldChange {
        structure: "vhd footer".into(),
        field: "disk type".into(),
        old: old_type.to_string(),
        new: format::DISK_TYPE_DYNAMIC.to_string(),
    });
    simulate(file, opts, &built.plan)?;
    Ok(Planned {
        plan: built.plan,
        simulated: crate::simulate::Simulated::none(),
        notes: built.notes,
        warnings: built.warnings,
    })
}

fn footer_bytes(f: &format::Footer) -> Result<Vec<u8>> {
    let mut c = std::io::Cursor::new(Vec::new());
    f.write(&mut c)
        .map_err(|e| Error::Internal(format!("encoding the vhd footer: {e}")))?;
    Ok(c.into_inner())
}

/// The result must open as a dynamic disk with the same blocks, size and identity, and no
/// parent linkage or locator left.
fn simulate(before: VhdFile, opts: &OpenOptions, plan: &crate::txn::Plan) -> Result<()> {
    let writes = plan.write_pairs();
    let src = Box::new(before.src.clone());
    let after = crate::simulate::reopen(src, writes, plan.new_len, |s| VhdFile::open(s, opts))?;
    check(after.shape.disk_type == DiskType::Dynamic, "disk type")?;
    super::verify::same_disk(&before, &after)?;
    check(after.slots.is_empty(), "set of parent locators")?;
    let linkage = after
        .header
        .as_ref()
        .map(|h| (h.raw.parent_unique_id, h.raw.parent_time_stamp));
    check(linkage == Some(([0; 16], 0)), "parent linkage")
}
