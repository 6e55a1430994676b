//! `vhdkit repair`: bring a disk file back to a consistent state.
//!
//! In order, it does this:
//! - finish (roll forward) a change that vhdkit interrupted, recorded in the redo journal beside
//!   the file (`<file>.vhdkit-journal`, see `crate::txn::journal`; VHD), or report a journal
//!   that does not belong to the file (which is never applied);
//! - VHDX: replay a dirty log to the file (any writer, vhdkit included, that stopped mid-update
//!   leaves one; read-only opens replay it in memory each time), with a new FileWriteGuid and
//!   both headers marked clean afterwards.
//!
//! Then the certain structural repairs (`repair_structures`: footer copies, header and region
//! table twins, dead locators); what `check` still finds is listed for a person.

mod deadloc;
mod structure;

use std::path::{Path, PathBuf};

use crate::check::Finding;
use crate::error::{Error, Result};
use crate::txn::journal::{self, FileJournal, JournalState, Recovery};

pub(crate) use structure::repair_structures;
pub use structure::StructureRepair;

/// Options for [`repair`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepairOptions {
    /// Report what would be done; write nothing.
    pub dry_run: bool,
    /// Folders parent resolution may open (dead-locator analysis); empty: no confinement.
    pub confine: Vec<PathBuf>,
}

impl RepairOptions {
    /// Set `dry_run`.
    #[must_use]
    pub fn dry_run(mut self, v: bool) -> Self {
        self.dry_run = v;
        self
    }

    /// Confine parent resolution to `dir` (repeatable; see [`crate::ChainOptions::confine`]).
    #[must_use]
    pub fn confine(mut self, dir: impl Into<PathBuf>) -> Self {
        self.confine.push(dir.into());
        self
    }
}

/// What was found about the journal beside the file, and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "state", rename_all = "snake_case"))]
#[non_exhaustive]
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

/// What was found in a VHDX file's log, and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "state", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum LogOutcome {
    /// LogGuid is zero: nothing to replay.
    Clean,
    /// The active sequence was replayed to the file and the log marked clean.
    Replayed(crate::vhdx::reparent::LogReplay),
    /// Dry run: the active sequence would be replayed.
    WouldReplay(crate::vhdx::reparent::LogReplay),
}

/// The result of [`repair`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RepairReport {
    /// The file.
    pub path: PathBuf,
    /// Where its journal is (or would be).
    pub journal_path: PathBuf,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// The journal step.
    pub journal: JournalOutcome,
    /// The VHDX log step (`None` for a VHD file).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub vhdx_log: Option<LogOutcome>,
    /// Structural repairs done (or, dry run, planned): see `repair_structures`.
    pub structures: Vec<StructureRepair>,
    /// Errors and warnings `check` still finds that repair cannot fix with certainty (after
    /// the repairs; on a dry run, before them). Left alone.
    pub unrepaired: Vec<Finding>,
}

impl RepairReport {
    /// True when something needs a person: a foreign journal.
    pub fn needs_attention(&self) -> bool {
        matches!(self.journal, JournalOutcome::Foreign { .. }) || !self.unrepaired.is_empty()
    }
}

/// Repair `path` (see the module docs). The file is opened for writing only when there is a
/// journal to finish or a VHDX log to replay, and this is not a dry run.
///
/// Unless it is a dry run, the whole repair runs under the writers' lock (`crate::lock`), so
/// what it finds is what it changes: another holder is a refusal, before anything is read. A
/// file that cannot be opened for writing (read-only) is still examined: it needs the lock only
/// if something is to be written, and that write then refuses it. A VHD change made through
/// the journal beside the file is refused before its first write when the journal cannot be
/// written there (a folder that refuses new files, another user's file at the journal's names
/// in a sticky folder).
///
/// A dry run that finds something to write meets the same obstacles the same way (the file
/// opened for writing and locked, then released; the journal's folder asked by the kernel) and
/// returns the refusal the real run would ([`Error::Locked`] or [`Error::Refused`]).
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::repair::{repair, RepairOptions};
///
/// let path = dir.path().join("disk.vhdx");
/// vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
/// let report = repair(&path, &RepairOptions::default().dry_run(true))?;
/// assert!(!report.needs_attention());
/// # Ok(())
/// # }
/// ```
pub fn repair(path: impl AsRef<Path>, opts: &RepairOptions) -> Result<RepairReport> {
    let path = path.as_ref();
    let _lock = if opts.dry_run {
        // Predict the real run: it would be refused while another process holds the lock.
        if crate::lock::is_locked_elsewhere(path) {
            return Err(crate::lock::refusal(
                path,
                format!(
                    "{} (dry run: the real run would be refused)",
                    crate::lock::IN_USE
                ),
            ));
        }
        None
    } else {
        match crate::lock::lock_for_change(path) {
            Ok(l) => Some(l),
            Err(r) if r == crate::lock::IN_USE => return Err(crate::lock::refusal(path, r)),
            Err(_) => None,
        }
    };
    let store = FileJournal::for_disk(path);
    let file = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e).with_path(path))?;
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
            let (_lock, f) = crate::lock::locked_file(path)?;
            // Finishing ends in removing the journal: refuse before writing, not half-way.
            journal_writable(path)?;
            match journal::recover(&f, &store).map_err(|e| e.with_path(path))? {
                Recovery::Clean => JournalOutcome::None,
                Recovery::RolledForward { writes } => JournalOutcome::Finished { writes },
                Recovery::AlreadyComplete => JournalOutcome::RemovedLeftover,
                Recovery::Foreign { reason } => JournalOutcome::Foreign { reason },
            }
        }
    };
    let vhdx_log = vhdx_log_step(path, opts)?;
    // A merge into this disk whose copy verified: deleting the merged files finishes it.
    let merge = crate::merge::finish::repair_step(path, opts.dry_run)?;
    let pending = matches!(
        outcome,
        JournalOutcome::Foreign { .. } | JournalOutcome::WouldFinish { .. }
    );
    let (structures, unrepaired) = if pending {
        (Vec::new(), Vec::new())
    } else {
        structural_step(path, opts.dry_run, &opts.confine)?
    };
    let mut structures = structures;
    let mut unrepaired = unrepaired;
    if let Some(m) = merge {
        unrepaired.retain(|f| f.code != m.code);
        structures.insert(0, m);
    }
    if matches!(vhdx_log, Some(LogOutcome::WouldReplay(_))) {
        // The log step above already reports the replay a dry run would do.
        structures.retain(|s| s.code != "vhdx.log.dirty");
    }
    let report = RepairReport {
        path: path.to_path_buf(),
        journal_path: store.path().to_path_buf(),
        dry_run: opts.dry_run,
        journal: outcome,
        vhdx_log,
        structures,
        unrepaired,
    };
    if opts.dry_run {
        predict_refusal(&report)?;
    }
    Ok(report)
}

/// Dry run: the refusal the real run will meet before writing what `report` plans, found the
/// way it meets it: the file opened for writing and locked (then released at once) and, for a
/// VHD change made through the journal, the journal's folder asked by the kernel for write
/// access and the sticky-folder rule applied to what sits at the journal's names. Nothing to
/// write, nothing probed (the real run then needs no lock either).
fn predict_refusal(report: &RepairReport) -> Result<()> {
    let path = report.path.as_path();
    let journal_used = !matches!(
        report.journal,
        JournalOutcome::None | JournalOutcome::Foreign { .. }
    );
    let vhd = report.vhdx_log.is_none();
    let log_replay = matches!(report.vhdx_log, Some(LogOutcome::WouldReplay(_)));
    if !(journal_used || log_replay || !report.structures.is_empty()) {
        return Ok(());
    }
    let note =
        |why: &dyn std::fmt::Display| format!("{why} (dry run: the real run would be refused)");
    if let Err(why) = crate::lock::lock_for_change(path) {
        return Err(crate::lock::refusal(path, note(&why)));
    }
    if vhd && (journal_used || !report.structures.is_empty()) {
        if let Some(why) = crate::share::probe::journal_refusal(path) {
            return Err(journal_refused(path, note(&why)));
        }
    }
    Ok(())
}

/// The real run's check before a VHD change through the journal beside `path` (writing it,
/// or finishing and removing one): the same probe as the dry run's, so a folder that refuses
/// new files or a sticky folder holding another user's file at the journal's names is a
/// refusal before any byte of the disk is written.
pub(crate) fn journal_writable(path: &Path) -> Result<()> {
    match crate::share::probe::journal_refusal(path) {
        Some(why) => Err(journal_refused(path, why.to_string())),
        None => Ok(()),
    }
}

fn journal_refused(path: &Path, why: String) -> Error {
    Error::Refused {
        path: Some(path.to_path_buf()),
        reason: format!(
            "the change is made through a journal beside the file, which cannot be written: \
             {why}"
        ),
    }
}

/// VHDX: replay a dirty log to the file (or, on a dry run, say what would be replayed).
fn vhdx_log_step(path: &Path, opts: &RepairOptions) -> Result<Option<LogOutcome>> {
    let file = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e).with_path(path))?;
    if crate::disk::detect(&file).map_err(|e| e.with_path(path))? != crate::DiskFormat::Vhdx {
        return Ok(None);
    }
    let limits = crate::Limits::default();
    let Some(found) =
        crate::vhdx::reparent::inspect_log(&file, &limits).map_err(|e| e.with_path(path))?
    else {
        return Ok(Some(LogOutcome::Clean));
    };
    drop(file);
    if opts.dry_run {
        return Ok(Some(LogOutcome::WouldReplay(found)));
    }
    let (_lock, f) = crate::lock::locked_file(path)?;
    Ok(Some(
        match crate::vhdx::reparent::replay_log(&f, &limits).map_err(|e| e.with_path(path))? {
            Some(r) => LogOutcome::Replayed(r),
            None => LogOutcome::Clean,
        },
    ))
}

/// The certain structural repairs, then what `check` still finds (see [`repair_structures`]).
fn structural_step(
    path: &Path,
    dry_run: bool,
    confine: &[PathBuf],
) -> Result<(Vec<StructureRepair>, Vec<Finding>)> {
    use crate::check::{check_file, CheckOptions, Severity};
    let done = repair_structures(path, dry_run, confine)?;
    let fixed: Vec<&str> = done.iter().map(|d| d.code).collect();
    // Dry run: findings about VHD locator entries that would be dropped go with them.
    let dropped_entries: Vec<u64> = if dry_run && fixed.contains(&"vhd.locator.dead") {
        deadloc::droppable_vhd_entries(path, confine)
    } else {
        Vec::new()
    };
    let entry = crate::vhd::format::LOCATOR_ENTRY_BYTES as u64;
    let in_dropped_entry = |f: &Finding| {
        f.code.starts_with("vhd.locator.")
            && f.offset.is_some_and(|o| {
                dropped_entries
                    .iter()
                    .any(|&e| (e..e.saturating_add(entry)).contains(&o))
            })
    };
    let mut copts = CheckOptions::default();
    copts.chain_options.confine = confine.to_vec();
    let report = check_file(path, &copts)?;
    let left = report
        .findings
        .into_iter()
        .chain(deadloc::unresolved_finding(path, confine))
        .filter(|f| f.severity >= Severity::Warning)
        .filter(|f| !in_dropped_entry(f))
        .filter(|f| {
            !(dry_run
                && (fixed.contains(&f.code)
                    || (f.code.starts_with("vhd.footer")
                        && fixed.iter().any(|c| c.starts_with("vhd.footer")))
                    || (f.code.starts_with("vhdx.header")
                        && fixed.contains(&"vhdx.header.checksum"))
                    || (f.code.starts_with("vhdx.region")
                        && fixed.contains(&"vhdx.region.checksum"))))
        })
        .collect();
    Ok((done, left))
}
