//! `vhdkit repair`: bring a disk file back to a consistent state.
//!
//! Today it does one thing: finish (roll forward) a change that vhdkit interrupted, recorded in
//! the redo journal beside the file (`<file>.vhdkit-journal`, see [`crate::txn::journal`]), or
//! report a journal that does not belong to the file (which is never applied). Later checks
//! (footer copies, checksums, VHDX logs) add their own steps to [`RepairReport`].

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::txn::journal::{self, FileJournal, JournalState, Recovery};

/// Options for [`repair`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Report what would be done; write nothing.
    pub dry_run: bool,
}

impl RepairOptions {
    /// Set `dry_run`.
    #[must_use]
    pub fn dry_run(mut self, v: bool) -> Self {
        self.dry_run = v;
        self
    }
}

/// What was found about the journal beside the file, and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "state", rename_all = "snake_case"))]
pub enum JournalOutcome {
    /// No journal: nothing was interrupted.
    None,
    /// An interrupted change was finished (`writes` ranges rewritten) and the journal removed.
    Finished {
        /// Ranges written.
        writes: usize,
    },
    /// Dry run: an interrupted change would be finished.
    WouldFinish {
        /// Ranges that would be written.
        writes: usize,
    },
    /// The change was complete; the leftover journal was removed.
    RemovedLeftover,
    /// Dry run: the change is complete; the leftover journal would be removed.
    WouldRemoveLeftover,
    /// The journal does not match the file as it is now; it was not applied and was left in
    /// place.
    Foreign {
        /// Why it does not match.
        reason: String,
    },
}

/// The result of [`repair`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RepairReport {
    /// The file.
    pub path: PathBuf,
    /// Where its journal is (or would be).
    pub journal_path: PathBuf,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The journal step.
    pub journal: JournalOutcome,
}

impl RepairReport {
    /// True when something needs a person: a foreign journal.
    pub fn needs_attention(&self) -> bool {
        matches!(self.journal, JournalOutcome::Foreign { .. })
    }
}

/// Repair `path` (see the module docs). The file is opened for writing only when there is a
/// journal to finish and this is not a dry run.
pub fn repair(path: &Path, opts: &RepairOptions) -> Result<RepairReport> {
    let store = FileJournal::for_disk(path);
    let file =
        fs::File::open(path).map_err(|e| Error::io("opening the file", e).with_path(path))?;
    let state = journal::inspect(&file, &store).map_err(|e| e.with_path(path))?;
    drop(file);
    let outcome = match state {
        JournalState::Absent => JournalOutcome::None,
        JournalState::Foreign { reason } => JournalOutcome::Foreign { reason },
        JournalState::Pending(p) if opts.dry_run => JournalOutcome::WouldFinish {
            writes: p.writes.len(),
        },
        JournalState::Complete(_) if opts.dry_run => JournalOutcome::WouldRemoveLeftover,
        JournalState::Pending(_) | JournalState::Complete(_) => {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io("opening the file for writing", e).with_path(path))?;
            match journal::recover(&f, &store).map_err(|e| e.with_path(path))? {
                Recovery::Clean => JournalOutcome::None,
                Recovery::RolledForward { writes } => JournalOutcome::Finished { writes },
                Recovery::AlreadyComplete => JournalOutcome::RemovedLeftover,
                Recovery::Foreign { reason } => JournalOutcome::Foreign { reason },
            }
        }
    };
    Ok(RepairReport {
        path: path.to_path_buf(),
        journal_path: store.path().to_path_buf(),
        dry_run: opts.dry_run,
        journal: outcome,
    })
}
