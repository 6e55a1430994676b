//! Reading a disk through vhdkit's chain (an independent path from any writer's own), digests
//! of whole virtual disks, write patterns with their in-memory model, and byte-range checks
//! for metadata-only changes. Shared by the library's and the CLI's tests.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;

use vhdkit::{Chain, ChainOptions, Disk, OpenOptions};

use crate::{have_tool, run_ok, sha256_file, sha256_reader, Rng};

const MIB: u64 = 1 << 20;

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The whole virtual disk of `p` through a freshly opened chain (default options).
pub fn read_chain(p: &Path) -> Vec<u8> {
    let mut v = Chain::open(p, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("chain of {}: {e}", p.display()))
        .into_view();
    let mut out = Vec::new();
    v.read_to_end(&mut out).expect("read the chain");
    out
}

/// The virtual size of `p` through a freshly opened chain (default options) and `len` bytes read
/// at each of `offsets` (each clamped to end at the virtual size): for disks too large to read
/// whole.
pub fn read_chain_at(p: &Path, offsets: &[u64], len: usize) -> (u64, Vec<Vec<u8>>) {
    let v = Chain::open(p, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("chain of {}: {e}", p.display()))
        .into_view();
    let size = v.virtual_size();
    let reads = offsets
        .iter()
        .map(|&at| {
            let n = (len as u64).min(size.saturating_sub(at)) as usize;
            let mut buf = vec![0u8; n];
            if n > 0 {
                v.read_exact_at(&mut buf, at).expect("read the chain");
            }
            buf
        })
        .collect();
    (size, reads)
}

/// The files of the chain of `p` opened with `o`, `p` first, each canonicalized: which parents
/// the walker took, for tests that know it.
pub fn chain_files(p: &Path, o: &ChainOptions) -> Vec<PathBuf> {
    let chain = Chain::open(p, o).unwrap_or_else(|e| panic!("chain of {}: {e}", p.display()));
    chain
        .disks()
        .iter()
        .map(|d| {
            let path = d.path().expect("a chain member opened from a path");
            path.canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// `p` canonicalized (for comparing with [`chain_files`]).
pub fn canon(p: &Path) -> PathBuf {
    p.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// An in-memory image opened with default options.
pub fn disk_of(bytes: Vec<u8>) -> Result<Disk, vhdkit::Error> {
    Disk::from_source(Box::new(bytes), &OpenOptions::default())
}

/// SHA-256 of the whole virtual disk of `p` through its chain, opened with `o`.
pub fn chain_sha_with(p: &Path, o: &ChainOptions) -> String {
    sha256_reader(
        Chain::open(p, o)
            .unwrap_or_else(|e| panic!("chain of {}: {e}", p.display()))
            .into_view(),
    )
}

/// SHA-256 of the whole virtual disk of `p` through its chain (default options).
pub fn chain_sha(p: &Path) -> String {
    chain_sha_with(p, &ChainOptions::default())
}

/// SHA-256 of the whole virtual disk of `child` as the binary `bin` sees it
/// (`vhdkit convert --to raw`), for tests that must not trust the library they drive.
pub fn convert_sha(bin: &Path, child: &Path) -> String {
    let out = child.with_extension("raw-check");
    if out.exists() {
        std::fs::remove_file(&out).expect("remove an old read-back");
    }
    run_ok(
        Command::new(bin)
            .args(["convert", "--to", "raw", "--no-progress"])
            .arg(child)
            .arg(&out),
    );
    let h = sha256_file(&out);
    std::fs::remove_file(&out).expect("remove the read-back");
    h
}

/// qemu's raw read-back of `p` (qemu format `vpc` or `vhdx`) after qemu accepts it (`qemu-img
/// check` for VHDX; `info` for VHD, which qemu cannot check). `None` when qemu-img is missing
/// (a skip; a failure in CI).
pub fn qemu_raw(fmt: &str, p: &Path, dir: &Path) -> Option<Vec<u8>> {
    if !have_tool(
        "qemu-img",
        &format!("qemu-img read-back of vhdkit-made {fmt} images"),
    ) {
        return None;
    }
    let accept = if fmt == "vhdx" { "check" } else { "info" };
    run_ok(Command::new("qemu-img").args([accept, "-f", fmt]).arg(p));
    let raw = dir.join("qemu-readback.raw");
    if raw.exists() {
        std::fs::remove_file(&raw).expect("remove an old read-back");
    }
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(p)
            .arg(&raw),
    );
    Some(std::fs::read(raw).expect("read qemu's read-back"))
}

/// Writes that cover sub-sector pieces, 1, 2 and 32 MiB block boundaries, the last byte, and
/// leave holes; the data is seeded by `size`.
pub fn pattern_writes(size: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng::new(size);
    let mut w = Vec::new();
    let mut add = |off: u64, len: u64| {
        if off >= size {
            return;
        }
        let len = len.min(size - off);
        let mut d = vec![0u8; usize::try_from(len).expect("write length")];
        rng.fill(&mut d);
        w.push((off, d));
    };
    add(0, 4096);
    add(700, 100); // inside one sector
    add(2 * MIB - 300, 1000); // across a 1/2 MiB block boundary, unaligned both ends
    add(32 * MIB - 5000, 9000); // across a 32 MiB block boundary
    add(3 * MIB + 512, 512);
    add(size - 1, 1); // last byte
    add(size / 2 + 17, 70_000);
    w
}

/// Apply `writes` to the in-memory model of a disk.
pub fn apply(model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    for (o, d) in writes {
        let o = usize::try_from(*o).expect("offset");
        model[o..o + d.len()].copy_from_slice(d);
    }
}

/// Whether a metadata-only change may change the file's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// The file keeps its length (every VHDX reparent; a VHD reparent that relocates nothing).
    Same,
    /// The length may change, but only by bytes inside the allowed areas (a VHD reparent that
    /// moves a locator's data and the footer past the old end).
    MayChange,
}

/// Every byte that differs between `old` and `new`, including every byte one has past the
/// other's end, must lie in one of `allowed`; with [`Length::Same`] the lengths must also be
/// equal. One rule for both formats: the caller says which length rule applies.
#[track_caller]
pub fn assert_changes_within(old: &[u8], new: &[u8], allowed: &[Range<usize>], length: Length) {
    if length == Length::Same {
        assert_eq!(old.len(), new.len(), "the file length changed");
    }
    let n = old.len().max(new.len());
    for i in 0..n {
        if old.get(i) != new.get(i) && !allowed.iter().any(|r| r.contains(&i)) {
            panic!(
                "byte {i:#x} changed outside the allowed areas ({:?} -> {:?}; lengths {} -> {})",
                old.get(i),
                new.get(i),
                old.len(),
                new.len()
            );
        }
    }
}

/// What opening many randomly damaged images gave: every one is refused, or opens and then
/// reads exactly its virtual size or fails the read with an error (never a short read, never a
/// panic).
#[derive(Debug, Default)]
pub struct DamageTally {
    /// Refused at open.
    pub refused: usize,
    /// Opened and read whole.
    pub read_whole: usize,
    /// Opened, then the read failed with an error.
    pub read_failed: usize,
}

impl DamageTally {
    /// Record the open of one damaged image (`what` names the damage in messages).
    #[track_caller]
    pub fn record(&mut self, opened: Result<Disk, vhdkit::Error>, what: &str) {
        let Ok(d) = opened else {
            self.refused += 1;
            return;
        };
        // An opened disk describes itself consistently.
        let size = d.virtual_size();
        assert_eq!(d.info().virtual_size, size, "{what}");
        let mut buf = Vec::new();
        match d.view().read_to_end(&mut buf) {
            Ok(n) => {
                assert_eq!(n as u64, size, "{what}: a short read without an error");
                self.read_whole += 1;
            }
            Err(_) => self.read_failed += 1,
        }
    }

    /// Both outcomes occurred (the damage reached checked structures and harmless bytes), so
    /// the run tested something; prints the tally.
    #[track_caller]
    pub fn assert_both_seen(&self) {
        println!("{self:?}");
        assert!(self.refused > 0 && self.read_whole > 0, "{self:?}");
    }
}
