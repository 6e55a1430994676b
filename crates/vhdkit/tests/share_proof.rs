//! The real run of `share` relies on the plan's proof without reading the copies again, but only
//! while each proved file is still as it was read (identity, length, modification time): a copy
//! written since is kept, a keeper written since is not used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use vhdkit::share::{apply_share, plan_share, NoteReason, ShareOptions};
use vhdkit::{create, CreateParams};

/// `vm1` and `vm2`, each with a copy of one 4 MiB VHDX parent and a child over it.
fn lab(root: &Path) {
    let base = root.join("vm1").join("base.vhdx");
    fs::create_dir_all(root.join("vm1")).unwrap();
    fs::create_dir_all(root.join("vm2")).unwrap();
    create(&base, &CreateParams::dynamic(4 << 20)).unwrap();
    fs::copy(&base, root.join("vm2").join("base.vhdx")).unwrap();
    for vm in ["vm1", "vm2"] {
        let folder = root.join(vm);
        let params = CreateParams::differencing(folder.join("base.vhdx"));
        create(folder.join("disk.avhdx"), &params).unwrap();
    }
}

/// Give `p` another modification time (its bytes unchanged).
fn touch(p: &Path) {
    let f = File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
}

fn opts() -> ShareOptions {
    ShareOptions {
        delete_copies: true,
        ..ShareOptions::default()
    }
}

#[test]
fn a_copy_written_after_the_plan_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path());
    let plan = plan_share(dir.path(), dir.path().join("shared"), &opts(), ()).unwrap();
    let g = &plan.groups[0];
    assert!(g.content_blake3.is_some());
    let copy = g.copies.iter().find(|c| c.delete).unwrap().path.clone();
    touch(&copy);
    let rep = apply_share(&plan, &opts(), ()).unwrap();
    assert_eq!(rep.children_repointed, 2);
    assert_eq!(rep.copies_deleted, 0, "{rep:?}");
    assert!(
        rep.kept
            .iter()
            .any(|k| k.path == copy && k.reason == NoteReason::ChangedSincePlan),
        "{rep:?}"
    );
    assert!(copy.exists());
}

#[test]
fn a_keeper_written_after_the_plan_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    lab(dir.path());
    let plan = plan_share(dir.path(), dir.path().join("shared"), &opts(), ()).unwrap();
    let g = &plan.groups[0];
    touch(&g.keeper_source);
    let rep = apply_share(&plan, &opts(), ()).unwrap();
    assert_eq!((rep.children_repointed, rep.copies_deleted), (0, 0));
    let failed = rep.failed.iter().find(|f| f.path == g.keeper).unwrap();
    assert!(
        failed.reason.to_string().contains("changed since the plan"),
        "{failed:?}"
    );
    assert!(!g.keeper.exists(), "nothing placed");
    // Untouched, the same plan's proof is used as is.
    let plan = plan_share(dir.path(), dir.path().join("shared"), &opts(), ()).unwrap();
    let rep = apply_share(&plan, &opts(), ()).unwrap();
    assert_eq!(
        (rep.children_repointed, rep.copies_deleted),
        (2, 1),
        "{rep:?}"
    );
}
