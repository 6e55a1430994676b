//! `merge` stopped in-process at every change it makes to the file system: the N-th write,
//! flush, resize, kernel copy, create, rename or unlink fails, and so does every later one, as
//! if the process had died there (`MergePlan::apply_with_faults`). Both formats, depth 1 (into
//! the parent) and depth 3 (into the base, three files merged away). After each stop: the
//! leaf's virtual contents read the same (through CHILD while it exists, else through the
//! ancestor), a rerun (`MergePlan::new` + `apply`: it resumes the copy, or finishes the
//! deletions once CHILD is gone) completes, and then only the ancestor and its parents are
//! left, reading the leaf's contents, `check --chain` clean.
//!
//! CI runs every `EVERY`th stop point (and the last); `VHDKIT_FULL_MATRIX=1` runs every one.
//! The strace matrix of the CLI (`tests/cli/merge/crash.rs`) kills the real binary instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::txn::fault::FaultPlan;
use vhdkit::{ChainOptions, MergePlan};
use vhdkit_testkit::chains::{build_chain, sampled, ChainFormat};
use vhdkit_testkit::sha256;
use vhdkit_testkit::through::{read_chain, tmp};

const SIZE: u64 = 4 << 20;
/// CI samples every `EVERY`th stop point.
const EVERY: usize = 3;

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// One chain, restored before every run.
struct Fixture {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pristine: Vec<Vec<u8>>,
    into: Option<PathBuf>,
    want: String,
    ctx: String,
}

impl Fixture {
    fn new(root: &Path, format: ChainFormat, depth: usize) -> Fixture {
        let dir = root.join("vm");
        std::fs::create_dir(&dir).unwrap();
        let c = build_chain(&dir, format, SIZE, depth, 500 + depth as u64);
        let into = (depth > 1).then(|| c.files[0].clone());
        Fixture {
            want: sha256(&read_chain(c.leaf())),
            pristine: c.files.iter().map(|p| std::fs::read(p).unwrap()).collect(),
            files: c.files.clone(),
            into,
            dir,
            ctx: format!("{} depth {depth}", format.label()),
        }
    }

    fn leaf(&self) -> &Path {
        self.files.last().unwrap()
    }

    /// Every file as built, and nothing else in the folder.
    fn restore(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (p, b) in self.files.iter().zip(&self.pristine) {
            std::fs::write(p, b).unwrap();
        }
    }

    fn plan(&self) -> MergePlan {
        MergePlan::new(self.leaf(), self.into.as_deref(), &ChainOptions::default())
            .unwrap_or_else(|e| panic!("{}: plan: {e}", self.ctx))
    }

    /// A merge stopped at operation `k`: the contents hold, a rerun completes.
    fn stop_at(&self, k: usize) -> bool {
        self.restore();
        let ctx = format!("{}: stop at {k}", self.ctx);
        let r = self
            .plan()
            .apply_with_faults(FaultPlan::new(Some(k)), &mut ());
        assert!(r.is_err(), "{ctx}: the merge did not stop");
        let ancestor = &self.files[0];
        let child_left = self.leaf().exists();
        let reader = if child_left { self.leaf() } else { ancestor };
        assert_eq!(
            sha256(&read_chain(reader)),
            self.want,
            "{ctx}: the contents changed"
        );
        // Once the record is removed the merge is done (a stop at the last folder sync):
        // there is nothing to rerun, as `vhdkit repair` would find.
        let record = vhdkit::merge::load_record(ancestor).unwrap();
        if child_left || record.is_some() {
            let report = self
                .plan()
                .apply(&mut ())
                .unwrap_or_else(|e| panic!("{ctx}: rerun: {e}"));
            assert!(report.resumed || child_left, "{ctx}: {report:?}");
        }
        self.assert_merged(&ctx);
        child_left
    }

    /// Only the ancestor is left, reading the leaf's contents, `check --chain` clean.
    fn assert_merged(&self, ctx: &str) {
        let ancestor = &self.files[0];
        let left: BTreeSet<String> = [ancestor.file_name().unwrap().to_string_lossy().into()]
            .into_iter()
            .collect();
        assert_eq!(names(&self.dir), left, "{ctx}: files left");
        assert_eq!(sha256(&read_chain(ancestor)), self.want, "{ctx}: merged");
        let r = check_file(ancestor, &CheckOptions::default().chain(true)).unwrap();
        assert!(!r.has_problems(), "{ctx}: check: {:?}", r.findings);
    }
}

fn stop_everywhere(format: ChainFormat, depth: usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), format, depth);
    // A run that never fails counts the operations.
    let count = FaultPlan::new(None);
    f.restore();
    f.plan().apply_with_faults(count.clone(), &mut ()).unwrap();
    f.assert_merged(&format!("{}: unfailed", f.ctx));
    let total = count.count();
    assert!(total > 20, "{}: only {total} operations", f.ctx);
    let (mut before, mut after) = (0, 0);
    for k in sampled(total, EVERY) {
        if f.stop_at(k) {
            before += 1;
        } else {
            after += 1;
        }
    }
    // Stops fell in the copy (CHILD still there) and in the deletions (CHILD gone).
    assert!(before > 0 && after > 0, "{}: {before} / {after}", f.ctx);
    eprintln!(
        "{}: {total} operations, {} stops checked",
        f.ctx,
        before + after
    );
}

#[test]
fn vhd_depth_1_stops_everywhere() {
    stop_everywhere(ChainFormat::Vhd, 1);
}

#[test]
fn vhd_depth_3_stops_everywhere() {
    stop_everywhere(ChainFormat::Vhd, 3);
}

#[test]
fn vhdx_depth_1_stops_everywhere() {
    stop_everywhere(ChainFormat::Vhdx(512), 1);
}

#[test]
fn vhdx_depth_3_stops_everywhere() {
    stop_everywhere(ChainFormat::Vhdx(4096), 3);
}
