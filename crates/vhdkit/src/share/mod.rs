//! The lab workflow: one shared parent for many children ([`plan_share`] / [`apply_share`]), and
//! fixing chains after a tree was moved ([`plan_relink`] / [`apply_relink`]).
//!
//! # share
//! A scan finds every disk under DIR (and SHARED) by signature and resolves every parent. Disks
//! that are parents are grouped by identity (format, VHD unique id / VHDX DataWriteGuid, virtual
//! size). Members of a group are proved interchangeable by their *virtual contents*, each read
//! once through its own chain, side by side, and compared; each class of equal members gets the
//! BLAKE3 `digest::content_digest` would give it (see `prove`). The files' bytes
//! themselves are not compared: two files with the same identity and the same virtual contents
//! are interchangeable as parents even when their layout or locators differ (this is what
//! `reparent --verify-content` means). Members whose contents differ from the kept class are
//! conflicts: reported, left alone, and so are their children.
//! The real run does not read the copies again: it relies on the plan's proof while each proved
//! base disk still has the identity, length and modification time it had when read (a keeper
//! changed since is not used; a copy changed since is kept).
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
//! exclusive advisory lock (`lock`), and re-verified: its chain opens intact through the
//! keeper, and its own layer (`digest::layer_digest`: block map and stored data) is unchanged,
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

mod apply;
pub(crate) mod digest;
mod groups;
/// The writers' lock (moved to [`crate::lock`]; kept here for callers of `share::lock`).
pub(crate) use crate::lock;
mod plan;
pub(crate) mod probe;
mod prove;
mod reason;
mod relink;
mod removal;
mod repoint;
pub(crate) mod scan;

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::ChainOptions;
use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::reparent::LocatorMode;

use crate::tree::WalkLimits;
pub use crate::tree::{Uninspected, UninspectedKind};
pub use apply::apply_share;
pub use plan::plan_share;
pub use reason::NoteReason;
pub use relink::{apply_relink, plan_relink, RelinkItem, RelinkPlan, RelinkReport};

pub(crate) use scan::{scan, FileKey, Scan};

/// Options for share and relink.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// How to open disks and resolve parents.
    pub chain: ChainOptions,
    /// Deepest folder level the walk goes below a root (default 64).
    pub max_scan_depth: usize,
    /// Most directory entries the walk looks at in all (default 1 000 000).
    pub max_scan_entries: usize,
    /// Delete the other copies (and symlinks to members) once every child is repointed.
    pub delete_copies: bool,
    /// Locators written into repointed children (default: relative only, so the tree can move).
    pub mode: LocatorMode,
    /// Test hook: abort the process (as a kill would) after this many changing steps.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub abort_after_steps: Option<u64>,
}

impl Default for ShareOptions {
    fn default() -> Self {
        ShareOptions {
            chain: ChainOptions::default(),
            max_scan_depth: WalkLimits::default().max_depth,
            max_scan_entries: WalkLimits::default().max_entries,
            delete_copies: false,
            mode: LocatorMode::RelativeOnly,
            #[cfg(feature = "test-support")]
            abort_after_steps: None,
        }
    }
}

/// How the keeper of a group comes to be in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
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
#[non_exhaustive]
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
    pub kept: Option<NoteReason>,
    /// Why deleting it will fail, found while planning (its folder refuses).
    pub refused: Option<NoteReason>,
    #[cfg_attr(feature = "serde", serde(skip))]
    key: FileKey,
    /// The file as its contents were proved (`None`: not checked by a stamp).
    #[cfg_attr(feature = "serde", serde(skip))]
    stamp: Option<prove::Stamp>,
}

/// One child to repoint.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ChildPlan {
    /// The child file.
    pub path: PathBuf,
    /// The parent it resolves to now.
    pub from: Option<PathBuf>,
    /// Through which locator.
    pub via: Option<crate::chain::Via>,
    /// True when it is repointed (false: only an interrupted change is finished).
    pub repoint: bool,
    /// True when an interrupted vhdkit change beside it is finished first.
    pub pending_journal: bool,
    /// Why it cannot be changed, found while planning (read-only, in use).
    pub refused: Option<NoteReason>,
}

/// One group of interchangeable parents and what is done with it.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct GroupPlan {
    /// Format.
    pub format: DiskFormat,
    /// The identity children record.
    pub id: Uuid,
    /// Virtual size.
    pub virtual_size: u64,
    /// 0 for a base disk, 1 for a differencing disk over a base, ...
    pub level: usize,
    /// BLAKE3 of the virtual contents (when there was more than one file to compare).
    pub content_blake3: Option<String>,
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
    pub kept_names: Vec<PathNote>,
    /// Why the keeper cannot be placed in SHARED, found while planning.
    pub keeper_refused: Option<NoteReason>,
    /// Children to repoint.
    pub children: Vec<ChildPlan>,
    /// Bytes freed by deleting copies (allocated blocks).
    pub bytes_freed: u64,
    /// Apparent size of the copies deleted.
    pub bytes_freed_apparent: u64,
    /// The keeper's source as its contents were proved (`None`: not checked by a stamp).
    #[cfg_attr(feature = "serde", serde(skip))]
    keeper_stamp: Option<prove::Stamp>,
}

/// Files with the same identity but different virtual contents: left alone.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Conflict {
    /// The identity.
    pub id: Uuid,
    /// Format.
    pub format: DiskFormat,
    /// The content hash of the kept class.
    pub kept_blake3: String,
    /// The files whose contents differ, with their hashes.
    pub files: Vec<(PathBuf, String)>,
    /// Their children, left alone.
    pub children: Vec<PathBuf>,
}

/// A file and why a plan or report lists it (refused, failed, kept, unresolved, in conflict),
/// in one line. Not a [`crate::check::Finding`]: it carries no code and names no structure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PathNote {
    /// The file.
    pub path: PathBuf,
    /// Why (displayed in one line).
    pub reason: NoteReason,
}

impl PathNote {
    /// A name the plan keeps because removing it will be refused (a finding: the user asked
    /// for it to go), not by the removal rule.
    pub(crate) fn refused(&self) -> bool {
        matches!(self.reason, NoteReason::NotDeleted(_))
    }

    /// `path` with `reason`.
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<NoteReason>) -> Self {
        PathNote {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Everything `share` will do. Building it writes nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
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
    pub skipped: Vec<PathNote>,
    /// Paths under DIR or SHARED that could not be inspected (nothing is deleted while any
    /// exists).
    pub uninspected: Vec<Uninspected>,
    /// Groups with something to do, lowest level first.
    pub groups: Vec<GroupPlan>,
    /// Same identity, different contents.
    pub conflicts: Vec<Conflict>,
    /// Children whose parent does not resolve (run `relink`).
    pub unresolved: Vec<PathNote>,
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
    /// File bytes that entered the proof that copies are identical: each copy is read once
    /// (holes are not read), compared with the others and hashed once per class, so this
    /// equals [`SharePlan::bytes_read`].
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
                    || g.kept_names.iter().any(PathNote::refused)
            })
    }
}

/// What [`apply_share`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
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
    pub refused: Vec<PathNote>,
    /// Steps that failed.
    pub failed: Vec<PathNote>,
    /// Copies kept although asked to delete them, and why.
    pub kept: Vec<PathNote>,
}

impl ShareReport {
    /// True when something was refused, failed or kept.
    pub fn has_findings(&self) -> bool {
        !self.refused.is_empty() || !self.failed.is_empty() || !self.kept.is_empty()
    }
}

/// Counts changing steps; aborts the process after the configured number (test hook).
// The crash tests of the `vhdkit` command set `VHDKIT_TEST_ABORT_AFTER_STEPS=N` (the binary
// their build makes has this feature); nothing else reads it.
#[cfg(feature = "test-support")]
fn abort_after_steps(opts: &ShareOptions) -> Option<u64> {
    opts.abort_after_steps.or_else(|| {
        std::env::var("VHDKIT_TEST_ABORT_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
    })
}

// Without the test machinery no build can abort itself.
#[cfg(not(feature = "test-support"))]
fn abort_after_steps(_: &ShareOptions) -> Option<u64> {
    None
}

struct Steps {
    n: u64,
    abort_after: Option<u64>,
}

impl Steps {
    fn new(opts: &ShareOptions) -> Self {
        Steps {
            n: 0,
            abort_after: abort_after_steps(opts),
        }
    }

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

fn under(p: &Path, root: &Path) -> bool {
    p.starts_with(root)
}

fn one_line(e: &Error) -> String {
    e.to_string().replace('\n', " ")
}

/// Make a new or removed name in `p`'s folder durable (best effort).
fn sync_dir(p: &Path) {
    if let Some(d) = p.parent() {
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// Whether `a` and `b` are names of one file (false when either cannot be read).
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => scan::file_key(a, &x) == scan::file_key(b, &y),
        _ => false,
    }
}

/// A content digest ([`digest::content_digest`]), or why the chain could not be read.
type ContentDigest = std::result::Result<String, String>;

/// `dir` made canonical; an error when it is not a folder (`hint` follows the message).
fn tree_dir(dir: &Path, hint: &str) -> Result<PathBuf> {
    let c = fs::canonicalize(dir).map_err(|e| Error::io("opening the folder", e).with_path(dir))?;
    if !c.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a folder{hint}",
            c.display()
        )));
    }
    Ok(c)
}

/// [`scan`] `roots` as the "scan" phase of `progress` (in disks; the total is not known
/// before), then stop if it was cancelled meanwhile.
fn scan_phase(roots: &[PathBuf], opts: &ShareOptions, progress: &mut dyn Progress) -> Result<Scan> {
    progress.start("scan", None);
    let limits = WalkLimits {
        max_depth: opts.max_scan_depth,
        max_entries: opts.max_scan_entries,
    };
    let sc = scan(roots, &opts.chain, &limits, &mut |_| progress.advance(1));
    progress.finish();
    crate::progress::check(progress)?;
    sc
}
