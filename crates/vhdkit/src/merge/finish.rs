//! A merge record found by `check` and `repair` (the disk merged into is named, not CHILD):
//! `check` reports it; `repair` finishes a merge whose copy verified (phase deleting) and
//! leaves one still copying to a rerun of `vhdkit merge CHILD`, which resumes it.

use std::path::Path;

use super::record::{self, Phase, Record};
use crate::check::Finding;
use crate::disk::Disk;
use crate::error::Result;
use crate::repair::StructureRepair;

/// The finding code of an unfinished merge.
pub(crate) const UNFINISHED: &str = "file.merge_unfinished";
/// The finding code of a merge record that cannot be read.
pub(crate) const CORRUPT: &str = "file.merge_record_corrupt";

fn names(r: &Record) -> String {
    r.merged
        .iter()
        .map(|m| m.path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `check` says about the merge record beside `disk` (nothing when there is none).
pub(crate) fn findings(disk: &Path) -> Vec<Finding> {
    let at = crate::sidefile::merge_record(disk);
    let one = |code, msg: String| vec![Finding::new(code, "vhdkit merge record", None, msg)];
    match record::load(disk) {
        Ok(None) => Vec::new(),
        Ok(Some(r)) => {
            let top = r
                .merged
                .first()
                .map_or_else(String::new, |m| m.path.display().to_string());
            let what = match r.phase {
                Phase::Copying => format!(
                    "an interrupted merge of {} into this disk is recorded in {} (copying; \
                     the merged disks still read as before): rerun `vhdkit merge {top}` to \
                     finish it",
                    names(&r),
                    at.display()
                ),
                Phase::Deleting => format!(
                    "an interrupted merge into this disk is recorded in {} (its copy verified; \
                     {} are left to delete): `vhdkit repair {}` finishes it",
                    at.display(),
                    names(&r),
                    disk.display()
                ),
            };
            one(UNFINISHED, what)
        }
        Err(e) => one(
            CORRUPT,
            format!("{e}; a merge into this disk was interrupted"),
        ),
    }
}

/// `repair`'s step: finish a merge whose copy verified (delete the merged files still carrying
/// their recorded identity, then the record), under their locks; `dry_run` says what it would
/// do. `None` when there is no record, it cannot be read, it is still copying (`check`'s
/// finding stays) or the disk beside it is not the recorded ancestor.
pub(crate) fn repair_step(ancestor: &Path, dry_run: bool) -> Result<Option<StructureRepair>> {
    let Ok(Some(r)) = record::load(ancestor) else {
        return Ok(None);
    };
    let is_it = Disk::open(ancestor).is_ok_and(|d| r.is_ancestor(d.identity()));
    if r.phase != Phase::Deleting || !is_it {
        return Ok(None);
    }
    if dry_run {
        return Ok(Some(StructureRepair {
            code: UNFINISHED,
            action: format!(
                "would finish the interrupted merge into this disk: delete {} (their data is \
                 in this disk, verified) and the merge record",
                names(&r)
            ),
        }));
    }
    let mut locks = Vec::new();
    for m in r
        .merged
        .iter()
        .filter(|m| crate::fsx::entry_exists(&m.path))
    {
        locks.push(crate::lock::lock_disk(&m.path)?);
    }
    let (deleted, kept) = super::apply::delete_merged(&super::io::Io::default(), ancestor, &r)?;
    drop(locks);
    let mut action = format!(
        "finished the interrupted merge into this disk: deleted {} merged file(s)",
        deleted.len()
    );
    for k in kept {
        action.push_str("; ");
        action.push_str(&k);
    }
    Ok(Some(StructureRepair {
        code: UNFINISHED,
        action,
    }))
}
