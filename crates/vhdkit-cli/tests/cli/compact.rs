//! `vhdkit compact` through the real binary: dynamic and differencing disks of both formats
//! with allocated zero blocks (and, for differencing disks, a block equal to the parent's):
//! the dry run writes nothing and promises the size the real run reaches; the virtual contents
//! are unchanged (vhdkit's read of the chain, `qemu-img compare` and `check` for standalone
//! disks, libvhdi for VHD chains, dissect for VHDX chains); the file shrinks; a rerun has
//! nothing to do. Refusals (exit 1, one line, every file byte-identical with its mtime): a locked disk, a read-only disk, an
//! unfinished merge into the disk, a foreign journal beside it. Crash matrices are in
//! `compact/crash.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vhdkit_testkit::oracle::{dissect_vhdx, pyvhdi_chain_sha256};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

use crate::util::*;

mod crash;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A block of data (`Some(v)`) or of allocated zeros (`None`).
fn block(v: Option<u8>) -> Vec<u8> {
    match v {
        Some(v) => {
            let mut d = vec![v; MIB as usize];
            d[4097] = v ^ 0x5a;
            d
        }
        None => vec![0u8; MIB as usize],
    }
}

/// Blocks of a standalone disk: data and zeros interleaved, the top ones data.
const STANDALONE: [(u64, Option<u8>); 10] = [
    (0, Some(1)),
    (1, None),
    (2, Some(2)),
    (3, None),
    (4, None),
    (6, Some(6)),
    (8, None),
    (9, Some(9)),
    (12, None),
    (14, Some(14)),
];

/// Blocks of the parent of the differencing disks, and of the child over it: zeros over the
/// parent's data (1), zeros over nothing (5), the parent's own data (2), its own data (0, 7).
const PARENT: [(u64, Option<u8>); 3] = [(0, Some(10)), (1, Some(11)), (2, Some(12))];
const CHILD: [(u64, Option<u8>); 5] = [
    (0, Some(20)),
    (1, None),
    (2, Some(12)),
    (5, None),
    (7, Some(27)),
];

/// Which disk a test builds.
#[derive(Clone, Copy, Debug)]
pub enum Case {
    VhdDynamic,
    VhdxDynamic,
    VhdDifferencing,
    VhdxDifferencing,
}

impl Case {
    pub const ALL: [Case; 4] = [
        Case::VhdDynamic,
        Case::VhdxDynamic,
        Case::VhdDifferencing,
        Case::VhdxDifferencing,
    ];

    fn vhdx(self) -> bool {
        matches!(self, Case::VhdxDynamic | Case::VhdxDifferencing)
    }

    fn differencing(self) -> bool {
        matches!(self, Case::VhdDifferencing | Case::VhdxDifferencing)
    }

    /// qemu's format name, for standalone disks.
    fn qemu(self) -> Option<&'static str> {
        match self {
            Case::VhdDynamic => Some("vpc"),
            Case::VhdxDynamic => Some("vhdx"),
            _ => None,
        }
    }
}

/// Build `case` in `dir`: the disk to compact, then its parent (if any).
pub fn build(dir: &Path, case: Case) -> Vec<PathBuf> {
    let ext = if case.vhdx() { "vhdx" } else { "vhd" };
    let disk = dir.join(format!("disk.{ext}"));
    if !case.differencing() {
        std::fs::write(&disk, bytes(case, &STANDALONE, None)).unwrap();
        return vec![disk];
    }
    let parent = dir.join(format!("parent.{ext}"));
    let (pbytes, id) = parent_bytes(case);
    std::fs::write(&parent, pbytes).unwrap();
    std::fs::write(&disk, bytes(case, &CHILD, Some(id))).unwrap();
    vec![disk, parent]
}

/// The parent's bytes and the identity its child records.
fn parent_bytes(case: Case) -> (Vec<u8>, [u8; 16]) {
    if case.vhdx() {
        let mut b = VhdxBuilder::new(Kind::Dynamic, SIZE, MIB as u32, 512);
        for &(i, v) in &PARENT {
            b.write(i * MIB, &block(v));
        }
        (b.build().bytes, *b.data_write_guid.as_bytes())
    } else {
        let mut b = VhdBuilder::dynamic(SIZE).block_size(MIB as u32);
        for &(i, v) in &PARENT {
            b.write(i * MIB, &block(v));
        }
        (b.build().bytes, b.id())
    }
}

fn bytes(case: Case, blocks: &[(u64, Option<u8>)], parent: Option<[u8; 16]>) -> Vec<u8> {
    if case.vhdx() {
        let kind = if parent.is_some() {
            Kind::Differencing
        } else {
            Kind::Dynamic
        };
        let mut b = VhdxBuilder::new(kind, SIZE, MIB as u32, 512);
        if let Some(id) = parent {
            b.parent_linkage = uuid::Uuid::from_bytes(id);
            b.relative_path = Some(r".\parent.vhdx".into());
        }
        for &(i, v) in blocks {
            b.write(i * MIB, &block(v));
        }
        b.build().bytes
    } else {
        let mut b = match parent {
            Some(id) => VhdBuilder::differencing(SIZE, id)
                .parent_name("parent.vhd")
                .locator(Locator::w2ru(r".\parent.vhd")),
            None => VhdBuilder::dynamic(SIZE),
        }
        .block_size(MIB as u32);
        for &(i, v) in blocks {
            b.write(i * MIB, &block(v));
        }
        b.build().bytes
    }
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// The independent oracles on the compacted disk: qemu for standalone disks, libvhdi for VHD
/// chains, dissect for VHDX chains.
fn oracles(case: Case, files: &[PathBuf], want: &str) {
    let disk = &files[0];
    if let Some(fmt) = case.qemu() {
        if have_tool("qemu-img", "qemu-img check of a compacted disk") {
            let raw = disk.with_extension("raw");
            run_success(["convert", "--to", "raw", s(disk), s(&raw)]);
            let o = Command::new("qemu-img")
                .args(["compare", "-f", fmt, "-F", "raw"])
                .arg(disk)
                .arg(&raw)
                .output()
                .unwrap();
            assert!(o.status.success(), "{case:?}: qemu-img compare: {o:?}");
            let o = Command::new("qemu-img")
                .args(["check", "-f", fmt])
                .arg(disk)
                .output()
                .unwrap();
            // qemu-img check does not support vpc (exit 63): only VHDX is checked.
            assert!(
                o.status.success() || fmt == "vpc",
                "{case:?}: qemu-img check: {o:?}"
            );
            std::fs::remove_file(&raw).unwrap();
        }
    } else if case.vhdx() {
        // libvhdi reads a ZERO block of a differencing VHDX from the parent (MS-VHDX: zeros,
        // as dissect and vhdkit read it): dissect is the oracle for VHDX chains.
        if let Some(r) = dissect_vhdx(disk, 0) {
            let (_, hash, size) = r.unwrap_or_else(|e| panic!("{case:?}: dissect: {e}"));
            assert_eq!(size, SIZE, "{case:?}");
            assert_eq!(hash, *want, "{case:?}: dissect disagrees");
        }
    } else {
        let chain: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        if let Some((hash, size)) = pyvhdi_chain_sha256(&chain) {
            assert_eq!(size, SIZE, "{case:?}");
            assert_eq!(hash, *want, "{case:?}: libvhdi disagrees");
        }
    }
}

#[test]
fn dry_run_then_compact_every_case() {
    for case in Case::ALL {
        for against in [false, true] {
            let d = tmp();
            let files = build(d.path(), case);
            let disk = &files[0];
            let want = virtual_sha(disk);
            let mut args = vec!["compact", "--json"];
            if against {
                args.push("--against-parent");
            }
            args.push(s(disk));
            let snap = Snapshot::tree(d.path());
            let mut dry = args.clone();
            dry.push("--dry-run");
            let plan = run_success(&dry).json();
            snap.assert_unchanged(&format!("{case:?}: dry run"));
            assert_eq!(plan["applied"], false);
            let plan = &plan["plan"];
            let before = len(disk);
            assert_eq!(plan["file_size"], before, "{case:?}");
            let reclaim = plan["bytes_to_reclaim"].as_u64().unwrap();
            assert!(reclaim >= MIB, "{case:?} against {against}: {plan}");
            let parent_sha = files.get(1).map(|p| vhdkit_testkit::sha256_file(p));
            let out = run_success(&args).json();
            let r = &out["report"];
            assert_eq!(out["applied"], true);
            assert_eq!(r["file_size_before"], before, "{case:?}");
            assert_eq!(r["file_size_after"], len(disk), "{case:?}");
            assert_eq!(
                len(disk),
                before - reclaim,
                "{case:?}: the dry run's promise"
            );
            assert!(
                r["allocated_after"].as_u64() < r["allocated_before"].as_u64(),
                "{case:?}: {r}"
            );
            assert_eq!(virtual_sha(disk), want, "{case:?}: contents");
            if let (Some(p), Some(sha)) = (files.get(1), parent_sha) {
                assert_eq!(vhdkit_testkit::sha256_file(p), sha, "{case:?}: parent");
            }
            let c = run(["check", "--chain", s(disk)]);
            assert_eq!(c.code, 0, "{case:?}: {c:?}");
            oracles(case, &files, &want);
            // Nothing left to do.
            let again = run_success(["compact", "--json", "--dry-run", s(disk)]).json();
            assert_eq!(again["plan"]["bytes_to_reclaim"], 0, "{case:?}: {again}");
        }
    }
}

#[test]
fn text_output_and_fixed_disks() {
    let d = tmp();
    let files = build(d.path(), Case::VhdxDynamic);
    let r = run_success(["compact", "--dry-run", s(&files[0])]);
    assert!(r.stdout.contains("to reclaim"), "{r:?}");
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    let r = run_success(["compact", s(&files[0])]);
    assert!(r.stdout.contains("compacted: 5 zero"), "{r:?}");
    let fixed = d.path().join("fixed.vhd");
    std::fs::write(&fixed, VhdBuilder::fixed(SIZE).build().bytes).unwrap();
    let snap = Snapshot::tree(d.path());
    let r = run_success(["compact", s(&fixed)]);
    assert!(r.stdout.contains("nothing to do"), "{r:?}");
    snap.assert_unchanged("fixed disk");
}

/// Exit 1, one line on stderr naming `needle`, nothing changed.
#[track_caller]
fn assert_refused(args: &[&str], needle: &str, snap: &Snapshot, what: &str) {
    for dry in [false, true] {
        let mut a = args.to_vec();
        if dry {
            a.push("--dry-run");
        }
        let r = run(&a);
        assert_eq!(r.code, 1, "{what} (dry {dry}): {r:?}");
        let lines = r.stderr.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(lines, 1, "{what}: {r:?}");
        assert!(
            r.stderr.to_lowercase().contains(needle),
            "{what}: {needle:?} not named: {r:?}"
        );
        snap.assert_unchanged(what);
    }
}

#[test]
fn refusals_write_nothing() {
    for case in [Case::VhdDynamic, Case::VhdxDynamic] {
        let d = tmp();
        let files = build(d.path(), case);
        let disk = &files[0];
        let args = ["compact", s(disk)];
        // Locked by another writer.
        let snap = Snapshot::tree(d.path());
        let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
        f.try_lock().unwrap();
        assert_refused(&args, "lock", &snap, &format!("{case:?} locked"));
        drop(f);
        // An unfinished merge into the disk.
        let rec = PathBuf::from(format!("{}.vhdkit-merge", disk.display()));
        std::fs::write(&rec, b"not finished").unwrap();
        let snap = Snapshot::tree(d.path());
        assert_refused(&args, "merge", &snap, &format!("{case:?} merge record"));
        std::fs::remove_file(&rec).unwrap();
        // Read-only (as root the file stays writable: then only the mode is checked).
        let mut perm = std::fs::metadata(disk).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(disk, perm.clone()).unwrap();
        let snap = Snapshot::tree(d.path());
        assert_refused(&args, "read-only", &snap, &format!("{case:?} read-only"));
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(disk, perm).unwrap();
    }
    // A VHD journal that does not belong to the file.
    let d = tmp();
    let files = build(d.path(), Case::VhdDynamic);
    let j = PathBuf::from(format!("{}.vhdkit-journal", files[0].display()));
    std::fs::write(&j, b"VHDKITJ1 but not a journal").unwrap();
    let snap = Snapshot::tree(d.path());
    let r = run(["compact", s(&files[0])]);
    assert_eq!(r.code, 1, "{r:?}");
    snap.assert_unchanged("foreign journal");
}
