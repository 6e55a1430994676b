//! `share` and `relink` stop between children when their `Progress` is cancelled: every disk
//! still opens with its chain intact, and a rerun finishes the work.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use vhdkit::share::{apply_relink, apply_share, plan_relink, plan_share, ShareOptions};
use vhdkit::{create, Chain, ChainOptions, CreateParams, Progress};

/// Cancels once `after` children of the apply phase (`"repoint"` or `"relink"`) were started.
struct CancelAfter {
    phase: String,
    children: u64,
    after: u64,
}

impl CancelAfter {
    fn new(after: u64) -> Self {
        CancelAfter {
            phase: String::new(),
            children: 0,
            after,
        }
    }
}

impl Progress for CancelAfter {
    fn start(&mut self, what: &str, _total: Option<u64>) {
        self.phase = what.to_string();
    }
    fn advance(&mut self, n: u64) {
        if self.phase == "repoint" || self.phase == "relink" {
            self.children += n;
        }
    }
    fn cancelled(&self) -> bool {
        self.children >= self.after
    }
}

/// Three VM folders, each with its own copy of one parent and two children over it.
fn lab(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("vm1").join("base.vhdx");
    for vm in ["vm1", "vm2", "vm3"] {
        std::fs::create_dir_all(dir.join(vm)).unwrap();
    }
    create(&base, &CreateParams::dynamic(4 << 20)).unwrap();
    let mut children = Vec::new();
    for vm in ["vm1", "vm2", "vm3"] {
        let folder = dir.join(vm);
        if vm != "vm1" {
            std::fs::copy(&base, folder.join("base.vhdx")).unwrap();
        }
        for name in ["a.avhdx", "b.avhdx"] {
            let child = folder.join(name);
            create(
                &child,
                &CreateParams::differencing(folder.join("base.vhdx")),
            )
            .unwrap();
            children.push(child);
        }
    }
    children
}

/// The parent each child's chain resolves to now (every chain must open).
fn parents(children: &[PathBuf]) -> Vec<PathBuf> {
    children
        .iter()
        .map(|c| {
            let chain = Chain::open(c, &ChainOptions::default()).unwrap();
            let p = chain.disks()[1].path().unwrap();
            std::fs::canonicalize(p).unwrap()
        })
        .collect()
}

#[test]
fn a_cancelled_share_stops_between_children_and_a_rerun_finishes() {
    let t = tempfile::tempdir().unwrap();
    let children = lab(t.path());
    let shared = t.path().join("shared");
    let opts = ShareOptions::default();
    let plan = plan_share(t.path(), &shared, &opts, ()).unwrap();
    assert_eq!(plan.groups.len(), 1);

    let e = apply_share(&plan, &opts, CancelAfter::new(2)).unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    // Two children were repointed at the keeper; the other four were not touched. Every
    // chain opens.
    let keeper = std::fs::canonicalize(shared.join("base.vhdx")).unwrap();
    let now = parents(&children);
    assert_eq!(now.iter().filter(|p| **p == keeper).count(), 2, "{now:?}");

    let plan = plan_share(t.path(), &shared, &opts, ()).unwrap();
    let done = apply_share(&plan, &opts, ()).unwrap();
    assert_eq!(done.children_repointed, 4);
    assert!(parents(&children).iter().all(|p| *p == keeper));
    let plan = plan_share(t.path(), &shared, &opts, ()).unwrap();
    assert!(plan.nothing_to_do, "{plan:?}");
}

#[test]
fn a_share_cancelled_while_planning_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    lab(t.path());
    struct Always;
    impl Progress for Always {
        fn cancelled(&self) -> bool {
            true
        }
    }
    let e = plan_share(
        t.path(),
        t.path().join("shared"),
        &ShareOptions::default(),
        Always,
    )
    .unwrap_err();
    assert!(e.is_cancelled(), "{e}");
}

#[test]
fn a_cancelled_relink_stops_between_children_and_a_rerun_finishes() {
    let t = tempfile::tempdir().unwrap();
    let children = lab(t.path());
    // Move the tree and rename each parent: no locator of any child resolves any more.
    let moved = t.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    for vm in ["vm1", "vm2", "vm3"] {
        std::fs::rename(t.path().join(vm), moved.join(vm)).unwrap();
        let base = moved.join(vm).join("base.vhdx");
        std::fs::rename(&base, moved.join(vm).join("renamed.vhdx")).unwrap();
    }
    let children: Vec<PathBuf> = children
        .iter()
        .map(|c| moved.join(c.strip_prefix(t.path()).unwrap()))
        .collect();
    assert!(Chain::open(&children[0], &ChainOptions::default()).is_err());

    let opts = ShareOptions::default();
    let plan = plan_relink(&moved, &[] as &[PathBuf], &opts, ()).unwrap();
    assert_eq!(plan.items.len(), 6, "{plan:?}");
    let e = apply_relink(&plan, &opts, CancelAfter::new(3)).unwrap_err();
    assert!(e.is_cancelled(), "{e}");
    let opened = children
        .iter()
        .filter(|c| Chain::open(c, &ChainOptions::default()).is_ok())
        .count();
    assert_eq!(opened, 3);

    let plan = plan_relink(&moved, &[] as &[PathBuf], &opts, ()).unwrap();
    let done = apply_relink(&plan, &opts, ()).unwrap();
    assert_eq!(done.relinked, 3);
    parents(&children);
}
