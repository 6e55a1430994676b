//! Free space, asked before the first write of a change that allocates blocks (flatten, merge).

use std::fs::File;

use crate::error::{Error, Result};

/// Bytes a new block may take beyond its data (a VHD sector bitmap and alignment), and the
/// fixed room kept for the rest (a VHDX sector bitmap block, the journal, a moved footer).
const BLOCK_OVERHEAD: u64 = 64 << 10;
const FIXED_OVERHEAD: u64 = 2 << 20;

/// Refuse when `file`'s file system has less free space than `new_blocks` blocks of
/// `block_size` bytes need; `job` names the change in the message ("the copy", "the merge").
/// Where the free space cannot be asked (not Linux, or the call fails) nothing is refused: the
/// change runs and a full file system fails it like any write, which every caller survives.
pub(crate) fn ensure_room(file: &File, new_blocks: u64, block_size: u64, job: &str) -> Result<()> {
    if new_blocks == 0 {
        return Ok(());
    }
    let need = new_blocks
        .saturating_mul(block_size.saturating_add(BLOCK_OVERHEAD))
        .saturating_add(FIXED_OVERHEAD);
    match free_bytes(file) {
        Some(free) if free < need => Err(Error::refused(format!(
            "not enough free space: {job} needs about {need} bytes ({new_blocks} blocks of \
             {block_size} bytes), the file system has {free} free; nothing was written"
        ))),
        _ => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn free_bytes(file: &File) -> Option<u64> {
    let s = rustix::fs::fstatvfs(file).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_bytes(_: &File) -> Option<u64> {
    None
}
