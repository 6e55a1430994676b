//! Differencing chains of any depth written by the testkit's own writers (never by vhdkit), for
//! the tests of commands that fold chains (`merge`, `flatten`): every level holds writes that
//! start and end inside bitmap bytes (runs of sectors that are not multiples of 8, at odd
//! sector numbers), sub-byte bitmap patterns, whole blocks and writes across block boundaries.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::vhd::{Locator, VhdBuilder};
use crate::vhdx::{Kind, VhdxBuilder};
use crate::Rng;

/// The format of a chain, and the VHDX logical sector size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFormat {
    /// VHD (512-byte sectors).
    Vhd,
    /// VHDX with this logical sector size (512 or 4096).
    Vhdx(u32),
}

impl ChainFormat {
    /// Logical sector size.
    pub fn sector(self) -> u64 {
        match self {
            ChainFormat::Vhd => 512,
            ChainFormat::Vhdx(s) => u64::from(s),
        }
    }

    /// qemu-img's name for the format, when qemu can read a standalone disk of it (qemu's
    /// VHDX driver refuses 4096-byte logical sectors).
    pub fn qemu(self) -> Option<&'static str> {
        match self {
            ChainFormat::Vhd => Some("vpc"),
            ChainFormat::Vhdx(512) => Some("vhdx"),
            ChainFormat::Vhdx(_) => None,
        }
    }

    /// Short label for messages.
    pub fn label(self) -> String {
        match self {
            ChainFormat::Vhd => "vhd".into(),
            ChainFormat::Vhdx(s) => format!("vhdx-{s}"),
        }
    }
}

/// File name of level `level` (0 = the base) of a chain with `depth` differencing levels: the
/// base is `base.vhd(x)`, the leaf `leaf.vhd`/`leaf.avhdx`, between them `d1`, `d2`, ...
pub fn level_name(format: ChainFormat, level: usize, depth: usize) -> String {
    let stem = match level {
        0 => "base".to_string(),
        l if l == depth => "leaf".to_string(),
        l => format!("d{l}"),
    };
    match (format, level) {
        (ChainFormat::Vhd, _) => format!("{stem}.vhd"),
        (ChainFormat::Vhdx(_), 0) => format!("{stem}.vhdx"),
        (ChainFormat::Vhdx(_), _) => format!("{stem}.avhdx"),
    }
}

/// Sector-granular writes: runs of 1..=13 sectors (mostly not multiples of 8) at random sector
/// numbers, a run across a block boundary, sub-byte patterns in the first bitmap byte, and (for
/// `level` 0) one whole block.
pub fn chain_writes(
    rng: &mut Rng,
    size: u64,
    block: u64,
    sector: u64,
    level: usize,
) -> Vec<(u64, Vec<u8>)> {
    let sectors = size / sector;
    let mut out = Vec::new();
    let data = |rng: &mut Rng, n: u64| {
        let mut d = vec![0u8; (n * sector) as usize];
        rng.fill(&mut d);
        d
    };
    for _ in 0..10 {
        let n = 1 + rng.below(13);
        let at = rng.below(sectors - n);
        let d = data(rng, n);
        out.push((at * sector, d));
    }
    // Across the first block boundary, from an odd sector to an odd sector.
    let first = block / sector;
    let start = first - 3 - level as u64;
    let d = data(rng, 5 + 2 * level as u64);
    out.push((start * sector, d));
    // Sectors 1, 3, 6 (+ level): bitmap bytes with isolated bits.
    for s in [1u64, 3, 6 + level as u64, 9 + 2 * level as u64] {
        out.push((
            s * sector,
            vec![(s as u8) ^ (level as u8 * 17) | 1; sector as usize],
        ));
    }
    if level == 0 && size >= 3 * block {
        let d = data(rng, block / sector);
        out.push((2 * block, d));
    }
    out
}

/// A chain built on disk: `files[0]` the standalone base, `files[depth]` the leaf.
#[derive(Debug, Clone)]
pub struct BuiltChain {
    /// The format.
    pub format: ChainFormat,
    /// Virtual size.
    pub size: u64,
    /// Block size.
    pub block: u64,
    /// Paths, base first.
    pub files: Vec<PathBuf>,
    /// The identity each child's linkage records for its parent, by level: VHD unique id bytes
    /// or the VHDX DataWriteGuid as 16 little-endian bytes.
    pub ids: Vec<[u8; 16]>,
}

impl BuiltChain {
    /// The leaf.
    pub fn leaf(&self) -> &Path {
        self.files
            .last()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""))
    }

    /// Depth (number of differencing levels).
    pub fn depth(&self) -> usize {
        self.files.len().saturating_sub(1)
    }
}

/// Build a chain of `depth` differencing levels over a dynamic base in `dir` (1 MiB blocks),
/// every level with its own identity and writes seeded by `seed`.
pub fn build_chain(
    dir: &Path,
    format: ChainFormat,
    size: u64,
    depth: usize,
    seed: u64,
) -> BuiltChain {
    let block = 1u64 << 20;
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9).wrapping_add(1));
    let mut files = Vec::new();
    let mut ids: Vec<[u8; 16]> = Vec::new();
    for level in 0..=depth {
        let name = level_name(format, level, depth);
        let parent = level
            .checked_sub(1)
            .map(|l| (level_name(format, l, depth), ids[l]));
        let writes = chain_writes(&mut rng, size, block, format.sector(), level);
        let (bytes, id) = match format {
            ChainFormat::Vhd => vhd_level(size, block, parent.as_ref(), &writes, seed, level),
            ChainFormat::Vhdx(s) => {
                vhdx_level(size, block, s, parent.as_ref(), &writes, seed, level)
            }
        };
        let p = dir.join(&name);
        std::fs::write(&p, bytes).expect("write a chain level");
        files.push(p);
        ids.push(id);
    }
    BuiltChain {
        format,
        size,
        block,
        files,
        ids,
    }
}

/// A distinct 16-byte identity per seed and level.
fn level_id(seed: u64, level: usize, salt: u8) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seed.to_le_bytes());
    id[8] = level as u8;
    id[9] = salt;
    id[10] = 0x5A;
    id[15] = 0xC3;
    id
}

fn vhd_level(
    size: u64,
    block: u64,
    parent: Option<&(String, [u8; 16])>,
    writes: &[(u64, Vec<u8>)],
    seed: u64,
    level: usize,
) -> (Vec<u8>, [u8; 16]) {
    let mut b = match parent {
        None => VhdBuilder::dynamic(size),
        Some((pname, id)) => VhdBuilder::differencing(size, *id)
            .parent_name(pname)
            .locator(Locator::w2ru(&format!(r".\{pname}"))),
    }
    .block_size(block as u32)
    .unique_id(level_id(seed, level, 1))
    .timestamp(1000 + level as u32);
    for (o, d) in writes {
        b.write(*o, d);
    }
    (b.build().bytes, b.id())
}

fn vhdx_level(
    size: u64,
    block: u64,
    sector: u32,
    parent: Option<&(String, [u8; 16])>,
    writes: &[(u64, Vec<u8>)],
    seed: u64,
    level: usize,
) -> (Vec<u8>, [u8; 16]) {
    let kind = if parent.is_some() {
        Kind::Differencing
    } else {
        Kind::Dynamic
    };
    let mut b = VhdxBuilder::new(kind, size, block as u32, sector);
    b.data_write_guid = Uuid::from_bytes_le(level_id(seed, level, 2));
    b.file_write_guid = Uuid::from_bytes_le(level_id(seed, level, 3));
    match parent {
        Some((pname, id)) => {
            b.parent_linkage = Uuid::from_bytes_le(*id);
            b.relative_path = Some(format!(r".\{pname}"));
        }
        None => b.relative_path = None,
    }
    for (o, d) in writes {
        b.write(*o, d);
    }
    (b.build().bytes, b.data_write_guid.to_bytes_le())
}

/// A differencing disk `name` in `dir` over `parent` (identity `parent_id` as in
/// [`BuiltChain::ids`]), found through the relative locator `rel` (Windows separators), with a
/// few writes of its own.
pub fn sibling(
    dir: &Path,
    name: &str,
    format: ChainFormat,
    size: u64,
    parent_id: [u8; 16],
    rel: &str,
) -> PathBuf {
    let mut rng = Rng::new(0x51B1);
    let writes = chain_writes(&mut rng, size, 1 << 20, format.sector(), 1);
    let (bytes, _) = match format {
        ChainFormat::Vhd => {
            let mut b = VhdBuilder::differencing(size, parent_id)
                .parent_name(rel.rsplit('\\').next().unwrap_or(rel))
                .locator(Locator::w2ru(rel))
                .block_size(1 << 20)
                .unique_id(level_id(0x51B1, 9, 1));
            for (o, d) in &writes {
                b.write(*o, d);
            }
            (b.build().bytes, b.id())
        }
        ChainFormat::Vhdx(s) => {
            let mut b = VhdxBuilder::new(Kind::Differencing, size, 1 << 20, s);
            b.data_write_guid = Uuid::from_bytes_le(level_id(0x51B1, 9, 2));
            b.parent_linkage = Uuid::from_bytes_le(parent_id);
            b.relative_path = Some(rel.to_string());
            for (o, d) in &writes {
                b.write(*o, d);
            }
            (b.build().bytes, b.data_write_guid.to_bytes_le())
        }
    };
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write the sibling");
    p
}

// Chains of byte-granular random writes (p0, p1, ..., child), the fixture of the library's
// `merge` and `flatten` tests: unlike `build_chain`, writes start and end anywhere inside a
// sector and are widened to whole sectors (filled with 0xA5).

const MIB: u64 = 1 << 20;

/// Random writes: sector-unaligned starts and lengths (so bitmap bytes are partly set), a
/// whole block, and writes across block boundaries.
fn unaligned_writes(rng: &mut Rng, size: u64, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let len = 1 + rng.below(3 * 4096) as usize;
        let at = rng.below(size - len as u64);
        let mut d = vec![0u8; len];
        rng.fill(&mut d);
        out.push((at, d));
    }
    // Sectors 1, 3, 6 of the first block: bitmap byte 0b0101_0010 (sub-byte patterns).
    for s in [1u64, 3, 6, 9, 15, 16] {
        out.push((s * 512, vec![s as u8 + 1; 512]));
    }
    out
}

/// The builders write whole logical sectors: `d` at `o` widened to them.
fn widened(o: u64, mut d: Vec<u8>, s: u64, size: u64) -> (u64, Vec<u8>) {
    let at = o / s * s;
    let len = ((o - at) + d.len() as u64).div_ceil(s) * s;
    d.resize(len.min(size - at) as usize, 0xA5);
    (at, d)
}

/// A chain `p0.vhd <- p1.vhd <- ... <- child.vhd` of `depth` parents in one folder (1 MiB
/// blocks), every level with `unaligned_writes` seeded by `seed` and its level; returns the
/// child and the parents (nearest first).
pub fn vhd_chain(dir: &Path, size: u64, depth: usize, seed: u64) -> (PathBuf, Vec<PathBuf>) {
    let mut rng = Rng::new(seed);
    let mut prev: Option<(String, [u8; 16])> = None;
    let mut paths = Vec::new();
    for level in 0..=depth {
        let name = if level == depth {
            "child.vhd".to_string()
        } else {
            format!("p{level}.vhd")
        };
        let mut b = match &prev {
            None => VhdBuilder::dynamic(size),
            Some((pname, id)) => VhdBuilder::differencing(size, *id)
                .parent_name(pname)
                .locator(Locator::w2ru(&format!(r".\{pname}"))),
        }
        .block_size(MIB as u32)
        .timestamp(1000 + level as u32);
        for (o, d) in unaligned_writes(&mut rng, size, 12) {
            let (at, full) = widened(o, d, 512, size);
            b.write(at, &full);
        }
        let p = dir.join(&name);
        std::fs::write(&p, b.build().bytes).expect("write a chain level");
        prev = Some((name, b.id()));
        paths.push(p);
    }
    let child = paths.pop().expect("the child level");
    paths.reverse();
    (child, paths)
}

/// As [`vhd_chain`] for VHDX with `sector`-byte logical sectors: `p0.vhdx`, ... and
/// `child.avhdx`, each linked to its parent's DataWriteGuid (random per build).
pub fn vhdx_chain(
    dir: &Path,
    size: u64,
    depth: usize,
    sector: u32,
    seed: u64,
) -> (PathBuf, Vec<PathBuf>) {
    let mut rng = Rng::new(seed);
    let mut prev: Option<(String, uuid::Uuid)> = None;
    let mut paths = Vec::new();
    for level in 0..=depth {
        let name = if level == depth {
            "child.avhdx".to_string()
        } else {
            format!("p{level}.vhdx")
        };
        let kind = if prev.is_some() {
            Kind::Differencing
        } else {
            Kind::Dynamic
        };
        let mut b = VhdxBuilder::new(kind, size, MIB as u32, sector);
        if let Some((pname, guid)) = &prev {
            b.parent_linkage = *guid;
            b.relative_path = Some(format!(r".\{pname}"));
        }
        for (o, d) in unaligned_writes(&mut rng, size, 12) {
            let (at, full) = widened(o, d, u64::from(sector), size);
            b.write(at, &full);
        }
        let p = dir.join(&name);
        std::fs::write(&p, b.build().bytes).expect("write a chain level");
        prev = Some((name, b.data_write_guid));
        paths.push(p);
    }
    let child = paths.pop().expect("the child level");
    paths.reverse();
    (child, paths)
}

/// Virtual size of [`vhd_pair`] and [`vhdx_pair`].
pub const PAIR_SIZE: u64 = 4 * MIB;

/// Ten sector-aligned random writes of 1 to 9 sectors (partial bitmap bytes) seeded by `seed`.
fn pair_writes(seed: u64) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    (0..10)
        .map(|_| {
            let n = 1 + rng.below(9);
            let at = rng.below(PAIR_SIZE / 512 - n) * 512;
            let mut d = vec![0u8; (n * 512) as usize];
            rng.fill(&mut d);
            (at, d)
        })
        .collect()
}

/// `base.vhd` and `child.vhd` over it in `dir` ([`PAIR_SIZE`], 1 MiB blocks, data in both);
/// returns (base, child). The fixture of the CLI's `merge` and `flatten` tests.
pub fn vhd_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let mut base = VhdBuilder::dynamic(PAIR_SIZE).block_size(MIB as u32);
    for (o, d) in pair_writes(1) {
        base.write(o, &d);
    }
    let mut child = VhdBuilder::differencing(PAIR_SIZE, base.id())
        .block_size(MIB as u32)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(r".\base.vhd"));
    for (o, d) in pair_writes(2) {
        child.write(o, &d);
    }
    let (b, c) = (dir.join("base.vhd"), dir.join("child.vhd"));
    std::fs::write(&b, base.build().bytes).expect("write the base");
    std::fs::write(&c, child.build().bytes).expect("write the child");
    (b, c)
}

/// `base.vhdx` and `child.avhdx` over it in `dir`, as [`vhd_pair`].
pub fn vhdx_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let mut base = VhdxBuilder::new(Kind::Dynamic, PAIR_SIZE, MIB as u32, 512);
    for (o, d) in pair_writes(3) {
        base.write(o, &d);
    }
    let mut child = VhdxBuilder::new(Kind::Differencing, PAIR_SIZE, MIB as u32, 512);
    child.parent_linkage = base.data_write_guid;
    child.relative_path = Some(r".\base.vhdx".into());
    for (o, d) in pair_writes(4) {
        child.write(o, &d);
    }
    let (b, c) = (dir.join("base.vhdx"), dir.join("child.avhdx"));
    std::fs::write(&b, base.build().bytes).expect("write the base");
    std::fs::write(&c, child.build().bytes).expect("write the child");
    (b, c)
}

/// `parent` (4 MiB, data at 512) and `child` over it, 6 MiB (grown after the snapshot; data
/// at 5 MiB), as VHDs in `dir`; returns the child. Merging would have to grow the parent.
pub fn grown_vhd_child(dir: &Path, parent: &str, child: &str) -> PathBuf {
    let mut base = VhdBuilder::dynamic(4 * MIB).block_size(MIB as u32);
    base.write(512, &[7; 1024]);
    let mut big = VhdBuilder::differencing(6 * MIB, base.id())
        .block_size(MIB as u32)
        .parent_name(parent)
        .locator(Locator::w2ru(&format!(r".\{parent}")));
    big.write(5 * MIB, &[9; 1536]);
    std::fs::write(dir.join(parent), base.build().bytes).expect("write the parent");
    let p = dir.join(child);
    std::fs::write(&p, big.build().bytes).expect("write the grown child");
    p
}

/// Sample every `k`th point of a long crash matrix: all points when `VHDKIT_FULL_MATRIX` is set
/// (to anything but `0`), else points `1, 1 + k, 1 + 2k, ...` and always the last one.
pub fn sampled(count: usize, k: usize) -> Vec<usize> {
    let full = std::env::var("VHDKIT_FULL_MATRIX").is_ok_and(|v| v != "0" && !v.is_empty());
    let step = if full { 1 } else { k.max(1) };
    let mut v: Vec<usize> = (1..=count).step_by(step).collect();
    if count > 0 && v.last() != Some(&count) {
        v.push(count);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_keeps_the_ends() {
        if std::env::var_os("VHDKIT_FULL_MATRIX").is_some() {
            return;
        }
        assert_eq!(sampled(10, 4), vec![1, 5, 9, 10]);
        assert_eq!(sampled(1, 4), vec![1]);
        assert!(sampled(0, 4).is_empty());
    }
}
