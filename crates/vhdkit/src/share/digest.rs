//! Content digests used by `share` to prove parent copies interchangeable and children unchanged.
//!
//! - [`content_digest`]: BLAKE3 over the *virtual contents* of a chain, in fixed 1 MiB chunks
//!   from offset 0; a chunk that reads as all zeros (unallocated through the whole chain, or
//!   stored zeros) is not hashed as bytes: each maximal run of such chunks contributes a zero
//!   marker and the run's length, so a 64 TiB hole costs one update, not 64 million. The digest is
//!   a function of the contents only (not of the layout), and sparse ranges cost no reads.
//! - [`layer_digest`]: BLAKE3 over one file's *own* layer: its block map (which runs it holds,
//!   which read as zeros, which fall through to the parent) and the data it stores. A reparent
//!   must leave it unchanged; with a parent of equal virtual contents, the child's virtual
//!   contents are then equal too, without reading the parent again for every child.

use std::path::Path;

use crate::aligned::Aligned;
use crate::chain::{Chain, ChainOptions};
use crate::convert::ZeroAhead;
use crate::disk::{Disk, Extent};
use crate::error::Result;
use crate::view::ChainView;

/// The digest state (BLAKE3: it keeps up with reading the copies, where SHA-256 did not).
pub(crate) type Hasher = blake3::Hasher;

/// The digest's unit: every chunk is either a zero marker or its bytes.
pub(crate) const CHUNK: u64 = 1 << 20;

/// BLAKE3 (hex) of the virtual contents of `view` (see the module docs). `on_bytes` is told how
/// many virtual bytes were covered after each chunk (for progress bars). Returns the digest and
/// the bytes actually read from files.
pub fn content_digest(view: &ChainView, on_bytes: &mut dyn FnMut(u64)) -> Result<(String, u64)> {
    let size = view.virtual_size();
    let mut h = Framer::start(size);
    let mut buf = Aligned::default();
    let mut off = 0u64;
    let mut read = 0u64;
    // Holes are looked up a long run at a time, not chunk by chunk (see `ZeroAhead`).
    let mut holes = ZeroAhead::default();
    while off < size {
        let n = (size - off).min(CHUNK);
        let zero = if holes.all_zero(view, off, n)? {
            true
        } else {
            view.read_exact_at(buf.window(n as usize), off)?;
            read += n;
            is_zero(buf.data())
        };
        if zero {
            h.zero(n);
        } else {
            h.data(buf.data());
        }
        off += n;
        on_bytes(n);
    }
    Ok((h.finish(), read))
}

/// A content digest being computed: the hash so far and the zero run not yet framed. Runs are
/// framed when they end, so the digest depends on the contents only, not on how the zeros were
/// met (chunk by chunk, or a long hole at once).
#[derive(Clone)]
pub(crate) struct Framer {
    hash: Hasher,
    zeros: u64,
}

impl Framer {
    /// The digest of a disk of `size` virtual bytes before its first chunk.
    pub(crate) fn start(size: u64) -> Framer {
        let mut hash = Hasher::new();
        hash.update(&size.to_le_bytes());
        Framer { hash, zeros: 0 }
    }

    /// `n` more bytes that read as zeros (whole chunks, or the short last one).
    pub(crate) fn zero(&mut self, n: u64) {
        self.zeros = self.zeros.saturating_add(n);
    }

    /// One chunk that holds data: the pending zero run, then a marker and the bytes.
    pub(crate) fn data(&mut self, b: &[u8]) {
        self.frame_zeros();
        self.hash.update(&[1u8]);
        self.hash.update(b);
    }

    /// The digest, hex.
    pub(crate) fn finish(mut self) -> String {
        self.frame_zeros();
        self.hash.finalize().to_hex().to_string()
    }

    fn frame_zeros(&mut self) {
        if self.zeros > 0 {
            self.hash.update(&[0u8]);
            self.hash.update(&self.zeros.to_le_bytes());
            self.zeros = 0;
        }
    }
}

/// Whether `b` is all zeros; OR-folds a few KiB at a time (which vectorises) and stops at the
/// first piece with data, so a data chunk costs one piece.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|p| p.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// [`content_digest`] of the chain opened at `path`.
pub fn chain_digest(
    path: &Path,
    chain: &ChainOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(String, u64)> {
    let c = Chain::open(path, chain)?;
    content_digest(&c.into_view(), on_bytes)
}

/// BLAKE3 (hex) of one disk's own layer: its map and stored data (see the module docs).
pub fn layer_digest(disk: &Disk) -> Result<String> {
    let size = disk.virtual_size();
    let mut h = Hasher::new();
    h.update(&size.to_le_bytes());
    let mut buf = Aligned::default();
    let mut off = 0u64;
    while off < size {
        let (extent, len) = disk.map(off, size - off)?;
        h.update(&off.to_le_bytes());
        h.update(&len.to_le_bytes());
        match extent {
            Extent::Data { file_offset } => {
                h.update(&[1u8]);
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    disk.read_data(file_offset + done, buf.window(n as usize))?;
                    h.update(buf.data());
                    done += n;
                }
            }
            Extent::Zero => {
                h.update(&[2u8]);
            }
            Extent::Unallocated => {
                h.update(&[3u8]);
            }
        }
        off += len;
    }
    Ok(h.finalize().to_hex().to_string())
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::disk::OpenOptions;
    use vhdkit_testkit::vhd::VhdBuilder;

    const SIZE: u64 = 4 << 20;
    const HALF: u32 = 512 << 10;

    /// The digest of a sequence: `Some(n)` zero bytes, `None` one data chunk of 0x5A bytes.
    fn framed(size: u64, parts: &[Option<u64>]) -> String {
        let mut f = Framer::start(size);
        for p in parts {
            match p {
                Some(n) => f.zero(*n),
                None => f.data(&[0x5A; 16]),
            }
        }
        f.finish()
    }

    #[test]
    fn a_zero_run_frames_the_same_however_it_was_met() {
        let c = CHUNK;
        let whole = framed(8 * c, &[None, Some(3 * c), None, Some(4 * c)]);
        let split = framed(
            8 * c,
            &[None, Some(c), Some(2 * c), None, Some(c), Some(3 * c)],
        );
        assert_eq!(whole, split);
        // Runs of other lengths or places, and the disk size, all count.
        assert_ne!(
            whole,
            framed(8 * c, &[None, Some(2 * c), None, Some(5 * c)])
        );
        assert_ne!(
            whole,
            framed(8 * c, &[Some(3 * c), None, None, Some(4 * c)])
        );
        assert_ne!(
            whole,
            framed(9 * c, &[None, Some(3 * c), None, Some(4 * c)])
        );
        // A trailing run is framed too: it is not the same as no run.
        assert_ne!(framed(c, &[None]), framed(c, &[None, Some(c)]));
    }

    /// The framing is what the module docs say, byte for byte (`content_blake3` is shown to
    /// users, who may keep it): the size, then per maximal zero run a 0 marker and its length,
    /// per data chunk a 1 marker and its bytes, and nothing else.
    #[test]
    fn the_framing_is_the_documented_one() {
        let c = CHUNK;
        let d = [0x5Au8; 16];
        let mut want = blake3::Hasher::new();
        want.update(&(5 * c).to_le_bytes());
        want.update(&[0]);
        want.update(&(2 * c).to_le_bytes());
        for _ in 0..2 {
            want.update(&[1]);
            want.update(&d);
        }
        want.update(&[0]);
        want.update(&c.to_le_bytes());
        let got = framed(5 * c, &[Some(c), Some(c), None, None, Some(c)]);
        assert_eq!(got, want.finalize().to_hex().to_string());
        // No zeros: no zero frame at all.
        let mut want = blake3::Hasher::new();
        want.update(&c.to_le_bytes());
        want.update(&[1]);
        want.update(&d);
        assert_eq!(framed(c, &[None]), want.finalize().to_hex().to_string());
    }

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

    /// Layer digest of a VHD built by `b` after `writes`.
    fn layer(b: VhdBuilder, writes: &[(u64, &[u8])]) -> String {
        let mut b = b;
        for (off, data) in writes {
            b.write(*off, data);
        }
        let d = Disk::from_source(Box::new(b.build().bytes), &OpenOptions::default()).unwrap();
        layer_digest(&d).unwrap()
    }

    fn child(path: &str) -> VhdBuilder {
        VhdBuilder::differencing(SIZE, [7; 16])
            .block_size(HALF)
            .locator(vhdkit_testkit::vhd::Locator::w2ru(path))
    }

    /// A reparent changes locators only: the layer digest must not see them, and must see
    /// every byte, run and kind of range the file holds itself.
    #[test]
    fn layer_digest_sees_the_layer_and_nothing_else() {
        let data = [5u8; 4096];
        let at = 3 << 20; // past the first 1 MiB read chunk
        let base = layer(child(r".\a.vhd"), &[(0, &data), (at, &data)]);
        // Same layer, another locator: same digest.
        assert_eq!(
            layer(child(r"..\b\a.vhd"), &[(0, &data), (at, &data)]),
            base
        );
        // One byte of stored data differs (in a later block and a later chunk).
        let mut other = data;
        other[4095] ^= 1;
        assert_ne!(layer(child(r".\a.vhd"), &[(0, &data), (at, &other)]), base);
        // Stored zeros hide the parent; an unallocated range shows it: different layers.
        let zeros = [0u8; 4096];
        let with_zeros = layer(
            child(r".\a.vhd"),
            &[(0, &data), (at, &data), (1 << 20, &zeros)],
        );
        assert_ne!(with_zeros, base);
        // The same data one sector further is another layer.
        assert_ne!(
            layer(child(r".\a.vhd"), &[(0, &data), (at + 512, &data)]),
            base
        );
        // The virtual size counts.
        let bigger = VhdBuilder::differencing(2 * SIZE, [7; 16])
            .block_size(HALF)
            .locator(vhdkit_testkit::vhd::Locator::w2ru(r".\a.vhd"));
        assert_ne!(layer(bigger, &[(0, &data), (at, &data)]), base);
    }

    /// A data run longer than one read chunk is hashed whole: a difference at its end counts.
    #[test]
    fn layer_digest_reads_long_runs_to_the_end() {
        // One run of the whole disk; SIZE + 512 also ends in a short piece after whole chunks.
        for size in [SIZE, SIZE + 512] {
            let fixed = |last: u8| {
                let mut b = VhdBuilder::fixed(size);
                b.write(size - 512, &[last; 512]);
                b
            };
            assert_ne!(layer(fixed(1), &[]), layer(fixed(2), &[]), "{size}");
            assert_eq!(layer(fixed(1), &[]), layer(fixed(1), &[]), "{size}");
        }
    }

    /// Only chunks that are not a hole are read, and progress covers the whole disk once.
    #[test]
    fn reads_only_what_is_not_a_hole_and_reports_progress() {
        // 2 MiB blocks: block 0 is a hole (2 chunks skipped), block 1 holds data (2 read).
        let mut b = VhdBuilder::dynamic(SIZE).block_size(2 << 20);
        b.write(5 << 19, &[9; 512]);
        let d = Disk::from_source(Box::new(b.build().bytes), &OpenOptions::default()).unwrap();
        let mut seen = Vec::new();
        let (_, read) = content_digest(&d.view(), &mut |n| seen.push(n)).unwrap();
        assert_eq!(read, 2 * CHUNK);
        assert_eq!(seen, vec![CHUNK; 4]);
    }

    /// Holes made of blocks smaller than a chunk are not read either (an empty disk with
    /// 512 KiB blocks costs no reads), and they digest like the same holes in 2 MiB blocks.
    #[test]
    fn holes_of_small_blocks_cost_no_reads() {
        for block in [512u32, 4096, HALF] {
            let mut b = VhdBuilder::dynamic(SIZE).block_size(block);
            b.write(3 << 20, &[9; 512]);
            let d = Disk::from_source(Box::new(b.build().bytes), &OpenOptions::default()).unwrap();
            let (digest, read) = content_digest(&d.view(), &mut |_| {}).unwrap();
            assert_eq!(
                read, CHUNK,
                "block {block}: only the chunk with data is read"
            );
            assert_eq!(digest, self::digest(2 << 20, &[(3 << 20, &[9; 512])]));
        }
        let d = Disk::from_source(
            Box::new(VhdBuilder::dynamic(SIZE).block_size(2 << 20).build().bytes),
            &OpenOptions::default(),
        )
        .unwrap();
        assert_eq!(content_digest(&d.view(), &mut |_| {}).unwrap().1, 0);
    }

    /// A disk whose size is not a whole number of chunks: the last, short chunk is hashed by
    /// its own length, and its contents count.
    #[test]
    fn last_short_chunk_counts() {
        let size = SIZE + 512;
        let of = |last: u8| {
            let mut b = VhdBuilder::dynamic(size).block_size(2 << 20);
            b.write(size - 512, &[last; 512]);
            let d = Disk::from_source(Box::new(b.build().bytes), &OpenOptions::default()).unwrap();
            let mut covered = 0;
            let h = content_digest(&d.view(), &mut |n| covered += n).unwrap().0;
            assert_eq!(covered, size);
            h
        };
        assert_ne!(of(1), of(2));
        assert_eq!(of(1), of(1));
    }

    /// `chain_digest` opens the file's chain and digests it: the same digest as the contents,
    /// another for other contents, and the bytes it read and the progress it reported.
    #[test]
    fn chain_digest_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = None;
        for (name, fill) in [("a.vhd", 1u8), ("b.vhd", 2)] {
            let mut b = VhdBuilder::dynamic(SIZE).block_size(2 << 20);
            b.write(3 << 20, &[fill; 512]);
            let path = dir.path().join(name);
            std::fs::write(&path, b.build().bytes).unwrap();
            let mut covered = 0;
            let (h, read) =
                chain_digest(&path, &ChainOptions::default(), &mut |n| covered += n).unwrap();
            assert_eq!(h, digest(2 << 20, &[(3 << 20, &[fill; 512])]), "{name}");
            // The 2 MiB block holding the data is read whole (two chunks).
            assert_eq!((read, covered), (2 * CHUNK, SIZE), "{name}");
            assert_ne!(last.replace(h.clone()), Some(h), "{name}");
        }
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
