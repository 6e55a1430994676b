//! Hostile side files: every kind of object ([`Plant`]) planted at every name vhdkit reads or
//! creates beside a disk (the journal, the journal's temporary name, a stale partial output,
//! and the parent's own path),
//! against every command, each run under a watchdog. Readers warn and finish; writers refuse
//! (exit 1, one line) before writing; nothing behind a link is ever read or written.

use std::path::Path;

use crate::hostile::*;

const SECS: u64 = 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn journal(disk: &Path) -> std::path::PathBuf {
    let mut n = disk.as_os_str().to_owned();
    n.push(".vhdkit-journal");
    n.into()
}

fn journal_tmp(disk: &Path) -> std::path::PathBuf {
    let mut n = journal(disk).into_os_string();
    n.push(".tmp");
    n.into()
}

/// Something planted at the journal's name: readers finish with a warning, `check` reports the
/// journal code, writers refuse before writing and leave the planted object alone.
fn at_journal(kind: Plant) {
    let lab = lab();
    let Some(mut p) = plant(kind, &journal(&lab.child1), &lab) else {
        return;
    };
    let child_before = bytes(&lab.child1);
    let out = lab.dir.path().join("out.vhd");
    let readers: [(&str, Vec<&str>); 4] = [
        ("info", vec!["info", s(&lab.child1)]),
        ("info --json", vec!["info", "--json", s(&lab.child1)]),
        ("chain", vec!["chain", s(&lab.child1)]),
        (
            "convert",
            vec!["convert", "--to", "vhd", s(&lab.child1), s(&out)],
        ),
    ];
    for (what, args) in readers {
        let r = run_within(SECS, args);
        assert_eq!(r.code, 0, "{kind:?} {what}: {r:?}");
        assert!(
            r.stdout.contains("journal") || r.stderr.contains("journal"),
            "{kind:?} {what}: no warning about the journal: {r:?}"
        );
        p.assert_untouched(&lab, &format!("{kind:?} {what}"));
    }
    let code = match kind {
        Plant::Sparse1T => Some("file.journal_too_large"),
        Plant::HardLink => None,
        _ => Some("file.journal_not_regular"),
    };
    for (what, target) in [("check FILE", &lab.child1), ("check DIR", &lab.vms)] {
        let r = run_within(SECS, ["check", s(target)]);
        if let Some(code) = code {
            assert_eq!(r.code, 1, "{kind:?} {what}: {r:?}");
            assert!(r.stdout.contains(code), "{kind:?} {what}: no {code}: {r:?}");
        } else {
            assert!(r.code <= 1, "{kind:?} {what}: {r:?}");
        }
        p.assert_untouched(&lab, &format!("{kind:?} {what}"));
    }
    let writers: [(&str, Vec<&str>); 4] = [
        (
            "reparent",
            vec!["reparent", s(&lab.child1), "--parent", s(&lab.base2)],
        ),
        ("repair", vec!["repair", s(&lab.child1)]),
        (
            "share",
            vec!["share", s(&lab.vms), "--into", s(&lab.shared)],
        ),
        ("relink", vec!["relink", s(&lab.vms)]),
    ];
    for (what, args) in writers {
        let r = run_within(SECS, args);
        // share and relink go on with the other disks and say which one they refused.
        assert_eq!(r.code, 1, "{kind:?} {what}: {r:?}");
        if matches!(what, "reparent") {
            assert_one_line(&r, &format!("{kind:?} {what}"));
        }
        assert!(
            bytes(&lab.child1) == child_before,
            "{kind:?} {what}: the child was written"
        );
        p.assert_untouched(&lab, &format!("{kind:?} {what}"));
        p.assert_still_there(&format!("{kind:?} {what}"));
    }
}

/// Something planted at the journal's temporary name: never read, never written through; the
/// writer replaces the name with its own file and goes on.
fn at_journal_tmp(kind: Plant) {
    let lab0 = lab();
    let Some(mut p) = plant(kind, &journal_tmp(&lab0.child1), &lab0) else {
        return;
    };
    for (what, args) in [
        ("info", vec!["info", s(&lab0.child1)]),
        ("chain", vec!["chain", s(&lab0.child1)]),
        ("check", vec!["check", s(&lab0.vms)]),
    ] {
        let r = run_within(SECS, args);
        assert_eq!(r.code, 0, "{kind:?} {what}: {r:?}");
        p.assert_untouched(&lab0, &format!("{kind:?} {what}"));
    }
    drop(lab0);
    for what in ["reparent", "share"] {
        let lab = lab();
        let Some(mut p) = plant(kind, &journal_tmp(&lab.child1), &lab) else {
            return;
        };
        let child_before = bytes(&lab.child1);
        let r = match what {
            "reparent" => run_within(
                SECS,
                ["reparent", s(&lab.child1), "--parent", s(&lab.base2)],
            ),
            _ => run_within(SECS, ["share", s(&lab.vms), "--into", s(&lab.shared)]),
        };
        p.assert_untouched(&lab, &format!("{kind:?} {what}"));
        if kind == Plant::Folder {
            // A folder cannot be replaced by a file: the change is refused, nothing written.
            assert_ne!(r.code, 0, "{kind:?} {what}: {r:?}");
            assert!(
                bytes(&lab.child1) == child_before,
                "{kind:?} {what}: child written"
            );
            continue;
        }
        assert_eq!(r.code, 0, "{kind:?} {what}: {r:?}");
        assert!(
            bytes(&lab.child1) != child_before,
            "{kind:?} {what}: nothing done"
        );
        assert!(
            std::fs::symlink_metadata(journal_tmp(&lab.child1)).is_err()
                && std::fs::symlink_metadata(journal(&lab.child1)).is_err(),
            "{kind:?} {what}: a journal name is left"
        );
        let c = run_within(SECS, ["check", "--chain", s(&lab.child1)]);
        assert_eq!(c.code, 0, "{kind:?} {what}: the child is not clean: {c:?}");
    }
}

/// Something planted at a stale partial-output name (a dead pid) of `convert` and `create`:
/// a regular file there is a leftover and removed; anything else is left alone; the outputs
/// are made either way.
fn at_stale_partial(kind: Plant) {
    let lab = lab();
    let dir = lab.dir.path();
    let planted: Vec<Planted> = ["out.vhd", "new.vhdx"]
        .iter()
        .filter_map(|n| {
            // This host's name for a dead pid (pid_max is at most 2^22).
            plant(
                kind,
                &vhdkit::sidefile::partial_output_of(&dir.join(n), 4_999_999),
                &lab,
            )
        })
        .collect();
    if planted.len() < 2 {
        return;
    }
    let out = dir.join("out.vhd");
    let new = dir.join("new.vhdx");
    if kind.is_regular() {
        let r = run_within(SECS, ["check", s(dir)]);
        assert!(
            r.stdout.contains("file.partial_output.stale"),
            "{kind:?}: check does not report the leftover: {r:?}"
        );
    }
    for (what, args) in [
        (
            "convert",
            vec!["convert", "--to", "vhd", s(&lab.child1), s(&out)],
        ),
        ("create", vec!["create", s(&new), "--size", "16M"]),
    ] {
        let r = run_within(SECS, args);
        assert_eq!(r.code, 0, "{kind:?} {what}: {r:?}");
    }
    for mut p in planted {
        p.assert_untouched(&lab, &format!("{kind:?} partial"));
        if kind.is_regular() {
            assert!(!p.path.exists(), "{kind:?}: the leftover was not removed");
        } else {
            p.assert_still_there(&format!("{kind:?} partial"));
        }
    }
    for o in [&out, &new] {
        let r = run_within(SECS, ["check", s(o)]);
        assert_eq!(r.code, 0, "{kind:?}: {} is not clean: {r:?}", o.display());
    }
}

/// The parent itself replaced by a planted object: readers never block on it or read through
/// it; the chain is reported broken (a link to an identical copy of the parent is followed).
fn at_the_parent(kind: Plant) {
    let lab = lab();
    std::fs::remove_file(&lab.base1).unwrap();
    let Some(mut p) = plant(kind, &lab.base1, &lab) else {
        return;
    };
    let want = if kind == Plant::LinkDisk { 0 } else { 1 };
    for (what, args) in [
        ("chain", vec!["chain", s(&lab.child1)]),
        ("check --chain", vec!["check", "--chain", s(&lab.child1)]),
    ] {
        let r = run_within(SECS, args);
        assert_eq!(r.code, want, "{kind:?} {what}: {r:?}");
        p.assert_untouched(&lab, &format!("{kind:?} parent {what}"));
    }
    let r = run_within(SECS, ["info", s(&lab.child1)]);
    assert_eq!(r.code, 0, "{kind:?} info: {r:?}");
    p.assert_untouched(&lab, &format!("{kind:?} parent info"));
}

macro_rules! matrix {
    ($($name:ident => $kind:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;
                #[test]
                fn at_the_journal() {
                    at_journal($kind);
                }
                #[test]
                fn at_the_journal_tmp() {
                    at_journal_tmp($kind);
                }
                #[test]
                fn at_the_parent_path() {
                    at_the_parent($kind);
                }
                #[test]
                fn at_a_stale_partial_output() {
                    at_stale_partial($kind);
                }
            }
        )*
    };
}

matrix! {
    link_outside => Plant::LinkOutside,
    link_to_disk => Plant::LinkDisk,
    link_to_folder => Plant::LinkDir,
    link_to_dev_zero => Plant::LinkDevZero,
    link_to_dev_urandom => Plant::LinkUrandom,
    dangling_link => Plant::Dangling,
    fifo => Plant::Fifo,
    char_device => Plant::CharDev,
    socket => Plant::Socket,
    folder => Plant::Folder,
    hard_link => Plant::HardLink,
    sparse_1tib => Plant::Sparse1T,
}

/// A failed final rename (a folder at the output's name, `--force`) leaves no partial output.
#[test]
fn failed_rename_leaves_no_partial_output() {
    let lab = lab();
    let out_dir = lab.dir.path().join("out");
    for to in ["raw", "vhd", "vhdx"] {
        let dst = out_dir.join(format!("x.{to}"));
        std::fs::create_dir_all(&dst).unwrap();
        let r = run_within(
            SECS,
            ["convert", "--force", "--to", to, s(&lab.child1), s(&dst)],
        );
        assert_eq!(r.code, 2, "{to}: {r:?}");
        assert_one_line(&r, to);
        let names: Vec<_> = std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("vhdkit-partial"))
            .collect();
        assert!(names.is_empty(), "{to}: left {names:?}");
    }
}

/// A `convert` killed before its output got its name (SIGKILL at its first `fsync`, through
/// strace) leaves a partial output named with its dead pid: `check` reports it as stale, and
/// the next run on the same output removes it.
#[test]
fn killed_convert_leftover_is_reported_then_removed_by_the_next_run() {
    if !vhdkit_testkit::have_tool("strace", "the kill is injected through strace") {
        return;
    }
    let lab = lab();
    let dir = lab.dir.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    let out = dir.join("x.vhd");
    let o = vhdkit_testkit::kill::run_with_kill(
        std::path::Path::new(env!("CARGO_BIN_EXE_vhdkit")),
        &["convert", "--to", "vhd", s(&lab.child1), s(&out)],
        "fsync,fdatasync",
        1,
    );
    assert!(
        vhdkit_testkit::kill::died_of_sigkill(&o),
        "the convert was not killed at its first sync: {o:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(s(&left[0]).contains(".x.vhd.vhdkit-partial-"), "{left:?}");
    let r = run_within(SECS, ["check", s(&dir)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("file.partial_output.stale"), "{r:?}");
    let r = run_within(SECS, ["convert", "--to", "vhd", s(&lab.child1), s(&out)]);
    assert_eq!(r.code, 0, "{r:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["x.vhd"], "the leftover was not removed");
}
