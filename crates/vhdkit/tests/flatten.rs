//! `flatten`: a differencing disk becomes standalone in place, both formats, chains of depth 1
//! and 3, writes that start and end inside bitmap bytes. Oracles: vhdkit's read of the chain
//! before, qemu-img's read of the standalone result after (and `qemu-img check` for VHDX),
//! `check` clean, the parents byte-identical. Fault injection at every mutating operation of
//! the whole flatten: the child's virtual contents are unchanged after each failure, and a
//! rerun completes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::flatten;
use vhdkit::txn::fault::{FaultPlan, FaultyFile, MemJournal};
use vhdkit::txn::journal::{self, JournalStore, Recovery};
use vhdkit::FlattenPlan;
use vhdkit::{ChainOptions, ChainView, Disk, DiskType, OpenOptions};
use vhdkit_testkit::chains::{vhd_chain, vhdx_chain};
use vhdkit_testkit::through::{qemu_raw, read_chain, tmp};
use vhdkit_testkit::{sha256, sha256_file};

const MIB: u64 = 1 << 20;

/// Flatten `child` with the library, and check it against every oracle.
/// `qemu_fmt` `None`: qemu cannot read the result (it opens only 512-byte logical sectors).
fn flatten_and_check(child: &Path, parents: &[PathBuf], qemu_fmt: Option<&str>, dir: &Path) {
    let want = read_chain(child);
    let parent_shas: Vec<String> = parents.iter().map(|p| sha256_file(p)).collect();
    let plan = FlattenPlan::new(child, &ChainOptions::default()).unwrap();
    assert!(!plan.already_standalone);
    assert_eq!(plan.parents.len(), parents.len());
    assert!(plan.bytes_to_copy > 0);
    assert!(plan.partial_blocks > 0, "{plan:?}");
    assert!(!plan.unlink.is_empty());
    let r = plan.apply(&mut ()).unwrap();
    assert!(!r.already_standalone);
    assert_eq!(
        (r.whole_blocks, r.partial_blocks, r.bytes_copied),
        (plan.whole_blocks, plan.partial_blocks, plan.bytes_to_copy)
    );
    let d = Disk::open(child).unwrap();
    assert_eq!(d.disk_type(), DiskType::Dynamic);
    assert!(d.parent_linkage().is_none());
    assert!(d.parent_locators().is_empty());
    assert!(d.warnings().is_empty(), "{:?}", d.warnings());
    assert_eq!(
        sha256(&read_chain(child)),
        sha256(&want),
        "vhdkit read-back"
    );
    let report = check_file(child, &CheckOptions::default()).unwrap();
    assert!(!report.has_problems(), "{:?}", report.findings);
    for (p, sha) in parents.iter().zip(&parent_shas) {
        assert_eq!(&sha256_file(p), sha, "parent {} changed", p.display());
    }
    if let Some(q) = qemu_fmt.and_then(|f| qemu_raw(f, child, dir)) {
        assert_eq!(sha256(&q), sha256(&want), "qemu read-back");
    }
    // A rerun has nothing left to do.
    let again = FlattenPlan::new(child, &ChainOptions::default()).unwrap();
    assert!(again.already_standalone);
    assert!(again.apply(&mut ()).unwrap().already_standalone);
}

#[test]
fn vhd_depth_1_and_3() {
    for depth in [1, 3] {
        let d = tmp();
        let (child, parents) = vhd_chain(d.path(), 6 * MIB + 3 * 512, depth, depth as u64);
        flatten_and_check(&child, &parents, Some("vpc"), d.path());
    }
}

#[test]
fn vhdx_depth_1_and_3_both_sector_sizes() {
    for (depth, sector) in [(1, 512), (3, 512), (1, 4096), (3, 4096)] {
        let d = tmp();
        let (child, parents) = vhdx_chain(d.path(), 6 * MIB, depth, sector, depth as u64 + 7);
        let qemu = (sector == 512).then_some("vhdx");
        flatten_and_check(&child, &parents, qemu, d.path());
    }
}

/// Flattening a disk that is itself a parent: its virtual contents do not change, so it keeps
/// the identity its children record (VHDX DataWriteGuid, VHD unique id) and they read the same.
#[test]
fn the_flattened_disks_own_children_keep_working() {
    for ext in ["vhd", "vhdx"] {
        let d = tmp();
        let (child, parents) = if ext == "vhd" {
            vhd_chain(d.path(), 6 * MIB + 3 * 512, 2, 7)
        } else {
            vhdx_chain(d.path(), 6 * MIB, 2, 512, 7)
        };
        let want = read_chain(&child);
        let middle = &parents[0];
        let id_before = Disk::open(middle).unwrap().identity();
        let plan = FlattenPlan::new(middle, &ChainOptions::default()).unwrap();
        assert!(plan.bytes_to_copy > 0, "{ext}");
        plan.apply(&mut ()).unwrap();
        let m = Disk::open(middle).unwrap();
        assert_eq!(m.disk_type(), DiskType::Dynamic, "{ext}");
        assert_eq!(m.identity(), id_before, "{ext}");
        let chain = vhdkit::Chain::open(&child, &ChainOptions::default()).unwrap();
        assert_eq!(
            chain.disks().len(),
            2,
            "{ext}: the child now sits on the flattened disk"
        );
        assert_eq!(sha256(&read_chain(&child)), sha256(&want), "{ext}");
    }
}

#[test]
fn a_locked_child_is_refused_and_untouched() {
    let d = tmp();
    let (child, _) = vhd_chain(d.path(), 4 * MIB, 1, 3);
    let before = std::fs::read(&child).unwrap();
    let plan = FlattenPlan::new(&child, &ChainOptions::default()).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&child)
        .unwrap();
    f.try_lock().unwrap();
    // flock locks belong to the open file description: the apply's own open conflicts.
    let other = std::thread::spawn(move || plan.apply(&mut ()).map(|_| ()))
        .join()
        .unwrap();
    let e = other.unwrap_err();
    assert!(matches!(e.kind(), vhdkit::ErrorKind::Locked { .. }), "{e}");
    assert!(
        flatten::predict_refusal(&FlattenPlan::new(&child, &ChainOptions::default()).unwrap())
            .is_some()
    );
    drop(f);
    assert_eq!(std::fs::read(&child).unwrap(), before);
}

#[test]
fn a_broken_chain_is_refused() {
    let d = tmp();
    let (child, parents) = vhdx_chain(d.path(), 4 * MIB, 1, 512, 5);
    std::fs::remove_file(&parents[0]).unwrap();
    let before = std::fs::read(&child).unwrap();
    let e = FlattenPlan::new(&child, &ChainOptions::default()).unwrap_err();
    assert!(
        matches!(e.kind(), vhdkit::ErrorKind::ParentNotFound { .. }),
        "{e}"
    );
    assert_eq!(std::fs::read(&child).unwrap(), before);
}

/// The parents of `child`, opened read-only (the chain below it).
fn parents_of(parents: &[PathBuf]) -> impl Fn() -> Result<ChainView, vhdkit::Error> + '_ {
    move || {
        let disks = parents
            .iter()
            .map(Disk::open)
            .collect::<Result<Vec<_>, vhdkit::Error>>()?;
        Ok(ChainView::new(disks))
    }
}

/// SHA-256 of the virtual contents of `bytes` (a child image) over `parents`.
fn contents(bytes: Vec<u8>, parents: &[PathBuf]) -> String {
    let c = Disk::from_source(Box::new(bytes), &OpenOptions::default()).unwrap();
    let mut layers = vec![];
    let differencing = c.disk_type() == DiskType::Differencing;
    layers.push(c);
    if differencing {
        layers.extend(parents.iter().map(|p| Disk::open(p).unwrap()));
    }
    vhdkit_testkit::sha256_reader(ChainView::new(layers))
}

fn standalone(bytes: &[u8]) -> bool {
    Disk::from_source(Box::new(bytes.to_vec()), &OpenOptions::default())
        .unwrap()
        .disk_type()
        == DiskType::Dynamic
}

/// A crash at every mutating operation (writes, syncs, resizes, journal operations): both
/// crash images (all writes, synced writes only) hold the same virtual contents once a pending
/// journal is finished, and a rerun completes the flatten.
fn crash_everywhere(child: &Path, parents: &[PathBuf]) {
    let old = std::fs::read(child).unwrap();
    let want = contents(old.clone(), parents);
    let opts = ChainOptions::default();
    let open_parents = parents_of(parents);
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(old.clone(), fp.clone());
    flatten::apply_to(
        &f,
        &MemJournal::new(fp.clone()),
        &open_parents,
        &opts,
        &mut (),
    )
    .unwrap();
    let total = fp.count();
    assert!(total > 10, "{total}");
    let done = f.contents_synced();
    assert!(standalone(&done));
    assert_eq!(contents(done, parents), want);
    let mut unlinked_early = 0;
    for k in 1..=total {
        let fp = FaultPlan::new(Some(k));
        let f = FaultyFile::new(old.clone(), fp.clone());
        let j = MemJournal::new(fp.clone());
        let r = flatten::apply_to(&f, &j, &open_parents, &opts, &mut ());
        assert!(r.is_err(), "k={k}");
        for image in [f.contents_all_written(), f.contents_synced()] {
            let fp2 = FaultPlan::new(None);
            let f2 = FaultyFile::new(image, fp2.clone());
            let j2 = MemJournal::new(fp2.clone());
            if let Some(b) = j.load().unwrap() {
                j2.store(&b).unwrap();
            }
            let rec = journal::recover(&f2, &j2).unwrap();
            assert!(!matches!(rec, Recovery::Foreign { .. }), "k={k}: {rec:?}");
            let now = f2.contents_all_written();
            unlinked_early += usize::from(standalone(&now));
            assert_eq!(contents(now, parents), want, "k={k}: contents changed");
            // The rerun finishes.
            flatten::apply_to(&f2, &j2, &open_parents, &opts, &mut ()).unwrap();
            let fin = f2.contents_synced();
            assert!(standalone(&fin), "k={k}: rerun left it differencing");
            assert_eq!(contents(fin, parents), want, "k={k}: after the rerun");
        }
    }
    // Some crash points come after the commit of the final step.
    assert!(unlinked_early > 0);
}

#[test]
fn vhd_crash_at_every_operation() {
    let d = tmp();
    let (child, parents) = vhd_chain(d.path(), 4 * MIB, 1, 11);
    crash_everywhere(&child, &parents);
}

#[test]
fn vhdx_crash_at_every_operation() {
    let d = tmp();
    let (child, parents) = vhdx_chain(d.path(), 4 * MIB, 1, 512, 12);
    crash_everywhere(&child, &parents);
}

/// Cancels once some bytes are copied, and records the phase.
#[derive(Default)]
struct CancelAfterFirst {
    phase: Option<(String, Option<u64>)>,
    done: u64,
}

impl vhdkit::Progress for CancelAfterFirst {
    fn start(&mut self, what: &str, total: Option<u64>) {
        self.phase = Some((what.to_string(), total));
    }
    fn advance(&mut self, n: u64) {
        self.done += n;
    }
    fn cancelled(&self) -> bool {
        self.done > 0
    }
}

/// A cancel stops between blocks with what was copied committed: the child is still a
/// differencing disk with the same contents, and a rerun finishes.
#[test]
fn cancel_keeps_the_contents_and_a_rerun_finishes() {
    let d = tmp();
    let (child, _) = vhd_chain(d.path(), 6 * MIB, 1, 21);
    let want = read_chain(&child);
    let plan = FlattenPlan::new(&child, &ChainOptions::default()).unwrap();
    let mut p = CancelAfterFirst::default();
    let e = plan.apply(&mut p).unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    assert_eq!(
        p.phase,
        Some(("flatten".to_string(), Some(plan.bytes_to_copy)))
    );
    assert!(p.done > 0 && p.done < plan.bytes_to_copy, "{}", p.done);
    assert_eq!(
        Disk::open(&child).unwrap().disk_type(),
        DiskType::Differencing
    );
    assert_eq!(read_chain(&child), want);
    let again = FlattenPlan::new(&child, &ChainOptions::default()).unwrap();
    assert!(again.bytes_to_copy < plan.bytes_to_copy);
    again.apply(&mut ()).unwrap();
    assert_eq!(Disk::open(&child).unwrap().disk_type(), DiskType::Dynamic);
    assert_eq!(read_chain(&child), want);
}
