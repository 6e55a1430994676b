//! Carrying out a [`SharePlan`]: place each keeper, repoint its group's children
//! ([`super::repoint`]), and only then remove the names the plan allows.

use std::fs;
use std::path::Path;

use super::repoint::{self, reparent_options, Repoint};
use super::{
    digest, lock, one_line, prove, same_file, scan, sync_dir, GroupPlan, KeeperAction, NoteReason,
    PathNote, Progress, ShareOptions, SharePlan, ShareReport, Steps,
};
use crate::disk::Disk;
use crate::error::Result;
use crate::reparent;

/// Carry out a share plan, group by group (lowest level first). Refusals and failures are
/// reported, never fatal to other groups; a group's copies are deleted only when every child of
/// the group was repointed and verified.
pub fn apply_share(
    plan: &SharePlan,
    opts: &ShareOptions,
    mut progress: impl Progress,
) -> Result<ShareReport> {
    let progress: &mut dyn Progress = &mut progress;
    let mut rep = ShareReport {
        size_before: plan.size_before,
        ..ShareReport::default()
    };
    let mut steps = Steps::new(opts);
    progress.start(
        "repoint",
        Some(plan.groups.iter().map(|g| g.children.len() as u64).sum()),
    );
    let mut run = || -> Result<()> {
        for g in &plan.groups {
            // Between groups, and between children inside one (see `repoint_all`): each
            // change is crash-safe on its own, so stopping there leaves every disk consistent.
            crate::progress::check(progress)?;
            if apply_group(g, opts, &mut steps, progress, &mut rep)? {
                rep.groups_done += 1;
            }
        }
        Ok(())
    };
    let done = run();
    progress.finish();
    done?;
    rep.size_after = rep
        .size_before
        .saturating_add(rep.bytes_copied)
        .saturating_sub(rep.bytes_freed);
    Ok(rep)
}

/// One group: its keeper, its children, then its names. True when the group was completed;
/// an error only when `progress` cancelled it (then no name of the group is removed).
fn apply_group(
    g: &GroupPlan,
    opts: &ShareOptions,
    steps: &mut Steps,
    progress: &mut dyn Progress,
    rep: &mut ShareReport,
) -> Result<bool> {
    // Names the plan found the kernel will not let go (sticky folder, closed folder): never
    // tried, reported as refused whatever becomes of the group.
    let unremovable = g.kept_names.iter().filter(|k| k.refused());
    rep.refused.extend(unremovable.cloned());
    if let Some(r) = &g.keeper_refused {
        rep.refused.push(PathNote::new(&g.keeper, r.clone()));
        let copies = g.copies.iter().filter(|c| c.delete);
        rep.kept
            .extend(copies.map(|c| PathNote::new(&c.path, NoteReason::KeeperNotPlaced)));
        return Ok(false);
    }
    match place_keeper(g, opts, steps) {
        Ok(n) => {
            if matches!(g.action, KeeperAction::Move | KeeperAction::Copy) {
                rep.keepers_placed += 1;
            }
            if n > 0 {
                // What the copy occupies, holes and all (comparable with `du`).
                let m = fs::metadata(&g.keeper);
                rep.bytes_copied += m.map_or(n, |m| scan::allocated(&m));
            }
        }
        Err(r) => {
            rep.failed
                .push(PathNote::new(&g.keeper, NoteReason::Error(r)));
            return Ok(false);
        }
    }
    let reqs: Vec<Repoint<'_>> = g
        .children
        .iter()
        .map(|c| Repoint {
            child: &c.path,
            new_parent: &g.keeper,
            repoint: c.repoint,
            pending_journal: c.pending_journal,
            refused: c.refused.as_ref(),
        })
        .collect();
    let out = repoint::repoint_all(&reqs, opts, steps, progress);
    for d in &out.done {
        rep.journals_finished += usize::from(d.journal_finished);
        rep.children_repointed += usize::from(d.repointed);
    }
    if out.cancelled {
        return Err(crate::progress::cancelled());
    }
    let complete = out.complete();
    rep.refused.extend(out.refused);
    rep.failed.extend(out.failed);
    if !complete {
        let why = || NoteReason::ChildrenNotAllRepointed;
        let names = g.copies.iter().filter(|c| c.delete).map(|c| &c.path);
        let names = names.chain(&g.old_names).chain(&g.symlinks);
        rep.kept
            .extend(names.map(|path| PathNote::new(path, why())));
        return Ok(false);
    }
    remove_old_names(g, steps, rep);
    delete_copies(g, steps, rep);
    remove_symlinks(g, steps, rep);
    Ok(true)
}

/// Remove the other names of a moved keeper (never a name that is no longer the keeper's).
fn remove_old_names(g: &GroupPlan, steps: &mut Steps, rep: &mut ShareReport) {
    for n in &g.old_names {
        if n == &g.keeper || !n.exists() || !same_file(n, &g.keeper) {
            continue;
        }
        match fs::remove_file(n) {
            Ok(()) => {
                sync_dir(n);
                rep.old_names_removed += 1;
                steps.step();
            }
            Err(e) => rep
                .failed
                .push(PathNote::new(n, failed("removing the old name", &e))),
        }
    }
}

/// Delete the copies the removal rule allowed, each only while it is still the file planned and
/// no other process holds it.
fn delete_copies(g: &GroupPlan, steps: &mut Steps, rep: &mut ShareReport) {
    let mut ready = Vec::new();
    for c in g.copies.iter().filter(|c| c.delete) {
        if let Some(r) = &c.refused {
            rep.refused.push(PathNote::new(
                &c.path,
                NoteReason::NotDeleted(Box::new(r.clone())),
            ));
            continue;
        }
        let now = fs::metadata(&c.path).map(|m| scan::file_key(&c.path, &m));
        let rewritten = c
            .stamp
            .as_ref()
            .is_some_and(|s| prove::stamp(&c.path).as_ref() != Some(s));
        if now.as_ref().ok() != Some(&c.key) || rewritten {
            rep.kept
                .push(PathNote::new(&c.path, NoteReason::ChangedSincePlan));
            continue;
        }
        if lock::is_locked_elsewhere(&c.path) {
            rep.refused.push(PathNote::new(&c.path, NoteReason::InUse));
            continue;
        }
        ready.push(c);
    }
    for (c, removed) in ready.iter().zip(remove_all(&ready)) {
        match removed {
            Ok(()) => {
                rep.copies_deleted += 1;
                rep.bytes_freed = rep.bytes_freed.saturating_add(c.allocated);
                rep.bytes_freed_apparent = rep.bytes_freed_apparent.saturating_add(c.file_size);
                steps.step();
            }
            Err(e) => rep
                .failed
                .push(PathNote::new(&c.path, failed("deleting the copy", &e))),
        }
    }
}

/// Threads removing copies at once: unlinking a multi-GB file is the file system freeing its
/// extents (tens of ms on ext4), which runs in parallel across files.
const REMOVERS: usize = 4;

/// Remove every copy in `ready` (several at once), then sync each folder once. Results in order.
fn remove_all(ready: &[&super::CopyPlan]) -> Vec<std::io::Result<()>> {
    let per = ready.len().div_ceil(REMOVERS).max(1);
    let results: Vec<std::io::Result<()>> = std::thread::scope(|s| {
        let workers: Vec<_> = ready
            .chunks(per)
            .map(|part| {
                let w = s.spawn(move || {
                    part.iter()
                        .map(|c| fs::remove_file(&c.path))
                        .collect::<Vec<_>>()
                });
                (part.len(), w)
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(n, w)| {
                w.join().unwrap_or_else(|_| {
                    (0..n)
                        .map(|_| Err(std::io::Error::other("the removing thread failed")))
                        .collect()
                })
            })
            .collect()
    });
    // One sync per folder makes every removal in it durable.
    let mut dirs: Vec<&Path> = ready.iter().filter_map(|c| c.path.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
    results
}

/// A failed step, with the error's text.
fn failed(step: &'static str, e: &std::io::Error) -> NoteReason {
    NoteReason::Failed {
        step,
        error: e.to_string(),
    }
}

fn remove_symlinks(g: &GroupPlan, steps: &mut Steps, rep: &mut ShareReport) {
    for s in &g.symlinks {
        match fs::remove_file(s) {
            Ok(()) => {
                rep.symlinks_removed += 1;
                steps.step();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => rep
                .failed
                .push(PathNote::new(s, failed("removing the symlink", &e))),
        }
    }
}

/// Put the keeper in place and check it. Returns bytes copied.
fn place_keeper(g: &GroupPlan, opts: &ShareOptions, steps: &mut Steps) -> Result<u64, String> {
    // The plan's proof holds for the keeper as it was read: a stat, not another read.
    if let Some(s) = &g.keeper_stamp {
        if prove::stamp(&g.keeper_source).as_ref() != Some(s) {
            return Err(format!(
                "{} changed since the plan proved its contents; run again",
                g.keeper_source.display()
            ));
        }
    }
    if let Some(dir) = g.keeper.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut action = g.action;
    if action == KeeperAction::Move {
        action = link_keeper(g, steps)?;
    }
    let mut copied = 0;
    if action == KeeperAction::Copy {
        copied = copy_into_place(g, opts, steps)?;
    }
    verify_keeper(g, action, opts)?;
    Ok(copied)
}

fn appeared(keeper: &Path) -> String {
    format!(
        "{} appeared since the plan was made; run again",
        keeper.display()
    )
}

/// The move's first half: a hard link in SHARED (the old name goes once its children moved on).
/// Returns the action taken: a copy when SHARED turns out to be on another file system.
fn link_keeper(g: &GroupPlan, steps: &mut Steps) -> Result<KeeperAction, String> {
    if g.keeper.exists() {
        if !same_file(&g.keeper, &g.keeper_source) {
            return Err(appeared(&g.keeper));
        }
        return Ok(KeeperAction::Move);
    }
    match fs::hard_link(&g.keeper_source, &g.keeper) {
        Ok(()) => {
            sync_dir(&g.keeper);
            steps.step();
            Ok(KeeperAction::Move)
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => Ok(KeeperAction::Copy),
        Err(e) => Err(format!(
            "linking {} to {}: {e}",
            g.keeper_source.display(),
            g.keeper.display()
        )),
    }
}

/// Copy the keeper `src` to the new file `tmp` (created exclusively), keeping holes.
fn copy_keeper(src: &Path, tmp: &Path) -> Result<u64, String> {
    let what = |e: std::io::Error| format!("copying {} to {}: {e}", src.display(), tmp.display());
    let from = crate::fsx::open_disk(src).map_err(what)?;
    let to = crate::fsx::create_new(tmp).map_err(what)?;
    crate::fsx::copy_sparse(&from, &to).map_err(what)
}

/// Copy the keeper into SHARED under a temporary name, point a differencing copy at its parent
/// from its new folder, flush, and rename it into place. Returns bytes copied.
fn copy_into_place(g: &GroupPlan, opts: &ShareOptions, steps: &mut Steps) -> Result<u64, String> {
    if g.keeper.exists() {
        return Err(appeared(&g.keeper));
    }
    // Built under this process's name (never through what is planted there), copied
    // sparsely, and removed by the guard on every error path (ENOSPC included).
    crate::sidefile::remove_stale_partials(&g.keeper);
    let guard = crate::sidefile::PartialGuard::new(crate::sidefile::share_tmp(&g.keeper));
    let tmp = guard.path().to_path_buf();
    let _ = crate::fsx::remove_entry(&crate::sidefile::journal(&tmp));
    let copied = copy_keeper(&g.keeper_source, &tmp)?;
    steps.step();
    if let Some(kp) = &g.keeper_parent {
        let plan = reparent::plan(&tmp, &reparent_options(kp, opts)).map_err(|e| one_line(&e))?;
        reparent::apply(&plan).map_err(|e| one_line(&e))?;
        steps.step();
    }
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("flushing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, &g.keeper)
        .map_err(|e| format!("renaming {} into place: {e}", tmp.display()))?;
    guard.keep();
    sync_dir(&g.keeper);
    steps.step();
    Ok(copied)
}

/// The keeper has the group's identity, and a copy reads as its source did.
fn verify_keeper(g: &GroupPlan, action: KeeperAction, opts: &ShareOptions) -> Result<(), String> {
    let d = Disk::open_with(&g.keeper, &opts.chain.open).map_err(|e| one_line(&e))?;
    if d.identity() != g.id || d.virtual_size() != g.virtual_size {
        return Err(format!(
            "the keeper {} does not have the group's identity",
            g.keeper.display()
        ));
    }
    drop(d);
    if action != KeeperAction::Copy {
        return Ok(());
    }
    let Some(want) = &g.content_blake3 else {
        return Ok(());
    };
    let (h, _) =
        digest::chain_digest(&g.keeper, &opts.chain, &mut |_| {}).map_err(|e| one_line(&e))?;
    if &h != want {
        return Err(format!(
            "the copy {} does not read the same as its source",
            g.keeper.display()
        ));
    }
    Ok(())
}
