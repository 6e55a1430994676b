//! Repointing children at a new parent, shared by `share` and `relink`: each child is locked,
//! an interrupted vhdkit change beside it is finished first, its own layer is digested, its
//! reparent planned; the reparents of a batch share their durability barriers; then each child
//! is re-verified (its chain opens through the new parent and its own layer is unchanged).

use std::path::Path;

use super::{
    canonical, digest, lock, one_line, probe, NoteReason, PathNote, Progress, ShareOptions, Steps,
};
use crate::chain::{Chain, ChainOptions};
use crate::disk::{Disk, DiskFormat};
use crate::reparent::{self, ReparentOptions};

/// Children repointed per batch: their reparents share four durability barriers (see
/// [`reparent::apply_batch`]). Bounded so that the locks and handles held stay well under the
/// usual open-file limit.
const BATCH: usize = 128;

/// One child to repoint (or only to finish), as a plan lists it.
pub(super) struct Repoint<'a> {
    pub child: &'a Path,
    pub new_parent: &'a Path,
    /// False: only an interrupted change is finished.
    pub repoint: bool,
    pub pending_journal: bool,
    /// Why planning already refused it: it is left alone.
    pub refused: Option<&'a NoteReason>,
}

/// Why a child was left as it is. A refusal is an obstacle met before anything was written (the
/// lock, a read-only folder, a reparent the planner refuses); a failure is anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotRepointed {
    Refused(NoteReason),
    Failed(NoteReason),
}

/// A child repointed and verified (or only its interrupted change finished).
#[derive(Debug, Clone, Copy)]
pub(super) struct Done {
    /// The request asked for a repoint (not only a finish).
    pub repointed: bool,
    /// An interrupted change beside it was finished first.
    pub journal_finished: bool,
}

/// What happened to a list of children: the ones done, and the others with the reason, each
/// list in request order (children refused by the plan first).
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub done: Vec<Done>,
    pub refused: Vec<PathNote>,
    pub failed: Vec<PathNote>,
    /// The progress asked to stop: the children after the last one done were not touched.
    pub cancelled: bool,
}

impl Outcome {
    /// True when every child was done.
    pub fn complete(&self) -> bool {
        self.refused.is_empty() && self.failed.is_empty()
    }

    fn record(&mut self, child: &Path, r: Result<Done, NotRepointed>) {
        match r {
            Ok(d) => self.done.push(d),
            Err(NotRepointed::Refused(why)) => self.refused.push(PathNote::new(child, why)),
            Err(NotRepointed::Failed(why)) => self.failed.push(PathNote::new(child, why)),
        }
    }
}

/// A child locked, its layer digested and its reparent planned, ready for the batch.
struct Prepared {
    lock: lock::FileLock,
    before: String,
    plan: reparent::ReparentPlan,
}

/// A child after its preparation: `change` is `None` when it is not to be repointed.
struct Ready {
    journal_finished: bool,
    change: Option<Prepared>,
}

/// The reparent options that point a file at `new_parent` with the locators `opts` asks for.
pub(super) fn reparent_options(new_parent: &Path, opts: &ShareOptions) -> ReparentOptions {
    ReparentOptions {
        new_parent: new_parent.to_path_buf(),
        mode: opts.mode,
        chain: opts.chain.clone(),
        ..ReparentOptions::default()
    }
}

/// Repoint every request that planning did not refuse (see [`repoint_batches`]); those it
/// refused are reported with the planner's reason and not touched.
pub(super) fn repoint_all(
    reqs: &[Repoint<'_>],
    opts: &ShareOptions,
    steps: &mut Steps,
    progress: &mut dyn Progress,
) -> Outcome {
    let mut out = Outcome::default();
    let mut todo = Vec::with_capacity(reqs.len());
    for r in reqs {
        match r.refused {
            Some(why) => {
                progress.advance(1);
                out.record(r.child, Err(NotRepointed::Refused(why.clone())));
            }
            None => todo.push(r),
        }
    }
    let results = repoint_batches(&todo, opts, steps, progress);
    // A cancel leaves fewer results than requests: the rest were not touched.
    out.cancelled = results.len() < todo.len();
    for (r, res) in todo.into_iter().zip(results) {
        out.record(r.child, res);
    }
    out
}

/// Lock `r.child`, finish an interrupted change first, and plan its reparent.
fn prepare_child(
    r: &Repoint<'_>,
    opts: &ShareOptions,
    steps: &mut Steps,
) -> Result<Ready, NotRepointed> {
    let lock = lock::lock_for_change(r.child)
        .map_err(|why| NotRepointed::Refused(NoteReason::CannotChange(why)))?;
    let mut journal_finished = false;
    if r.pending_journal {
        let rep = crate::repair::repair(r.child, &crate::repair::RepairOptions::default())
            .map_err(|e| {
                NotRepointed::Failed(NoteReason::Failed {
                    step: "finishing the interrupted change",
                    error: e.to_string(),
                })
            })?;
        if rep.needs_attention() {
            return Err(NotRepointed::Refused(NoteReason::JournalMismatch(format!(
                "{:?}",
                rep.journal
            ))));
        }
        journal_finished = true;
        steps.step();
    }
    if !r.repoint {
        return Ok(Ready {
            journal_finished,
            change: None,
        });
    }
    let failed = |e: crate::Error| NotRepointed::Failed(NoteReason::Error(one_line(&e)));
    let disk = Disk::open_with(r.child, &opts.chain.open).map_err(failed)?;
    // The VHD journal is created beside the child: refused now, as the dry run predicted.
    if disk.format() == DiskFormat::Vhd {
        if let Some(why) = probe::journal_refusal(r.child) {
            return Err(NotRepointed::Refused(why));
        }
    }
    let before = digest::layer_digest(&disk)
        .map_err(|e| NotRepointed::Failed(NoteReason::Error(e.to_string())))?;
    drop(disk);
    let ropts = reparent_options(r.new_parent, opts);
    let plan = reparent::plan(r.child, &ropts)
        .map_err(|e| NotRepointed::Refused(NoteReason::Error(one_line(&e))))?;
    Ok(Ready {
        journal_finished,
        change: Some(Prepared { lock, before, plan }),
    })
}

/// Repoint children under locks, finishing interrupted changes first, in batches of [`BATCH`]
/// whose reparents share their durability barriers; then verify each: its chain opens through
/// its new parent and its own layer is unchanged. The children must be independent (none is
/// another's new parent or in its chain). One result per child, in order, up to the child
/// before which `progress` was cancelled (the batch prepared so far is still carried out).
fn repoint_batches(
    reqs: &[&Repoint<'_>],
    opts: &ShareOptions,
    steps: &mut Steps,
    progress: &mut dyn Progress,
) -> Vec<Result<Done, NotRepointed>> {
    let mut out = Vec::with_capacity(reqs.len());
    for chunk in reqs.chunks(BATCH) {
        let mut results = Vec::with_capacity(chunk.len());
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        let mut stop = false;
        for (i, r) in chunk.iter().enumerate() {
            if progress.cancelled() {
                stop = true;
                break;
            }
            progress.advance(1);
            results.push(prepare_child(r, opts, steps).map(|ready| {
                if let Some(p) = ready.change {
                    prepared.push((i, p));
                }
                Done {
                    repointed: r.repoint,
                    journal_finished: ready.journal_finished,
                }
            }));
        }
        let plans: Vec<&reparent::ReparentPlan> = prepared.iter().map(|(_, p)| &p.plan).collect();
        let applied = reparent::apply_batch(&plans);
        for ((i, p), a) in prepared.into_iter().zip(applied) {
            let (Some(r), Some(slot)) = (chunk.get(i), results.get_mut(i)) else {
                continue;
            };
            let verified = a.map_err(|e| one_line(&e)).and_then(|_| {
                steps.step();
                verify_child(r.child, r.new_parent, &p.before, &opts.chain)
            });
            drop(p.lock);
            if let Err(e) = verified {
                *slot = Err(NotRepointed::Failed(NoteReason::Error(e)));
            }
        }
        out.extend(results);
        if stop {
            break;
        }
    }
    out
}

fn verify_child(
    child: &Path,
    parent: &Path,
    before: &str,
    chain: &ChainOptions,
) -> Result<(), String> {
    let c = Chain::open(child, chain).map_err(|e| format!("re-verify: {}", one_line(&e)))?;
    let got = c
        .disks()
        .get(1)
        .and_then(|d| d.path())
        .map(canonical)
        .unwrap_or_default();
    if got != canonical(parent) {
        return Err(format!(
            "re-verify: its chain now resolves to {} instead of {}",
            got.display(),
            parent.display()
        ));
    }
    let after = c
        .disks()
        .first()
        .ok_or_else(|| "re-verify: empty chain".to_string())
        .and_then(|d| digest::layer_digest(d).map_err(|e| one_line(&e)))?;
    if after != before {
        return Err("re-verify: the child's own data changed (this is a bug)".into());
    }
    Ok(())
}
