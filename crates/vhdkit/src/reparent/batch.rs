//! [`apply_batch`]: many children with one set of durability barriers.

use std::path::Path;

use super::apply::{apply_to, lock_child, refuse_foreign, vhd_report};
use super::{ApplyReport, ReparentPlan};
use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::lock::FileLock;
use crate::txn::barrier::{Barrier, FsBarrier};
use crate::txn::journal::{self, FileJournal, JournalStore, Recovery};
use crate::txn::Sink;

/// [`super::apply`] for many children at once, with the same checks for each and one result
/// per plan (in order); the chains are not re-opened. VHD children are written as one batch
/// through [`journal::apply_batch`]: each keeps its own journal beside it (so recovery is
/// unchanged), but the batch needs four durability barriers in all (on Linux one `syncfs` per
/// file system each) instead of about four `fsync`s per child. VHDX children go one by one
/// through their own log, as with [`super::apply`].
///
/// The plans must be independent: no child may be the new parent (or in the new parent's
/// chain) of another plan of the same batch.
pub fn apply_batch(plans: &[&ReparentPlan]) -> Vec<Result<ApplyReport>> {
    let mut out: Vec<Option<Result<ApplyReport>>> = plans.iter().map(|_| None).collect();
    let mut opened: Vec<(usize, FileLock, FileJournal)> = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        match lock_child(p) {
            Ok(l) => opened.push((i, l, FileJournal::for_disk(&p.child))),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let barrier = vhd_barrier(plans, &opened, &mut out);
    let pending: Vec<&(usize, FileLock, FileJournal)> = opened
        .iter()
        .filter(|(i, _, _)| out[*i].is_none())
        .collect();
    let items: Vec<BatchTarget<'_>> = pending
        .iter()
        .map(|(i, l, j)| {
            (
                l.file() as &dyn Sink,
                j as &(dyn JournalStore + Sync),
                plans[*i],
            )
        })
        .collect();
    let results = match &barrier {
        Some(b) => apply_batch_to(&items, b),
        None => apply_batch_to(&items, &NoVhdBarrier),
    };
    for ((i, _, _), r) in pending.into_iter().zip(results) {
        out[*i] = Some(r.map_err(|e| e.with_path(&plans[*i].child)));
    }
    finish(out)
}

/// The barrier for the locked VHD children, or `None` when there are none; when it cannot be
/// prepared, each of them gets that error in `out`.
fn vhd_barrier(
    plans: &[&ReparentPlan],
    opened: &[(usize, FileLock, FileJournal)],
    out: &mut [Option<Result<ApplyReport>>],
) -> Option<FsBarrier> {
    let is_vhd = |i: usize| plans[i].format != DiskFormat::Vhdx;
    let vhd_paths: Vec<&Path> = opened
        .iter()
        .filter(|(i, _, _)| is_vhd(*i))
        .map(|(i, _, _)| plans[*i].child.as_path())
        .collect();
    if vhd_paths.is_empty() {
        return None;
    }
    match FsBarrier::for_disks(&vhd_paths) {
        Ok(b) => Some(b),
        Err(e) => {
            for (i, _, _) in opened.iter().filter(|(i, _, _)| is_vhd(*i)) {
                out[*i] = Some(Err(Error::io(
                    "preparing the durability barrier",
                    std::io::Error::new(e.kind(), e.to_string()),
                )
                .with_path(&plans[*i].child)));
            }
            None
        }
    }
}

/// Every slot filled; one left empty (never expected) is an error, not a panic.
fn finish(out: Vec<Option<Result<ApplyReport>>>) -> Vec<Result<ApplyReport>> {
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::InvalidArgument("not applied".into()))))
        .collect()
}

/// One child of [`apply_batch_to`]: the file, its journal and its plan.
pub type BatchTarget<'a> = (
    &'a dyn Sink,
    &'a (dyn JournalStore + Sync),
    &'a ReparentPlan,
);

/// The barrier of a batch without VHD children: never called.
struct NoVhdBarrier;

impl Barrier for NoVhdBarrier {
    fn barrier(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("no barrier for this batch"))
    }
}

/// [`apply_batch`] on any targets, journal stores and barrier (fault-injection tests use
/// [`crate::txn::fault`]). Each VHD child first has a pending journal finished (or a foreign
/// one refused), one by one; then all are written as one batch. VHDX children go through
/// [`apply_to`] one by one.
pub fn apply_batch_to(
    items: &[BatchTarget<'_>],
    barrier: &dyn Barrier,
) -> Vec<Result<ApplyReport>> {
    let mut out: Vec<Option<Result<ApplyReport>>> = items.iter().map(|_| None).collect();
    let mut batch = Vec::new();
    let mut recoveries = Vec::new();
    for (i, (target, store, plan)) in items.iter().enumerate() {
        if plan.format == DiskFormat::Vhdx {
            out[i] = Some(apply_to(*target, *store, plan));
            continue;
        }
        match journal::recover(*target, *store) {
            Ok(Recovery::Foreign { reason }) => out[i] = Some(Err(refuse_foreign(*store, &reason))),
            Ok(r) => {
                batch.push(i);
                recoveries.push(r);
            }
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let jitems: Vec<journal::BatchItem<'_>> = batch
        .iter()
        .map(|&i| journal::BatchItem {
            target: items[i].0,
            store: items[i].1,
            plan: items[i].2.txn(),
        })
        .collect();
    let results = journal::apply_batch(&jitems, barrier);
    for ((i, recovery), r) in batch.into_iter().zip(recoveries).zip(results) {
        let plan = items[i].2;
        out[i] = Some(r.map(|()| vhd_report(recovery, plan)));
    }
    finish(out)
}
