//! Flatten a differencing disk in place: the child becomes a standalone dynamic disk with the
//! same virtual contents, and its parents are never touched (their other children keep
//! working). In two steps, like every change vhdkit makes: [`FlattenPlan::new`] validates
//! everything and counts what will be copied, writing nothing; [`FlattenPlan::apply`] does it.
//!
//! [`FlattenPlan::apply`], under the child's exclusive writers' lock (`crate::lock`, the one
//! every vhdkit
//! writer takes):
//! 1. finishes an interrupted vhdkit change first (a VHD redo journal is rolled forward, a
//!    dirty VHDX log replayed), and refuses a foreign journal;
//!    then refuses, before the first write, a file system without room for the blocks to
//!    allocate (Linux: `fstatvfs` of the locked file);
//! 2. **copies** what the child lacks, block by block, through the crash-safe write engine
//!    (`crate::write`): each range is read through the child itself (so from its parents, since
//!    the child does not hold it) and written back into the child. The data written is always
//!    what the child already reads for those sectors, so reads through the child never change,
//!    whenever a crash comes: the engine writes data before any table entry or bitmap bit points
//!    at it. A block the child holds in part gets every missing sector (zeros included); a block
//!    it lacks is copied whole unless every layer below reads it as zeros (then it stays
//!    unallocated, which reads as zeros once standalone). See `walk`. A piece one parent
//!    stores contiguously, in whole sectors, is copied by the kernel file to file
//!    (`fsx::RangeCopier`: a reflink on XFS and btrfs, an in-kernel copy elsewhere;
//!    `VHDKIT_NO_CLONE=1` turns it off) into the place the engine gives; its sectors become
//!    present only when the engine commits, after the data is flushed, as for its own writes
//!    (a failed copy abandons the writer: nothing more is committed);
//! 3. **unlinks**, in one crash-safe step: VHD footer type 4 -> 3, parent name, id, time stamp
//!    and every locator cleared, through the redo journal beside the file (`vhd::link`'s
//!    `plan_unlink`); VHDX HasParent cleared, the parent locator item and its table entry
//!    removed, sector bitmap entries cleared, through the file's own log (`vhdx::unlink`).
//!
//! A crash at any point leaves a valid disk with the same virtual contents: before step 3 a
//! differencing disk that holds more blocks, after it a standalone one. A rerun finishes: its
//! plan has less (or nothing) to copy, and a disk already standalone is reported as such.
//!
//! **Children of the flattened disk keep working.** Its virtual contents do not change, so a
//! VHDX keeps its DataWriteGuid (MS-VHDX 2.2.2 asks for a new one when the contents change;
//! here only their representation does), which its own children's `parent_linkage` records.
//! A VHD child records its parent's unique id, which flatten keeps too.
//!
//! Progress: one `"flatten"` phase in bytes copied; cancelling stops between blocks, after
//! committing what was copied (the child is then a differencing disk holding more blocks).

use std::path::{Path, PathBuf};

use crate::chain::{Chain, ChainOptions};
use crate::disk::{Disk, DiskFormat, DiskType};
use crate::error::{Error, Result};
use crate::txn::FieldChange;
use crate::view::ChainView;

mod apply;
mod walk;

#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use apply::apply_to;

/// Everything a flatten will do. Building it touches nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FlattenPlan {
    /// The child file.
    pub child: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// True when the child is already standalone (nothing to do, or only an interrupted
    /// change to finish).
    pub already_standalone: bool,
    /// The chain below the child, parent first: where the copied data comes from.
    pub parents: Vec<PathBuf>,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks the child lacks that are copied whole.
    pub whole_blocks: u64,
    /// Blocks the child holds in part whose missing sectors are copied.
    pub partial_blocks: u64,
    /// Bytes copied into the child (virtual bytes; the file grows by about this much).
    pub bytes_to_copy: u64,
    /// Field changes of the final step, on the file as it is now (a VHDX's BAT changes are
    /// those known before the copy).
    pub unlink: Vec<FieldChange>,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// The options the plan was made with; [`FlattenPlan::apply`] opens the chain with them.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: ChainOptions,
}

impl FlattenPlan {
    /// Plan flattening `child`: open its chain with `opts` (it must resolve intact), count the
    /// blocks and bytes to copy, and plan the final step on the file as it is (so a child that
    /// cannot become standalone is refused now). Nothing is written and no lock is taken.
    pub fn new(child: impl AsRef<Path>, opts: &ChainOptions) -> Result<FlattenPlan> {
        plan(child.as_ref(), opts)
    }

    /// Flatten the plan's child: under its exclusive lock, finish an interrupted change, copy
    /// what it lacks from its chain (opened again with the plan's options), then remove its
    /// parent linkage in one crash-safe step. `progress` hears one `"flatten"` phase in bytes
    /// and may cancel between blocks (what was copied is committed; the child stays a
    /// differencing disk with the same contents, and a rerun finishes).
    pub fn apply(&self, progress: &mut dyn crate::Progress) -> Result<FlattenReport> {
        apply::apply(self, progress)
    }
}

/// What [`FlattenPlan::apply`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct FlattenReport {
    /// An interrupted vhdkit change was finished first.
    pub recovered: bool,
    /// The child was standalone already (after any recovery): nothing was copied.
    pub already_standalone: bool,
    /// Blocks copied whole.
    pub whole_blocks: u64,
    /// Blocks completed.
    pub partial_blocks: u64,
    /// Virtual bytes copied into the child.
    pub bytes_copied: u64,
    /// Of those, the bytes the kernel copied file to file (`copy_file_range`: shared extents
    /// on a file system that clones, XFS or btrfs).
    pub bytes_kernel_copied: u64,
    /// Bytes the final step wrote (VHD: the plan's writes, journal not counted; VHDX:
    /// headers, log and metadata).
    pub unlink_bytes: u64,
}

/// See [`FlattenPlan::new`].
fn plan(child: &Path, opts: &ChainOptions) -> Result<FlattenPlan> {
    let chain = Chain::open(child, opts)?;
    let mut layers = chain.into_view().into_layers();
    if layers.is_empty() {
        return Err(Error::internal("a chain without disks"));
    }
    let disk = layers.remove(0);
    let mut p = FlattenPlan {
        child: child.to_path_buf(),
        format: disk.format(),
        already_standalone: disk.disk_type() != DiskType::Differencing,
        parents: layers
            .iter()
            .filter_map(|d| d.path().map(Path::to_path_buf))
            .collect(),
        virtual_size: disk.virtual_size(),
        block_size: disk.block_size().unwrap_or(0),
        whole_blocks: 0,
        partial_blocks: 0,
        bytes_to_copy: 0,
        unlink: Vec::new(),
        notes: disk.warnings(),
        chain: opts.clone(),
    };
    if p.already_standalone {
        p.notes
            .push("the disk is not a differencing disk: nothing to do".into());
        return Ok(p);
    }
    let parents = ChainView::new(layers);
    let t = totals(&disk, &parents)?;
    (p.whole_blocks, p.partial_blocks, p.bytes_to_copy) =
        (t.whole_blocks, t.partial_blocks, t.bytes);
    p.unlink = apply::preview_unlink(child, opts)?;
    Ok(p)
}

/// Blocks and bytes `child` lacks.
fn totals(child: &Disk, parents: &ChainView) -> Result<walk::Totals> {
    let mut t = walk::Totals::default();
    let bs = child.block_size().unwrap_or(0);
    for (start, len) in walk::blocks(child.virtual_size(), bs) {
        t.add(&walk::need(child, parents, start, len)?);
    }
    Ok(t)
}

/// Why [`FlattenPlan::apply`] will refuse `plan` before writing anything, found the way apply
/// meets it (for dry runs): the child's exclusive lock is taken and released at once, and for
/// a VHD the journal's folder is checked as `reparent`'s dry run does. Nothing is written.
#[doc(hidden)] // the `vhdkit` command's dry run; not part of the API yet
pub fn predict_refusal(plan: &FlattenPlan) -> Option<Error> {
    crate::share::probe::change_error(&plan.child, plan.format)
}
