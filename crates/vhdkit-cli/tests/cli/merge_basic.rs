//! `vhdkit merge` through the real binary: the dry run (text and `--json` shape, nothing
//! written), the real run (the ancestor reads what the child read, the child is gone,
//! `check` clean), and the refusal of a merge that would change a sibling (exit 1, one line,
//! nothing written).

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::{vhd_pair, vhdx_pair};
use vhdkit_testkit::kill;
use vhdkit_testkit::snapshot::Snapshot;

use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn round_trip(pair: fn(&Path) -> (PathBuf, PathBuf), format: &str) {
    let d = tmp();
    let (base, child) = pair(d.path());
    let sha = virtual_sha(&child);
    let snap = Snapshot::tree(d.path());
    let r = run_success(["merge", "--dry-run", "--json", s(&child)]);
    let j = r.json();
    assert_eq!(j["applied"], false);
    let plan = &j["plan"];
    assert_eq!(plan["child"].as_str().unwrap(), s(&child));
    assert_eq!(plan["ancestor"].as_str().unwrap(), s(&base));
    assert_eq!(plan["format"], format);
    assert_eq!(plan["merged"], serde_json::json!([s(&child)]));
    assert_eq!(plan["resuming"], false);
    assert!(plan["bytes_to_copy"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["blocks"].as_u64().unwrap() > 0, "{plan}");
    let changes = plan["changes"].as_array().unwrap();
    if format == "vhdx" {
        let fields: Vec<_> = changes
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["parent_linkage2", "DataWriteGuid"], "{plan}");
    } else {
        assert!(changes.is_empty(), "{plan}");
    }
    snap.assert_unchanged("dry run");
    let r = run_success(["merge", "--dry-run", s(&child)]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    assert!(
        r.stdout.contains("deleted once the merged chain verifies"),
        "{r:?}"
    );
    snap.assert_unchanged("text dry run");
    let r = run_success(["merge", "--json", s(&child)]);
    let j = r.json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["report"]["bytes_copied"], plan["bytes_to_copy"], "{j}");
    assert_eq!(
        j["report"]["deleted"],
        serde_json::json!([s(&child)]),
        "{j}"
    );
    assert!(!child.exists());
    assert_eq!(virtual_sha(&base), sha);
    run_success(["check", s(&base)]);
}

#[test]
fn vhd_round_trip() {
    round_trip(vhd_pair, "vhd");
}

#[test]
fn vhdx_round_trip() {
    round_trip(vhdx_pair, "vhdx");
}

#[test]
fn a_sibling_is_refused_with_exit_1_and_nothing_written() {
    for pair in [vhd_pair as fn(&Path) -> (PathBuf, PathBuf), vhdx_pair] {
        let d = tmp();
        let (_, child) = pair(d.path());
        let sib = d.path().join("sibling.bin.vhd");
        std::fs::copy(&child, &sib).unwrap();
        let sib = if child.extension().unwrap() == "avhdx" {
            let x = d.path().join("sibling.avhdx");
            std::fs::rename(&sib, &x).unwrap();
            x
        } else {
            sib
        };
        let snap = Snapshot::tree(d.path());
        for dry in [true, false] {
            let mut args = vec!["merge", s(&child)];
            if dry {
                args.push("--dry-run");
            }
            let r = run(&args);
            assert_eq!(r.code, 1, "{r:?}");
            assert!(r.stderr.contains(s(&sib)), "{r:?}");
            assert_eq!(r.stderr.trim_end().lines().count(), 1, "{r:?}");
            let r = run(["merge", "--json", s(&child)]);
            assert_eq!(r.code, 1, "{r:?}");
            assert_eq!(r.json()["kind"], "refused", "{r:?}");
        }
        snap.assert_unchanged("sibling refusal");
    }
}

const TRACED: &str =
    "write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat";

/// Kill the process at every traced call in turn: while CHILD exists it reads the same; a
/// rerun of the same command finishes (or there was nothing left), and ANCESTOR then reads
/// what CHILD read, with no record left.
fn kill_case(pair: fn(&Path) -> (PathBuf, PathBuf)) {
    if !have_tool("strace", "process-kill crash test") {
        return;
    }
    let d = tmp();
    let (base, child) = pair(d.path());
    let (old_base, old_child) = (
        std::fs::read(&base).unwrap(),
        std::fs::read(&child).unwrap(),
    );
    let sha = virtual_sha(&child);
    let record = PathBuf::from(format!("{}.vhdkit-merge", base.display()));
    let bin = Path::new(env!("CARGO_BIN_EXE_vhdkit"));
    let args = ["merge", s(&child)];
    let fresh = || {
        std::fs::write(&base, &old_base).unwrap();
        std::fs::write(&child, &old_child).unwrap();
        for e in std::fs::read_dir(d.path()).unwrap() {
            let p = e.unwrap().path();
            if p.to_str().unwrap().contains(".vhdkit-") {
                std::fs::remove_file(p).unwrap();
            }
        }
    };
    let counts = kill::count_syscalls(bin, &args, TRACED, &d.path().join("strace.log"));
    eprintln!("syscalls of one merge: {counts:?}");
    let mut child_gone = 0;
    let after_kill = |name: &str, k: usize| {
        if child.exists() {
            assert_eq!(virtual_sha(&child), sha, "{name}#{k}: CHILD changed");
        } else {
            child_gone += 1;
        }
        if child.exists() || record.exists() {
            run_success(args);
        }
        assert!(!child.exists(), "{name}#{k}");
        assert!(!record.exists(), "{name}#{k}: record left");
        assert_eq!(virtual_sha(&base), sha, "{name}#{k}: after the rerun");
    };
    let done = |name: &str| assert!(!child.exists(), "{name}: past the last point");
    let all = |n: usize| (1..=n).collect();
    let runs = kill::every_point(bin, &args, &counts, all, fresh, after_kill, done);
    eprintln!("process kills: {runs} runs, CHILD already gone in {child_gone}");
    assert!(runs > 10 && child_gone > 0);
}

#[test]
fn vhd_process_kill_at_every_syscall() {
    kill_case(vhd_pair);
}

#[test]
fn vhdx_process_kill_at_every_syscall() {
    kill_case(vhdx_pair);
}
