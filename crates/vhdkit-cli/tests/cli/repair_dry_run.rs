//! `repair --dry-run` predicts what the real `repair` refuses, run as `nobody`: the real run
//! writes a VHD change through a journal beside the disk (a folder that refuses new files, a
//! sticky folder holding another user's file at the journal's names) and takes the writers'
//! lock (a file it cannot open for writing). Each case runs both: a dry run that says refused
//! means a real run that refuses and leaves every file byte- and mtime-identical; a dry run
//! that says nothing is in the way means a real run that repairs. A file with nothing to
//! repair is never refused for what it would need to be written.
//!
//! To extend: add an obstacle to [`OBSTACLES`] (how to plant it beside the disk, a phrase of
//! the refusal, how to lift it).

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use crate::partial_trees::{as_nobody, chmod, nobody_available, s, snapshot, NOBODY};
use crate::util::*;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

const PID: [u8; 16] = *b"repair-dry-run!!";

/// A folder `vm` (nobody's) under a tempdir, with a parent and a child whose second locator is
/// dead: `repair` drops it, through the journal beside the child.
fn lab() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tmp();
    chmod(t.path(), 0o755);
    let dir = t.path().join("vm");
    std::fs::create_dir(&dir).unwrap();
    VhdBuilder::dynamic(4 << 20)
        .unique_id(PID)
        .build()
        .write_to(&dir.join("parent.vhd"));
    let child = dir.join("child.vhd");
    VhdBuilder::differencing(4 << 20, PID)
        .locator(Locator::w2ru(r".\parent.vhd"))
        .locator(Locator::wi2r(r".\elsewhere\parent.vhd"))
        .build()
        .write_to(&child);
    for p in [&dir, &dir.join("parent.vhd"), &child] {
        chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    (t, dir, child)
}

struct Obstacle {
    name: &'static str,
    /// A phrase of the refusal both runs give.
    reason: &'static str,
    plant: fn(&Path, &Path),
    lift: fn(&Path, &Path),
}

fn journal_tmp(child: &Path) -> PathBuf {
    vhdkit::sidefile::journal_tmp(child)
}

const OBSTACLES: &[Obstacle] = &[
    Obstacle {
        name: "a folder that refuses new files",
        reason: "does not allow creating or removing files",
        plant: |dir, _| chown(dir, Some(0), Some(0)).unwrap(),
        lift: |dir, _| chown(dir, Some(NOBODY), Some(NOBODY)).unwrap(),
    },
    Obstacle {
        name: "another user's stale journal file in a sticky folder",
        reason: "sticky (+t)",
        plant: |dir, child| {
            chown(dir, Some(0), Some(0)).unwrap();
            chmod(dir, 0o1777);
            std::fs::write(journal_tmp(child), b"stale").unwrap();
        },
        lift: |_, child| std::fs::remove_file(journal_tmp(child)).unwrap(),
    },
    Obstacle {
        name: "a disk it cannot open for writing",
        reason: "cannot be opened for writing",
        plant: |_, child| chown(child, Some(0), Some(0)).unwrap(),
        lift: |_, child| chown(child, Some(NOBODY), Some(NOBODY)).unwrap(),
    },
];

#[test]
fn repair_dry_run_predicts_every_refusal_of_the_real_run() {
    if !nobody_available() {
        return;
    }
    for o in OBSTACLES {
        let (_t, dir, child) = lab();
        (o.plant)(&dir, &child);
        let before = snapshot(&dir);
        let dry = as_nobody(&["repair", "--dry-run", s(&child)]);
        assert_eq!(dry.code, 1, "{}: {dry:?}", o.name);
        assert!(dry.stderr.contains(o.reason), "{}: {dry:?}", o.name);
        assert!(
            dry.stderr
                .contains("dry run: the real run would be refused"),
            "{}: {dry:?}",
            o.name
        );
        assert_eq!(snapshot(&dir), before, "{}: the dry run wrote", o.name);
        let real = as_nobody(&["repair", s(&child)]);
        assert_eq!(real.code, 1, "{}: {real:?}", o.name);
        assert!(real.stderr.contains(o.reason), "{}: {real:?}", o.name);
        assert_eq!(snapshot(&dir), before, "{}: the refused run wrote", o.name);

        (o.lift)(&dir, &child);
        let dry = as_nobody(&["repair", "--dry-run", s(&child)]);
        assert_eq!(dry.code, 0, "{} lifted: {dry:?}", o.name);
        assert!(dry.stdout.contains("would drop locator"), "{dry:?}");
        let h = sha256_file(&child);
        let real = as_nobody(&["repair", s(&child)]);
        assert_eq!(real.code, 0, "{} lifted: {real:?}", o.name);
        assert_ne!(sha256_file(&child), h, "{} lifted: not repaired", o.name);
        assert_eq!(run(["check", s(&child)]).code, 0);
    }
}

/// A disk with nothing to repair needs no lock: read-only (even to root, which vhdkit does
/// not override) it is examined, and the dry run and the real run agree.
#[test]
fn nothing_to_repair_is_never_refused_for_a_read_only_file() {
    let t = tmp();
    for name in ["clean.vhd", "clean.vhdx"] {
        let p = t.path().join(name);
        run_success(["create", s(&p), "--size", "8M"]);
        chmod(&p, 0o444);
        let h = sha256_file(&p);
        let dry = run(["repair", "--dry-run", s(&p)]);
        let real = run(["repair", s(&p)]);
        assert_eq!((dry.code, real.code), (0, 0), "{name}: {dry:?} {real:?}");
        assert_eq!(sha256_file(&p), h);
    }
    // With something to repair, both refuse the read-only file.
    let (_t, _dir, child) = lab();
    chmod(&child, 0o444);
    let h = sha256_file(&child);
    let dry = run(["repair", "--dry-run", s(&child)]);
    let real = run(["repair", s(&child)]);
    assert_eq!((dry.code, real.code), (1, 1), "{dry:?} {real:?}");
    assert!(dry.stderr.contains("read-only"), "{dry:?}");
    assert!(real.stderr.contains("read-only"), "{real:?}");
    assert_eq!(sha256_file(&child), h);
}

/// A change interrupted by a crash (as root), its journal beside the child: the disk
/// half-written, the journal root's.
fn crash_leaving_a_journal(child: &Path, new_parent: &Path) {
    use vhdkit::txn::fault::{FaultPlan, FaultyFile, MemJournal};
    use vhdkit::txn::journal::JournalStore;
    let opts = vhdkit::reparent::ReparentOptions {
        new_parent: new_parent.to_path_buf(),
        ..Default::default()
    };
    let plan = vhdkit::reparent::plan(child, &opts).unwrap();
    let fp = FaultPlan::new(Some(3));
    let f = FaultyFile::new(std::fs::read(child).unwrap(), fp.clone());
    let j = MemJournal::new(fp);
    assert!(vhdkit::reparent::apply_to(&f, &j, &plan).is_err());
    std::fs::write(child, f.contents_all_written()).unwrap();
    let journal = vhdkit::sidefile::journal(child);
    std::fs::write(&journal, j.load().unwrap().unwrap()).unwrap();
}

/// Finishing an interrupted change ends in removing its journal: where the folder will not
/// let it go, `repair` and `reparent` refuse before rolling anything forward, as their dry
/// runs say; once it may, both agree again.
#[test]
fn a_pending_journal_that_cannot_be_removed_is_refused_before_any_write() {
    if !nobody_available() {
        return;
    }
    let (_t, dir, child) = lab();
    let copy = dir.join("copy.vhd");
    std::fs::copy(dir.join("parent.vhd"), &copy).unwrap();
    chown(&copy, Some(NOBODY), Some(NOBODY)).unwrap();
    crash_leaving_a_journal(&child, &copy);
    chown(&dir, Some(0), Some(0)).unwrap();
    let before = snapshot(&dir);
    let parent = dir.join("parent.vhd");
    let reparent = ["reparent", s(&child), "--parent", s(&parent)];
    let runs: [&[&str]; 2] = [&["repair", s(&child)], &reparent];
    for args in runs {
        let dry = as_nobody(&[args, &["--dry-run"]].concat());
        assert_eq!(dry.code, 1, "{dry:?}");
        assert!(dry.stderr.contains("does not allow creating"), "{dry:?}");
        let real = as_nobody(args);
        assert_eq!(real.code, 1, "{real:?}");
        assert!(real.stderr.contains("does not allow creating"), "{real:?}");
        assert_eq!(snapshot(&dir), before, "{args:?}: the refused run wrote");
    }
    chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let dry = as_nobody(&["repair", "--dry-run", s(&child)]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains("would finish the interrupted change"),
        "{dry:?}"
    );
    let real = as_nobody(&["repair", s(&child)]);
    assert_eq!(real.code, 0, "{real:?}");
    assert!(!vhdkit::sidefile::journal(&child).exists());
    assert_eq!(run(["chain", s(&child)]).code, 0);
}
