//! `--verify-content`: a new parent whose identity differs is accepted only when its virtual
//! contents equal the old parent's, each read through its own chain.

use std::path::Path;
use uuid::Uuid;

use super::refused;
use crate::chain::{Chain, ChainOptions};
use crate::disk::Disk;
use crate::error::Result;

/// Bytes compared at a time.
const CHUNK: u64 = 1 << 20;

/// Compare the virtual contents of the old parent `old` (which must have the identity
/// `recorded`) with the new parent's, read through `new_chain`, in 1 MiB chunks.
/// `Ok(bytes compared)` when equal; a refusal of `child` otherwise.
pub(super) fn contents(
    child: &Path,
    recorded: &Uuid,
    old: &Path,
    new_chain: Chain,
    opts: &ChainOptions,
) -> Result<u64> {
    let refuse = |r: String| refused(child, r);
    let old_chain = Chain::open(old, opts)
        .map_err(|e| refuse(format!("content check: the old parent's chain: {e}")))?;
    let old_id = old_chain.disks().first().map(Disk::identity);
    if old_id != Some(*recorded) {
        return Err(refuse(format!(
            "content check: {} is not the child's recorded parent (it has id {}, the child \
             records {recorded})",
            old.display(),
            old_id.map_or_else(|| "?".to_string(), |u| u.to_string())
        )));
    }
    let (a, b) = (old_chain.into_view(), new_chain.into_view());
    if a.virtual_size() != b.virtual_size() {
        return Err(refuse(format!(
            "content check: the old parent has {} bytes, the new one {}",
            a.virtual_size(),
            b.virtual_size()
        )));
    }
    let size = a.virtual_size();
    let mut ba = vec![0u8; CHUNK as usize];
    let mut bb = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK) as usize;
        let (xa, xb) = (&mut ba[..n], &mut bb[..n]);
        a.read_exact_at(xa, off)?;
        b.read_exact_at(xb, off)?;
        if let Some(i) = xa.iter().zip(xb.iter()).position(|(p, q)| p != q) {
            return Err(refuse(format!(
                "content check: the new parent's contents differ from the old parent's at \
                 virtual offset {:#x}",
                off + i as u64
            )));
        }
        off += n as u64;
    }
    Ok(size)
}
