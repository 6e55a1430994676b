//! `merge` through the library: round trips on chains of depth 1 to 5 built by the testkit's own
//! writer (VHD, VHDX with 512 and 4096-byte logical sectors), merging into the parent and into a
//! deeper ancestor (standalone or itself differencing). After each: the ancestor's chain reads
//! what the leaf read before (vhdkit; qemu-img and libvhdi for a standalone ancestor; libvhdi
//! with its identity checks and dissect for a VHDX ancestor that is itself differencing), the
//! merged files are gone, no side file is left, `check` is clean and the ancestor's own parents
//! are byte-identical. Refusals (a sibling, a broken chain, a lock, `into` outside the chain, a
//! child larger than the ancestor, a standalone child) change no file, bytes or mtime.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::{Chain, ChainOptions, Disk, ErrorKind, MergePlan};
use vhdkit_testkit::chains::{build_chain, sibling, BuiltChain, ChainFormat};
use vhdkit_testkit::oracle::{dissect_vhdx, pyvhdi_chain_sha256};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::through::{qemu_raw, read_chain, tmp};
use vhdkit_testkit::{sha256, sha256_file};

const MIB: u64 = 1 << 20;
/// Not a whole number of blocks (the last block is partial), a multiple of 4096.
const SIZE: u64 = 5 * MIB + 3 * 4096;
const FORMATS: [ChainFormat; 3] = [
    ChainFormat::Vhd,
    ChainFormat::Vhdx(512),
    ChainFormat::Vhdx(4096),
];

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The independent readers' view of `ancestor` (level `into` of `c`) after the merge, each
/// compared with `want`, the leaf's contents before.
fn oracles(c: &BuiltChain, into: usize, want: &str, dir: &Path, ctx: &str) {
    let ancestor = &c.files[into];
    if into == 0 {
        if let Some(q) = c.format.qemu().and_then(|f| qemu_raw(f, ancestor, dir)) {
            assert_eq!(sha256(&q), want, "{ctx}: qemu-img read-back");
        }
    }
    // libvhdi honours VHD bitmaps, in dynamic disks too, with its sub-byte bug (ORACLES.md),
    // and these chains hold such bitmap bytes on purpose: for VHD, vhdkit's read, qemu and
    // `check` are the checks.
    if c.format == ChainFormat::Vhd {
        return;
    }
    // libvhdi checks every parent's identity (DataWriteGuid against parent_linkage); every
    // chunk here has its sector bitmap block (ORACLES.md: then libvhdi reads right).
    let chain: Vec<&Path> = c.files[..=into]
        .iter()
        .rev()
        .map(PathBuf::as_path)
        .collect();
    if let Some((h, size)) = pyvhdi_chain_sha256(&chain) {
        assert_eq!((h.as_str(), size), (want, c.size), "{ctx}: libvhdi");
    }
    // dissect 3.21 misreads VHDX chains of three or more disks (sectors a differencing parent
    // does not hold; a short read at the end), so it checks ancestors with at most one parent.
    if into <= 1 {
        if let Some(r) = dissect_vhdx(ancestor, 0) {
            let (_, h, size) = r.unwrap_or_else(|e| panic!("{ctx}: dissect failed: {e}"));
            assert_eq!((h.as_str(), size), (want, c.size), "{ctx}: dissect");
        }
    }
}

/// Merge the leaf of `c` into level `into` (`None`: the parent, as the CLI's default) and check
/// every outcome.
fn merge_and_check(c: &BuiltChain, into: Option<usize>, dir: &Path) {
    let depth = c.depth();
    let level = into.unwrap_or(depth - 1);
    let ctx = format!("{} depth {depth} into level {level}", c.format.label());
    let leaf = c.leaf();
    let ancestor = c.files[level].clone();
    let want = sha256(&read_chain(leaf));
    let below: Vec<(PathBuf, String)> = c.files[..level]
        .iter()
        .map(|p| (p.clone(), sha256_file(p)))
        .collect();
    let ancestor_type = Disk::open(&ancestor).unwrap().disk_type();
    let ancestor_id = Disk::open(&ancestor).unwrap().identity();
    let merged: Vec<PathBuf> = c.files[level + 1..].iter().rev().cloned().collect();

    let snap = Snapshot::tree(dir);
    let into_path = into.map(|l| c.files[l].clone());
    let plan = MergePlan::new(leaf, into_path.as_deref(), &ChainOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: plan: {e}"));
    snap.assert_unchanged(&format!("{ctx}: planning"));
    assert_eq!(plan.ancestor, ancestor, "{ctx}");
    assert_eq!(
        plan.merged, merged,
        "{ctx}: the files merged away, CHILD first"
    );
    assert!(!plan.resuming, "{ctx}");
    assert!(vhdkit::merge::predict_refusal(&plan).is_none(), "{ctx}");
    let report = plan
        .apply(&mut ())
        .unwrap_or_else(|e| panic!("{ctx}: apply: {e}"));
    assert!(report.bytes_copied > 0, "{ctx}");
    assert_eq!(report.deleted, merged, "{ctx}: deleted");

    // Exactly the ancestor and its own parents are left: no merged file, no side file.
    let left: BTreeSet<String> = c.files[..=level].iter().map(|p| file_name(p)).collect();
    assert_eq!(names(dir), left, "{ctx}: files left");
    let got = sha256(&read_chain(&ancestor));
    assert_eq!(
        got, want,
        "{ctx}: the ancestor's chain reads what the leaf read"
    );
    let d = Disk::open(&ancestor).unwrap();
    assert_eq!(d.disk_type(), ancestor_type, "{ctx}: the ancestor's type");
    assert!(d.warnings().is_empty(), "{ctx}: {:?}", d.warnings());
    if c.format == ChainFormat::Vhd {
        assert_eq!(
            d.identity(),
            ancestor_id,
            "{ctx}: a VHD ancestor keeps its unique id"
        );
    }
    let chain = Chain::open(&ancestor, &ChainOptions::default()).unwrap();
    assert_eq!(
        chain.disks().len(),
        level + 1,
        "{ctx}: the ancestor keeps its parent"
    );
    let opts = CheckOptions::default().chain(true);
    let r = check_file(&ancestor, &opts).unwrap();
    assert!(!r.has_problems(), "{ctx}: check: {:?}", r.findings);
    for (p, sha) in &below {
        assert_eq!(&sha256_file(p), sha, "{ctx}: {} changed", p.display());
    }
    oracles(c, level, &want, dir, &ctx);
}

/// The levels to merge into for a chain of `depth`: the parent (default), the base, and a
/// differencing ancestor two or more levels down.
fn targets(depth: usize) -> Vec<Option<usize>> {
    let mut t = vec![None];
    if depth >= 2 {
        t.push(Some(0));
    }
    if depth >= 3 {
        t.push(Some(1));
    }
    t
}

fn round_trips(format: ChainFormat) {
    let mut runs = 0;
    for depth in 1..=5 {
        for into in targets(depth) {
            let d = tmp();
            let seed = depth as u64 * 10 + into.map_or(9, |l| l as u64);
            let c = build_chain(d.path(), format, SIZE, depth, seed);
            merge_and_check(&c, into, d.path());
            runs += 1;
        }
    }
    assert_eq!(runs, 12);
}

#[test]
fn vhd_round_trips_depth_1_to_5() {
    round_trips(ChainFormat::Vhd);
}

#[test]
fn vhdx_512_round_trips_depth_1_to_5() {
    round_trips(ChainFormat::Vhdx(512));
}

#[test]
fn vhdx_4096_round_trips_depth_1_to_5() {
    round_trips(ChainFormat::Vhdx(4096));
}

/// `into` given as the parent itself, spelled through a different path (`dir/./name`): the
/// ancestor is compared by file identity, not by path text.
#[test]
fn into_the_parent_spelled_differently_is_the_parent() {
    for format in FORMATS {
        let d = tmp();
        let c = build_chain(d.path(), format, SIZE, 2, 3);
        let want = sha256(&read_chain(c.leaf()));
        let spelled = d.path().join(".").join(file_name(&c.files[1]));
        let plan = MergePlan::new(c.leaf(), Some(&spelled), &ChainOptions::default()).unwrap();
        assert_eq!(plan.merged, vec![c.files[2].clone()]);
        plan.apply(&mut ()).unwrap();
        assert!(!c.files[2].exists());
        assert_eq!(sha256(&read_chain(&c.files[1])), want, "{format:?}");
    }
}

/// A VHDX's Virtual Disk ID and the file offset of its metadata item.
fn virtual_disk_id(p: &Path) -> (uuid::Uuid, u64) {
    match Disk::open(p).unwrap().info().details {
        vhdkit::FormatInfo::Vhdx(v) => {
            let at = v
                .metadata_items
                .iter()
                .find(|m| m.name.as_deref() == Some("virtual_disk_id"))
                .unwrap()
                .file_offset;
            (v.virtual_disk_id, at)
        }
        _ => panic!("not a VHDX"),
    }
}

/// MS-VHDX 2.6.1: the merged-into ancestor takes CHILD's IsVirtualDisk metadata, so its
/// Virtual Disk ID becomes CHILD's (not the one of the disk in between); the plan lists it.
#[test]
fn a_vhdx_ancestor_takes_the_childs_virtual_disk_id() {
    for into_base in [false, true] {
        let d = tmp();
        let c = build_chain(d.path(), ChainFormat::Vhdx(512), SIZE, 2, 9);
        // The testkit gives every level one ID: give the leaf and the middle disk their own
        // (the item is plain metadata bytes; the logs are clean).
        let leaf_id = uuid::Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
        for (p, id) in [(c.leaf(), leaf_id), (&c.files[1], uuid::Uuid::from_u128(7))] {
            let (_, at) = virtual_disk_id(p);
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &id.to_bytes_le(), at).unwrap();
        }
        let level = usize::from(!into_base);
        let ancestor = c.files[level].clone();
        let before = virtual_disk_id(&ancestor).0;
        assert_ne!(before, leaf_id);
        let want = sha256(&read_chain(c.leaf()));
        let into = into_base.then(|| c.files[0].clone());
        let plan = MergePlan::new(c.leaf(), into.as_deref(), &ChainOptions::default()).unwrap();
        let change = plan
            .changes
            .iter()
            .find(|ch| ch.field == "Virtual Disk ID")
            .expect("the plan lists the Virtual Disk ID");
        assert!(change.new.contains(&leaf_id.to_string()), "{change:?}");
        assert!(change.old.contains(&before.to_string()), "{change:?}");
        plan.apply(&mut ()).unwrap();
        assert_eq!(
            virtual_disk_id(&ancestor).0,
            leaf_id,
            "into base: {into_base}"
        );
        assert_eq!(sha256(&read_chain(&ancestor)), want);
        let r = check_file(&ancestor, &CheckOptions::default().chain(true)).unwrap();
        assert!(!r.has_problems(), "{:?}", r.findings);
        // The base below a merged-into parent keeps its own.
        if !into_base {
            assert_ne!(virtual_disk_id(&c.files[0]).0, leaf_id);
        }
    }
}

fn assert_refused(e: &vhdkit::Error, what: &str, needle: &str) {
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Refused { .. } | ErrorKind::Locked { .. }
        ),
        "{what}: not a refusal: {e}"
    );
    let text = e.to_string();
    assert!(!text.contains('\n'), "{what}: more than one line: {text}");
    assert!(
        text.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {text:?} does not mention {needle:?}"
    );
}

/// Plan, and if the plan passes, apply: the refusal must come from one of them.
#[track_caller]
fn plan_or_apply(child: &Path, into: Option<&Path>, opts: &ChainOptions) -> vhdkit::Error {
    match MergePlan::new(child, into, opts) {
        Err(e) => e,
        Ok(plan) => {
            let predicted = vhdkit::merge::predict_refusal(&plan);
            let e = match plan.apply(&mut ()) {
                Ok(r) => panic!("{} merged, not refused: {plan:?} {r:?}", child.display()),
                Err(e) => e,
            };
            assert!(predicted.is_some(), "the dry run did not predict: {e}");
            e
        }
    }
}

/// A sibling in a chain member's folder, over the ancestor or over an intermediate disk, is
/// found and refused, naming it; nothing changes. A sibling over a disk below the ancestor is
/// no obstacle: the merge goes ahead and that sibling reads the same afterwards.
#[test]
fn a_sibling_in_a_members_folder_is_refused() {
    // (level the sibling hangs on, merge into, refused), in a chain of depth 3.
    let cases = [
        (2usize, None, true),
        (0, Some(0usize), true),
        (1, Some(0), true),
        (2, Some(1), true),
        (1, None, false),
    ];
    for format in FORMATS {
        for (over, into, refused) in cases {
            let d = tmp();
            let c = build_chain(d.path(), format, SIZE, 3, 5);
            let parent = file_name(&c.files[over]);
            let ext = if format == ChainFormat::Vhd {
                "vhd"
            } else {
                "avhdx"
            };
            let sib = sibling(
                d.path(),
                &format!("other.{ext}"),
                format,
                SIZE,
                c.ids[over],
                &format!(r".\{parent}"),
            );
            // The sibling really is a child of that member.
            let sc = Chain::open(&sib, &ChainOptions::default()).unwrap();
            assert_eq!(sc.disks().len(), over + 2, "{format:?}");
            let what = format!("{format:?}: sibling over level {over}, into {into:?}");
            let into_p = into.map(|l| c.files[l].clone());
            if !refused {
                let sib_sha = sha256(&read_chain(&sib));
                let want = sha256(&read_chain(c.leaf()));
                let plan = MergePlan::new(c.leaf(), into_p.as_deref(), &ChainOptions::default());
                plan.unwrap().apply(&mut ()).unwrap();
                assert_eq!(
                    sha256(&read_chain(&sib)),
                    sib_sha,
                    "{what}: the sibling changed"
                );
                assert_eq!(sha256(&read_chain(&c.files[2])), want, "{what}");
                continue;
            }
            let snap = Snapshot::tree(d.path());
            let e = plan_or_apply(c.leaf(), into_p.as_deref(), &ChainOptions::default());
            assert_refused(&e, &what, "other.");
            snap.assert_unchanged(&what);
        }
    }
}

/// A sibling in a folder of no chain member is seen only through `search_dirs`: without it the
/// plan passes (nothing applied here), with it the merge is refused.
#[test]
fn a_sibling_elsewhere_is_refused_only_when_searched() {
    for format in FORMATS {
        let d = tmp();
        let chain_dir = d.path().join("chain");
        let other = d.path().join("other");
        std::fs::create_dir_all(&chain_dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let c = build_chain(&chain_dir, format, SIZE, 1, 8);
        let base = file_name(&c.files[0]);
        let sib = sibling(
            &other,
            "vm2.avhdx",
            format,
            SIZE,
            c.ids[0],
            &format!(r"..\chain\{base}"),
        );
        assert_eq!(
            Chain::open(&sib, &ChainOptions::default())
                .unwrap()
                .disks()
                .len(),
            2
        );
        let snap = Snapshot::tree(d.path());
        let plan = MergePlan::new(c.leaf(), None, &ChainOptions::default()).unwrap();
        assert!(
            vhdkit::merge::predict_refusal(&plan).is_none(),
            "{format:?}"
        );
        let mut opts = ChainOptions::default();
        opts.search_dirs.push(other.clone());
        let e = plan_or_apply(c.leaf(), None, &opts);
        assert_refused(&e, &format!("{format:?}"), "vm2.avhdx");
        snap.assert_unchanged(&format!("{format:?}: searched sibling"));
    }
}

/// Merging CHILD away when CHILD itself has a child would orphan that disk: refused.
#[test]
fn a_child_of_the_child_is_refused() {
    for format in FORMATS {
        let d = tmp();
        let c = build_chain(d.path(), format, SIZE, 2, 13);
        let leaf = file_name(c.leaf());
        let ext = if format == ChainFormat::Vhd {
            "vhd"
        } else {
            "avhdx"
        };
        sibling(
            d.path(),
            &format!("grandchild.{ext}"),
            format,
            SIZE,
            c.ids[2],
            &format!(r".\{leaf}"),
        );
        let snap = Snapshot::tree(d.path());
        let e = plan_or_apply(c.leaf(), None, &ChainOptions::default());
        assert_refused(&e, &format!("{format:?}: child of CHILD"), "grandchild");
        snap.assert_unchanged(&format!("{format:?}: child of CHILD"));
    }
}

/// A chain that does not resolve (the base is gone) or does not verify (the base is another
/// disk with the right name): an error before anything is written.
#[test]
fn a_broken_chain_is_refused() {
    for format in FORMATS {
        let d = tmp();
        let c = build_chain(d.path(), format, SIZE, 2, 21);
        std::fs::remove_file(&c.files[0]).unwrap();
        let snap = Snapshot::tree(d.path());
        let e = MergePlan::new(c.leaf(), None, &ChainOptions::default()).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::ParentNotFound { .. }), "{e}");
        snap.assert_unchanged(&format!("{format:?}: missing base"));
        // Another disk under the base's name: its identity does not match the link.
        let other = build_chain(&d.path().join("x").tap_mkdir(), format, SIZE, 0, 99);
        std::fs::rename(&other.files[0], &c.files[0]).unwrap();
        let snap = Snapshot::tree(d.path());
        let e = MergePlan::new(c.leaf(), None, &ChainOptions::default()).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                ErrorKind::ParentMismatch { .. } | ErrorKind::ParentNotFound { .. }
            ),
            "{format:?}: {e}"
        );
        snap.assert_unchanged(&format!("{format:?}: wrong base"));
    }
}

trait TapMkdir {
    fn tap_mkdir(self) -> PathBuf;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// Each member locked by another writer (an flock on its own open file, as another vhdkit
/// process holds it): refused before the first write, nothing changed.
#[test]
fn a_locked_member_is_refused() {
    for format in FORMATS {
        for locked in 0..3usize {
            let d = tmp();
            let c = build_chain(d.path(), format, SIZE, 2, 31);
            let into = Some(c.files[0].as_path());
            let plan = MergePlan::new(c.leaf(), into, &ChainOptions::default()).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&c.files[locked])
                .unwrap();
            f.try_lock().unwrap();
            let snap = Snapshot::tree(d.path());
            assert!(
                vhdkit::merge::predict_refusal(&plan).is_some(),
                "{format:?} {locked}"
            );
            // flock belongs to the open file description: the apply's own open conflicts.
            let e = std::thread::spawn(move || plan.apply(&mut ()).map(|_| ()))
                .join()
                .unwrap()
                .unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::Locked { .. }),
                "{format:?} level {locked}: {e}"
            );
            snap.assert_unchanged(&format!("{format:?}: level {locked} locked"));
            drop(f);
        }
    }
}

/// `into` that is not in CHILD's chain (another disk, CHILD itself), and a CHILD that is not
/// differencing: refused, nothing changed.
#[test]
fn into_outside_the_chain_and_a_standalone_child_are_refused() {
    for format in FORMATS {
        let d = tmp();
        let c = build_chain(d.path(), format, SIZE, 2, 41);
        let other = build_chain(&d.path().join("o").tap_mkdir(), format, SIZE, 0, 42);
        let snap = Snapshot::tree(d.path());
        for (into, what) in [
            (&other.files[0], "unrelated"),
            (&c.files[2], "CHILD itself"),
        ] {
            let e = MergePlan::new(c.leaf(), Some(into), &ChainOptions::default()).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    ErrorKind::Refused { .. } | ErrorKind::InvalidArgument { .. }
                ),
                "{format:?} {what}: {e}"
            );
            assert!(!e.to_string().contains('\n'));
        }
        let e = MergePlan::new(&c.files[0], None, &ChainOptions::default()).unwrap_err();
        assert_refused(&e, &format!("{format:?}: standalone CHILD"), "differencing");
        snap.assert_unchanged(&format!("{format:?}: into outside"));
    }
}

/// A child larger than its parent (grown after the snapshot): merging would need to grow the
/// ancestor (resize), refused.
#[test]
fn a_child_larger_than_the_ancestor_is_refused() {
    let d = tmp();
    let leaf = vhdkit_testkit::chains::grown_vhd_child(d.path(), "base.vhd", "leaf.vhd");
    let snap = Snapshot::tree(d.path());
    let e = plan_or_apply(&leaf, None, &ChainOptions::default());
    assert_refused(&e, "larger child", "size");
    snap.assert_unchanged("larger child");
}

/// The fixtures themselves, before any merge: libvhdi (identity-checked) and dissect (chains of
/// two) read every VHDX chain as vhdkit does, and every level changes what its parent reads.
#[test]
fn the_fixture_chains_read_the_same_in_every_reader() {
    for format in [ChainFormat::Vhdx(512), ChainFormat::Vhdx(4096)] {
        for depth in [1, 3, 5] {
            let d = tmp();
            let c = build_chain(d.path(), format, SIZE, depth, 77);
            let want = sha256(&read_chain(c.leaf()));
            let chain: Vec<&Path> = c.files.iter().rev().map(PathBuf::as_path).collect();
            if let Some((h, size)) = pyvhdi_chain_sha256(&chain) {
                assert_eq!(
                    (h.as_str(), size),
                    (want.as_str(), SIZE),
                    "{format:?} {depth}"
                );
            }
            if depth == 1 {
                if let Some(r) = dissect_vhdx(c.leaf(), 0) {
                    assert_eq!(r.unwrap().1, want, "{format:?} {depth}: dissect");
                }
            }
            for w in c.files.windows(2) {
                assert_ne!(read_chain(&w[0]), read_chain(&w[1]), "{format:?} {depth}");
            }
        }
    }
}
