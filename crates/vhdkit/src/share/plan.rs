//! Planning `share`: scan, group parents by identity, prove copies interchangeable by their
//! contents, choose each group's keeper, and list what every group will change. Nothing is
//! written; refusals are probed the way the real run meets them ([`super::probe`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::groups::{by_level, children_of, group_identities, hash_members, GKey};
use super::prove::Stamp;
use super::removal::Removal;
use super::scan::{self, FileKey, Scan, ScannedDisk};
use super::{
    canonical, probe, scan_phase, tree_dir, under, ChildPlan, Conflict, ContentDigest, CopyPlan,
    GroupPlan, KeeperAction, NoteReason, PathNote, Progress, ShareOptions, SharePlan,
};
use crate::disk::{DiskFormat, DiskType};
use crate::error::{Error, Result};

/// Plan `share` of `dir` into `into`. Reads only (scans, opens, hashes); the dry run's
/// predictions are probed as the real run meets them (files opened for writing and locked, then
/// released; folders asked for write access).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::share::{apply_share, plan_share, ShareOptions};
/// use vhdkit::{create, CreateParams};
///
/// // Two VM folders, each with its own copy of the same parent and a child over it.
/// let base = dir.path().join("vm1").join("base.vhdx");
/// std::fs::create_dir_all(dir.path().join("vm1"))?;
/// std::fs::create_dir_all(dir.path().join("vm2"))?;
/// create(&base, &CreateParams::dynamic(4 << 20))?;
/// std::fs::copy(&base, dir.path().join("vm2").join("base.vhdx"))?;
/// for vm in ["vm1", "vm2"] {
///     let folder = dir.path().join(vm);
///     create(&folder.join("disk.avhdx"), &CreateParams::differencing(folder.join("base.vhdx")))?;
/// }
///
/// let opts = ShareOptions::default();
/// let shared = dir.path().join("shared");
/// let plan = plan_share(dir.path(), &shared, &opts, ())?;
/// assert_eq!(plan.groups.len(), 1);
/// let done = apply_share(&plan, &opts, ())?;
/// assert_eq!(done.children_repointed, 2);
/// # Ok(())
/// # }
/// ```
pub fn plan_share(
    dir: impl AsRef<Path>,
    into: impl AsRef<Path>,
    opts: &ShareOptions,
    mut progress: impl Progress,
) -> Result<SharePlan> {
    let progress: &mut dyn Progress = &mut progress;
    let dir = tree_dir(dir.as_ref(), "")?;
    let into = absolute_into(into.as_ref())?;
    if into.exists() && !into.is_dir() {
        return Err(Error::InvalidOption {
            option: "into",
            detail: format!(
                "the shared folder {} exists and is not a folder",
                into.display()
            ),
        });
    }
    let mut roots = vec![dir.clone()];
    if into.is_dir() {
        roots.push(into.clone());
    }
    let sc = scan_phase(&roots, opts, progress)?;
    let (children_of, unresolved) = children_of(&sc);
    let groups = group_identities(&sc, &children_of);
    let hashed = hash_members(&sc, &groups, opts, progress)?;
    let mut skipped = sc.skipped.clone();
    skipped.extend(hashed.unreadable(&sc));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let mut p = Planner {
        sc: &sc,
        dir: &dir,
        into: &into,
        children_of,
        digests: hashed.digests,
        stamps: hashed.stamps,
        removal: Removal::new(opts.delete_copies, &sc.uninspected, &skipped),
        into_refused: into_refusal(&into),
        taken_names: HashSet::new(),
        keeper_of: HashMap::new(),
        notes: sc.notes.clone(),
        groups: Vec::new(),
        conflicts: Vec::new(),
    };
    for (level, key, members) in by_level(&sc, groups) {
        p.plan_group(level, key, &members);
    }
    let Planner {
        groups,
        conflicts,
        notes,
        ..
    } = p;
    let mut plan = SharePlan {
        nothing_to_do: groups.is_empty(),
        dir,
        into,
        delete_copies: opts.delete_copies,
        disks_found: sc.disks.iter().filter(|d| !d.outside).count(),
        skipped,
        uninspected: sc.uninspected.clone(),
        groups,
        conflicts,
        unresolved,
        notes,
        size_before: 0,
        size_after: 0,
        bytes_freed: 0,
        bytes_freed_apparent: 0,
        bytes_hashed: hashed.bytes_hashed,
        bytes_read: hashed.bytes_read,
        children_to_repoint: 0,
    };
    totals(&mut plan, &sc);
    Ok(plan)
}

/// The sizes and counts of a plan, from its groups and the disks scanned.
fn totals(plan: &mut SharePlan, sc: &Scan) {
    let mut seen = HashSet::new();
    plan.size_before = sc
        .disks
        .iter()
        .filter(|d| !d.outside && seen.insert(d.key.clone()))
        .map(|d| d.allocated)
        .sum();
    plan.bytes_freed = plan.groups.iter().map(|g| g.bytes_freed).sum();
    plan.bytes_freed_apparent = plan.groups.iter().map(|g| g.bytes_freed_apparent).sum();
    let bytes_copied: u64 = plan
        .groups
        .iter()
        .filter(|g| g.action == KeeperAction::Copy)
        .filter_map(|g| fs::metadata(&g.keeper_source).ok())
        .map(|m| scan::allocated(&m))
        .sum();
    plan.children_to_repoint = plan
        .groups
        .iter()
        .flat_map(|g| &g.children)
        .filter(|c| c.repoint && c.refused.is_none())
        .count();
    plan.size_after = plan
        .size_before
        .saturating_add(bytes_copied)
        .saturating_sub(plan.bytes_freed);
}

/// `into` as an absolute path, canonical as far as it exists.
fn absolute_into(into: &Path) -> Result<PathBuf> {
    let abs = if into.is_absolute() {
        into.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("reading the current folder", e))?
            .join(into)
    };
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(n), Some(p)) => {
                rest.push(n);
                existing = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = canonical(&existing);
    for n in rest.into_iter().rev() {
        out.push(n);
    }
    Ok(out)
}

fn dev_of(p: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mut q = p.to_path_buf();
        loop {
            if let Ok(m) = fs::metadata(&q) {
                return Some(m.dev());
            }
            if !q.pop() {
                return None;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = p;
        None
    }
}

/// Why SHARED (or the folder it would be created in) will refuse the keeper.
fn into_refusal(into: &Path) -> Option<NoteReason> {
    let mut probe = into.join("keeper");
    while !probe.parent().is_some_and(Path::is_dir) {
        if !probe.pop() {
            return None;
        }
    }
    probe::folder_refusal(&probe)
}

/// Where a group's keeper is (or will be) and how it gets there.
struct Keeper<'a> {
    disk: &'a ScannedDisk,
    path: PathBuf,
    source: PathBuf,
    action: KeeperAction,
}

/// The state of a share plan while its groups are planned, lowest level first.
struct Planner<'a> {
    sc: &'a Scan,
    dir: &'a Path,
    into: &'a Path,
    children_of: HashMap<FileKey, Vec<usize>>,
    digests: HashMap<usize, ContentDigest>,
    /// Proved base disks as they were read (the real run checks them before relying on it).
    stamps: HashMap<FileKey, Stamp>,
    removal: Removal,
    into_refused: Option<NoteReason>,
    /// Keeper paths already given to a group.
    taken_names: HashSet<PathBuf>,
    /// Keeper path per member key, for the keeper_parent of higher levels.
    keeper_of: HashMap<FileKey, PathBuf>,
    notes: Vec<String>,
    groups: Vec<GroupPlan>,
    conflicts: Vec<Conflict>,
}

impl<'a> Planner<'a> {
    fn in_into(&self, p: &Path) -> bool {
        under(p, self.into)
    }

    fn disks(&self, members: &[usize]) -> Vec<&'a ScannedDisk> {
        let sc = self.sc;
        members.iter().filter_map(|&i| sc.disks.get(i)).collect()
    }

    fn children(&self, d: &ScannedDisk) -> &[usize] {
        self.children_of
            .get(&d.key)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Plan one group: its kept class, keeper, copies, names and children.
    fn plan_group(&mut self, level: usize, (fmt, id, vsize): GKey, members: &[usize]) {
        let format = if fmt == 1 {
            DiskFormat::Vhdx
        } else {
            DiskFormat::Vhd
        };
        let Some((class, content)) = self.kept_class(format, id, members) else {
            return;
        };
        let ds = self.disks(&class);
        let Some(k) = self.choose_keeper(&ds, id) else {
            return;
        };
        self.taken_names.insert(k.path.clone());
        let keeper_parent = k.disk.parent.as_ref().and_then(|p| {
            p.resolved_key
                .as_ref()
                .and_then(|key| self.keeper_of.get(key).cloned())
                .or_else(|| p.resolved_real.clone())
        });
        for d in &ds {
            self.keeper_of.insert(d.key.clone(), k.path.clone());
        }
        let mut g = GroupPlan {
            format,
            id,
            virtual_size: vsize,
            level,
            content_blake3: content,
            files: ds.len(),
            keeper: k.path.clone(),
            keeper_source: k.source.clone(),
            action: k.action,
            keeper_parent: keeper_parent.filter(|_| k.disk.disk_type == DiskType::Differencing),
            copies: self.copies(&ds, &k),
            old_names: self.old_names(&k),
            symlinks: self.symlinks(&ds),
            kept_names: Vec::new(),
            keeper_refused: None,
            children: self.children_to_repoint(&ds, &k),
            bytes_freed: 0,
            bytes_freed_apparent: 0,
            keeper_stamp: self.stamp_of(k.disk),
        };
        self.settle_names(&mut g);
        let has_work = matches!(g.action, KeeperAction::Move | KeeperAction::Copy)
            || !g.children.is_empty()
            || !g.old_names.is_empty()
            || g.copies.iter().any(|c| c.delete)
            || !g.symlinks.is_empty();
        if has_work {
            self.groups.push(g);
        }
    }

    /// The members of the class kept (by content digest; a single file is its own class) and
    /// its digest; every other class is a conflict. `None` when no member could be hashed.
    fn kept_class(
        &mut self,
        format: DiskFormat,
        id: Uuid,
        members: &[usize],
    ) -> Option<(Vec<usize>, Option<String>)> {
        if members.len() <= 1 {
            return Some((members.to_vec(), None));
        }
        let mut classes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in members {
            if let Some(Ok(h)) = self.digests.get(&i) {
                classes.entry(h.clone()).or_default().push(i);
            }
        }
        // The class already in SHARED wins, then the largest, then the lowest digest.
        let in_shared = |m: &Vec<usize>| {
            self.disks(m)
                .iter()
                .any(|d| d.names.iter().any(|n| self.in_into(n)))
        };
        let (h, m) = classes
            .iter()
            .max_by(|a, b| {
                (in_shared(a.1), a.1.len())
                    .cmp(&(in_shared(b.1), b.1.len()))
                    .then(b.0.cmp(a.0))
            })
            .map(|(h, m)| (h.clone(), m.clone()))?;
        for (oh, om) in classes.iter().filter(|(oh, _)| **oh != h) {
            let ods = self.disks(om);
            let files = ods.iter().map(|d| (d.path.clone(), oh.clone())).collect();
            let children = ods
                .iter()
                .flat_map(|d| self.children(d).to_vec())
                .filter_map(|c| self.sc.disks.get(c).map(|d| d.path.clone()))
                .collect();
            self.conflicts.push(Conflict {
                id,
                format,
                kept_blake3: h.clone(),
                files,
                children,
            });
        }
        Some((m, Some(h)))
    }

    /// The keeper: a member already in SHARED, else the only file where it is, else the first
    /// member under DIR moved (same file system, not differencing) or copied into SHARED.
    fn choose_keeper(&mut self, ds: &[&'a ScannedDisk], id: Uuid) -> Option<Keeper<'a>> {
        let first = ds
            .iter()
            .find(|d| !d.outside)
            .or_else(|| ds.first())
            .copied()?;
        let shared = ds.iter().find_map(|d| {
            d.names
                .iter()
                .find(|n| self.in_into(n))
                .map(|n| (*d, n.clone()))
        });
        if let Some((disk, n)) = shared {
            return Some(Keeper {
                disk,
                path: n.clone(),
                source: n,
                action: KeeperAction::AlreadyShared,
            });
        }
        if ds.len() == 1 {
            return Some(Keeper {
                disk: first,
                path: first.path.clone(),
                source: first.path.clone(),
                action: KeeperAction::InPlace,
            });
        }
        let target = self.shared_name(first, id);
        let same_fs = dev_of(&first.path).is_some() && dev_of(&first.path) == dev_of(self.into);
        let action = if same_fs && first.disk_type != DiskType::Differencing {
            KeeperAction::Move
        } else {
            KeeperAction::Copy
        };
        Some(Keeper {
            disk: first,
            path: target,
            source: first.path.clone(),
            action,
        })
    }

    /// `first`'s file name in SHARED; when taken (by a different file or another group), with
    /// the suffix `-<first 8 hex digits of id>` (then `-2`, `-3`, ...), noted.
    fn shared_name(&mut self, first: &ScannedDisk, id: Uuid) -> PathBuf {
        let name = first
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let free = |t: &Path| !t.exists() && !self.taken_names.contains(t);
        let plain = self.into.join(&name);
        if free(&plain) {
            return plain;
        }
        let p = Path::new(&name);
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = p.extension().map(|s| s.to_string_lossy().into_owned());
        let short: String = id.simple().to_string().chars().take(8).collect();
        let mut n = 1;
        let target = loop {
            let suffix = if n == 1 {
                format!("-{short}")
            } else {
                format!("-{short}-{n}")
            };
            let fname = match &ext {
                Some(e) => format!("{stem}{suffix}.{e}"),
                None => format!("{stem}{suffix}"),
            };
            let target = self.into.join(fname);
            if free(&target) {
                break target;
            }
            n += 1;
        };
        self.notes.push(format!(
            "{} is taken by a different file; the shared copy of {} is named {}",
            plain.display(),
            first.path.display(),
            target.display()
        ));
        target
    }

    /// How `d` was when proved; none for a differencing disk, which this run may repoint
    /// itself before it reaches the disk's own group (its children are checked by their layer).
    fn stamp_of(&self, d: &ScannedDisk) -> Option<Stamp> {
        if d.disk_type == DiskType::Differencing {
            return None;
        }
        self.stamps.get(&d.key).cloned()
    }

    /// Other names of the keeper file under DIR, removed once unused (the move).
    fn old_names(&self, k: &Keeper<'_>) -> Vec<PathBuf> {
        if !matches!(k.action, KeeperAction::Move | KeeperAction::AlreadyShared) {
            return Vec::new();
        }
        let mut names: Vec<PathBuf> = k
            .disk
            .names
            .iter()
            .filter(|n| **n != k.path && !self.in_into(n) && under(n, self.dir))
            .cloned()
            .collect();
        if k.action == KeeperAction::Move {
            names.push(k.source.clone());
            names.dedup();
        }
        names
    }

    /// Every member but the keeper; a copied keeper's source is a copy too.
    fn copies(&self, ds: &[&ScannedDisk], k: &Keeper<'_>) -> Vec<CopyPlan> {
        let mut copies = Vec::new();
        for d in ds {
            if d.key == k.disk.key && k.action != KeeperAction::Copy {
                continue;
            }
            let outside = d.outside || !under(&d.path, self.dir);
            let kept = self.removal.keep_reason(outside, self.in_into(&d.path));
            let delete = kept.is_none();
            let refused = delete.then(|| probe::copy_refusal(&d.path)).flatten();
            copies.push(CopyPlan {
                path: d.path.clone(),
                file_size: d.file_size,
                allocated: d.allocated,
                children: self.children(d).len(),
                delete,
                kept,
                refused,
                key: d.key.clone(),
                stamp: self.stamp_of(d),
            });
        }
        copies
    }

    /// Symlinks under DIR to members.
    fn symlinks(&self, ds: &[&ScannedDisk]) -> Vec<PathBuf> {
        let member_keys: HashSet<&FileKey> = ds.iter().map(|d| &d.key).collect();
        self.sc
            .symlinks
            .iter()
            .filter(|s| member_keys.contains(&s.key) && under(&s.path, self.dir))
            .map(|s| s.path.clone())
            .collect()
    }

    /// Children of members that do not yet reach the keeper itself (or have an interrupted
    /// change to finish), sorted by path.
    fn children_to_repoint(&self, ds: &[&ScannedDisk], k: &Keeper<'_>) -> Vec<ChildPlan> {
        let keeper_canon = match k.action {
            KeeperAction::AlreadyShared | KeeperAction::InPlace => canonical(&k.path),
            KeeperAction::Move | KeeperAction::Copy => k.path.clone(),
        };
        let mut children = Vec::new();
        for d in ds {
            for &c in self.children(d) {
                let Some(cd) = self.sc.disks.get(c) else {
                    continue;
                };
                let Some(pr) = &cd.parent else { continue };
                let repoint =
                    pr.via_symlink || pr.resolved_real.as_deref() != Some(keeper_canon.as_path());
                if !repoint && !cd.pending_journal {
                    continue;
                }
                children.push(ChildPlan {
                    path: cd.path.clone(),
                    from: pr.resolved.clone(),
                    via: pr.via.clone(),
                    repoint,
                    pending_journal: cd.pending_journal,
                    refused: probe::child_refusal(cd),
                });
            }
        }
        children.sort_by(|a, b| a.path.cmp(&b.path));
        children
    }

    /// Apply the removal rule to the group's names, predict the keeper's refusal, and hold
    /// back every name of a group the real run cannot finish; then count the bytes freed.
    fn settle_names(&self, g: &mut GroupPlan) {
        if let Some(why) = self.removal.keep_reason(false, false) {
            let names = g.old_names.drain(..).chain(g.symlinks.drain(..));
            g.kept_names
                .extend(names.map(|path| PathNote::new(path, why.clone())));
        }
        refuse_unremovable(g);
        let places_keeper = matches!(g.action, KeeperAction::Move | KeeperAction::Copy);
        g.keeper_refused = self.into_refused.clone().filter(|_| places_keeper);
        if g.keeper_refused.is_none() && g.action == KeeperAction::Move {
            g.keeper_refused = probe::hardlink_refusal(&g.keeper_source);
        }
        if let Some(r) = &g.keeper_refused {
            for c in g.children.iter_mut().filter(|c| c.refused.is_none()) {
                c.refused = Some(NoteReason::SharedParentNotPlaced(Box::new(r.clone())));
            }
        }
        if g.children.iter().any(|c| c.refused.is_some()) {
            // The real run keeps every name of a group it cannot finish: so does the plan.
            hold_back(g, &NoteReason::ChildrenCannotAllBeRepointed);
        }
        g.bytes_freed = freed(&g.copies, |c| c.allocated);
        g.bytes_freed_apparent = freed(&g.copies, |c| c.file_size);
    }
}

/// The old names and symlinks the real run will fail to remove (their folder refuses, or the
/// sticky-folder rule): kept, each with the kernel's reason, which makes them findings (the
/// user asked for them to go).
fn refuse_unremovable(g: &mut GroupPlan) {
    for names in [&mut g.old_names, &mut g.symlinks] {
        names.retain(|n| match probe::removal_refusal(n) {
            Some(why) => {
                g.kept_names
                    .push(PathNote::new(n, NoteReason::NotDeleted(Box::new(why))));
                false
            }
            None => true,
        });
    }
}

/// Keep every name of `g`, each with `why`.
fn hold_back(g: &mut GroupPlan, why: &NoteReason) {
    for c in g.copies.iter_mut().filter(|c| c.delete) {
        c.delete = false;
        c.kept = Some(why.clone());
    }
    let names = g.old_names.drain(..).chain(g.symlinks.drain(..));
    g.kept_names
        .extend(names.map(|path| PathNote::new(path, why.clone())));
}

/// Bytes the copies still to be deleted free, measured by `size`.
fn freed(copies: &[CopyPlan], size: impl Fn(&CopyPlan) -> u64) -> u64 {
    copies
        .iter()
        .filter(|c| c.delete && c.refused.is_none())
        .fold(0, |n, c| n.saturating_add(size(c)))
}
