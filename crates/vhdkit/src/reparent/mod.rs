//! Repoint a differencing disk at another copy of its parent (Hyper-V's `Set-VHD -ParentPath`),
//! in two steps: [`plan`] validates everything and computes every change, touching nothing;
//! [`apply`] writes the plan crash-safely through `txn` and follows the child's chain
//! again through the new locators.
//!
//! Checks, all before anything is opened for writing (a failure is [`Error::Refused`] and the
//! child keeps its bytes and its modification time):
//! - no foreign vhdkit journal lies beside the child (a valid pending one is finished by
//!   [`apply`] first; the plan is computed on the file as it will be then);
//! - the child is a differencing disk; the new parent opens and is of the same format;
//! - the new parent is neither the child nor a descendant of it (the child must not appear in
//!   the new parent's chain), and that chain resolves intact;
//! - virtual size and sector sizes are equal;
//! - identity: the new parent's identity equals the child's linkage, unless
//!   `ignore_id_mismatch` (the linkage is rewritten to the new parent, with a loud warning) or
//!   `verify_content` (accepted only when the old and new parents' virtual contents, each read
//!   through its own chain, are equal; then the linkage is rewritten too).
//!
//! The format-specific part lives in `vhd::reparent` (locators, parent name; written through a
//! redo journal beside the file) and `vhdx::reparent` (the parent locator metadata item; written
//! through the file's own log, so no journal is used for VHDX). The plan carries that part as a
//! `FormatPlan`, and the caller's [`ChainOptions`] (with its limits) on to [`apply`].
//!
//! Layout: `plan.rs` (checks and the format-neutral plan), `apply.rs` (one child), `batch.rs`
//! (many children, one set of durability barriers), `verify.rs` (`verify_content`); Windows
//! path forms are in the crate's `winpath` module.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{ChainOptions, ChainReport};
use crate::disk::DiskFormat;
use crate::error::Error;
use crate::readset::ReadSet;
use crate::txn;
use crate::vhd::name_style::ParentNameStyle;

mod apply;
mod batch;
mod plan;
#[cfg(test)]
mod tests;
mod verify;

pub use crate::txn::journal::Recovery;
pub use crate::txn::{FieldChange, WriteOp};
pub use crate::vhdx::reparent::Applied as VhdxApplied;
pub use crate::winpath::AbsolutePath;
pub use crate::winpath::AbsoluteSource;
pub use apply::apply;
#[cfg(not(feature = "test-support"))]
pub(crate) use batch::apply_batch;
// Any sink, journal store and barrier (fault injection), and batches: the repository's tests.
pub use plan::plan;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use {
    apply::apply_to,
    batch::{apply_batch, apply_batch_to, BatchTarget},
};

/// Which locators to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum LocatorMode {
    /// The relative path and the absolute path (what Hyper-V writes).
    #[default]
    Both,
    /// Only the relative path; the absolute locator is cleared.
    RelativeOnly,
    /// Only the absolute path; the relative locator is cleared.
    AbsoluteOnly,
}

/// What to repoint the child at, and how.
#[derive(Debug, Clone, Default)]
pub struct ReparentOptions {
    /// The new parent file.
    pub new_parent: PathBuf,
    /// Which locators to write.
    pub mode: LocatorMode,
    /// Accept a new parent whose identity differs from the child's linkage, and rewrite the
    /// linkage to it (Hyper-V's `-IgnoreIdMismatch`).
    pub ignore_id_mismatch: bool,
    /// The old parent: accept a mismatching new parent only when both have the same virtual
    /// contents (read through their own chains); the linkage is then rewritten.
    pub verify_content: Option<PathBuf>,
    /// The absolute Windows path to record (`C:\Lab\Ref\base.vhd`, `\\server\share\base.vhd`).
    pub windows_path: Option<String>,
    /// How to open disks and resolve the new parent's own chain; its path maps are also used
    /// in reverse to form the absolute Windows path. Kept in the plan: [`apply`] opens with the
    /// same options and limits.
    pub chain: ChainOptions,
}

/// How the new parent's identity was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "verdict", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum IdentityCheck {
    /// It equals the child's primary linkage (VHD parent unique id, VHDX `parent_linkage`).
    Primary,
    /// It equals VHDX `parent_linkage2`.
    Alternate,
    /// It differs; accepted because the caller said to ignore the mismatch. The linkage is
    /// rewritten to the new parent.
    MismatchIgnored {
        /// The identity the child recorded.
        recorded: Uuid,
        /// The new parent's identity.
        new_parent: Uuid,
    },
    /// It differs; accepted because the old and new parents' virtual contents are equal. The
    /// linkage is rewritten to the new parent.
    ContentVerified {
        /// The identity the child recorded.
        recorded: Uuid,
        /// The new parent's identity.
        new_parent: Uuid,
        /// The old parent compared with.
        old_parent: PathBuf,
        /// Bytes compared.
        bytes_compared: u64,
    },
}

/// The format-specific part of a plan: the writes and what they need at apply time.
#[derive(Debug, Clone)]
pub(crate) enum FormatPlan {
    /// VHD: locator, parent name and linkage writes, applied through a redo journal beside
    /// the file. Its notes and warnings are moved into the [`ReparentPlan`]'s.
    Vhd(crate::vhd::reparent::Planned),
    /// VHDX: parent locator item writes, committed through the file's own log on the header
    /// the plan was made on. Its notes and warnings are moved into the [`ReparentPlan`]'s.
    Vhdx(crate::vhdx::reparent::Planned),
}

impl FormatPlan {
    /// The field changes and byte writes.
    pub fn txn(&self) -> &txn::Plan {
        match self {
            FormatPlan::Vhd(p) => &p.plan,
            FormatPlan::Vhdx(p) => &p.plan,
        }
    }

    /// Bytes the plan writes to the child. VHD: the plan's writes (journal not counted). VHDX:
    /// everything written to the file on a clean log (header updates, the log entry and the
    /// metadata sectors applied from it); the plan's logical metadata writes are in
    /// [`FormatPlan::txn`].
    pub fn bytes_written(&self) -> u64 {
        match self {
            FormatPlan::Vhd(p) => p.plan.bytes_written(),
            FormatPlan::Vhdx(p) => p.predicted_bytes,
        }
    }
}

/// Serialised as the plan's `txn`, `bytes_written` and (VHDX) `vhdx` fields, the current header
/// the plan was made on.
#[cfg(feature = "serde")]
impl serde::Serialize for FormatPlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let n = if matches!(self, FormatPlan::Vhdx(_)) {
            3
        } else {
            2
        };
        let mut st = s.serialize_struct("FormatPlan", n)?;
        st.serialize_field("txn", self.txn())?;
        st.serialize_field("bytes_written", &self.bytes_written())?;
        if let FormatPlan::Vhdx(p) = self {
            st.serialize_field("vhdx", &p.guard)?;
        }
        st.end()
    }
}

/// Everything a reparent will do. Building it touches nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ReparentPlan {
    /// The child file.
    pub child: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The new parent, as given.
    pub new_parent: PathBuf,
    /// The new parent's absolute path on this machine.
    pub new_parent_resolved: PathBuf,
    /// The identity the child records now.
    pub recorded_parent_id: Uuid,
    /// The new parent's identity.
    pub new_parent_id: Uuid,
    /// How the identity was accepted.
    pub identity: IdentityCheck,
    /// True when the child's linkage (parent id and time stamp) is rewritten.
    pub linkage_rewritten: bool,
    /// Which locators are written.
    pub mode: LocatorMode,
    /// The relative path written (`None` in absolute-only mode, or when there is none).
    pub relative_path: Option<String>,
    /// The absolute path written.
    pub absolute_path: Option<AbsolutePath>,
    /// The parent name written (VHD parent unicode name; empty for VHDX, which has none).
    pub parent_name: String,
    /// VHD: the parent name's style before and after (the child's style is kept when it can
    /// be, so the tool that made the child still finds its parent).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub parent_name_style: Option<ParentNameStyle>,
    /// True when an interrupted change will be finished before applying: a vhdkit journal
    /// beside a VHD, a dirty log inside a VHDX (replayed to the file).
    pub pending_journal: bool,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// Things the user must know (mismatches overridden, paths Windows will not resolve).
    pub warnings: Vec<String>,
    /// The writes, by format.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub(crate) format_plan: FormatPlan,
    /// Every range of the child the plan read, re-checked under the lock before writing.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) reads: ReadSet,
    /// Every range of the new parent file its parse read, re-checked under the child's lock
    /// before writing: the new parent is still the planned disk without parsing it again.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) new_parent_reads: ReadSet,
    /// The options the plan was made with: [`apply`] opens the new parent and re-opens the
    /// child's chain with them (and VHDX log replay keeps to their limits).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: ChainOptions,
}

impl ReparentPlan {
    /// The field changes and byte writes (the repository's tests drive the transaction
    /// machinery with it; users read it through the accessors below).
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn txn(&self) -> &txn::Plan {
        self.format_plan.txn()
    }

    /// The field changes and byte writes.
    #[cfg(not(feature = "test-support"))]
    pub(crate) fn txn(&self) -> &txn::Plan {
        self.format_plan.txn()
    }

    /// Bytes the plan writes to the child.
    pub fn bytes_written(&self) -> u64 {
        self.format_plan.bytes_written()
    }
}

// Read access to the transaction behind a plan, so that `txn::Plan` stays crate-private.
impl ReparentPlan {
    /// Field-level description of what the plan changes.
    pub fn changes(&self) -> &[FieldChange] {
        &self.txn().changes
    }

    /// Byte-level writes, in the order they are applied.
    pub fn writes(&self) -> &[WriteOp] {
        &self.txn().writes
    }

    /// The child's file length before.
    pub fn old_len(&self) -> u64 {
        self.txn().old_len
    }

    /// The child's file length after (larger when data is relocated to the end).
    pub fn new_len(&self) -> u64 {
        self.txn().new_len
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ApplyReport {
    /// A pending change found first, and what was done with it.
    pub recovery: Recovery,
    /// Byte ranges written to the child.
    pub writes: usize,
    /// Bytes written to the child.
    pub bytes_written: u64,
    /// Bytes of the journal written beside it (then removed).
    pub journal_bytes: u64,
    /// File length before.
    pub old_len: u64,
    /// File length after.
    pub new_len: u64,
    /// VHDX: what was written where (headers, log, metadata), and a log replayed first.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub vhdx: Option<crate::vhdx::reparent::Applied>,
    /// The child's chain, followed again through the new locators after the change (intact
    /// or not, see [`ChainReport::intact`]): always there from [`apply`]; `None` from
    /// `apply_to` and the batch functions, which do not follow it.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: Option<ChainReport>,
}

/// Why [`apply`] will refuse `plan` before writing anything, found the way apply meets it
/// (for dry runs): the child is opened for writing and its exclusive lock taken (then released
/// at once), and for a VHD the journal's folder is asked by the kernel for write access and the
/// sticky-folder rule is applied to whatever already sits at the journal's names (another
/// user's file there cannot be unlinked or replaced). Nothing is written. The error is the one
/// apply would return: [`Error::Locked`] when another process holds the lock,
/// [`Error::Refused`] otherwise.
#[doc(hidden)] // the `vhdkit` command's dry run; not part of the API yet
pub fn predict_refusal(plan: &ReparentPlan) -> Option<Error> {
    crate::share::probe::change_error(&plan.child, plan.format)
}

fn refused(child: &Path, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: Some(child.to_path_buf()),
        reason: reason.into(),
    }
}
