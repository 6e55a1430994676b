//! `relink`: repoint every child under DIR whose parent does not resolve through a relative
//! locator at a file with the recorded identity (one scan builds the index), deepest parents
//! first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::repoint::{self, Repoint};
use super::scan::{FileKey, ParentRef, Scan, ScannedDisk};
use super::{
    digest, one_line, probe, scan_phase, tree_dir, under, ContentDigest, NoteReason, PathNote,
    Progress, ShareOptions, Steps,
};
use crate::error::{Error, Result};
use crate::tree::Uninspected;

/// One child `relink` repoints.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RelinkItem {
    /// The child.
    pub child: PathBuf,
    /// The identity it records for its parent.
    pub expected_id: Uuid,
    /// Where its parent resolves now, if anywhere.
    pub current: Option<PathBuf>,
    /// Through which locator.
    pub via: Option<crate::chain::Via>,
    /// The parent found by identity.
    pub new_parent: PathBuf,
    /// Why it is relinked (one of the `NoteReason::Relink*` reasons).
    pub reason: NoteReason,
    /// Other files with the same identity (the first one under DIR is preferred).
    pub alternatives: Vec<PathBuf>,
    /// Why it cannot be changed (read-only, in use), found while planning.
    pub refused: Option<NoteReason>,
    /// Order: the new parent's depth (base parents first).
    pub level: usize,
}

/// Everything `relink` will do.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RelinkPlan {
    /// The tree.
    pub dir: PathBuf,
    /// Extra folders searched.
    pub search: Vec<PathBuf>,
    /// Disks found (DIR and search folders).
    pub disks_found: usize,
    /// Children to repoint, in order.
    pub items: Vec<RelinkItem>,
    /// Children whose parent was found nowhere.
    pub unresolved: Vec<PathNote>,
    /// Files with a disk signature that could not be used.
    pub skipped: Vec<PathNote>,
    /// Paths under DIR or the search folders that could not be inspected.
    pub uninspected: Vec<Uninspected>,
    /// Children left alone because several files carry their parent's id with different
    /// contents (any choice could change the child's virtual contents).
    pub conflicts: Vec<PathNote>,
    /// Notes.
    pub notes: Vec<String>,
    /// True when there is nothing to do.
    pub nothing_to_do: bool,
}

impl RelinkPlan {
    /// True when something is unresolved, skipped or refused.
    pub fn has_findings(&self) -> bool {
        !self.unresolved.is_empty()
            || !self.skipped.is_empty()
            || !self.uninspected.is_empty()
            || !self.conflicts.is_empty()
            || self.items.iter().any(|i| i.refused.is_some())
    }
}

/// What [`apply_relink`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RelinkReport {
    /// Children repointed and verified.
    pub relinked: usize,
    /// Interrupted changes finished.
    pub journals_finished: usize,
    /// Refused (left unchanged).
    pub refused: Vec<PathNote>,
    /// Failed.
    pub failed: Vec<PathNote>,
}

impl RelinkReport {
    /// True when something was refused or failed.
    pub fn has_findings(&self) -> bool {
        !self.refused.is_empty() || !self.failed.is_empty()
    }
}

/// Plan `relink` of `dir`, looking for parents under `dir` and `search`. Reads only.
pub fn plan_relink<S: AsRef<Path>>(
    dir: impl AsRef<Path>,
    search: &[S],
    opts: &ShareOptions,
    mut progress: impl Progress,
) -> Result<RelinkPlan> {
    let progress: &mut dyn Progress = &mut progress;
    let dir = tree_dir(
        dir.as_ref(),
        " (relink scans a tree; for one file use `vhdkit reparent`)",
    )?;
    let mut roots = vec![dir.clone()];
    let mut search_abs = Vec::new();
    for s in search.iter().map(AsRef::as_ref) {
        let c = std::fs::canonicalize(s)
            .map_err(|e| Error::io("opening the search folder", e).with_path(s))?;
        roots.push(c.clone());
        search_abs.push(c);
    }
    let sc = scan_phase(&roots, opts, progress)?;
    let mut p = Planner::new(&sc, &dir, opts);
    for d in &sc.disks {
        p.consider(d);
    }
    let items = p.ordered();
    let (unresolved, conflicts) = (p.unresolved, p.conflicts);
    Ok(RelinkPlan {
        nothing_to_do: items.is_empty(),
        dir,
        search: search_abs,
        disks_found: sc.disks.iter().filter(|d| !d.outside).count(),
        items,
        unresolved,
        skipped: sc.skipped,
        uninspected: sc.uninspected,
        conflicts,
        notes: sc.notes,
    })
}

/// The state of a relink plan while children are considered one by one.
struct Planner<'a> {
    sc: &'a Scan,
    dir: &'a Path,
    opts: &'a ShareOptions,
    by_id: HashMap<Uuid, Vec<usize>>,
    digests: Digests,
    /// Child -> its chosen new parent.
    new_parent_key: HashMap<FileKey, FileKey>,
    items: Vec<(FileKey, RelinkItem)>,
    unresolved: Vec<PathNote>,
    conflicts: Vec<PathNote>,
}

impl<'a> Planner<'a> {
    fn new(sc: &'a Scan, dir: &'a Path, opts: &'a ShareOptions) -> Self {
        let mut by_id: HashMap<Uuid, Vec<usize>> = HashMap::new();
        for (i, d) in sc.disks.iter().enumerate() {
            by_id.entry(d.id).or_default().push(i);
        }
        Planner {
            sc,
            dir,
            opts,
            by_id,
            digests: Digests::default(),
            new_parent_key: HashMap::new(),
            items: Vec::new(),
            unresolved: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    /// Files that could be `d`'s parent (its recorded ids, format, size and sector size), the
    /// current parent first, then files under DIR, then the rest.
    fn candidates(&self, d: &ScannedDisk, p: &ParentRef) -> Vec<&'a ScannedDisk> {
        let sc = self.sc;
        let ids = std::iter::once(p.expected_id).chain(p.alternate_id);
        let mut cands: Vec<&ScannedDisk> = ids
            .flat_map(|id| self.by_id.get(&id).cloned().unwrap_or_default())
            .filter_map(|i| sc.disks.get(i))
            .filter(|c| {
                c.key != d.key
                    && c.format == d.format
                    && c.virtual_size == d.virtual_size
                    && crate::sectors::logical_matches(d.logical_sector_size, c.logical_sector_size)
            })
            .collect();
        let current_key = p.resolved_key.as_ref();
        cands.sort_by_key(|c| {
            (
                Some(&c.key) != current_key,
                !under(&c.path, self.dir),
                c.outside,
            )
        });
        cands
    }

    /// Plan `d` when it is a child under DIR that needs relinking.
    fn consider(&mut self, d: &ScannedDisk) {
        if d.outside || !under(&d.path, self.dir) {
            return;
        }
        let Some(p) = &d.parent else { return };
        if p.via_relative() && !d.pending_journal {
            return;
        }
        let cands = self.candidates(d, p);
        let Some(best) = cands.first() else {
            self.unresolved.push(PathNote::new(
                &d.path,
                NoteReason::ParentNotFound {
                    id: p.expected_id,
                    dir: self.dir.to_path_buf(),
                    failure: p.failure.clone().unwrap_or_default(),
                },
            ));
            return;
        };
        let current_key = p.resolved_key.as_ref();
        if let Some(why) = ambiguity(&cands, current_key, &mut self.digests, self.opts) {
            self.conflicts.push(PathNote::new(&d.path, why));
            return;
        }
        let refused =
            blind_choice(self.sc, current_key, &best.key).or_else(|| probe::child_refusal(d));
        self.new_parent_key.insert(d.key.clone(), best.key.clone());
        let item = RelinkItem {
            child: d.path.clone(),
            expected_id: p.expected_id,
            current: p.resolved.clone(),
            via: p.via.clone(),
            new_parent: best.path.clone(),
            reason: relink_reason(p),
            alternatives: cands.iter().skip(1).map(|c| c.path.clone()).collect(),
            refused,
            level: 0,
        };
        self.items.push((d.key.clone(), item));
    }

    /// The items in order: a child whose new parent is itself relinked comes after it.
    fn ordered(&mut self) -> Vec<RelinkItem> {
        let idx = self.sc.by_key();
        let parent_key = |k: &FileKey| -> Option<FileKey> {
            self.new_parent_key.get(k).cloned().or_else(|| {
                idx.get(k)
                    .and_then(|&i| self.sc.disks.get(i))
                    .and_then(|d| d.parent.as_ref())
                    .and_then(|p| p.resolved_key.clone())
            })
        };
        let mut out = Vec::new();
        for (k, mut it) in std::mem::take(&mut self.items) {
            let mut level = 0;
            let mut cur = self.new_parent_key.get(&k).cloned();
            while let Some(c) = cur {
                if level > 1024 {
                    break;
                }
                match parent_key(&c) {
                    Some(n) => {
                        level += 1;
                        cur = Some(n);
                    }
                    None => break,
                }
            }
            it.level = level;
            out.push(it);
        }
        out.sort_by(|a, b| a.level.cmp(&b.level).then(a.child.cmp(&b.child)));
        out
    }
}

/// Why a child is relinked. A relative locator that already names the chosen file: only a
/// pending journal.
fn relink_reason(p: &ParentRef) -> NoteReason {
    match (&p.resolved, &p.via) {
        (None, _) => NoteReason::RelinkUnresolved,
        (Some(_), _) if p.via_symlink => NoteReason::RelinkViaSymlink,
        (Some(_), _) if p.via_relative() => NoteReason::RelinkPending,
        (Some(_), Some(v)) => NoteReason::RelinkOnlyVia(v.clone()),
        (Some(_), None) => NoteReason::RelinkIndirect,
    }
}

/// Why choosing `best` would be a decision from a partial view: the child's current parent is
/// not the file chosen, and a path that could not be inspected (or a disk that does not open)
/// may be another file with the recorded id and different contents.
fn blind_choice(sc: &Scan, current: Option<&FileKey>, best: &FileKey) -> Option<NoteReason> {
    let count = sc.uninspected.len() + sc.skipped.len();
    (current != Some(best) && count > 0).then_some(NoteReason::PartialView { count })
}

/// Content digests of candidate parents, each computed once (`Err`: why it could not be read).
#[derive(Default)]
struct Digests(HashMap<FileKey, ContentDigest>);

impl Digests {
    fn of(&mut self, d: &ScannedDisk, opts: &ShareOptions) -> ContentDigest {
        self.0
            .entry(d.key.clone())
            .or_insert_with(|| {
                digest::chain_digest(&d.path, &opts.chain, &mut |_| {})
                    .map(|(h, _)| h)
                    .map_err(|e| one_line(&e))
            })
            .clone()
    }
}

/// Why no candidate may be chosen: several files carry the recorded id and their virtual
/// contents are not proven equal. The child's current parent, when it is one of them, is always
/// a safe choice (its contents do not change).
fn ambiguity(
    cands: &[&ScannedDisk],
    current: Option<&FileKey>,
    digests: &mut Digests,
    opts: &ShareOptions,
) -> Option<NoteReason> {
    if cands.len() < 2 || cands.iter().any(|c| Some(&c.key) == current) {
        return None;
    }
    let mut seen: Vec<(String, &Path)> = Vec::new();
    for c in cands {
        match digests.of(c, opts) {
            Ok(h) => seen.push((h, &c.path)),
            Err(error) => {
                return Some(NoteReason::CandidateUnreadable {
                    path: c.path.clone(),
                    error,
                })
            }
        }
    }
    let (h0, p0) = seen.first()?;
    let (_, p1) = seen.iter().find(|(h, _)| h != h0)?;
    Some(NoteReason::ContentsDiffer {
        first: p0.to_path_buf(),
        second: p1.to_path_buf(),
    })
}

/// Carry out a relink plan.
pub fn apply_relink(
    plan: &RelinkPlan,
    opts: &ShareOptions,
    mut progress: impl Progress,
) -> Result<RelinkReport> {
    let progress: &mut dyn Progress = &mut progress;
    let mut rep = RelinkReport::default();
    let mut steps = Steps::new(opts);
    progress.start("relink", Some(plan.items.len() as u64));
    // Items are sorted by level (new parents' depth); one level's children are independent, so
    // each level is repointed in batches.
    let mut rest: &[RelinkItem] = &plan.items;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|it| it.level == first.level).count();
        let (level, next) = rest.split_at(n);
        rest = next;
        let reqs: Vec<Repoint<'_>> = level
            .iter()
            .map(|it| Repoint {
                child: &it.child,
                new_parent: &it.new_parent,
                repoint: true,
                // Only looked for when the child is not refused (the plan may be old).
                pending_journal: it.refused.is_none()
                    && crate::fsx::entry_exists(&crate::sidefile::journal(&it.child)),
                refused: it.refused.as_ref(),
            })
            .collect();
        let out = repoint::repoint_all(&reqs, opts, &mut steps, progress);
        for d in &out.done {
            rep.relinked += 1;
            rep.journals_finished += usize::from(d.journal_finished);
        }
        rep.refused.extend(out.refused);
        rep.failed.extend(out.failed);
        if out.cancelled {
            // Between children: each repoint is crash-safe, a rerun finishes the rest.
            progress.finish();
            return Err(crate::progress::cancelled());
        }
    }
    progress.finish();
    Ok(rep)
}
