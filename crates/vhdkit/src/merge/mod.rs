//! Merge a differencing disk into one of its ancestors, as Hyper-V's `Merge-VHD` does: the data
//! of the child and of every disk between it and the ancestor is written into the ancestor,
//! which keeps its path and its own parent (it may itself be a differencing disk); the
//! merged-away files are deleted only once the merged chain verifies. In two steps, like every
//! change vhdkit makes: [`MergePlan::new`] validates everything and counts what will be copied,
//! writing nothing; [`MergePlan::apply`] does it.
//!
//! Words: CHILD is the disk named, ANCESTOR the one merged into (by default CHILD's parent),
//! the *merged* disks are CHILD and every disk between it and ANCESTOR (deleted at the end), and
//! D is the merged disk directly above ANCESTOR (CHILD itself when ANCESTOR is its parent).
//!
//! **Refusals** (one line, nothing changed): CHILD is not differencing; `into` is not a member
//! of CHILD's chain (compared by file identity, not path text); CHILD is larger than ANCESTOR
//! (growing ANCESTOR is a resize); their logical sector sizes differ; ANCESTOR or an
//! intermediate disk has another child vhdkit can see (the folders of every chain member and
//! the search folders are scanned: merging would change that sibling's contents), or CHILD has
//! a child (deleting CHILD would orphan it); a member is locked by another writer; the
//! ANCESTOR's file system lacks room for the blocks to allocate (checked before the first
//! write); an unfinished merge of other disks is recorded beside ANCESTOR.
//!
//! **Apply**, under the exclusive writers' lock (`crate::lock`) of ANCESTOR and every merged
//! file:
//! 1. an interrupted vhdkit change of each is finished first (a VHD redo journal rolled
//!    forward; ANCESTOR's dirty VHDX log replayed by its writer), as flatten does;
//! 2. a **merge record** is written beside ANCESTOR (`<ancestor>.vhdkit-merge`, see `record`):
//!    the phase (copying, deleting), ANCESTOR's identity, for a VHDX the DataWriteGuid G' it
//!    will take, and every merged file (path, identity, parent linkage), CHILD first. It is
//!    written to a temporary name, synced, renamed and the folder synced. A record already
//!    there for the same disks (ANCESTOR with its old identity or G') resumes at its phase;
//!    one for other disks is a refusal;
//! 3. VHDX only: G' is written into D's `parent_linkage2` through D's own log
//!    (`vhdx::link`); `parent_linkage` and D's DataWriteGuid are kept (D's DataWriteGuid is the
//!    linkage of the merged disk above it). Only then is ANCESTOR written, and its first write
//!    sets DataWriteGuid G' rather than a random one (MS-VHDX footnote 12: "first store the
//!    new GUID in the parent identifier, and then update the parent's write GUID"). Readers
//!    accept a parent whose DataWriteGuid matches either linkage (`chain::resolve`), so D
//!    resolves ANCESTOR before and after the GUID changes;
//! 4. **copy**: for each ANCESTOR block, the runs some merged disk holds (data, or a VHDX
//!    ZERO/UNMAPPED state that hides ANCESTOR; a range past a smaller merged disk's end reads as
//!    zeros and counts as held) are written into ANCESTOR. The bytes written are the bytes
//!    CHILD reads there now (`copy::what_child_reads`), and CHILD reads those ranges from a
//!    merged disk, never from ANCESTOR: reads through CHILD never change, whatever the crash
//!    point. A piece a merged file stores contiguously, going into an ANCESTOR block stored
//!    whole (VHDX FULLY_PRESENT or newly allocated, a dynamic VHD's block), is copied by the
//!    kernel file to file (`fsx::RangeCopier`: a reflink on XFS and btrfs, an in-kernel copy
//!    elsewhere; `VHDKIT_NO_CLONE=1` for a plain copy) into the place the write engine
//!    allocated, and its writeback starts every 8 MiB so the final flush has little left; the
//!    rest (sector-tracked blocks, zeros, partial sectors) goes through the crash-safe write
//!    engine, which is read back at once. The copy is idempotent, so a resumed merge copies
//!    again;
//! 5. the writes are flushed; for a VHDX, ANCESTOR takes CHILD's Virtual Disk ID (below),
//!    through its log; then the copy is **verified** on ANCESTOR parsed again from its file:
//!    every copied sector must be stored by ANCESTOR itself at the file offset the copy put it
//!    (an order-free digest of the (virtual offset, file offset) pair of every copied sector,
//!    taken during the copy and again from the fresh parse, must agree), and a VHDX must carry
//!    CHILD's Virtual Disk ID. A difference is an error (record kept, nothing deleted).
//!    Why not read the data back: the bytes went where the copy says (the engine's pieces
//!    were read back right after their write; the kernel copies exactly the range it is
//!    given), and what could still be wrong once they are written is the committed map, the
//!    BAT and sector bitmaps a reader will follow — which the digest checks completely. A
//!    read-back after the flush reads the page cache the copy just filled and proves nothing
//!    more about the disk, while it doubled the merge's time (two reads of everything copied);
//! //! 6. the record's phase becomes *deleting* (atomic rewrite); the merged files are deleted,
//!    CHILD first, each only when its identity is still the recorded one (else it is kept and
//!    reported); their folders are synced, then the record is removed and its folder synced.
//!
//! What the specifications leave open, and what vhdkit does:
//! - VHD has no `parent_linkage2`: no linkage field changes at all. ANCESTOR keeps its unique
//!   id (Xen-Orchestra's vhd-lib copies the child's instead; keeping it keeps ANCESTOR's other
//!   links, and the merged disks are deleted). The record plays the journal's part for the
//!   multi-file operation; each file's own writes are crash-safe through the VHD writer.
//! - MS-VHDX 2.6.1: "When merging, an implementation MUST destroy any metadata with
//!   `IsVirtualDisk` set in the parent, and copy all metadata with this field set in the
//!   child to the parent". Sizes and sector sizes are equal by the refusals above (a smaller
//!   CHILD keeps ANCESTOR's size: shrinking is a resize). The Virtual Disk ID (the guest's
//!   SCSI page 83 identity) becomes CHILD's, as after Hyper-V's `Merge-VHD`, whose merged
//!   parent is the disk the VM then uses: ANCESTOR then reads as the disk the guest knew. It
//!   is written through ANCESTOR's log after the copy is flushed and before the
//!   verification, which checks it; it is idempotent, and no linkage names it (children
//!   name the DataWriteGuid), so a crash on either side of it is harmless. vhdkit and Hyper-V
//!   copy the ID into a child at creation, so it normally changes nothing; the plan lists it
//!   when it does.
//! - `parent_linkage2` of D is left set to G' once the merge ends: D is deleted then. A merge
//!   that stops before deleting leaves D valid through either linkage.
//! - The record holds canonical paths; a folder renamed between a crash and the rerun makes
//!   the deletion step keep the files it cannot find and say so.
//!
//! Resuming: [`MergePlan::new`] on a CHILD whose ANCESTOR carries a matching record plans a
//! resumed merge (`resuming`); when CHILD is gone already (a stop during the deletions), a
//! record in phase deleting that names it, beside a disk in CHILD's folder, `into`'s folder or
//! a search folder, plans the rest of the deletions; `vhdkit repair ANCESTOR` finishes a record in phase *deleting*
//! and, in phase *copying*, says which merge to run again. `vhdkit check ANCESTOR` reports an
//! unfinished merge.
//!
//! Progress: one `"merge"` phase in bytes copied; cancelling stops between blocks, after
//! flushing what was copied (the record is kept: a rerun resumes).

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::ChainOptions;
use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::txn::FieldChange;

mod apply;
pub(crate) mod copy;
pub(crate) mod finish;
mod io;
mod plan;
pub(crate) mod record;
mod siblings;

// The record, for the repository's crash tests (hand-made records, a record read back).
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use record::{load as load_record, store as store_record, Member, Phase, Record};

/// Everything a merge will do. Building it touches nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MergePlan {
    /// The disk named (the top of the merge), as given.
    pub child: PathBuf,
    /// The disk merged into, as the chain found it.
    pub ancestor: PathBuf,
    /// The chain's format.
    pub format: DiskFormat,
    /// The files merged away and deleted at the end, CHILD first.
    pub merged: Vec<PathBuf>,
    /// Fields changed before the copy (VHDX: `parent_linkage2` of the disk above ANCESTOR and
    /// ANCESTOR's DataWriteGuid).
    pub changes: Vec<FieldChange>,
    /// ANCESTOR blocks written to.
    pub blocks: u64,
    /// Virtual bytes copied into ANCESTOR.
    pub bytes_to_copy: u64,
    /// ANCESTOR's block size in bytes (0 for a fixed VHD).
    pub block_size: u64,
    /// True when an unfinished merge of the same disks is recorded beside ANCESTOR.
    pub resuming: bool,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// The options the plan was made with; [`MergePlan::apply`] opens the chains with them.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: ChainOptions,
    /// The DataWriteGuid ANCESTOR takes (VHDX; a resumed merge keeps the recorded one).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) new_id: Option<Uuid>,
}

impl MergePlan {
    /// Plan merging `child` into `into` (default: its parent), a member of its chain: open the
    /// chain with `opts` (it must resolve intact), check every refusal that can be checked
    /// without writing (siblings included), and count the blocks and bytes to copy. Nothing
    /// is written and no lock is taken.
    pub fn new(
        child: impl AsRef<Path>,
        into: Option<&Path>,
        opts: &ChainOptions,
    ) -> Result<MergePlan> {
        plan::plan(child.as_ref(), into, opts)
    }

    /// Merge: under the exclusive locks of ANCESTOR and every merged file, record the merge,
    /// copy, verify, then delete the merged files (see the module docs). `progress` hears one
    /// `"merge"` phase in bytes and may cancel between blocks (what was copied is flushed, the
    /// record is kept and a rerun resumes).
    pub fn apply(&self, progress: &mut dyn crate::Progress) -> Result<MergeReport> {
        apply::apply(self, &io::Io::default(), progress)
    }

    /// [`MergePlan::apply`] with every change it makes to the file system (each write,
    /// flush, resize, kernel copy, create, rename and unlink) counted on `faults`, which fails
    /// the N-th and every later one as if the process stopped there: the repository's
    /// in-process crash tests.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn apply_with_faults(
        &self,
        faults: std::sync::Arc<crate::txn::fault::FaultPlan>,
        progress: &mut dyn crate::Progress,
    ) -> Result<MergeReport> {
        apply::apply(self, &io::Io::faulty(faults), progress)
    }
}

/// What [`MergePlan::apply`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct MergeReport {
    /// Virtual bytes copied into ANCESTOR.
    pub bytes_copied: u64,
    /// Of those, the bytes the kernel copied file to file (`copy_file_range`: shared extents
    /// on a file system that clones, XFS or btrfs).
    pub bytes_kernel_copied: u64,
    /// ANCESTOR blocks written to.
    pub blocks: u64,
    /// The files deleted, CHILD first.
    pub deleted: Vec<PathBuf>,
    /// Merged files kept because they changed since the record was written (with why).
    pub kept: Vec<String>,
    /// An interrupted vhdkit change of a member was finished first.
    pub recovered: bool,
    /// An unfinished merge of the same disks was resumed.
    pub resumed: bool,
}

/// Why [`MergePlan::apply`] will refuse `plan` before writing anything, found the way apply
/// meets it (for dry runs): each file's exclusive lock is taken and released at once, and for
/// a VHD the journal's folder is checked. Nothing is written.
#[doc(hidden)] // the `vhdkit` command's dry run; not part of the API yet
pub fn predict_refusal(plan: &MergePlan) -> Option<Error> {
    std::iter::once(&plan.ancestor)
        .chain(&plan.merged)
        .find_map(|p| crate::share::probe::change_error(p, plan.format))
}
