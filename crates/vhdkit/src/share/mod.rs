//! The lab workflow: one shared parent for many children ([`plan_share`] / [`apply_share`]), and
//! fixing chains after a tree was moved ([`plan_relink`] / [`apply_relink`]).
//!
//! # share
//! A scan finds every disk under DIR (and SHARED) by signature and resolves every parent. Disks
//! that are parents are grouped by identity (format, VHD unique id / VHDX DataWriteGuid, virtual
//! size). Members of a group are proved interchangeable by a streamed SHA-256 of their *virtual
//! contents*, each read through its own chain ([`digest::content_digest`]). The files' bytes
//! themselves are not compared: two files with the same identity and the same virtual contents
//! are interchangeable as parents even when their layout or locators differ (this is what
//! `reparent --verify-content` means). Members whose contents differ from the kept class are
//! conflicts: reported, left alone, and so are their children.
//!
//! A group with a single file is not a copy: it stays where it is. Its children are repointed
//! only when they reach it through a symlink (the `mklink` setups): they are then repointed at
//! the real file, and the link is reported (and removed with `delete_copies`).
//!
//! For a group of copies, one keeper lives in SHARED under its own file name (a clash with a
//! different file gets the suffix `-<first 8 hex digits of its id>`). The keeper is *moved*
//! there when on the same file system, crash-safely: a hard link in SHARED first, the old name
//! removed only after every child that used it has been repointed (so no child is ever without a
//! readable parent). Across file systems, and for differencing keepers (whose own parent locator
//! must be rewritten for their new folder), it is copied to a temporary name, fixed, flushed and
//! renamed into place; the source then counts as a copy. Then every child of every member is
//! repointed at the keeper through [`crate::reparent`] (relative locators by default) under an
//! exclusive advisory lock ([`lock`]), and re-verified: its chain opens intact through the
//! keeper, and its own layer ([`digest::layer_digest`]: block map and stored data) is unchanged,
//! which with the keeper's proven contents means its virtual contents are unchanged. Only with
//! `delete_copies`, and only when every child of the group was repointed and verified, are the
//! other copies (and symlinks to members) deleted. Groups are handled level by level: parents'
//! own parents first.
//!
//! Every step can be interrupted: a re-run scans again and finds the keeper already in SHARED
//! (a hard link or a complete file; temporary files are ignored and replaced), children already
//! repointed (an interrupted reparent is finished through its journal), and copies not yet
//! deleted. A second complete run finds nothing to do.
//!
//! Disks outside DIR and SHARED are never changed or deleted; children outside them are not
//! seen, so `delete_copies` must not be used when other trees use the copies. No name is removed
//! without `delete_copies` (a moved keeper keeps its old name as a hard link), and none at all
//! while any path in the tree could not be inspected (`share/removal.rs` holds the rule).
//!
//! # relink
//! For every differencing disk under DIR whose parent does not resolve, or resolves other than
//! through a relative locator (the absolute path, the parent's name, a search folder, a
//! symlink), find a file with the recorded identity under DIR and the search folders (an index
//! built from one scan) and repoint the child at it with a relative locator; deepest parents
//! first, so each new parent's own chain is already intact.

pub mod digest;
pub mod lock;
pub mod probe;
mod removal;
pub mod scan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{Chain, ChainOptions};
use crate::disk::{Disk, DiskFormat, DiskType};
use crate::error::{Error, Result};
use crate::reparent::{self, LocatorMode, ReparentOptions};
use crate::tree::Uninspected;
use removal::Removal;

pub use scan::{scan, FileKey, ParentRef, Scan, ScanLimits, ScannedDisk, Skipped, Symlink};

/// Progress callbacks (for a progress bar). Every method has an empty default.
pub trait Progress {
    /// A phase starts (`"scan"`, `"hash"`, `"repoint"`), with its total (files or bytes; 0 when
    /// unknown).
    fn phase(&mut self, _name: &str, _total: u64) {}
    /// `n` more units done.
    fn advance(&mut self, _n: u64) {}
    /// The phase is over.
    fn finish(&mut self) {}
}

/// Progress that shows nothing.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Options for share and relink.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// How to open disks and resolve parents.
    pub chain: ChainOptions,
    /// Bounds of the folder walk.
    pub limits: ScanLimits,
    /// Delete the other copies (and symlinks to members) once every child is repointed.
    pub delete_copies: bool,
    /// Locators written into repointed children (default: relative only, so the tree can move).
    pub mode: LocatorMode,
    /// Test hook: abort the process (as a kill would) after this many changing steps.
    pub abort_after_steps: Option<u64>,
}

impl Default for ShareOptions {
    fn default() -> Self {
        ShareOptions {
            chain: ChainOptions::default(),
            limits: ScanLimits::default(),
            delete_copies: false,
            mode: LocatorMode::RelativeOnly,
            abort_after_steps: None,
        }
    }
}

/// How the keeper of a group comes to be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum KeeperAction {
    /// It is already in SHARED.
    AlreadyShared,
    /// The only file of its group: it stays where it is.
    InPlace,
    /// Moved into SHARED (hard link, then the old name removed after its children moved on).
    Move,
    /// Copied into SHARED (another file system, or a differencing keeper).
    Copy,
}

/// A copy of a group's parent that is not kept.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CopyPlan {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub file_size: u64,
    /// Bytes it occupies on disk (allocated blocks, what `du` shows).
    pub allocated: u64,
    /// Its children (all repointed at the keeper).
    pub children: usize,
    /// True when it will be deleted (see [`CopyPlan::kept`]).
    pub delete: bool,
    /// Why it is kept, when it is.
    pub kept: Option<String>,
    /// Why deleting it will fail, found while planning (its folder refuses).
    pub refused: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip))]
    key: FileKey,
}

/// One child to repoint.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ChildPlan {
    /// The child file.
    pub path: PathBuf,
    /// The parent it resolves to now.
    pub from: Option<PathBuf>,
    /// Through which locator.
    pub via: Option<String>,
    /// True when it is repointed (false: only an interrupted change is finished).
    pub repoint: bool,
    /// True when an interrupted vhdkit change beside it is finished first.
    pub pending_journal: bool,
    /// Why it cannot be changed, found while planning (read-only, in use).
    pub refused: Option<String>,
}

/// One group of interchangeable parents and what is done with it.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct GroupPlan {
    /// Format.
    pub format: DiskFormat,
    /// The identity children record.
    pub id: Uuid,
    /// Virtual size.
    pub virtual_size: u64,
    /// 0 for a base disk, 1 for a differencing disk over a base, ...
    pub level: usize,
    /// SHA-256 of the virtual contents (when there was more than one file to compare).
    pub content_sha256: Option<String>,
    /// Distinct files of the kept class.
    pub files: usize,
    /// Where the keeper is (or will be).
    pub keeper: PathBuf,
    /// Where it comes from.
    pub keeper_source: PathBuf,
    /// How it gets there.
    pub action: KeeperAction,
    /// The keeper's own parent (for a differencing keeper).
    pub keeper_parent: Option<PathBuf>,
    /// Other copies.
    pub copies: Vec<CopyPlan>,
    /// Other names (hard links) of the keeper under DIR, removed once unused (the move).
    pub old_names: Vec<PathBuf>,
    /// Symlinks to members, removed with `delete_copies` once unused.
    pub symlinks: Vec<PathBuf>,
    /// Old names and symlinks that stay, each with the reason.
    pub kept_names: Vec<Finding>,
    /// Why the keeper cannot be placed in SHARED, found while planning.
    pub keeper_refused: Option<String>,
    /// Children to repoint.
    pub children: Vec<ChildPlan>,
    /// Bytes freed by deleting copies (allocated blocks).
    pub bytes_freed: u64,
    /// Apparent size of the copies deleted.
    pub bytes_freed_apparent: u64,
}

/// Files with the same identity but different virtual contents: left alone.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Conflict {
    /// The identity.
    pub id: Uuid,
    /// Format.
    pub format: DiskFormat,
    /// The content hash of the kept class.
    pub kept_sha256: String,
    /// The files whose contents differ, with their hashes.
    pub files: Vec<(PathBuf, String)>,
    /// Their children, left alone.
    pub children: Vec<PathBuf>,
}

/// A file refused or a step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Finding {
    /// The file.
    pub path: PathBuf,
    /// Why, in one line.
    pub reason: String,
}

/// Everything `share` will do. Building it writes nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SharePlan {
    /// The tree (canonical).
    pub dir: PathBuf,
    /// The shared folder (absolute).
    pub into: PathBuf,
    /// Whether copies are deleted.
    pub delete_copies: bool,
    /// Disks found.
    pub disks_found: usize,
    /// Files with a disk signature that could not be used.
    pub skipped: Vec<Skipped>,
    /// Paths under DIR or SHARED that could not be inspected (nothing is deleted while any
    /// exists).
    pub uninspected: Vec<Uninspected>,
    /// Groups with something to do, lowest level first.
    pub groups: Vec<GroupPlan>,
    /// Same identity, different contents.
    pub conflicts: Vec<Conflict>,
    /// Children whose parent does not resolve (run `relink`).
    pub unresolved: Vec<Finding>,
    /// Notes.
    pub notes: Vec<String>,
    /// Bytes allocated to all disk files under DIR and SHARED now (each file once; `du`).
    pub size_before: u64,
    /// Expected after.
    pub size_after: u64,
    /// Bytes freed by deleting copies (allocated blocks, what `du` shows).
    pub bytes_freed: u64,
    /// Apparent size (file length) of the copies deleted.
    pub bytes_freed_apparent: u64,
    /// Virtual bytes hashed to prove copies identical.
    pub bytes_hashed: u64,
    /// File bytes read while hashing.
    pub bytes_read: u64,
    /// Children to repoint in all.
    pub children_to_repoint: usize,
    /// True when there is nothing to do.
    pub nothing_to_do: bool,
}

impl SharePlan {
    /// True when the plan has findings (skipped disks, conflicts, refused children,
    /// unresolved parents).
    pub fn has_findings(&self) -> bool {
        !self.skipped.is_empty()
            || !self.uninspected.is_empty()
            || !self.conflicts.is_empty()
            || !self.unresolved.is_empty()
            || self.groups.iter().any(|g| {
                g.keeper_refused.is_some()
                    || g.children.iter().any(|c| c.refused.is_some())
                    || g.copies.iter().any(|c| c.refused.is_some())
            })
    }
}

/// What [`apply_share`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ShareReport {
    /// Groups completed (every child repointed).
    pub groups_done: usize,
    /// Keepers moved or copied into SHARED.
    pub keepers_placed: usize,
    /// Children repointed and verified.
    pub children_repointed: usize,
    /// Interrupted changes finished.
    pub journals_finished: usize,
    /// Copies deleted.
    pub copies_deleted: usize,
    /// Old names of moved keepers removed.
    pub old_names_removed: usize,
    /// Symlinks removed.
    pub symlinks_removed: usize,
    /// Bytes freed (allocated blocks of the copies deleted, what `du` shows).
    pub bytes_freed: u64,
    /// Apparent size (file length) of the copies deleted.
    pub bytes_freed_apparent: u64,
    /// Bytes added by copying keepers across file systems.
    pub bytes_copied: u64,
    /// Total size before.
    pub size_before: u64,
    /// Total size after.
    pub size_after: u64,
    /// Files refused (read-only, in use, reparent refused): left unchanged.
    pub refused: Vec<Finding>,
    /// Steps that failed.
    pub failed: Vec<Finding>,
    /// Copies kept although asked to delete them, and why.
    pub kept: Vec<Finding>,
}

impl ShareReport {
    /// True when something was refused, failed or kept.
    pub fn has_findings(&self) -> bool {
        !self.refused.is_empty() || !self.failed.is_empty() || !self.kept.is_empty()
    }
}

/// Counts changing steps; aborts the process after the configured number (test hook).
struct Steps {
    n: u64,
    abort_after: Option<u64>,
}

impl Steps {
    fn step(&mut self) {
        self.n += 1;
        if self.abort_after == Some(self.n) {
            std::process::abort();
        }
    }
}

fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
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

fn under(p: &Path, root: &Path) -> bool {
    p.starts_with(root)
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

fn sync_dir(p: &Path) {
    if let Some(d) = p.parent() {
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// The names a group would remove, for holding them all back at once.
struct Names<'a> {
    copies: &'a mut Vec<CopyPlan>,
    old_names: &'a mut Vec<PathBuf>,
    symlinks: &'a mut Vec<PathBuf>,
    kept_names: &'a mut Vec<Finding>,
}

impl Names<'_> {
    /// Keep every name, each with `why`.
    fn hold_back(&mut self, why: &str) {
        for c in self.copies.iter_mut().filter(|c| c.delete) {
            c.delete = false;
            c.kept = Some(why.into());
        }
        let names = self.old_names.drain(..).chain(self.symlinks.drain(..));
        self.kept_names.extend(names.map(|path| Finding {
            path,
            reason: why.into(),
        }));
    }

    /// Bytes the copies still to be deleted free, measured by `size`.
    fn freed(&self, size: impl Fn(&CopyPlan) -> u64) -> u64 {
        self.copies
            .iter()
            .filter(|c| c.delete && c.refused.is_none())
            .fold(0, |n, c| n.saturating_add(size(c)))
    }
}

/// Why changing this child will be refused, found the way the real run will meet it: the lock
/// (open for writing) and, for a VHD, its folder (the journal is created beside it).
fn change_refusal(d: &ScannedDisk) -> Option<String> {
    probe::change_refusal(&d.path).or_else(|| {
        (d.format == DiskFormat::Vhd)
            .then(|| probe::folder_refusal(&d.path))
            .flatten()
    })
}

/// Why SHARED (or the folder it would be created in) will refuse the keeper.
fn into_refusal(into: &Path) -> Option<String> {
    let mut probe = into.join("keeper");
    while !probe.parent().is_some_and(Path::is_dir) {
        if !probe.pop() {
            return None;
        }
    }
    probe::folder_refusal(&probe)
}

/// Plan `share` of `dir` into `into`. Reads only (scans, opens, hashes); the dry run's
/// predictions are probed as the real run meets them (files opened for writing and locked, then
/// released; folders asked for write access).
pub fn plan_share(
    dir: &Path,
    into: &Path,
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<SharePlan> {
    let dir =
        fs::canonicalize(dir).map_err(|e| Error::io("opening the folder", e).with_path(dir))?;
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder",
            dir.display()
        )));
    }
    let into = absolute_into(into)?;
    if into.exists() && !into.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--into {} exists and is not a folder",
            into.display()
        )));
    }
    let mut roots = vec![dir.clone()];
    if into.is_dir() {
        roots.push(into.clone());
    }
    progress.phase("scan", 0);
    let sc = scan(&roots, &opts.chain, &opts.limits, &mut |_| {
        progress.advance(1)
    })?;
    progress.finish();
    let idx = sc.by_key();
    let in_into = |p: &Path| under(p, &into);

    let mut notes = sc.notes.clone();
    let mut unresolved = Vec::new();
    // Parent keys -> children.
    let mut children_of: HashMap<FileKey, Vec<usize>> = HashMap::new();
    for (i, d) in sc.disks.iter().enumerate() {
        if d.outside {
            continue;
        }
        if let Some(p) = &d.parent {
            match &p.resolved_key {
                Some(k) => children_of.entry(k.clone()).or_default().push(i),
                None => unresolved.push(Finding {
                    path: d.path.clone(),
                    reason: format!(
                        "its parent (id {}) does not resolve; run `vhdkit relink`: {}",
                        p.expected_id,
                        p.failure.clone().unwrap_or_default()
                    ),
                }),
            }
        }
    }
    // Group identities that are some child's parent.
    type GKey = (u8, Uuid, u64);
    let fo = |f: DiskFormat| u8::from(f == DiskFormat::Vhdx);
    let mut gkeys: BTreeMap<GKey, Vec<usize>> = BTreeMap::new();
    let parent_gkeys: HashSet<GKey> = children_of
        .keys()
        .filter_map(|k| idx.get(k))
        .filter_map(|&i| sc.disks.get(i))
        .map(|d| (fo(d.format), d.id, d.virtual_size))
        .collect();
    for (i, d) in sc.disks.iter().enumerate() {
        let k = (fo(d.format), d.id, d.virtual_size);
        if parent_gkeys.contains(&k) {
            gkeys.entry(k).or_default().push(i);
        }
    }

    // Hash every member of groups with more than one file.
    let to_hash: Vec<usize> = gkeys
        .values()
        .filter(|m| m.len() > 1)
        .flatten()
        .copied()
        .collect();
    let total: u64 = to_hash
        .iter()
        .filter_map(|&i| sc.disks.get(i))
        .map(|d| d.virtual_size)
        .sum();
    progress.phase("hash", total);
    let mut digests: HashMap<usize, std::result::Result<String, String>> = HashMap::new();
    let (mut bytes_hashed, mut bytes_read) = (0u64, 0u64);
    for &i in &to_hash {
        let Some(d) = sc.disks.get(i) else { continue };
        let r = Chain::open(&d.path, &opts.chain).and_then(|c| {
            let v = c.into_view();
            digest::content_digest(&v, &mut |n| progress.advance(n))
        });
        let r = match r {
            Ok((h, read)) => {
                bytes_hashed += d.virtual_size;
                bytes_read += read;
                Ok(h)
            }
            Err(e) => Err(e.to_string()),
        };
        digests.insert(i, r);
    }
    progress.finish();
    let mut skipped = sc.skipped.clone();
    for (&i, r) in &digests {
        if let (Err(e), Some(d)) = (r, sc.disks.get(i)) {
            skipped.push(Skipped {
                path: d.path.clone(),
                reason: format!("cannot be read through its chain: {e}"),
            });
        }
    }
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    let removal = Removal::new(opts.delete_copies, &sc.uninspected, &skipped);
    let into_refused = into_refusal(&into);
    let mut groups = Vec::new();
    let mut conflicts = Vec::new();
    let mut taken_names: HashSet<PathBuf> = HashSet::new();
    // Keeper path per member key, for the keeper_parent of higher levels.
    let mut keeper_of: HashMap<FileKey, PathBuf> = HashMap::new();
    let mut ordered: Vec<(usize, GKey, Vec<usize>)> = gkeys
        .into_iter()
        .map(|(k, m)| {
            let level = m.iter().map(|&i| sc.ancestors(i)).max().unwrap_or(0);
            (level, k, m)
        })
        .collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));

    for (level, (fmt, id, vsize), members) in ordered {
        let format = if fmt == 1 {
            DiskFormat::Vhdx
        } else {
            DiskFormat::Vhd
        };
        // Classes by digest (a single file is its own class).
        let mut class_members: Vec<usize> = members.clone();
        let mut content = None;
        if members.len() > 1 {
            let mut classes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for &i in &members {
                if let Some(Ok(h)) = digests.get(&i) {
                    classes.entry(h.clone()).or_default().push(i);
                }
            }
            let in_shared = |m: &Vec<usize>| {
                m.iter()
                    .filter_map(|&i| sc.disks.get(i))
                    .any(|d| d.names.iter().any(|n| in_into(n)))
            };
            let best = classes
                .iter()
                .max_by(|a, b| {
                    (in_shared(a.1), a.1.len())
                        .cmp(&(in_shared(b.1), b.1.len()))
                        .then(b.0.cmp(a.0))
                })
                .map(|(h, m)| (h.clone(), m.clone()));
            let Some((h, m)) = best else { continue };
            for (oh, om) in &classes {
                if *oh == h {
                    continue;
                }
                let files: Vec<(PathBuf, String)> = om
                    .iter()
                    .filter_map(|&i| sc.disks.get(i))
                    .map(|d| (d.path.clone(), oh.clone()))
                    .collect();
                let kids: Vec<PathBuf> = om
                    .iter()
                    .filter_map(|&i| sc.disks.get(i))
                    .flat_map(|d| children_of.get(&d.key).cloned().unwrap_or_default())
                    .filter_map(|c| sc.disks.get(c).map(|d| d.path.clone()))
                    .collect();
                conflicts.push(Conflict {
                    id,
                    format,
                    kept_sha256: h.clone(),
                    files,
                    children: kids,
                });
            }
            class_members = m;
            content = Some(h);
        }
        let ds: Vec<&ScannedDisk> = class_members
            .iter()
            .filter_map(|&i| sc.disks.get(i))
            .collect();
        let Some(first) = ds
            .iter()
            .find(|d| !d.outside)
            .or_else(|| ds.first())
            .copied()
        else {
            continue;
        };
        let distinct = ds.len();
        // The keeper.
        let shared = ds
            .iter()
            .find_map(|d| d.names.iter().find(|n| in_into(n)).map(|n| (*d, n.clone())));
        let (keeper_disk, keeper, keeper_source, action) = if let Some((d, n)) = shared {
            (d, n.clone(), n, KeeperAction::AlreadyShared)
        } else if distinct == 1 {
            (
                first,
                first.path.clone(),
                first.path.clone(),
                KeeperAction::InPlace,
            )
        } else {
            let name = first
                .path
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_default();
            let mut target = into.join(&name);
            if target.exists() || taken_names.contains(&target) {
                let p = Path::new(&name);
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                let ext = p.extension().map(|s| s.to_string_lossy().into_owned());
                let short: String = id.simple().to_string().chars().take(8).collect();
                let mut n = 1;
                loop {
                    let suffix = if n == 1 {
                        format!("-{short}")
                    } else {
                        format!("-{short}-{n}")
                    };
                    let fname = match &ext {
                        Some(e) => format!("{}{suffix}.{e}", stem.clone().unwrap_or_default()),
                        None => format!("{}{suffix}", stem.clone().unwrap_or_default()),
                    };
                    target = into.join(fname);
                    if !target.exists() && !taken_names.contains(&target) {
                        break;
                    }
                    n += 1;
                }
                notes.push(format!(
                    "{} is taken by a different file; the shared copy of {} is named {}",
                    into.join(&name).display(),
                    first.path.display(),
                    target.display()
                ));
            }
            let same_fs = dev_of(&first.path).is_some() && dev_of(&first.path) == dev_of(&into);
            let action = if same_fs && first.disk_type != DiskType::Differencing {
                KeeperAction::Move
            } else {
                KeeperAction::Copy
            };
            (first, target, first.path.clone(), action)
        };
        taken_names.insert(keeper.clone());
        let keeper_canon =
            if action == KeeperAction::AlreadyShared || action == KeeperAction::InPlace {
                canonical(&keeper)
            } else {
                keeper.clone()
            };
        let keeper_parent = keeper_disk.parent.as_ref().and_then(|p| {
            p.resolved_key
                .as_ref()
                .and_then(|k| keeper_of.get(k).cloned())
                .or_else(|| p.resolved_real.clone())
        });
        for d in &ds {
            keeper_of.insert(d.key.clone(), keeper.clone());
        }
        // Old names: other names of the keeper file under DIR (moved keeper).
        let moves_keeper = matches!(action, KeeperAction::Move | KeeperAction::AlreadyShared);
        let mut old_names: Vec<PathBuf> = if moves_keeper {
            keeper_disk
                .names
                .iter()
                .filter(|n| **n != keeper && !in_into(n) && under(n, &dir))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        if action == KeeperAction::Move {
            old_names.push(keeper_source.clone());
            old_names.dedup();
        }
        let mut kept_names = Vec::new();
        if let Some(why) = removal.keep_reason(false, false) {
            kept_names.extend(old_names.drain(..).map(|path| Finding {
                path,
                reason: why.clone(),
            }));
        }
        // Copies: every member but the keeper; a copied keeper's source is a copy too.
        let mut copies = Vec::new();
        let (mut bytes_freed, mut bytes_freed_apparent) = (0, 0);
        for d in &ds {
            if d.key == keeper_disk.key && action != KeeperAction::Copy {
                continue;
            }
            let kept = removal.keep_reason(d.outside || !under(&d.path, &dir), in_into(&d.path));
            let delete = kept.is_none();
            let refused = if delete {
                probe::folder_refusal(&d.path)
            } else {
                None
            };
            if delete && refused.is_none() {
                bytes_freed = u64::saturating_add(bytes_freed, d.allocated);
                bytes_freed_apparent = u64::saturating_add(bytes_freed_apparent, d.file_size);
            }
            copies.push(CopyPlan {
                path: d.path.clone(),
                file_size: d.file_size,
                allocated: d.allocated,
                children: children_of.get(&d.key).map_or(0, Vec::len),
                delete,
                kept,
                refused,
                key: d.key.clone(),
            });
        }
        // Symlinks to members.
        let member_keys: HashSet<&FileKey> = ds.iter().map(|d| &d.key).collect();
        let mut symlinks: Vec<PathBuf> = sc
            .symlinks
            .iter()
            .filter(|s| member_keys.contains(&s.key) && under(&s.path, &dir))
            .map(|s| s.path.clone())
            .collect();
        if let Some(why) = removal.keep_reason(false, false) {
            kept_names.extend(symlinks.drain(..).map(|path| Finding {
                path,
                reason: why.clone(),
            }));
        }
        // Children.
        let mut children = Vec::new();
        for d in &ds {
            for &c in children_of
                .get(&d.key)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let Some(cd) = sc.disks.get(c) else { continue };
                let Some(pr) = &cd.parent else { continue };
                let repoint =
                    pr.via_symlink || pr.resolved_real.as_deref() != Some(keeper_canon.as_path());
                if !repoint && !cd.pending_journal {
                    continue;
                }
                let refused = change_refusal(cd);
                children.push(ChildPlan {
                    path: cd.path.clone(),
                    from: pr.resolved.clone(),
                    via: pr.via.clone(),
                    repoint,
                    pending_journal: cd.pending_journal,
                    refused,
                });
            }
        }
        children.sort_by(|a, b| a.path.cmp(&b.path));
        let places_keeper = matches!(action, KeeperAction::Move | KeeperAction::Copy);
        let keeper_refused = into_refused.clone().filter(|_| places_keeper);
        if let Some(r) = &keeper_refused {
            for c in children.iter_mut().filter(|c| c.refused.is_none()) {
                c.refused = Some(format!("its shared parent cannot be placed: {r}"));
            }
        }
        if children.iter().any(|c| c.refused.is_some()) {
            // The real run keeps every name of a group it cannot finish: so does the plan.
            let why = "not every child of its group can be repointed (a child could still use it)";
            let mut names = Names {
                copies: &mut copies,
                old_names: &mut old_names,
                symlinks: &mut symlinks,
                kept_names: &mut kept_names,
            };
            names.hold_back(why);
            bytes_freed = names.freed(|c| c.allocated);
            bytes_freed_apparent = names.freed(|c| c.file_size);
        }
        let has_work = places_keeper
            || !children.is_empty()
            || !old_names.is_empty()
            || copies.iter().any(|c| c.delete)
            || !symlinks.is_empty();
        if !has_work {
            continue;
        }
        let _ = level;
        groups.push(GroupPlan {
            format,
            id,
            virtual_size: vsize,
            level,
            content_sha256: content,
            files: distinct,
            keeper,
            keeper_source,
            action,
            keeper_parent: if keeper_disk.disk_type == DiskType::Differencing {
                keeper_parent
            } else {
                None
            },
            copies,
            old_names,
            symlinks,
            kept_names,
            keeper_refused,
            children,
            bytes_freed,
            bytes_freed_apparent,
        });
    }
    let mut seen = HashSet::new();
    let size_before: u64 = sc
        .disks
        .iter()
        .filter(|d| !d.outside && seen.insert(d.key.clone()))
        .map(|d| d.allocated)
        .sum();
    let bytes_freed: u64 = groups.iter().map(|g| g.bytes_freed).sum();
    let bytes_freed_apparent: u64 = groups.iter().map(|g| g.bytes_freed_apparent).sum();
    let bytes_copied: u64 = groups
        .iter()
        .filter(|g| g.action == KeeperAction::Copy)
        .filter_map(|g| fs::metadata(&g.keeper_source).ok())
        .map(|m| scan::allocated(&m))
        .sum();
    let children_to_repoint = groups
        .iter()
        .flat_map(|g| &g.children)
        .filter(|c| c.repoint && c.refused.is_none())
        .count();
    Ok(SharePlan {
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
        size_before,
        size_after: size_before
            .saturating_add(bytes_copied)
            .saturating_sub(bytes_freed),
        bytes_freed,
        bytes_freed_apparent,
        bytes_hashed,
        bytes_read,
        children_to_repoint,
    })
}

/// Children repointed per batch: their reparents share four durability barriers (see
/// [`reparent::apply_batch`]). Bounded so that the locks and handles held stay well under the
/// usual open-file limit.
const BATCH: usize = 128;

/// One child to repoint (or only to finish).
struct Repoint<'a> {
    child: &'a Path,
    new_parent: &'a Path,
    repoint: bool,
    pending_journal: bool,
}

/// A child locked, its layer digested and its reparent planned, ready for the batch.
struct Prepared {
    lock: lock::FileLock,
    before: String,
    plan: reparent::ReparentPlan,
}

/// `Err((refused?, reason))`.
type RepointResult = std::result::Result<bool, (bool, String)>;

/// Lock `r.child`, finish an interrupted change first, and plan its reparent. `Ok((finished,
/// None))` when it is not to be repointed.
fn prepare_child(
    r: &Repoint<'_>,
    opts: &ShareOptions,
    steps: &mut Steps,
) -> std::result::Result<(bool, Option<Prepared>), (bool, String)> {
    let lock = lock::lock_for_change(r.child).map_err(|r| (true, r))?;
    let mut finished = false;
    if r.pending_journal {
        let rep = crate::repair::repair(r.child, &crate::repair::RepairOptions::default())
            .map_err(|e| (false, format!("finishing the interrupted change: {e}")))?;
        if rep.needs_attention() {
            return Err((
                true,
                format!(
                    "a vhdkit journal beside it does not match the file: {:?}",
                    rep.journal
                ),
            ));
        }
        finished = true;
        steps.step();
    }
    if !r.repoint {
        return Ok((finished, None));
    }
    let disk = Disk::open_with(r.child, &opts.chain.open).map_err(|e| (false, one_line(&e)))?;
    // The VHD journal is created beside the child: refused now, as the dry run predicted.
    if disk.format() == DiskFormat::Vhd {
        if let Some(why) = probe::folder_refusal(r.child) {
            return Err((true, why));
        }
    }
    let before = digest::layer_digest(&disk).map_err(|e| (false, e.to_string()))?;
    drop(disk);
    let ropts = ReparentOptions {
        new_parent: r.new_parent.to_path_buf(),
        mode: opts.mode,
        chain: opts.chain.clone(),
        ..ReparentOptions::default()
    };
    let plan = reparent::plan(r.child, &ropts).map_err(|e| (true, one_line(&e)))?;
    Ok((finished, Some(Prepared { lock, before, plan })))
}

/// Repoint children under locks, finishing interrupted changes first, in batches of [`BATCH`]
/// whose reparents share their durability barriers; then verify each: its chain opens through
/// its new parent and its own layer is unchanged. The children must be independent (none is
/// another's new parent or in its chain). One result per child, in order: `Ok(finished a
/// pending change)`.
fn repoint_children(
    reqs: &[Repoint<'_>],
    opts: &ShareOptions,
    steps: &mut Steps,
    progress: &mut dyn Progress,
) -> Vec<RepointResult> {
    let mut out = Vec::with_capacity(reqs.len());
    for chunk in reqs.chunks(BATCH) {
        let mut results: Vec<RepointResult> = Vec::with_capacity(chunk.len());
        let mut prepared: Vec<(usize, Prepared)> = Vec::new();
        for (i, r) in chunk.iter().enumerate() {
            progress.advance(1);
            match prepare_child(r, opts, steps) {
                Ok((finished, p)) => {
                    results.push(Ok(finished));
                    if let Some(p) = p {
                        prepared.push((i, p));
                    }
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let plans: Vec<&reparent::ReparentPlan> = prepared.iter().map(|(_, p)| &p.plan).collect();
        let applied = reparent::apply_batch(&plans);
        for ((i, p), a) in prepared.into_iter().zip(applied) {
            let r = &chunk[i];
            let verified = a.map_err(|e| (false, one_line(&e))).and_then(|_| {
                steps.step();
                verify_child(r.child, r.new_parent, &p.before, &opts.chain).map_err(|e| (false, e))
            });
            drop(p.lock);
            if let Err(e) = verified {
                results[i] = Err(e);
            }
        }
        out.extend(results);
    }
    out
}

fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}

fn verify_child(
    child: &Path,
    parent: &Path,
    before: &str,
    chain: &ChainOptions,
) -> std::result::Result<(), String> {
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

/// Put the keeper in place and check it. Returns bytes copied.
fn place_keeper(
    g: &GroupPlan,
    opts: &ShareOptions,
    steps: &mut Steps,
) -> std::result::Result<u64, String> {
    let mut copied = 0;
    if let Some(dir) = g.keeper.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let same_file = |a: &Path, b: &Path| match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => scan::file_key(a, &x) == scan::file_key(b, &y),
        _ => false,
    };
    let mut action = g.action;
    if action == KeeperAction::Move {
        if g.keeper.exists() {
            if !same_file(&g.keeper, &g.keeper_source) {
                return Err(format!(
                    "{} appeared since the plan was made; run again",
                    g.keeper.display()
                ));
            }
        } else {
            match fs::hard_link(&g.keeper_source, &g.keeper) {
                Ok(()) => {
                    sync_dir(&g.keeper);
                    steps.step();
                }
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                    action = KeeperAction::Copy;
                }
                Err(e) => {
                    return Err(format!(
                        "linking {} to {}: {e}",
                        g.keeper_source.display(),
                        g.keeper.display()
                    ))
                }
            }
        }
    }
    if action == KeeperAction::Copy {
        if g.keeper.exists() {
            return Err(format!(
                "{} appeared since the plan was made; run again",
                g.keeper.display()
            ));
        }
        let name = g
            .keeper
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = g
            .keeper
            .with_file_name(format!(".{name}{}", scan::TMP_SUFFIX));
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(crate::txn::journal::FileJournal::for_disk(&tmp).path());
        copied = fs::copy(&g.keeper_source, &tmp).map_err(|e| {
            format!(
                "copying {} to {}: {e}",
                g.keeper_source.display(),
                tmp.display()
            )
        })?;
        steps.step();
        if let Some(kp) = &g.keeper_parent {
            // A differencing keeper: point its copy at its parent from its new folder.
            let ropts = ReparentOptions {
                new_parent: kp.clone(),
                mode: opts.mode,
                chain: opts.chain.clone(),
                ..ReparentOptions::default()
            };
            let plan = reparent::plan(&tmp, &ropts).map_err(|e| one_line(&e))?;
            reparent::apply(&plan).map_err(|e| one_line(&e))?;
            steps.step();
        }
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("flushing {}: {e}", tmp.display()))?;
        fs::rename(&tmp, &g.keeper)
            .map_err(|e| format!("renaming {} into place: {e}", tmp.display()))?;
        sync_dir(&g.keeper);
        steps.step();
    }
    // Verify the keeper.
    let d = Disk::open_with(&g.keeper, &opts.chain.open).map_err(|e| one_line(&e))?;
    if d.identity() != g.id || d.virtual_size() != g.virtual_size {
        return Err(format!(
            "the keeper {} does not have the group's identity",
            g.keeper.display()
        ));
    }
    drop(d);
    if action == KeeperAction::Copy {
        if let Some(want) = &g.content_sha256 {
            let c = Chain::open(&g.keeper, &opts.chain).map_err(|e| one_line(&e))?;
            let (h, _) =
                digest::content_digest(&c.into_view(), &mut |_| {}).map_err(|e| one_line(&e))?;
            if &h != want {
                return Err(format!(
                    "the copy {} does not read the same as its source",
                    g.keeper.display()
                ));
            }
        }
    }
    Ok(copied)
}

/// Carry out a share plan, group by group (lowest level first). Refusals and failures are
/// reported, never fatal to other groups; a group's copies are deleted only when every child of
/// the group was repointed and verified.
pub fn apply_share(
    plan: &SharePlan,
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<ShareReport> {
    let mut rep = ShareReport {
        size_before: plan.size_before,
        ..ShareReport::default()
    };
    let mut steps = Steps {
        n: 0,
        abort_after: opts.abort_after_steps,
    };
    progress.phase(
        "repoint",
        plan.groups.iter().map(|g| g.children.len() as u64).sum(),
    );
    for g in &plan.groups {
        let mut complete = true;
        if let Some(r) = &g.keeper_refused {
            rep.refused.push(Finding {
                path: g.keeper.clone(),
                reason: r.clone(),
            });
            rep.kept
                .extend(g.copies.iter().filter(|c| c.delete).map(|c| Finding {
                    path: c.path.clone(),
                    reason: "its group's keeper could not be placed".into(),
                }));
            continue;
        }
        match place_keeper(g, opts, &mut steps) {
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
                rep.failed.push(Finding {
                    path: g.keeper.clone(),
                    reason: r,
                });
                continue;
            }
        }
        let mut reqs = Vec::new();
        for c in &g.children {
            if let Some(r) = &c.refused {
                progress.advance(1);
                rep.refused.push(Finding {
                    path: c.path.clone(),
                    reason: r.clone(),
                });
                complete = false;
                continue;
            }
            reqs.push((
                c,
                Repoint {
                    child: &c.path,
                    new_parent: &g.keeper,
                    repoint: c.repoint,
                    pending_journal: c.pending_journal,
                },
            ));
        }
        let (cs, rs): (Vec<_>, Vec<_>) = reqs.into_iter().unzip();
        let results = repoint_children(&rs, opts, &mut steps, progress);
        for (c, r) in cs.into_iter().zip(results) {
            match r {
                Ok(finished) => {
                    rep.journals_finished += usize::from(finished);
                    rep.children_repointed += usize::from(c.repoint);
                }
                Err((refused, reason)) => {
                    let f = Finding {
                        path: c.path.clone(),
                        reason,
                    };
                    if refused {
                        rep.refused.push(f);
                    } else {
                        rep.failed.push(f);
                    }
                    complete = false;
                }
            }
        }
        if !complete {
            let why = "not every child of its group could be repointed (a child could still \
                       use it)";
            let names = g.copies.iter().filter(|c| c.delete).map(|c| &c.path);
            let names = names.chain(&g.old_names).chain(&g.symlinks);
            rep.kept.extend(names.map(|path| Finding {
                path: path.clone(),
                reason: why.into(),
            }));
            continue;
        }
        for n in &g.old_names {
            if n == &g.keeper || !n.exists() {
                continue;
            }
            // Only a name of the keeper itself is removed here (the move).
            let same = match (fs::metadata(n), fs::metadata(&g.keeper)) {
                (Ok(a), Ok(b)) => scan::file_key(n, &a) == scan::file_key(&g.keeper, &b),
                _ => false,
            };
            if !same {
                continue;
            }
            match fs::remove_file(n) {
                Ok(()) => {
                    sync_dir(n);
                    rep.old_names_removed += 1;
                    steps.step();
                }
                Err(e) => rep.failed.push(Finding {
                    path: n.clone(),
                    reason: format!("removing the old name: {e}"),
                }),
            }
        }
        // Only the names the removal rule allowed are listed for removal.
        for c in g.copies.iter().filter(|c| c.delete) {
            if let Some(r) = &c.refused {
                rep.refused.push(Finding {
                    path: c.path.clone(),
                    reason: format!("not deleted: {r}"),
                });
                continue;
            }
            let now = fs::metadata(&c.path).map(|m| scan::file_key(&c.path, &m));
            if now.as_ref().ok() != Some(&c.key) {
                rep.kept.push(Finding {
                    path: c.path.clone(),
                    reason: "the file changed or disappeared since the plan".into(),
                });
                continue;
            }
            if lock::is_locked_elsewhere(&c.path) {
                rep.refused.push(Finding {
                    path: c.path.clone(),
                    reason: "not deleted: in use by another process".into(),
                });
                continue;
            }
            match fs::remove_file(&c.path) {
                Ok(()) => {
                    sync_dir(&c.path);
                    rep.copies_deleted += 1;
                    rep.bytes_freed = rep.bytes_freed.saturating_add(c.allocated);
                    rep.bytes_freed_apparent = rep.bytes_freed_apparent.saturating_add(c.file_size);
                    steps.step();
                }
                Err(e) => rep.failed.push(Finding {
                    path: c.path.clone(),
                    reason: format!("deleting the copy: {e}"),
                }),
            }
        }
        for s in &g.symlinks {
            match fs::remove_file(s) {
                Ok(()) => {
                    rep.symlinks_removed += 1;
                    steps.step();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => rep.failed.push(Finding {
                    path: s.clone(),
                    reason: format!("removing the symlink: {e}"),
                }),
            }
        }
        rep.groups_done += 1;
    }
    progress.finish();
    rep.size_after = rep
        .size_before
        .saturating_add(rep.bytes_copied)
        .saturating_sub(rep.bytes_freed);
    Ok(rep)
}

/// One child `relink` repoints.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RelinkItem {
    /// The child.
    pub child: PathBuf,
    /// The identity it records for its parent.
    pub expected_id: Uuid,
    /// Where its parent resolves now, if anywhere.
    pub current: Option<PathBuf>,
    /// Through which locator.
    pub via: Option<String>,
    /// The parent found by identity.
    pub new_parent: PathBuf,
    /// Why it is relinked.
    pub reason: String,
    /// Other files with the same identity (the first one under DIR is preferred).
    pub alternatives: Vec<PathBuf>,
    /// Why it cannot be changed (read-only, in use), found while planning.
    pub refused: Option<String>,
    /// Order: the new parent's depth (base parents first).
    pub level: usize,
}

/// Everything `relink` will do.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
    pub unresolved: Vec<Finding>,
    /// Files with a disk signature that could not be used.
    pub skipped: Vec<Skipped>,
    /// Paths under DIR or the search folders that could not be inspected.
    pub uninspected: Vec<Uninspected>,
    /// Children left alone because several files carry their parent's id with different
    /// contents (any choice could change the child's virtual contents).
    pub conflicts: Vec<Finding>,
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
pub struct RelinkReport {
    /// Children repointed and verified.
    pub relinked: usize,
    /// Interrupted changes finished.
    pub journals_finished: usize,
    /// Refused (left unchanged).
    pub refused: Vec<Finding>,
    /// Failed.
    pub failed: Vec<Finding>,
}

/// Plan `relink` of `dir`, looking for parents under `dir` and `search`. Reads only.
pub fn plan_relink(
    dir: &Path,
    search: &[PathBuf],
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<RelinkPlan> {
    let dir =
        fs::canonicalize(dir).map_err(|e| Error::io("opening the folder", e).with_path(dir))?;
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder (relink scans a tree; for one file use `vhdkit reparent`)",
            dir.display()
        )));
    }
    let mut roots = vec![dir.clone()];
    let mut search_abs = Vec::new();
    for s in search {
        let c = fs::canonicalize(s)
            .map_err(|e| Error::io("opening the search folder", e).with_path(s))?;
        roots.push(c.clone());
        search_abs.push(c);
    }
    progress.phase("scan", 0);
    let sc = scan(&roots, &opts.chain, &opts.limits, &mut |_| {
        progress.advance(1)
    })?;
    progress.finish();
    // Index by identity.
    let mut by_id: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, d) in sc.disks.iter().enumerate() {
        by_id.entry(d.id).or_default().push(i);
    }
    let mut items = Vec::new();
    let mut unresolved = Vec::new();
    let mut conflicts = Vec::new();
    let mut digests = Digests::default();
    let mut new_parent_key: HashMap<FileKey, FileKey> = HashMap::new();
    for d in &sc.disks {
        if d.outside || !under(&d.path, &dir) {
            continue;
        }
        let Some(p) = &d.parent else { continue };
        if p.via_relative() && !d.pending_journal {
            continue;
        }
        let ids = std::iter::once(p.expected_id).chain(p.alternate_id);
        let mut cands: Vec<&ScannedDisk> = ids
            .flat_map(|id| by_id.get(&id).cloned().unwrap_or_default())
            .filter_map(|i| sc.disks.get(i))
            .filter(|c| {
                c.key != d.key
                    && c.format == d.format
                    && c.virtual_size == d.virtual_size
                    && crate::sectors::logical_matches(d.logical_sector_size, c.logical_sector_size)
            })
            .collect();
        let current_key = p.resolved_key.clone();
        cands.sort_by_key(|c| {
            (
                Some(&c.key) != current_key.as_ref(),
                !under(&c.path, &dir),
                c.outside,
            )
        });
        let Some(best) = cands.first() else {
            unresolved.push(Finding {
                path: d.path.clone(),
                reason: format!(
                    "no file with its parent's id {} under {} or the search folders; {}",
                    p.expected_id,
                    dir.display(),
                    p.failure.clone().unwrap_or_default()
                ),
            });
            continue;
        };
        if let Some(why) = ambiguity(&cands, current_key.as_ref(), &mut digests, opts) {
            conflicts.push(Finding {
                path: d.path.clone(),
                reason: why,
            });
            continue;
        }
        // A relative locator that already names the chosen file: only a pending journal.
        let reason = match (&p.resolved, &p.via) {
            (None, _) => "its parent does not resolve".to_string(),
            (Some(_), _) if p.via_symlink => "its parent resolves through a symlink".to_string(),
            (Some(_), _) if p.via_relative() => "an interrupted change is pending".to_string(),
            (Some(_), Some(v)) => format!("its parent resolves only through {v}"),
            (Some(_), None) => "its parent resolves only indirectly".to_string(),
        };
        let refused =
            blind_choice(&sc, current_key.as_ref(), &best.key).or_else(|| change_refusal(d));
        new_parent_key.insert(d.key.clone(), best.key.clone());
        items.push((
            d.key.clone(),
            RelinkItem {
                child: d.path.clone(),
                expected_id: p.expected_id,
                current: p.resolved.clone(),
                via: p.via.clone(),
                new_parent: best.path.clone(),
                reason,
                alternatives: cands.iter().skip(1).map(|c| c.path.clone()).collect(),
                refused,
                level: 0,
            },
        ));
    }
    // Order: a child whose new parent is itself relinked comes after it.
    let idx = sc.by_key();
    let parent_key = |k: &FileKey| -> Option<FileKey> {
        new_parent_key.get(k).cloned().or_else(|| {
            idx.get(k)
                .and_then(|&i| sc.disks.get(i))
                .and_then(|d| d.parent.as_ref())
                .and_then(|p| p.resolved_key.clone())
        })
    };
    let mut out = Vec::new();
    for (k, mut it) in items {
        let mut level = 0;
        let mut cur = new_parent_key.get(&k).cloned();
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
    Ok(RelinkPlan {
        nothing_to_do: out.is_empty(),
        dir,
        search: search_abs,
        disks_found: sc.disks.iter().filter(|d| !d.outside).count(),
        items: out,
        unresolved,
        skipped: sc.skipped,
        uninspected: sc.uninspected,
        conflicts,
        notes: sc.notes,
    })
}

/// Why choosing `best` would be a decision from a partial view: the child's current parent is
/// not the file chosen, and a path that could not be inspected (or a disk that does not open)
/// may be another file with the recorded id and different contents.
fn blind_choice(sc: &Scan, current: Option<&FileKey>, best: &FileKey) -> Option<String> {
    let blind = sc.uninspected.len() + sc.skipped.len();
    (current != Some(best) && blind > 0).then(|| {
        format!(
            "not repointed: {blind} path(s) in the tree could not be inspected, and one may be \
             another file with its parent's id and different contents"
        )
    })
}

/// Content digests of candidate parents, each computed once.
#[derive(Default)]
struct Digests(HashMap<FileKey, std::result::Result<String, String>>);

impl Digests {
    fn of(&mut self, d: &ScannedDisk, opts: &ShareOptions) -> std::result::Result<String, String> {
        self.0
            .entry(d.key.clone())
            .or_insert_with(|| {
                Chain::open(&d.path, &opts.chain)
                    .and_then(|c| digest::content_digest(&c.into_view(), &mut |_| {}))
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
) -> Option<String> {
    if cands.len() < 2 || cands.iter().any(|c| Some(&c.key) == current) {
        return None;
    }
    let mut seen: Vec<(String, &Path)> = Vec::new();
    for c in cands {
        match digests.of(c, opts) {
            Ok(h) => seen.push((h, &c.path)),
            Err(e) => {
                return Some(format!(
                    "several files carry its parent's id and {} cannot be read to \
                     compare them: {e}",
                    c.path.display()
                ))
            }
        }
    }
    let (h0, p0) = seen.first()?;
    let (_, p1) = seen.iter().find(|(h, _)| h != h0)?;
    Some(format!(
        "{} and {} both carry its parent's id but their contents differ; left alone \
         (repoint it by hand with `vhdkit reparent`)",
        p0.display(),
        p1.display()
    ))
}

/// Carry out a relink plan.
pub fn apply_relink(
    plan: &RelinkPlan,
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<RelinkReport> {
    let mut rep = RelinkReport::default();
    let mut steps = Steps {
        n: 0,
        abort_after: opts.abort_after_steps,
    };
    progress.phase("relink", plan.items.len() as u64);
    // Items are sorted by level (new parents' depth); one level's children are independent, so
    // each level is repointed in batches.
    let mut rest: &[RelinkItem] = &plan.items;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|it| it.level == first.level).count();
        let (level, next) = rest.split_at(n);
        rest = next;
        let mut todo = Vec::new();
        for it in level {
            if let Some(r) = &it.refused {
                progress.advance(1);
                rep.refused.push(Finding {
                    path: it.child.clone(),
                    reason: r.clone(),
                });
                continue;
            }
            let pending = crate::txn::journal::FileJournal::for_disk(&it.child)
                .path()
                .exists();
            todo.push((
                it,
                Repoint {
                    child: &it.child,
                    new_parent: &it.new_parent,
                    repoint: true,
                    pending_journal: pending,
                },
            ));
        }
        let (its, rs): (Vec<_>, Vec<_>) = todo.into_iter().unzip();
        let results = repoint_children(&rs, opts, &mut steps, progress);
        for (it, r) in its.into_iter().zip(results) {
            match r {
                Ok(f) => {
                    rep.relinked += 1;
                    rep.journals_finished += usize::from(f);
                }
                Err((refused, reason)) => {
                    let f = Finding {
                        path: it.child.clone(),
                        reason,
                    };
                    if refused {
                        rep.refused.push(f);
                    } else {
                        rep.failed.push(f);
                    }
                }
            }
        }
    }
    progress.finish();
    Ok(rep)
}
