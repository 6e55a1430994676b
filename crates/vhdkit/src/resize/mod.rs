//! Change the virtual size of a disk in place, as Hyper-V's `Resize-VHD` does, crash-safely.
//! In two steps, like every change vhdkit makes: [`ResizePlan::new`] validates everything and
//! says what will move, writing nothing; [`ResizePlan::apply`] does it.
//!
//! **Refusals** (one line, nothing changed): the disk has a child vhdkit can see (the folders
//! of its chain and the search folders are scanned; Hyper-V fails such a child later with
//! 0xC03A0017); a shrink past an allocated block (the first one is named; for a fixed VHD, past
//! data that does not read as zeros); a differencing disk whose parent is larger than it (its
//! new range would read the parent's data, not zeros); a size the format cannot hold or that is
//! not a whole number of sectors; the disk locked by another writer; a foreign journal beside
//! it.
//!
//! **VHD** (no log): every metadata change is one plan applied through the redo journal beside
//! the file (`crate::txn::journal`), so a crash leaves the old or the new disk:
//! - fixed: the footer is written at the new end and the old footer's sector zeroed (growing;
//!   the file's new range is a hole), or the footer written at the new end and the file cut
//!   (shrinking, only when the cut range reads as zeros);
//! - dynamic and differencing: `current_size` and the CHS geometry in both footer copies, the
//!   dynamic header's MaxTableEntries, and the BAT entries added (unallocated). When the BAT
//!   needs more room than it has, what lies in the way (the first data blocks, a parent
//!   locator's data) is first **copied** to the end of the file, where nothing points at it yet
//!   (the end footer moved first, so the file always ends in a footer), the copy synced; the
//!   journaled plan then repoints the moved blocks' BAT entries and the locators' entries and
//!   writes the grown BAT over the old places. A crash during the copy leaves the old disk with
//!   unreferenced bytes before its footer.
//!
//! **VHDX**: the virtual disk size metadata item and the BAT entries that change, in one entry
//! of the file's own log (`vhdx::update`); a fixed VHDX's new blocks are placed past the end
//! of the file first (a hole, zeros) and marked present by the same entry. The DataWriteGuid
//! is kept: the contents over the kept range do not change. A BAT that outgrows its region is
//! written whole to a new region past every structure before that entry, which then also
//! switches both region tables to it (`vhdx::resize::BatMove`): a crash before the entry leaves
//! the old disk with unreferenced bytes at its end; the old region becomes free space.
//!
//! **Stale bytes.** The block the old end splits may hold data past that end (another tool's
//! shrink, a writer that fills whole blocks); a grow zeroes it first, so the grown range reads
//! as zeros: a journaled write for a VHD (the block's new place when it moves), a direct write
//! before the log entry for a VHDX (past the virtual end, nothing reads it until the entry).
//!
//! The geometry is the VHD specification's (`vhd::create::geometry`, what `create` writes).
//! Readers that take the size of a Virtual PC (`vpc `) or qemu (`qemu`) VHD from its geometry
//! would see another size when the geometry does not give the new size exactly: that is
//! refused, naming the creator.

use std::path::{Path, PathBuf};

use crate::chain::ChainOptions;
use crate::disk::{DiskFormat, DiskType};
use crate::error::{Error, Result};
use crate::txn::FieldChange;

mod apply;
mod children;
mod padded;

#[doc(hidden)] // `vhdkit convert --round-up`; not part of the API yet
pub use padded::RoundedUp;

/// Everything a resize will do. Building it touches nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ResizePlan {
    /// The disk, as given.
    pub disk: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Its type.
    pub disk_type: DiskType,
    /// Virtual size now, in bytes.
    pub old_size: u64,
    /// Virtual size after, in bytes.
    pub new_size: u64,
    /// File length now and after, in bytes.
    pub old_file_len: u64,
    /// File length after (what the plan predicts on the file as it is now).
    pub new_file_len: u64,
    /// What is copied elsewhere in the file to make room for the grown BAT (VHD: data blocks
    /// and locators in its way; VHDX: the BAT region itself, `length` being its old length).
    pub moves: Vec<Relocation>,
    /// Fields that change.
    pub changes: Vec<FieldChange>,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// The options the plan was made with; [`ResizePlan::apply`] opens the chain with them.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: ChainOptions,
}

/// A structure copied to another place of the file to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Relocation {
    /// What it is (`"block 3"`, `"parent locator 2 (W2ru)"`).
    pub what: String,
    /// Its file offset now.
    pub from: u64,
    /// Its file offset after.
    pub to: u64,
    /// Its length in bytes.
    pub length: u64,
}

impl ResizePlan {
    /// Plan resizing `disk` to `new_size` bytes: open its chain with `opts` (it must resolve
    /// intact), refuse what cannot be done (see the module docs), and plan the writes on the
    /// file as it is now. Nothing is written and no lock is taken.
    pub fn new(disk: impl AsRef<Path>, new_size: u64, opts: &ChainOptions) -> Result<ResizePlan> {
        apply::plan(disk.as_ref(), new_size, opts)
    }

    /// Resize: under the disk's exclusive lock, finish an interrupted change, plan again on the
    /// file as it now is (it must still have the planned size), then make the change
    /// crash-safely. `progress` hears one `"resize"` phase in bytes copied (VHD relocations).
    pub fn apply(&self, progress: &mut dyn crate::Progress) -> Result<ResizeReport> {
        apply::apply(self, progress)
    }
}

/// What [`ResizePlan::apply`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ResizeReport {
    /// An interrupted vhdkit change was finished first.
    pub recovered: bool,
    /// The disk had the new size already: nothing was written.
    pub already_done: bool,
    /// Virtual size before and after.
    pub old_size: u64,
    /// Virtual size after.
    pub new_size: u64,
    /// File length after.
    pub new_file_len: u64,
    /// Bytes copied to make room (VHD relocations; VHDX: the moved BAT region).
    pub bytes_moved: u64,
    /// Bytes of metadata written (VHD: the plan's writes, journal not counted; VHDX:
    /// headers, log and metadata).
    pub metadata_bytes: u64,
}

/// `size` rounded up to a multiple of `multiple` (`--round-up`): an error when `multiple` is 0
/// or the result overflows.
#[doc(hidden)] // the `vhdkit` command's `--round-up`; not part of the API yet
pub fn round_up_size(size: u64, multiple: u64) -> Result<u64> {
    if multiple == 0 {
        return Err(Error::InvalidArgument(
            "--round-up 0: the multiple must be at least 1".into(),
        ));
    }
    size.checked_next_multiple_of(multiple).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{size} rounded up to a multiple of {multiple} overflows"
        ))
    })
}

/// Why [`ResizePlan::apply`] will refuse `plan` before writing anything, found the way apply
/// meets it (for dry runs): the exclusive lock is taken and released at once, and for a VHD
/// the journal's folder is checked. Nothing is written.
#[doc(hidden)] // the `vhdkit` command's dry run; not part of the API yet
pub fn predict_refusal(plan: &ResizePlan) -> Option<Error> {
    if plan.old_size == plan.new_size {
        return None;
    }
    crate::share::probe::change_error(&plan.disk, plan.format)
}
