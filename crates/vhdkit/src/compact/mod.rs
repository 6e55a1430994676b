//! Compact a dynamic or differencing disk in place (issue 14, Optimize-VHD on any OS): blocks
//! that read as zeros (or, with `against_parent`, as their parent does) stop using space, the
//! blocks left move into the holes at the front, and the file is cut. In two steps, like every
//! change vhdkit makes: [`CompactPlan::new`] reads everything and counts what would change,
//! writing nothing; [`CompactPlan::apply`] does it.
//!
//! **What goes.** Every allocated block is read through the chain:
//! - dynamic disks: an all-zero block becomes unallocated (which reads as zeros);
//! - VHDX differencing: an all-zero block takes the ZERO state (zeros whatever the parent
//!   holds); with `against_parent`, a block equal to what the parent chain reads becomes
//!   NOT_PRESENT (read from the parent again);
//! - VHD differencing: VHD cannot say "zeros" in a differencing disk (an unallocated block reads
//!   the parent), so an all-zero block goes only when the parent chain reads zeros there too;
//!   with `against_parent`, any block equal to the parent chain goes. Only whole blocks: clearing
//!   the bitmap bits of single sectors equal to the parent would free no byte of the file (the
//!   block stays allocated) and costs a journal write per block;
//! - fixed disks: nothing to do.
//!
//! Every drop leaves what the disk reads unchanged, and so what its children read: a parent
//! with children may be compacted (a VHDX keeps its DataWriteGuid, a VHD its footer).
//!
//! **Crash safety.** [`CompactPlan::apply`], under the disk's exclusive writers' lock, first
//! finishes an interrupted vhdkit change (a VHD journal rolled forward, a dirty VHDX log
//! replayed) and refuses a foreign journal or an unfinished merge into the disk. Then:
//! 1. the table changes that free blocks are committed (VHDX: through its log; VHD: through
//!    the redo journal beside it, `crate::txn::journal`);
//! 2. the blocks past the lowest free places are moved down, highest first, in batches: each
//!    block is copied into free space (no table entry points there; `copy_file_range`, which
//!    clones the extents on XFS and btrfs and copies in the kernel elsewhere), the file synced,
//!    then the batch's entries switched in one commit. No entry ever points at unwritten data,
//!    and the old copy stays intact until the switch is durable;
//! 3. the file is cut (VHD: the footer written at the new end and synced first).
//!
//! A crash at any point leaves the same virtual contents; a rerun (or `vhdkit repair` for the
//! journal and log) finishes: it finds less to drop and move, and still cuts the file.

use std::path::{Path, PathBuf};

use crate::chain::{Chain, ChainOptions};
use crate::disk::{DiskFormat, DiskType};
use crate::error::Result;

mod apply;
pub(crate) mod layout;
mod scan;

/// Everything a compaction will do. Building it reads every allocated block and writes
/// nothing.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CompactPlan {
    /// The disk file.
    pub disk: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Its type.
    pub disk_type: DiskType,
    /// Blocks equal to the parent chain's are dropped too.
    pub against_parent: bool,
    /// True for a fixed disk: nothing to do.
    pub nothing_to_do: bool,
    /// The chain below the disk, parent first (read only).
    pub parents: Vec<PathBuf>,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes (0 for a fixed disk).
    pub block_size: u64,
    /// Blocks allocated in the file now.
    pub allocated_blocks: u64,
    /// Blocks that stop using space and read as zeros on their own.
    pub zero_blocks: u64,
    /// Blocks that stop using space and read through to the parent again.
    pub parent_blocks: u64,
    /// Blocks moved down into free space.
    pub blocks_to_move: u64,
    /// Bytes copied by those moves.
    pub bytes_to_move: u64,
    /// The file's length now.
    pub file_size: u64,
    /// The file's length afterwards.
    pub file_size_after: u64,
    /// Bytes of file length given back (`file_size - file_size_after`).
    pub bytes_to_reclaim: u64,
    /// Bytes the file occupies on its file system now (what `du` counts).
    pub allocated_size: u64,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// The options the plan was made with; [`CompactPlan::apply`] opens the chain with them.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub chain: ChainOptions,
    /// What the plan read, reused by [`CompactPlan::apply`] when no file of the chain changed
    /// since (so a plan-then-apply reads the allocated data once).
    #[cfg_attr(feature = "serde", serde(skip))]
    scanned: Option<std::sync::Arc<apply::Scanned>>,
}

impl CompactPlan {
    /// Plan compacting `disk` (zero blocks only): open its chain with `opts` (it must resolve
    /// intact), read every allocated block and count what would be dropped and moved, and the
    /// file's length afterwards. Nothing is written and no lock is taken.
    pub fn new(disk: impl AsRef<Path>, opts: &ChainOptions) -> Result<CompactPlan> {
        apply::plan(disk.as_ref(), opts, false)
    }

    /// Like [`CompactPlan::new`], and blocks of a differencing disk equal to what its parent
    /// chain reads are dropped too (`--against-parent`).
    pub fn against_parent(disk: impl AsRef<Path>, opts: &ChainOptions) -> Result<CompactPlan> {
        apply::plan(disk.as_ref(), opts, true)
    }

    /// Compact the plan's disk: under its exclusive lock, finish an interrupted change, judge
    /// every block again (the file may have changed since the plan), drop, move and cut (see
    /// the module docs). `progress` hears a `"compact"` phase in bytes read, then a `"move"`
    /// phase in bytes moved, and may cancel between blocks (what was done is committed).
    pub fn apply(&self, progress: &mut dyn crate::Progress) -> Result<CompactReport> {
        apply::apply(self, progress)
    }
}

/// What [`CompactPlan::apply`] did.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct CompactReport {
    /// An interrupted vhdkit change was finished first.
    pub recovered: bool,
    /// A fixed disk: nothing was done.
    pub nothing_to_do: bool,
    /// Blocks dropped that read as zeros on their own.
    pub zero_blocks: u64,
    /// Blocks dropped that read through to the parent again.
    pub parent_blocks: u64,
    /// Blocks moved down.
    pub blocks_moved: u64,
    /// Bytes those moves copied.
    pub bytes_moved: u64,
    /// Table bytes changed.
    pub table_bytes: u64,
    /// The file's length before.
    pub file_size_before: u64,
    /// The file's length after.
    pub file_size_after: u64,
    /// Bytes the file occupied on its file system before (what `du` counts).
    pub allocated_before: u64,
    /// Bytes it occupies after.
    pub allocated_after: u64,
}

/// Why [`CompactPlan::apply`] will refuse `plan` before writing anything, found the way apply
/// meets it (for dry runs): the exclusive lock is taken and released at once, a VHD's journal
/// folder checked, and an unfinished merge into the disk looked for. Nothing is written.
#[doc(hidden)] // the `vhdkit` command's dry run; not part of the API yet
pub fn predict_refusal(plan: &CompactPlan) -> Option<crate::Error> {
    apply::merge_refusal(&plan.disk)
        .err()
        .or_else(|| crate::share::probe::change_error(&plan.disk, plan.format))
}

/// The chain of `disk` split into the disk's own view (the whole chain) and its parents'.
fn views(disk: &Path, opts: &ChainOptions) -> Result<(crate::ChainView, Option<crate::ChainView>)> {
    let all = Chain::open(disk, opts)?.into_view();
    let mut below = Chain::open(disk, opts)?.into_view().into_layers();
    if below.is_empty() {
        return Err(crate::Error::internal("a chain without disks"));
    }
    below.remove(0);
    let parent = (!below.is_empty()).then(|| crate::ChainView::new(below));
    Ok((all, parent))
}
