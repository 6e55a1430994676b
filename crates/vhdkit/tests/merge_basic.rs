//! `merge`: a differencing disk (and the disks between it and an ancestor) written into the
//! ancestor, both formats, depth 1 and 3, `--into` an intermediate. Oracles: vhdkit's read of
//! CHILD's chain before equals the ancestor's chain after; the merged files and the merge
//! record are gone; `check` is clean; the ancestor's own parents are byte-identical. Each
//! refusal leaves every file byte-identical.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::{ChainOptions, Disk, MergePlan};
use vhdkit_testkit::chains::{vhd_chain, vhdx_chain};
use vhdkit_testkit::through::{read_chain, tmp};
use vhdkit_testkit::{sha256, sha256_file};

const MIB: u64 = 1 << 20;

/// Merge `child` into `into` (its parent when `None`) and check every oracle. `chain` is the
/// child's parents, nearest first; returns the ancestor.
fn merge_and_check(child: &Path, chain: &[PathBuf], into: Option<usize>) -> PathBuf {
    let want = read_chain(child);
    let k = into.unwrap_or(0);
    let ancestor = chain[k].clone();
    let below: Vec<(PathBuf, String)> = chain[k + 1..]
        .iter()
        .map(|p| (p.clone(), sha256_file(p)))
        .collect();
    let into_path = into.map(|i| chain[i].clone());
    let plan = MergePlan::new(child, into_path.as_deref(), &ChainOptions::default()).unwrap();
    assert_eq!(plan.ancestor, ancestor);
    let mut merged = vec![child.to_path_buf()];
    merged.extend(chain[..k].iter().cloned());
    assert_eq!(plan.merged, merged);
    assert!(plan.bytes_to_copy > 0 && plan.blocks > 0, "{plan:?}");
    assert!(!plan.resuming);
    let r = plan.apply(&mut ()).unwrap();
    assert_eq!(r.bytes_copied, plan.bytes_to_copy);
    assert_eq!(r.blocks, plan.blocks);
    assert!(r.kept.is_empty(), "{:?}", r.kept);
    assert_eq!(r.deleted.len(), merged.len());
    for m in &merged {
        assert!(!m.exists(), "{} still there", m.display());
    }
    assert!(!vhdkit::sidefile::merge_record(&ancestor).exists());
    let got = read_chain(&ancestor);
    assert_eq!(got.len(), want.len());
    assert_eq!(
        sha256(&got),
        sha256(&want),
        "ancestor after vs child before"
    );
    let report = check_file(&ancestor, &CheckOptions::default()).unwrap();
    assert!(!report.has_problems(), "{:?}", report.findings);
    for (p, sha) in &below {
        assert_eq!(&sha256_file(p), sha, "{} changed", p.display());
    }
    ancestor
}

#[test]
fn vhd_depth_1_and_3() {
    for depth in [1, 3] {
        let d = tmp();
        let (child, parents) = vhd_chain(d.path(), 6 * MIB + 3 * 512, depth, depth as u64);
        let id = Disk::open(&parents[0]).unwrap().identity();
        let a = merge_and_check(&child, &parents, None);
        // VHD: the ancestor keeps its unique id (its own children keep linking to it).
        assert_eq!(Disk::open(&a).unwrap().identity(), id);
    }
}

#[test]
fn vhdx_depth_1_and_3_both_sector_sizes() {
    for (depth, sector) in [(1, 512), (3, 512), (1, 4096), (3, 4096)] {
        let d = tmp();
        let (child, parents) = vhdx_chain(d.path(), 6 * MIB, depth, sector, depth as u64 + 7);
        let id = Disk::open(&parents[0]).unwrap().identity();
        let a = merge_and_check(&child, &parents, None);
        // VHDX: a new DataWriteGuid, the one announced in the plan.
        assert_ne!(Disk::open(&a).unwrap().identity(), id);
    }
}

#[test]
fn into_an_intermediate_and_into_the_base() {
    for ext in ["vhd", "vhdx"] {
        for into in [1, 2] {
            let d = tmp();
            let (child, parents) = if ext == "vhd" {
                vhd_chain(d.path(), 6 * MIB + 3 * 512, 3, 11)
            } else {
                vhdx_chain(d.path(), 6 * MIB, 3, 512, 11)
            };
            merge_and_check(&child, &parents, Some(into));
        }
    }
}

/// Every file's bytes, to prove a refusal changed nothing.
fn shas(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let s = sha256_file(&p);
            (p, s)
        })
        .collect();
    v.sort();
    v
}

fn refused(child: &Path, into: Option<&Path>, dir: &Path, words: &str) {
    let before = shas(dir);
    let e = MergePlan::new(child, into, &ChainOptions::default())
        .and_then(|p| p.apply(&mut ()).map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, vhdkit::Error::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains(words), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
    assert_eq!(shas(dir), before, "a refusal changed a file");
}

#[test]
fn refusals_change_nothing() {
    for ext in ["vhd", "vhdx"] {
        let d = tmp();
        let (child, parents) = if ext == "vhd" {
            vhd_chain(d.path(), 6 * MIB + 3 * 512, 2, 5)
        } else {
            vhdx_chain(d.path(), 6 * MIB, 2, 512, 5)
        };
        // Not differencing.
        refused(&parents[1], None, d.path(), "not a differencing disk");
        // --into outside the chain, and --into the child itself.
        let other = tmp();
        let (stranger, _) = if ext == "vhd" {
            vhd_chain(other.path(), MIB, 0, 1)
        } else {
            vhdx_chain(other.path(), MIB, 0, 512, 1)
        };
        refused(&child, Some(&stranger), d.path(), "is not in the chain");
        refused(&child, Some(&child), d.path(), "the child itself");
        // A sibling of the ancestor (a copy of the child has the same parent).
        let sib = d.path().join(format!("sibling.{ext}"));
        std::fs::copy(&child, &sib).unwrap();
        refused(&child, None, d.path(), "another child of");
        // A sibling of an intermediate: merging into the base deletes its parent.
        std::fs::remove_file(&sib).unwrap();
        let sib = d.path().join(format!("sibling2.{ext}"));
        std::fs::copy(&parents[0], &sib).unwrap();
        refused(&child, Some(&parents[1]), d.path(), "sibling2");
        std::fs::remove_file(&sib).unwrap();
    }
}

/// Cancels the copy once some bytes were copied: the merge stops between blocks with the
/// record kept, as a crash in the copy leaves it.
struct CancelAfter(u64);

impl vhdkit::Progress for CancelAfter {
    fn advance(&mut self, n: u64) {
        self.0 = self.0.saturating_sub(n);
    }
    fn cancelled(&self) -> bool {
        self.0 == 0
    }
}

#[test]
fn a_cancelled_merge_keeps_the_child_reading_the_same_and_a_rerun_resumes() {
    for ext in ["vhd", "vhdx"] {
        let d = tmp();
        let (child, parents) = if ext == "vhd" {
            vhd_chain(d.path(), 6 * MIB + 3 * 512, 2, 21)
        } else {
            vhdx_chain(d.path(), 6 * MIB, 2, 512, 21)
        };
        let want = read_chain(&child);
        let plan = MergePlan::new(&child, None, &ChainOptions::default()).unwrap();
        assert!(plan.blocks > 1, "{plan:?}");
        plan.apply(&mut CancelAfter(1)).unwrap_err();
        let rec = vhdkit::merge::load_record(&parents[0]).unwrap().unwrap();
        assert_eq!(rec.phase, vhdkit::merge::Phase::Copying);
        assert!(child.exists());
        assert_eq!(
            sha256(&read_chain(&child)),
            sha256(&want),
            "{ext}: child changed"
        );
        // `check` of the ancestor reports the unfinished merge.
        let r = check_file(&parents[0], &CheckOptions::default()).unwrap();
        assert!(
            r.findings.iter().any(|f| f.code == "file.merge_unfinished"),
            "{:?}",
            r.findings
        );
        // The rerun resumes and finishes.
        let again = MergePlan::new(&child, None, &ChainOptions::default()).unwrap();
        assert!(again.resuming, "{ext}");
        let r = again.apply(&mut ()).unwrap();
        assert!(r.resumed);
        assert!(!child.exists());
        assert_eq!(sha256(&read_chain(&parents[0])), sha256(&want), "{ext}");
        assert!(vhdkit::merge::load_record(&parents[0]).unwrap().is_none());
        let r = check_file(&parents[0], &CheckOptions::default()).unwrap();
        assert!(!r.has_problems(), "{:?}", r.findings);
    }
}

#[test]
fn another_merge_into_a_recorded_ancestor_is_refused() {
    let d = tmp();
    let (child, parents) = vhdx_chain(d.path(), 6 * MIB, 2, 512, 31);
    let plan = MergePlan::new(&child, None, &ChainOptions::default()).unwrap();
    plan.apply(&mut CancelAfter(1)).unwrap_err();
    // Merging the middle disk is refused (the child is its child); a record naming other
    // merged files than this merge's is refused too, naming the rerun and the repair.
    let before = shas(d.path());
    let e = MergePlan::new(&parents[0], None, &ChainOptions::default()).unwrap_err();
    assert!(e.to_string().contains("another child of"), "{e}");
    let mut rec = vhdkit::merge::load_record(&parents[0]).unwrap().unwrap();
    rec.merged[0].id = uuid::Uuid::from_u128(9);
    vhdkit::merge::store_record(&parents[0], &rec).unwrap();
    let before_rec = shas(d.path());
    let e = MergePlan::new(&child, None, &ChainOptions::default()).unwrap_err();
    assert!(e.to_string().contains("an unfinished merge of"), "{e}");
    assert!(e.to_string().contains("vhdkit repair"), "{e}");
    assert_eq!(shas(d.path()), before_rec);
    assert_ne!(before, before_rec);
}

#[test]
fn repair_finishes_a_merge_whose_copy_verified() {
    for ext in ["vhd", "vhdx"] {
        let d = tmp();
        let (child, parents) = if ext == "vhd" {
            vhd_chain(d.path(), 6 * MIB + 3 * 512, 1, 41)
        } else {
            vhdx_chain(d.path(), 6 * MIB, 1, 512, 41)
        };
        let want = read_chain(&child);
        let saved = std::fs::read(&child).unwrap();
        let plan = MergePlan::new(&child, None, &ChainOptions::default()).unwrap();
        plan.apply(&mut CancelAfter(1)).unwrap_err();
        let mut rec = vhdkit::merge::load_record(&parents[0]).unwrap().unwrap();
        MergePlan::new(&child, None, &ChainOptions::default())
            .unwrap()
            .apply(&mut ())
            .unwrap();
        // As a crash just after the record's phase became `deleting` leaves it.
        std::fs::write(&child, &saved).unwrap();
        rec.phase = vhdkit::merge::Phase::Deleting;
        vhdkit::merge::store_record(&parents[0], &rec).unwrap();
        let r = check_file(&parents[0], &CheckOptions::default()).unwrap();
        assert!(r.findings.iter().any(|f| f.code == "file.merge_unfinished"));
        let before = shas(d.path());
        let dry = vhdkit::repair::repair(
            &parents[0],
            &vhdkit::repair::RepairOptions::default().dry_run(true),
        )
        .unwrap();
        assert_eq!(shas(d.path()), before, "{ext}: the dry run wrote");
        assert_eq!(dry.structures[0].code, "file.merge_unfinished", "{dry:?}");
        assert!(dry.unrepaired.is_empty(), "{dry:?}");
        let done =
            vhdkit::repair::repair(&parents[0], &vhdkit::repair::RepairOptions::default()).unwrap();
        assert!(done.structures[0].action.contains("deleted 1"), "{done:?}");
        assert!(!child.exists(), "{ext}");
        assert!(vhdkit::merge::load_record(&parents[0]).unwrap().is_none());
        assert_eq!(sha256(&read_chain(&parents[0])), sha256(&want), "{ext}");
        assert!(!check_file(&parents[0], &CheckOptions::default())
            .unwrap()
            .has_problems());
    }
}

#[test]
fn a_disk_with_an_unfinished_merge_is_not_opened_for_writing() {
    let d = tmp();
    let (child, parents) = vhd_chain(d.path(), 6 * MIB + 3 * 512, 1, 51);
    MergePlan::new(&child, None, &ChainOptions::default())
        .unwrap()
        .apply(&mut CancelAfter(1))
        .unwrap_err();
    let e = vhdkit::WritableDisk::open(&parents[0], &ChainOptions::default()).unwrap_err();
    assert!(matches!(e, vhdkit::Error::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("unfinished merge"), "{e}");
    MergePlan::new(&child, None, &ChainOptions::default())
        .unwrap()
        .apply(&mut ())
        .unwrap();
    vhdkit::WritableDisk::open(&parents[0], &ChainOptions::default()).unwrap();
}

/// A kill during the deletions (CHILD gone, an intermediate left): a rerun of the merge on
/// CHILD's path finishes it from the record.
#[test]
fn a_rerun_after_the_child_was_deleted_finishes_the_deletions() {
    for ext in ["vhd", "vhdx"] {
        let d = tmp();
        let (child, parents) = if ext == "vhd" {
            vhd_chain(d.path(), 6 * MIB + 3 * 512, 2, 61)
        } else {
            vhdx_chain(d.path(), 6 * MIB, 2, 512, 61)
        };
        let want = read_chain(&child);
        let saved = std::fs::read(&parents[0]).unwrap();
        let plan = MergePlan::new(&child, Some(&parents[1]), &ChainOptions::default()).unwrap();
        plan.apply(&mut CancelAfter(1)).unwrap_err();
        let mut rec = vhdkit::merge::load_record(&parents[1]).unwrap().unwrap();
        MergePlan::new(&child, Some(&parents[1]), &ChainOptions::default())
            .unwrap()
            .apply(&mut ())
            .unwrap();
        // As a kill after CHILD's unlink leaves it: the intermediate and the record remain.
        std::fs::write(&parents[0], &saved).unwrap();
        rec.phase = vhdkit::merge::Phase::Deleting;
        vhdkit::merge::store_record(&parents[1], &rec).unwrap();
        let again = MergePlan::new(&child, None, &ChainOptions::default()).unwrap();
        assert!(again.resuming && again.bytes_to_copy == 0, "{again:?}");
        assert_eq!(again.ancestor, parents[1]);
        let r = again.apply(&mut ()).unwrap();
        assert!(r.resumed);
        assert_eq!(r.deleted.len(), 1, "{r:?}");
        assert!(!parents[0].exists());
        assert!(vhdkit::merge::load_record(&parents[1]).unwrap().is_none());
        assert_eq!(sha256(&read_chain(&parents[1])), sha256(&want), "{ext}");
    }
}
