//! Content digests used by `share` to prove parent copies interchangeable and children unchanged.
//!
//! - [`content_digest`]: SHA-256 over the *virtual contents* of a chain, in fixed 1 MiB chunks
//!   from offset 0; a chunk that reads as all zeros (unallocated through the whole chain, or
//!   stored zeros) contributes a zero marker and its length instead of its bytes. The digest is
//!   a function of the contents only (not of the layout), and sparse ranges cost no reads.
//! - [`layer_digest`]: SHA-256 over one file's *own* layer: its block map (which runs it holds,
//!   which read as zeros, which fall through to the parent) and the data it stores. A reparent
//!   must leave it unchanged; with a parent of equal virtual contents, the child's virtual
//!   contents are then equal too, without reading the parent again for every child.

use sha2::{Digest, Sha256};

use crate::disk::{Disk, Extent};
use crate::error::Result;
use crate::view::{Allocation, ChainView};

const CHUNK: u64 = 1 << 20;

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 (hex) of the virtual contents of `view` (see the module docs). `on_bytes` is told how
/// many virtual bytes were covered after each chunk (for progress bars). Returns the digest and
/// the bytes actually read from files.
pub fn content_digest(view: &ChainView, on_bytes: &mut dyn FnMut(u64)) -> Result<(String, u64)> {
    let size = view.virtual_size();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    let mut read = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK);
        let (alloc, len) = view.allocation(off, n)?;
        let zero = if alloc == Allocation::Zero && len >= n {
            true
        } else {
            let b = &mut buf[..n as usize];
            view.read_exact_at(b, off)?;
            read += n;
            b.iter().all(|&x| x == 0)
        };
        if zero {
            h.update([0u8]);
            h.update(n.to_le_bytes());
        } else {
            h.update([1u8]);
            h.update(&buf[..n as usize]);
        }
        off += n;
        on_bytes(n);
    }
    Ok((hex(&h.finalize()), read))
}

/// SHA-256 (hex) of one disk's own layer: its map and stored data (see the module docs).
pub fn layer_digest(disk: &Disk) -> Result<String> {
    let size = disk.virtual_size();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let (extent, len) = disk.map(off, size - off)?;
        h.update(off.to_le_bytes());
        h.update(len.to_le_bytes());
        match extent {
            Extent::Data { file_offset } => {
                h.update([1u8]);
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    let b = &mut buf[..n as usize];
                    disk.read_data(file_offset + done, b)?;
                    h.update(&*b);
                    done += n;
                }
            }
            Extent::Zero => h.update([2u8]),
            Extent::Unallocated => h.update([3u8]),
        }
        off += len;
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::disk::OpenOptions;
    use vhdkit_testkit::vhd::VhdBuilder;

    const SIZE: u64 = 4 << 20;
    const HALF: u32 = 512 << 10;

    /// Digest of a dynamic VHD with `block` bytes per block and `writes` applied.
    fn digest(block: u32, writes: &[(u64, &[u8])]) -> String {
        let mut b = VhdBuilder::dynamic(SIZE).block_size(block);
        for (off, data) in writes {
            b.write(*off, data);
        }
        let d = Disk::from_source(Box::new(b.build().bytes), &OpenOptions::default()).unwrap();
        content_digest(&d.view(), &mut |_| {}).unwrap().0
    }

    /// A 1 MiB chunk whose first half is a hole (an unallocated 512 KiB block) and whose second
    /// half holds data must be hashed by its bytes: copies differing only there differ.
    #[test]
    fn data_after_a_hole_in_the_same_chunk_counts() {
        let at = u64::from(HALF);
        let a = digest(HALF, &[(at, &[1; 4096])]);
        let b = digest(HALF, &[(at, &[2; 4096])]);
        assert_ne!(a, b);
        assert_ne!(a, digest(HALF, &[]));
    }

    /// The digest depends on the contents only: block size, holes and stored zeros do not count.
    #[test]
    fn same_contents_same_digest_across_layouts() {
        let data = [7u8; 8192];
        let at = u64::from(HALF) + 4096;
        let writes: &[(u64, &[u8])] = &[(at, &data), (3 << 20, &data)];
        let small = digest(HALF, writes);
        for block in [1 << 20, 2 << 20] {
            assert_eq!(digest(block, writes), small, "block {block}");
        }
        // Stored zeros equal a hole.
        let zeros = [0u8; 65536];
        let mut with_zeros = writes.to_vec();
        with_zeros.push((1 << 20, &zeros));
        assert_eq!(digest(HALF, &with_zeros), small);
        // The same data one sector further is another disk.
        let moved: &[(u64, &[u8])] = &[(at + 512, &data), (3 << 20, &data)];
        assert_ne!(digest(HALF, moved), small);
    }
}
