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

/// `fs.protected_hardlinks` as the kernel applies it (on when it cannot be read, the default).
fn protected_hardlinks() -> bool {
    std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").map_or(true, |v| v.trim() != "0")
}

fn dry(args: &[&str]) -> Run {
    as_nobody(&[args, &["--dry-run"]].concat())
}

#[test]
fn share_dry_run_predicts_the_kernel_refusing_a_hard_link() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    let v = lab.vms();
    // Both copies are root's and only readable by nobody: whichever becomes the keeper, moving
    // it takes a hard link the kernel refuses nobody (protected_hardlinks), although both
    // folders are nobody's.
    let copies = [v.join("VM1/ref.vhd"), v.join("VM2/ref.vhd")];
    for c in &copies {
        chown(c, Some(0), Some(0)).unwrap();
        chmod(c, 0o644);
    }
    let sh = lab.shared();
    let args = ["share", s(&v), "--into", s(&sh), "--delete-copies"];
    let before = snapshot(&lab.root);
    let d = dry(&args);
    assert_eq!(snapshot(&lab.root), before, "the dry run changed something");
    let real = as_nobody(&args);
    if protected_hardlinks() {
        assert_eq!(d.code, 1, "{d:?}");
        assert!(
            d.stdout.contains("cannot be hard-linked into SHARED"),
            "{d:?}"
        );
        assert!(
            d.stdout.contains("REFUSED: the keeper cannot be placed"),
            "{d:?}"
        );
        // Refused as predicted (same reason), before anything was written or linked.
        assert_eq!(real.code, 1, "{real:?}");
        assert!(
            real.stdout.contains("cannot be hard-linked into SHARED"),
            "{real:?}"
        );
        assert!(!real.stdout.contains("FAILED"), "{real:?}");
        assert_eq!(
            snapshot(&lab.root),
            before,
            "the refused run changed something"
        );
    } else {
        assert_eq!(d.code, 0, "{d:?}");
        assert_eq!(real.code, 0, "{real:?}");
        return;
    }

    // Writable by nobody as well: the kernel allows the link, and the dry run says so.
    for c in &copies {
        chmod(c, 0o666);
    }
    let d = dry(&args);
    assert_eq!(d.code, 0, "{d:?}");
    assert!(!d.stdout.contains("REFUSED"), "{d:?}");
    let real = as_nobody(&args);
    assert_eq!(real.code, 0, "{real:?}");
    assert!(copies.iter().all(|c| !c.exists()), "{real:?}");
    assert_eq!(std::fs::metadata(sh.join("ref.vhd")).unwrap().uid(), 0);
}

#[test]
fn share_dry_run_predicts_old_names_and_symlinks_the_sticky_folder_keeps() {
    if !nobody_available() {
        return;
    }
    let lab = Lab::new();
    let v = lab.vms();
    // Both parent copies are root's, readable and writable by all (so nobody may link them),
    // each in a sticky folder of root's: the moved keeper's old name and the other copy cannot
    // be removed by nobody. A root-owned symlink to a copy sits in a third such folder.
    let copies = [v.join("VM1/ref.vhd"), v.join("VM2/ref.vhd")];
    for c in &copies {
        let dir = c.parent().unwrap();
        chown(dir, Some(0), Some(0)).unwrap();
        chmod(dir, 0o1777);
        chown(c, Some(0), Some(0)).unwrap();
        chmod(c, 0o666);
    }
    let vm3 = v.join("VM3");
    std::fs::create_dir(&vm3).unwrap();
    chmod(&vm3, 0o1777);
    let link = vm3.join("ref.vhd");
    std::os::unix::fs::symlink("../VM1/ref.vhd", &link).unwrap();
    let sh = lab.shared();
    let args = ["share", s(&v), "--into", s(&sh), "--delete-copies"];
    let before = snapshot(&lab.root);
    let d = dry(&args);
    assert_eq!(snapshot(&lab.root), before, "the dry run changed something");
    assert_eq!(d.code, 1, "{d:?}");
    let kept = |r: &Run, p: &Path| {
        r.stdout
            .contains(&format!("name kept: {} (not deleted:", p.display()))
            || r.stdout.contains(&format!("copy: {}", p.display()))
    };
    assert!(copies.iter().all(|c| kept(&d, c)), "{d:?}");
    assert!(kept(&d, &link), "{d:?}");
    assert!(
        d.stdout.matches("sticky (+t)").count() >= 3,
        "every name predicted refused: {d:?}"
    );
    assert!(
        !d.stdout.contains("old name removed after the move"),
        "{d:?}"
    );

    // The real run repoints every child (nothing else stops it) and tries none of the names it
    // cannot remove: each is reported refused, not failed, and is left as it was.
    let real = as_nobody(&args);
    assert_eq!(real.code, 1, "{real:?}");
    assert!(real.stdout.contains("2 children repointed"), "{real:?}");
    assert!(!real.stdout.contains("FAILED"), "{real:?}");
    assert!(real.stdout.matches("sticky (+t)").count() >= 3, "{real:?}");
    let after = snapshot(&lab.root);
    for p in copies.iter().chain([&link]) {
        assert_eq!(after.get(p), before.get(p), "{} changed", p.display());
    }
}
