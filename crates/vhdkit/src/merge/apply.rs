//! [`MergePlan::apply`]: locks, recovery, the record, the linkage, the copy, the verification
//! and the deletions (see the module docs for the order and why).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::copy::{self, Walk};
use super::io::{Io, IoFile};
use super::plan::{self, Opened};
use super::record::{self, Phase, Record};
use super::{siblings, MergePlan, MergeReport};
use crate::chain::{Chain, ChainOptions};
use crate::disk::{Disk, DiskFormat};
use crate::error::{Error, Result, ResultExt};
use crate::lock::FileLock;
use crate::progress::Progress;
use crate::txn::journal::{self, FileJournal, Recovery};
use crate::view::ChainView;
use crate::write::{WritableDisk, WritableImage};

/// See [`MergePlan::apply`]; every change goes through `io`.
pub(super) fn apply(p: &MergePlan, io: &Io, progress: &mut dyn Progress) -> Result<MergeReport> {
    // ANCESTOR first, then the merged files top down: one order for every merge.
    let anc_lock = crate::lock::lock_disk(&p.ancestor)?;
    if let Some(r) = deleting_record(p)? {
        return finish(p, io, &r, anc_lock);
    }
    let mut locks = Vec::new();
    for m in &p.merged {
        locks.push(crate::lock::lock_disk(m)?);
    }
    let mut report = MergeReport::default();
    for (path, lock) in std::iter::once((&p.ancestor, &anc_lock)).chain(p.merged.iter().zip(&locks))
    {
        report.recovered |= recover(path, lock.file())?;
    }
    // Planned again under the locks: what is merged, the siblings and the record are as the
    // files now are.
    let o = plan::open(&p.child, Some(&p.ancestor), &p.chain)?;
    siblings::refuse_siblings(&o.paths, o.k, &p.chain)?;
    let same = o.paths.get(..o.k).is_some_and(|m| m == p.merged.as_slice());
    if !same {
        return Err(Error::refused(
            "the chain changed since the plan was made; plan again (nothing was written)",
        ));
    }
    let mut rec = match plan::matching_record(&o, &p.ancestor)? {
        Some(r) => {
            report.resumed = true;
            r
        }
        None => {
            let r = o.record(p.new_id)?;
            enough_space(anc_lock.file(), &o)?;
            record::store_with(io, &p.ancestor, &r)?;
            r
        }
    };
    if rec.phase == Phase::Copying {
        let locked = Locked {
            ancestor: &anc_lock,
            merged: &locks,
        };
        let copied = copy_phase(p, io, &locked, o, &rec, progress)?;
        (report.blocks, report.bytes_copied) = (copied.totals.blocks, copied.totals.bytes);
        report.bytes_kernel_copied = copied.by_kernel;
        rec.phase = Phase::Deleting;
        record::store_with(io, &p.ancestor, &rec)?;
    }
    drop(locks);
    let (deleted, kept) = delete_merged(io, &p.ancestor, &rec)?;
    report.deleted = deleted;
    report.kept = kept;
    drop(anc_lock);
    Ok(report)
}

/// The record beside the plan's ANCESTOR when it is this merge's and its copy verified: only
/// the deletions are left (some merged files, CHILD first, may be gone already).
fn deleting_record(p: &MergePlan) -> Result<Option<Record>> {
    let Some(r) = record::load(&p.ancestor)? else {
        return Ok(None);
    };
    let canon = |q: &PathBuf| std::fs::canonicalize(q).unwrap_or_else(|_| q.clone());
    let same = r
        .merged
        .iter()
        .map(|m| m.path.clone())
        .eq(p.merged.iter().map(canon));
    let ancestor = Disk::open(&p.ancestor).is_ok_and(|d| r.is_ancestor(d.identity()));
    Ok((r.phase == Phase::Deleting && same && ancestor).then_some(r))
}

/// Step 6 alone, under the locks of ANCESTOR and of the merged files still there.
fn finish(p: &MergePlan, io: &Io, r: &Record, anc_lock: FileLock) -> Result<MergeReport> {
    let mut locks = Vec::new();
    for m in p.merged.iter().filter(|m| crate::fsx::entry_exists(m)) {
        locks.push(crate::lock::lock_disk(m)?);
    }
    let (deleted, kept) = delete_merged(io, &p.ancestor, r)?;
    drop((locks, anc_lock));
    Ok(MergeReport {
        deleted,
        kept,
        resumed: true,
        ..MergeReport::default()
    })
}

/// Finish an interrupted vhdkit change of the locked file at `path`; a foreign journal is a
/// refusal. (A dirty VHDX log is replayed by the writer that opens the file, or in memory by
/// the readers of a merged file.)
fn recover(path: &Path, file: &File) -> Result<bool> {
    match journal::recover(file, &FileJournal::for_disk(path)).with_path(path)? {
        Recovery::Foreign { reason } => Err(Error::refused(format!(
            "a vhdkit journal beside {} does not belong to the file ({reason}); nothing was \
             written (see `vhdkit repair`)",
            path.display()
        ))),
        Recovery::Clean => Ok(false),
        _ => Ok(true),
    }
}

/// The locks apply holds: ANCESTOR's and the merged files', CHILD first.
struct Locked<'a> {
    ancestor: &'a FileLock,
    merged: &'a [FileLock],
}

/// A second descriptor of a locked file (it shares the lock), as a sink counted by `io`.
fn sink_of(io: &Io, lock: &FileLock, path: &Path) -> Result<IoFile> {
    let f = lock
        .file()
        .try_clone()
        .map_err(|e| Error::io("duplicating the locked descriptor", e))
        .with_path(path)?;
    Ok(io.sink(f))
}

/// Steps 3 to 5: the linkage (VHDX), the copy, the flush, the Virtual Disk ID (VHDX) and
/// the verification.
fn copy_phase(
    p: &MergePlan,
    io: &Io,
    locked: &Locked<'_>,
    o: Opened,
    rec: &Record,
    progress: &mut dyn Progress,
) -> Result<copy::Copied> {
    let k = o.k;
    if let Some(g) = rec.new_id {
        let d = p
            .merged
            .get(k - 1)
            .ok_or_else(|| Error::internal("no disk D"))?;
        let lock = locked
            .merged
            .get(k - 1)
            .ok_or_else(|| Error::internal("no lock of D"))?;
        crate::vhdx::reparent::set_linkage2(&sink_of(io, lock, d)?, &p.chain.open, g)
            .with_path(d)?;
    }
    drop(o);
    // CHILD's chain opened after the linkage change: D resolves ANCESTOR by either linkage
    // while its DataWriteGuid changes.
    let child = Chain::open(&p.child, &p.chain)?.into_view();
    let walk = Walk::of(&child, k)?;
    let totals = walk.count(&child)?;
    let sink = sink_of(io, locked.ancestor, &p.ancestor)?;
    let mut disk = ancestor_writer(&p.ancestor, sink.clone(), rec, &p.chain)?;
    let mut target = copy::Target {
        disk: &mut disk,
        file: sink.file(),
        io,
    };
    let done = copy::what_child_reads(&mut target, &child, &walk, totals.bytes, progress)
        .with_path(&p.ancestor)?;
    disk.close().with_path(&p.ancestor)?;
    let id = child.layers().first().and_then(virtual_disk_id);
    if let Some(id) = id {
        crate::vhdx::reparent::set_virtual_disk_id(&sink, &p.chain.open, id)
            .with_path(&p.ancestor)?;
    }
    // Parsed again from the file: what a reader finds once the merged files are gone.
    let after = Chain::open(&p.ancestor, &p.chain)?.into_view();
    let fresh = after
        .layers()
        .first()
        .ok_or_else(|| Error::internal("an empty chain"))?;
    copy::verify(fresh, &child, &walk, &done).with_path(&p.ancestor)?;
    if id.is_some() && virtual_disk_id(fresh) != id {
        return Err(Error::internal(
            "the merged ancestor's Virtual Disk ID is not the child's; the merged files and \
             the merge record are kept",
        )
        .with_path(&p.ancestor));
    }
    Ok(done)
}

/// A VHDX's Virtual Disk ID (none for a VHD).
pub(super) fn virtual_disk_id(d: &Disk) -> Option<uuid::Uuid> {
    match d.info().details {
        crate::disk::FormatInfo::Vhdx(v) => Some(v.virtual_disk_id),
        crate::disk::FormatInfo::Vhd(_) => None,
    }
}

/// ANCESTOR opened for writing through `file` (its locked descriptor), over its own parents.
fn ancestor_writer(
    path: &Path,
    file: IoFile,
    rec: &Record,
    opts: &ChainOptions,
) -> Result<WritableDisk> {
    let image: Box<dyn WritableImage> = match (rec.format, rec.new_id) {
        (DiskFormat::Vhdx, Some(g)) => Box::new(
            crate::vhdx::write::VhdxWriter::open(file, &opts.open)
                .with_path(path)?
                .with_data_write_guid(g),
        ),
        (DiskFormat::Vhdx, None) => {
            return Err(Error::internal("a VHDX merge without a new DataWriteGuid"))
        }
        (DiskFormat::Vhd, _) => {
            Box::new(crate::vhd::write::VhdWriter::open(file, &opts.open).with_path(path)?)
        }
    };
    // The writer opened first replayed a dirty log: the chain below reads the file as it is.
    let mut layers = Chain::open(path, opts)?.into_view().into_layers();
    let parents = (layers.len() > 1).then(|| {
        layers.remove(0);
        ChainView::new(layers)
    });
    Ok(WritableDisk::from_parts(image, parents))
}

/// Step 6: delete the merged files, CHILD first, each only while its identity is the recorded
/// one; sync their folders, then remove the record. Returns the files deleted and those kept
/// (with why).
pub(super) fn delete_merged(
    io: &Io,
    ancestor: &Path,
    rec: &Record,
) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let (mut deleted, mut kept) = (Vec::new(), Vec::new());
    for m in &rec.merged {
        if !crate::fsx::entry_exists(&m.path) {
            continue;
        }
        match Disk::open(&m.path).map(|d| d.identity()) {
            Ok(id) if id == m.id => {
                io.remove(&m.path)
                    .map_err(|e| Error::io("deleting a merged file", e).with_path(&m.path))?;
                let _ = io.remove(&crate::sidefile::journal(&m.path));
                deleted.push(m.path.clone());
            }
            Ok(id) => kept.push(format!(
                "{} kept: its identity is {id}, not the recorded {}",
                m.path.display(),
                m.id
            )),
            Err(e) => kept.push(format!("{} kept: {e}", m.path.display())),
        }
    }
    for m in &rec.merged {
        record::sync_folder_with(io, &m.path)
            .map_err(|e| Error::io("syncing the folder", e).with_path(&m.path))?;
    }
    record::remove_with(io, ancestor)?;
    Ok((deleted, kept))
}

/// Refuse before the first write when ANCESTOR's file system has less free space than the
/// blocks the copy may allocate need (`fsx::ensure_room`).
fn enough_space(file: &File, o: &Opened) -> Result<()> {
    let a = o.ancestor()?;
    let t = Walk::of(&o.view, o.k)?.count(&o.view)?;
    crate::fsx::ensure_room(file, t.new_blocks, a.block_size().unwrap_or(0), "the merge")
}
