//! Confinement (`ChainOptions::confine`): which parent candidates may be opened, and how a
//! confined one is read without leaving its folder. The candidate's real path is checked first
//! (only stats, nothing outside is opened); then every file read for it, the parent itself and
//! its journal, is opened by the kernel beneath the confining folder (`openat2` with
//! `RESOLVE_BENEATH`, see `crate::fsx`), and what is asked of the parent (its time for the
//! time-stamp check) comes from the open descriptor. A folder or name swapped for a link to
//! outside after the check is refused, not followed, and nothing about what it leads to is read.

use std::io;
use std::path::{Path, PathBuf};

use super::AttemptOutcome;
use super::Rejected;
use crate::fsx::{self, Refused};
use crate::sidefile::folder_of;
use crate::txn::journal::{JournalStore, MAX_JOURNAL_FILE};

/// A candidate found inside a confining folder.
pub(super) struct Confined {
    /// The confining folder (canonical).
    pub(super) root: PathBuf,
    /// The candidate's real path (links resolved), under `root`.
    pub(super) real: PathBuf,
}

impl Confined {
    /// Open the candidate resolving its path again beneath `root` (see
    /// [`crate::fsx::open_disk_beneath`]): a component swapped for a link to outside since
    /// [`confined_path`] checked it is refused by the kernel, not followed. Nothing is asked of
    /// the path itself: what is there is judged on the descriptor.
    pub(super) fn open_file(&self) -> std::result::Result<std::fs::File, Rejected> {
        let rel = self.real.strip_prefix(&self.root).unwrap_or(Path::new("."));
        fsx::open_disk_beneath(&self.root, rel).map_err(|e| match fsx::refusal(&e) {
            Some(Refused::OutsideConfinement) => Rejected::Unreadable(AttemptOutcome::Confined),
            Some(Refused::NotRegular(_)) => Rejected::NotParent(AttemptOutcome::NotRegularFile),
            _ if e.kind() == io::ErrorKind::NotFound => {
                Rejected::NotParent(AttemptOutcome::NotFound)
            }
            _ if is_socket_error(&e) => Rejected::NotParent(AttemptOutcome::NotRegularFile),
            _ => {
                let e = crate::error::Error::io("opening the file", e).with_path(&self.real);
                Rejected::Unreadable(AttemptOutcome::CannotOpen(e.to_string()))
            }
        })
    }

    /// The candidate's journal, read beneath `root` too.
    pub(super) fn journal(&self) -> ConfinedJournal {
        let shown = crate::sidefile::journal(&self.real);
        // Under `root` by construction; an absolute path would be refused as outside anyway.
        let rel = shown
            .strip_prefix(&self.root)
            .map_or_else(|_| shown.clone(), Path::to_path_buf);
        ConfinedJournal {
            root: self.root.clone(),
            rel,
            shown,
        }
    }
}

/// The journal beside a confined parent, for reading only (a read-only open lays a pending
/// change over the parent in memory): opened beneath the confining folder without following a
/// link at its name, never blocking, with the size bound of every journal.
pub(super) struct ConfinedJournal {
    root: PathBuf,
    rel: PathBuf,
    shown: PathBuf,
}

impl JournalStore for ConfinedJournal {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        fsx::read_side_beneath(&self.root, &self.rel, MAX_JOURNAL_FILE)
    }

    fn store(&self, _bytes: &[u8]) -> io::Result<()> {
        Err(read_only())
    }

    fn remove(&self) -> io::Result<()> {
        Err(read_only())
    }

    fn describe(&self) -> String {
        self.shown.display().to_string()
    }
}

/// ENXIO: what opening a socket fails with (it is no regular file either).
#[cfg(target_os = "linux")]
fn is_socket_error(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error())
}

#[cfg(not(target_os = "linux"))]
fn is_socket_error(_e: &io::Error) -> bool {
    false
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "the journal of a confined parent is only read",
    )
}

/// With confining folders: `Ok(Some(..))` for a candidate inside one of them (its real path,
/// links already resolved, and the folder to open it beneath), `Err` otherwise (uncertain: a
/// locator that leads outside is not proved dead, so repair never drops it). Without:
/// `Ok(None)`, open the candidate as it is. Resolving the path only stats (`realpath`); nothing
/// outside is opened.
pub(super) fn confined_path(
    cand: &Path,
    confine: &[PathBuf],
) -> std::result::Result<Option<Confined>, Rejected> {
    if confine.is_empty() {
        return Ok(None);
    }
    let root_of = |real: &Path| {
        confine
            .iter()
            .filter_map(|c| std::fs::canonicalize(c).ok())
            .find(|c| real.starts_with(c))
    };
    if let Ok(real) = std::fs::canonicalize(cand) {
        return match root_of(&real) {
            Some(root) => Ok(Some(Confined { root, real })),
            None => Err(Rejected::Unreadable(AttemptOutcome::Confined)),
        };
    }
    // A missing candidate inside reads "not found", as without confinement; `file_name` is
    // `None` for a path ending in `..`, so the folder test cannot be fooled lexically.
    match (std::fs::canonicalize(folder_of(cand)), cand.file_name()) {
        (Ok(d), Some(_)) if root_of(&d).is_some() => {
            Err(Rejected::NotParent(AttemptOutcome::NotFound))
        }
        _ => Err(Rejected::Unreadable(AttemptOutcome::Confined)),
    }
}
