//! Dry runs in sticky folders (`+t`, like `/tmp` or a shared drop folder), run as `nobody`: a
//! folder everyone may write still refuses to let one user unlink or replace another user's
//! file. `reparent --dry-run` and `share --dry-run` predict exactly what the real run then
//! meets, by the kernel's rule (the entry's owner, the folder's owner, or `CAP_FOWNER`), and
//! predict no refusal where the rule allows.

use std::os::unix::fs::{chown, MetadataExt};
use std::path::Path;

use crate::partial_trees::{as_nobody, chmod, nobody_available, s, snapshot, Lab, NOBODY};
use crate::util::Run;

fn journal_tmp(disk: &Path) -> std::path::PathBuf {
    vhdkit::sidefile::journal_tmp(disk)
}

/// A stale journal temporary file owned by `uid` beside `disk` (as if a killed run left it).
fn plant_tmp(disk: &Path, uid: u32) {
    let t = journal_tmp(disk);
    std::fs::write(&t, b"stale").unwrap();
    chown(&t, Some(uid), Some(uid)).unwrap();
}

fn says_sticky(r: &Run) -> bool {
    r.stdout.contains("sticky (+t)") || r.stderr.contains("sticky (+t)")
}

#[test]
fn reparent_dry_run_predicts_the_sticky_folder_rule() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    let vm1 = lab.vms().join("VM1");
    let child = vm1.join("vm.vhd");
    let other = lab.vms().join("VM2/ref.vhd");
    // The child is nobody's and the folder is world-writable, but sticky and root's; root's
    // stale temporary file sits at the journal's temporary name.
    chown(&vm1, Some(0), Some(0)).unwrap();
    chmod(&vm1, 0o1777);
    plant_tmp(&child, 0);
    let args = ["reparent", s(&child), "--parent", s(&other)];
    let before = std::fs::read(&child).unwrap();
    let dry = as_nobody(&[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(says_sticky(&dry), "{dry:?}");
    assert!(
        dry.stderr
            .contains("dry run: the real run would be refused"),
        "{dry:?}"
    );
    let real = as_nobody(&args);
    assert_ne!(real.code, 0, "the real run was not refused: {real:?}");
    assert_eq!(std::fs::read(&child).unwrap(), before, "the child changed");
    assert_eq!(
        std::fs::symlink_metadata(journal_tmp(&child))
            .unwrap()
            .uid(),
        0
    );

    // The entry's owner may: nobody's own stale file is replaced, dry run and real run agree.
    chown(journal_tmp(&child), Some(NOBODY), Some(NOBODY)).unwrap();
    let dry = as_nobody(&[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, 0, "{dry:?}");
    let real = as_nobody(&args);
    assert_eq!(real.code, 0, "{real:?}");
    assert_ne!(
        std::fs::read(&child).unwrap(),
        before,
        "the child did not change"
    );

    // The folder's owner may too: root's file in nobody's sticky folder.
    plant_tmp(&child, 0);
    chown(&vm1, Some(NOBODY), Some(NOBODY)).unwrap();
    let own = vm1.join("ref.vhd");
    let back = ["reparent", s(&child), "--parent", s(&own)];
    let dry = as_nobody(&[&back[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(as_nobody(&back).code, 0);
    assert!(
        !journal_tmp(&child).exists(),
        "the stale file was not replaced"
    );
}

#[test]
fn share_dry_run_predicts_a_copy_the_sticky_folder_keeps() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    let vm2 = lab.vms().join("VM2");
    let copy = vm2.join("ref.vhd");
    // A copy that root owns (readable by all) in root's sticky, world-writable folder: its
    // folder looks writable, yet nobody may not unlink it.
    for p in [&vm2, &copy] {
        chown(p, Some(0), Some(0)).unwrap();
    }
    chmod(&vm2, 0o1777);
    chmod(&copy, 0o644);
    let (v, sh) = (lab.vms(), lab.shared());
    let args = ["share", s(&v), "--into", s(&sh), "--delete-copies"];
    let before = snapshot(&lab.root);
    let dry = as_nobody(&[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(says_sticky(&dry), "{dry:?}");
    assert!(dry.stdout.contains(s(&copy)), "{dry:?}");
    assert_eq!(snapshot(&lab.root), before, "the dry run changed something");
    let real = as_nobody(&args);
    assert_eq!(real.code, 1, "{real:?}");
    assert!(copy.exists());
    // Refused as predicted (same reason), not a deletion that failed.
    assert!(says_sticky(&real), "{real:?}");
    assert!(!real.stdout.contains("deleting the copy"), "{real:?}");
}
