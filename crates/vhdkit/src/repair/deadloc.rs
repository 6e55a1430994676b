//! Dropping the parent locators that point nowhere when another one leads to the parent now
//! ([`crate::check::deadloc`] says which are dead and which are always kept). The plans come
//! from each format's link editor; VHD applies through the redo journal, VHDX through the log
//! (DataWriteGuid unchanged).

use std::path::{Path, PathBuf};

use super::StructureRepair;
use crate::check::deadloc::{self, Dead};
use crate::check::Finding;
use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::txn::{journal, Plan};
use crate::vhdx::update::Session;

/// Drop the dead locators of `path` (or, on a dry run, say which would go).
pub(super) fn dead_locators(
    path: &Path,
    dry_run: bool,
    confine: &[PathBuf],
) -> Result<Vec<StructureRepair>> {
    let Some(a) = deadloc::analyse(path, confine) else {
        return Ok(Vec::new());
    };
    let dead = a.droppable();
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let applied = match a.format {
        DiskFormat::Vhd => drop_vhd(path, dead, dry_run)?,
        DiskFormat::Vhdx => drop_vhdx(path, dead, dry_run)?,
    };
    if !applied {
        return Ok(Vec::new());
    }
    let verb = if dry_run { "would" } else { "did" };
    let via = a.resolved_via.clone().unwrap_or_default();
    let code = match a.format {
        DiskFormat::Vhd => "vhd.locator.dead",
        DiskFormat::Vhdx => "vhdx.locator.dead",
    };
    Ok(dead
        .iter()
        .map(|d| StructureRepair {
            code,
            action: format!(
                "{verb} drop {} (the parent resolves through {via})",
                d.describe()
            ),
        })
        .collect())
}

/// VHD: plan the drop and (unless `dry_run`) apply it through the redo journal.
fn drop_vhd(path: &Path, dead: &[Dead], dry_run: bool) -> Result<bool> {
    let plan = vhd_plan(path, dead).map_err(|e| e.with_path(path))?;
    if !dry_run {
        let (_lock, w) = crate::lock::locked_file(path)?;
        super::journal_writable(path)?;
        journal::apply(&w, &journal::FileJournal::for_disk(path), &plan)
            .map_err(|e| e.with_path(path))?;
    }
    Ok(true)
}

/// VHDX: plan the drop and (unless `dry_run`) commit it through the log. `false` when a log
/// is still to be replayed: nothing is written then.
fn drop_vhdx(path: &Path, dead: &[Dead], dry_run: bool) -> Result<bool> {
    let writes = vhdx_writes(path, dead).map_err(|e| e.with_path(path))?;
    if dry_run {
        return Ok(true);
    }
    let (_lock, w) = crate::lock::locked_file(path)?;
    let headers = crate::vhdx::header::read_headers(&w).map_err(|e| e.with_path(path))?;
    if !headers.current.log_guid.is_nil() {
        return Ok(false);
    }
    Session::new(&w, headers.current.clone(), headers.current_index)
        .commit(&writes)
        .map_err(|e| e.with_path(path))?;
    Ok(true)
}

/// A finding for a person when dead-looking locators exist but no locator entry leads to the
/// parent now (nothing is dropped then).
pub(super) fn unresolved_finding(path: &Path, confine: &[PathBuf]) -> Option<Finding> {
    let a = deadloc::analyse(path, confine)?;
    if a.resolved_via.is_some() || a.dead.is_empty() {
        return None;
    }
    let list: Vec<String> = a.dead.iter().map(Dead::describe).collect();
    Some(Finding::new(
        "chain.parent_missing",
        "chain link",
        None,
        format!(
            "no locator leads to the parent now, so none is dropped: {}",
            list.join("; ")
        ),
    ))
}

/// Offsets of the VHD locator entries that repair would drop (for its dry-run report).
pub(super) fn droppable_vhd_entries(path: &Path, confine: &[PathBuf]) -> Vec<u64> {
    deadloc::analyse(path, confine)
        .filter(|a| a.format == DiskFormat::Vhd)
        .map(|a| a.droppable().iter().filter_map(|d| d.offset).collect())
        .unwrap_or_default()
}

/// Plan the removal of `dead` (VHD slots) from the VHD at `path` through the VHD link editor:
/// the entries zeroed, the dynamic header checksum recomputed, and each dead locator's data
/// zeroed where that is safe (see [`crate::vhd::link`]).
fn vhd_plan(path: &Path, dead: &[Dead]) -> Result<Plan> {
    crate::vhd::link::drop_locators(path, dead.iter().filter_map(|d| d.slot).collect())
}

/// Plan the removal of the `dead` keys from the VHDX parent locator item at `path` through the
/// link editor: every other key (`parent_linkage`/`parent_linkage2` and unknown ones included)
/// kept byte for byte, the item re-encoded at the same offset with its freed tail zeroed, and
/// the metadata table entry's length updated. Returns the writes for one `Session::commit`.
fn vhdx_writes(path: &Path, dead: &[Dead]) -> Result<Vec<(u64, Vec<u8>)>> {
    use crate::error::ResultExt;
    use crate::vhdx::locator::link::{self, LinkEdit, Placement};
    let opts = crate::disk::OpenOptions::default();
    let (src, _) = crate::disk::open_source(path)?;
    if crate::disk::detect(&*src).with_path(path)? != DiskFormat::Vhdx {
        return Err(Error::InvalidArgument("not a VHDX".into()));
    }
    let file = crate::vhdx::VhdxFile::open(src, &opts).with_path(path)?;
    let mut edit = LinkEdit::keep_all(Placement::InPlace);
    for d in dead {
        edit.drop_key(&d.kind)?;
    }
    Ok(link::plan(&file, &edit, &opts.limits)?.into_log_writes())
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::disk::Disk;
    use crate::txn::fault::{recover_crash_image, FaultPlan, FaultyFile, MemJournal};
    use crate::txn::journal::{JournalStore, Recovery};
    use vhdkit_testkit::vhd::{Locator, VhdBuilder};

    const PID: [u8; 16] = *b"parent-identity!";

    fn chain_sha(child: &[u8], parent: &Path) -> String {
        let c = Disk::from_source(Box::new(child.to_vec()), &Default::default()).unwrap();
        let p = Disk::open(parent).unwrap();
        vhdkit_testkit::sha256_reader(crate::ChainView::new(vec![c, p]))
    }

    /// A crash at every mutating operation of the VHD drop leaves the old or the new file
    /// (after journal recovery), and the chain reads the same either way.
    #[test]
    fn vhd_drop_is_crash_safe() {
        let t = tempfile::tempdir().unwrap();
        let mut p = VhdBuilder::dynamic(4 << 20).unique_id(PID);
        p.write(0, &[0x11; 4096]);
        let parent = t.path().join("parent.vhd");
        p.build().write_to(&parent);
        let mut c = VhdBuilder::differencing(4 << 20, PID)
            .locator(Locator::w2ru(r".\parent.vhd"))
            .locator(Locator::wi2r(r".\nowhere.vhd"));
        c.write(512, &[0x22; 512]);
        let child = t.path().join("child.vhd");
        c.build().write_to(&child);
        let a = deadloc::analyse(&child, &[]).unwrap();
        assert_eq!(a.resolved_via.as_deref(), Some("W2ru"));
        assert_eq!(a.droppable().len(), 1);
        let plan = vhd_plan(&child, a.droppable()).unwrap();
        let old = std::fs::read(&child).unwrap();
        let want = chain_sha(&old, &parent);
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        journal::apply(&f, &MemJournal::new(fp.clone()), &plan).unwrap();
        let new = f.contents_synced();
        assert_ne!(new, old);
        let total = fp.count();
        assert!(total >= 4, "{total}");
        for k in 1..=total {
            let fp = FaultPlan::new(Some(k));
            let f = FaultyFile::new(old.clone(), fp.clone());
            let j = MemJournal::new(fp.clone());
            assert!(journal::apply(&f, &j, &plan).is_err(), "k={k}");
            for image in [f.contents_all_written(), f.contents_synced()] {
                let (r, got, _) = recover_crash_image(image, j.load().unwrap());
                assert!(!matches!(r, Recovery::Foreign { .. }), "k={k}: {r:?}");
                assert!(got == old || got == new, "k={k}: neither old nor new");
                assert_eq!(chain_sha(&got, &parent), want, "k={k}");
            }
        }
    }
}
