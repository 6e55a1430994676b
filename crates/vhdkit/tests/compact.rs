//! `compact`: zero blocks (and, with `against_parent`, blocks equal to the parent) stop using
//! space, the blocks left move down and the file shrinks, both formats, dynamic and
//! differencing. Oracles: vhdkit's read of the chain before and after, `check` clean, qemu-img's
//! read-back of standalone disks, the parents byte-identical, the file size the plan promised.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::{ChainOptions, CompactPlan, CompactReport};
use vhdkit_testkit::through::{qemu_raw, read_chain, tmp};
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
use vhdkit_testkit::{sha256, sha256_file};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// What a block of the test disks holds.
#[derive(Clone, Copy)]
enum Fill {
    Data(u8),
    Zeros,
}

/// Blocks 0..=9 of a standalone disk: data and allocated zeros interleaved, so the top blocks
/// move into the holes the zeros leave.
const STANDALONE: [(u64, Fill); 9] = [
    (0, Fill::Data(1)),
    (1, Fill::Zeros),
    (2, Fill::Data(2)),
    (3, Fill::Zeros),
    (4, Fill::Zeros),
    (5, Fill::Data(5)),
    (7, Fill::Data(7)),
    (8, Fill::Zeros),
    (9, Fill::Data(9)),
];

fn bytes(f: Fill) -> Vec<u8> {
    match f {
        Fill::Data(v) => {
            let mut d = vec![v; MIB as usize];
            d[100] = v.wrapping_add(100);
            d
        }
        Fill::Zeros => vec![0u8; MIB as usize],
    }
}

fn vhd_of(b: &mut VhdBuilder, blocks: &[(u64, Fill)]) {
    for &(i, f) in blocks {
        b.write(i * MIB, &bytes(f));
    }
}

fn vhdx_of(b: &mut VhdxBuilder, blocks: &[(u64, Fill)]) {
    for &(i, f) in blocks {
        b.write(i * MIB, &bytes(f));
    }
}

/// Compact `disk` (with `against_parent` as given) and check every oracle; returns the plan
/// and the report.
fn compact(disk: &Path, against_parent: bool, qemu: Option<&str>) -> (CompactPlan, CompactReport) {
    let before = read_chain(disk);
    let opts = ChainOptions::default();
    let plan = if against_parent {
        CompactPlan::against_parent(disk, &opts).unwrap()
    } else {
        CompactPlan::new(disk, &opts).unwrap()
    };
    let len_before = std::fs::metadata(disk).unwrap().len();
    assert_eq!(plan.file_size, len_before);
    let report = plan.apply(&mut ()).unwrap();
    assert_eq!(read_chain(disk), before, "virtual contents changed");
    let len = std::fs::metadata(disk).unwrap().len();
    assert_eq!(len, plan.file_size_after, "the plan's promised size");
    assert_eq!(report.file_size_before, len_before);
    assert_eq!(report.file_size_after, len);
    assert_eq!(report.zero_blocks, plan.zero_blocks);
    assert_eq!(report.parent_blocks, plan.parent_blocks);
    assert_eq!(report.blocks_moved, plan.blocks_to_move);
    let c = check_file(disk, &CheckOptions::default()).unwrap();
    assert!(!c.has_problems(), "{:?}", c.findings);
    if let Some(fmt) = qemu {
        let dir = disk.parent().unwrap();
        if let Some(q) = qemu_raw(fmt, disk, dir) {
            assert_eq!(sha256(&q), sha256(&before), "qemu read-back");
        }
    }
    // A rerun finds nothing left.
    let again = CompactPlan::new(disk, &opts).unwrap();
    assert_eq!(
        (
            again.zero_blocks,
            again.blocks_to_move,
            again.bytes_to_reclaim
        ),
        (0, 0, 0),
        "{again:?}"
    );
    (plan, report)
}

#[test]
fn vhdx_dynamic_drops_zero_blocks_and_shrinks() {
    let dir = tmp();
    let p = dir.path().join("d.vhdx");
    let mut b = VhdxBuilder::new(Kind::Dynamic, SIZE, MIB as u32, 512);
    vhdx_of(&mut b, &STANDALONE);
    std::fs::write(&p, b.build().bytes).unwrap();
    let (plan, r) = compact(&p, false, Some("vhdx"));
    assert_eq!((plan.allocated_blocks, plan.zero_blocks), (9, 4));
    // 9 -> 5 blocks: the file loses exactly 4 MiB (blocks are the last thing in it).
    assert_eq!(plan.file_size - plan.file_size_after, 4 * MIB);
    assert_eq!(r.blocks_moved, 3);
}

#[test]
fn vhd_dynamic_drops_zero_blocks_and_shrinks() {
    let dir = tmp();
    let p = dir.path().join("d.vhd");
    let mut b = VhdBuilder::dynamic(SIZE).block_size(MIB as u32);
    vhd_of(&mut b, &STANDALONE);
    std::fs::write(&p, b.build().bytes).unwrap();
    let (plan, r) = compact(&p, false, Some("vpc"));
    assert_eq!((plan.allocated_blocks, plan.zero_blocks), (9, 4));
    let span = MIB + 512;
    assert!(plan.file_size - plan.file_size_after >= 4 * span - 4096);
    assert_eq!(r.blocks_moved, 3);
}

#[test]
fn fixed_disks_have_nothing_to_do() {
    let dir = tmp();
    let p = dir.path().join("f.vhd");
    std::fs::write(&p, VhdBuilder::fixed(SIZE).build().bytes).unwrap();
    let sha = sha256_file(&p);
    let plan = CompactPlan::new(&p, &ChainOptions::default()).unwrap();
    assert!(plan.nothing_to_do);
    assert!(plan.apply(&mut ()).unwrap().nothing_to_do);
    assert_eq!(sha256_file(&p), sha);
}

/// The parent of the differencing cases: data in blocks 0..=3, nothing in 4..=7.
const PARENT: [(u64, Fill); 4] = [
    (0, Fill::Data(10)),
    (1, Fill::Data(11)),
    (2, Fill::Data(12)),
    (3, Fill::Data(13)),
];

/// The child: zeros over parent data (1), zeros over nothing (5), the parent's own data (2),
/// its own data (0, 6), and its own data at the top (7).
fn child_blocks() -> Vec<(u64, Fill)> {
    vec![
        (0, Fill::Data(20)),
        (1, Fill::Zeros),
        (2, Fill::Data(12)),
        (5, Fill::Zeros),
        (6, Fill::Data(26)),
        (7, Fill::Data(27)),
    ]
}

fn vhdx_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let parent = dir.join("parent.vhdx");
    let mut pb = VhdxBuilder::new(Kind::Dynamic, SIZE, MIB as u32, 512);
    vhdx_of(&mut pb, &PARENT);
    std::fs::write(&parent, pb.build().bytes).unwrap();
    let child = dir.join("child.avhdx");
    let mut cb = VhdxBuilder::new(Kind::Differencing, SIZE, MIB as u32, 512);
    cb.parent_linkage = pb.data_write_guid;
    cb.relative_path = Some(r".\parent.vhdx".into());
    vhdx_of(&mut cb, &child_blocks());
    std::fs::write(&child, cb.build().bytes).unwrap();
    (parent, child)
}

fn vhd_pair(dir: &Path) -> (PathBuf, PathBuf) {
    let parent = dir.join("parent.vhd");
    let mut pb = VhdBuilder::dynamic(SIZE).block_size(MIB as u32);
    vhd_of(&mut pb, &PARENT);
    std::fs::write(&parent, pb.build().bytes).unwrap();
    let child = dir.join("child.vhd");
    let mut cb = VhdBuilder::differencing(SIZE, pb.id())
        .block_size(MIB as u32)
        .parent_name("parent.vhd")
        .locator(Locator::w2ru(r".\parent.vhd"));
    vhd_of(&mut cb, &child_blocks());
    std::fs::write(&child, cb.build().bytes).unwrap();
    (parent, child)
}

#[test]
fn vhdx_differencing_zero_blocks_take_the_zero_state() {
    for against in [false, true] {
        let dir = tmp();
        let (parent, child) = vhdx_pair(dir.path());
        let psha = sha256_file(&parent);
        let (plan, _) = compact(&child, against, None);
        // Blocks 1 and 5 read zeros on their own; block 2 equals the parent's.
        assert_eq!(plan.zero_blocks, 2, "against {against}");
        assert_eq!(plan.parent_blocks, u64::from(against));
        assert_eq!(sha256_file(&parent), psha, "the parent is never written");
    }
}

#[test]
fn vhd_differencing_drops_only_what_the_parent_reads_the_same() {
    for against in [false, true] {
        let dir = tmp();
        let (parent, child) = vhd_pair(dir.path());
        let psha = sha256_file(&parent);
        let (plan, _) = compact(&child, against, None);
        // Block 1 (zeros over parent data) must stay; block 5 (zeros over zeros) goes; block 2
        // (the parent's data) goes only against the parent.
        assert_eq!(plan.zero_blocks, 0);
        assert_eq!(
            plan.parent_blocks,
            1 + u64::from(against),
            "against {against}"
        );
        assert_eq!(sha256_file(&parent), psha, "the parent is never written");
    }
}

/// A block written between the plan and the apply is judged again: the plan's decisions are
/// reused only when no file of the chain changed since it read them.
#[test]
fn a_change_after_the_plan_is_seen() {
    for vhdx in [false, true] {
        let dir = tmp();
        let p = dir.path().join(if vhdx { "d.vhdx" } else { "d.vhd" });
        let bytes = if vhdx {
            let mut b = VhdxBuilder::new(Kind::Dynamic, SIZE, MIB as u32, 512);
            vhdx_of(&mut b, &STANDALONE);
            b.build().bytes
        } else {
            let mut b = VhdBuilder::dynamic(SIZE).block_size(MIB as u32);
            vhd_of(&mut b, &STANDALONE);
            b.build().bytes
        };
        std::fs::write(&p, bytes).unwrap();
        let opts = ChainOptions::default();
        let plan = CompactPlan::new(&p, &opts).unwrap();
        assert_eq!(plan.zero_blocks, 4);
        // Block 3 (zeros) gets a byte of data, in place.
        let mut w = vhdkit::WritableDisk::open(&p, &opts).unwrap();
        w.write_at(3 * MIB + 17, &[0x42]).unwrap();
        w.close().unwrap();
        let want = read_chain(&p);
        let r = plan.apply(&mut ()).unwrap();
        assert_eq!(r.zero_blocks, 3, "vhdx {vhdx}: {r:?}");
        assert_eq!(read_chain(&p), want, "vhdx {vhdx}");
        let c = check_file(&p, &CheckOptions::default()).unwrap();
        assert!(!c.has_problems(), "{:?}", c.findings);
    }
}

/// A partially present VHDX block that goes (zeros over a parent reading zeros) leaves no
/// sector bitmap bit behind: a later writer trusts the bits and would read those sectors from
/// the child instead of the parent.
#[test]
fn a_dropped_partial_vhdx_block_clears_its_bitmap_bits() {
    let dir = tmp();
    let (_, child) = vhdx_pair(dir.path());
    // Rebuild the child with block 4 partial: two sectors of zeros, over a parent with nothing.
    let mut cb = VhdxBuilder::new(Kind::Differencing, SIZE, MIB as u32, 512);
    let parent = VhdxBuilder::new(Kind::Dynamic, SIZE, MIB as u32, 512);
    let mut pb = parent;
    vhdx_of(&mut pb, &PARENT);
    cb.parent_linkage = pb.data_write_guid;
    cb.relative_path = Some(r".\parent.vhdx".into());
    vhdx_of(&mut cb, &child_blocks());
    cb.write(4 * MIB + 1024, &[0u8; 1024]);
    let built = cb.build();
    std::fs::write(&child, &built.bytes).unwrap();
    let sb = built.layout.sb_offsets[&0];
    // 1 MiB blocks, 512-byte sectors: 256 bitmap bytes per block.
    let at = (sb + 4 * 256) as usize;
    assert_ne!(
        built.bytes[at..at + 256],
        [0u8; 256][..],
        "the bits start set"
    );
    let (plan, _) = compact(&child, false, None);
    assert_eq!(plan.zero_blocks, 3);
    let after = std::fs::read(&child).unwrap();
    assert_eq!(after[at..at + 256], [0u8; 256][..], "the bits are cleared");
}

/// Cancels once `after` bytes were reported read.
struct CancelAfter {
    seen: u64,
    after: u64,
}

impl vhdkit::Progress for CancelAfter {
    fn advance(&mut self, n: u64) {
        self.seen += n;
    }
    fn cancelled(&self) -> bool {
        self.seen >= self.after
    }
}

/// A compaction cancelled during its scan (here the plan is stale, so `apply` scans again,
/// half of the blocks on a second thread) stops with the cancelled error, writes nothing and
/// does not wait for the rest of the scan; a later run finishes.
#[test]
fn a_cancelled_scan_writes_nothing() {
    // Many blocks, so that both halves of the scan are still running when it is cancelled.
    let blocks: Vec<(u64, Fill)> = (0..64)
        .map(|i| {
            (
                i,
                if i % 3 == 0 {
                    Fill::Zeros
                } else {
                    Fill::Data(i as u8 + 1)
                },
            )
        })
        .collect();
    for vhdx in [false, true] {
        let dir = tmp();
        let p = dir.path().join(if vhdx { "d.vhdx" } else { "d.vhd" });
        let bytes = if vhdx {
            let mut b = VhdxBuilder::new(Kind::Dynamic, 64 * MIB, MIB as u32, 512);
            vhdx_of(&mut b, &blocks);
            b.build().bytes
        } else {
            let mut b = VhdBuilder::dynamic(64 * MIB).block_size(MIB as u32);
            vhd_of(&mut b, &blocks);
            b.build().bytes
        };
        std::fs::write(&p, bytes).unwrap();
        let opts = ChainOptions::default();
        let plan = CompactPlan::new(&p, &opts).unwrap();
        assert_eq!(plan.zero_blocks, 22, "vhdx {vhdx}");
        // Touch the file so that the plan's decisions are not reused.
        let mut w = vhdkit::WritableDisk::open(&p, &opts).unwrap();
        w.write_at(MIB + 17, &[0x42]).unwrap();
        w.close().unwrap();
        let before = std::fs::read(&p).unwrap();
        let mut cancel = CancelAfter {
            seen: 0,
            after: 4 * MIB,
        };
        let e = plan.apply(&mut cancel).unwrap_err();
        assert!(e.is_cancelled(), "vhdx {vhdx}: {e}");
        assert!(cancel.seen < 64 * MIB, "vhdx {vhdx}: the scan ran on");
        assert!(std::fs::read(&p).unwrap() == before, "vhdx {vhdx}: written");
        let again = CompactPlan::new(&p, &opts).unwrap();
        let r = again.apply(&mut ()).unwrap();
        assert_eq!(r.zero_blocks, 22, "vhdx {vhdx}: {r:?}");
    }
}
