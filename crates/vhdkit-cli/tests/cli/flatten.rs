//! `vhdkit flatten` through the real binary: dry run (JSON, nothing written), apply (same
//! virtual contents, standalone, `check` clean, the parent untouched), a rerun, refusals (a
//! locked child, a broken chain; exit 1 or 2 as documented, nothing written), and a process
//! kill at every write, flush, resize, rename and unlink (strace fault injection), both formats.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::{vhd_pair, vhdx_pair};
use vhdkit_testkit::kill;
use vhdkit_testkit::mount::{free_bytes, Tmpfs};
use vhdkit_testkit::snapshot::Snapshot;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};

use crate::util::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 4 * MIB;
const TRACED: &str =
    "write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn disk_type(p: &Path) -> String {
    run_success(["info", "--json", s(p)]).json()["disk_type"]
        .as_str()
        .unwrap()
        .to_string()
}

fn round_trip(pair: fn(&Path) -> (PathBuf, PathBuf)) {
    let d = tmp();
    let (base, child) = pair(d.path());
    let sha = virtual_sha(&child);
    let base_sha = sha256_file(&base);
    // The dry run: the plan, nothing written.
    let snap = Snapshot::tree(d.path());
    let r = run_success(["flatten", "--dry-run", "--json", s(&child)]);
    let j = r.json();
    assert_eq!(j["applied"], false);
    let plan = &j["plan"];
    assert_eq!(plan["already_standalone"], false);
    assert!(plan["bytes_to_copy"].as_u64().unwrap() > 0, "{plan}");
    assert!(plan["partial_blocks"].as_u64().unwrap() > 0, "{plan}");
    assert_eq!(plan["parents"][0].as_str().unwrap(), s(&base));
    assert!(!plan["unlink"].as_array().unwrap().is_empty());
    snap.assert_unchanged("dry run");
    let r = run_success(["flatten", "--dry-run", s(&child)]);
    assert!(r.stdout.contains("dry run: nothing written"), "{r:?}");
    // The real run.
    let r = run_success(["flatten", "--json", s(&child)]);
    let j = r.json();
    assert_eq!(j["applied"], true);
    assert_eq!(j["report"]["bytes_copied"], plan["bytes_to_copy"], "{j}");
    assert_eq!(disk_type(&child), "dynamic");
    assert_eq!(virtual_sha(&child), sha);
    assert_eq!(sha256_file(&base), base_sha, "the parent changed");
    run_success(["check", s(&child)]);
    // Standalone now: the parent can go.
    std::fs::remove_file(&base).unwrap();
    assert_eq!(virtual_sha(&child), sha);
    // A rerun has nothing to do.
    let r = run_success(["flatten", "--json", s(&child)]);
    assert_eq!(r.json()["report"]["already_standalone"], true);
    let r = run_success(["flatten", s(&child)]);
    assert!(r.stdout.contains("standalone already"), "{r:?}");
}

#[test]
fn vhd_round_trip() {
    round_trip(vhd_pair);
}

#[test]
fn vhdx_round_trip() {
    round_trip(vhdx_pair);
}

#[test]
fn refusals_write_nothing() {
    let d = tmp();
    let (base, child) = vhd_pair(d.path());
    let snap = Snapshot::tree(d.path());
    // Locked by another writer: exit 1, kind locked, dry run too.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&child)
        .unwrap();
    f.try_lock().unwrap();
    for dry in [false, true] {
        let mut args = vec!["flatten", "--json", s(&child)];
        if dry {
            args.push("--dry-run");
        }
        let r = run(&args);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.json()["kind"], "locked", "{r:?}");
    }
    drop(f);
    snap.assert_unchanged("locked");
    // The parent is missing: the chain does not resolve (exit 2, parent_not_found).
    let moved = d.path().join("moved.vhd");
    std::fs::rename(&base, &moved).unwrap();
    let snap = Snapshot::tree(d.path());
    let r = run(["flatten", "--json", s(&child)]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(r.json()["kind"], "parent_not_found", "{r:?}");
    snap.assert_unchanged("broken chain");
    // Found again with --search.
    std::fs::create_dir(d.path().join("elsewhere")).unwrap();
    std::fs::rename(&moved, d.path().join("elsewhere/base.vhd")).unwrap();
    let r = run_success([
        "flatten",
        "--dry-run",
        "--search",
        s(&d.path().join("elsewhere")),
        s(&child),
    ]);
    assert!(r.stdout.contains("elsewhere"), "{r:?}");
}

/// Kill the process at every traced call in turn: after each kill the child reads the same
/// (through its chain while it is still differencing), and a rerun completes; past the last
/// point the run completes.
fn kill_case(pair: fn(&Path) -> (PathBuf, PathBuf)) {
    if !have_tool("strace", "process-kill crash test") {
        return;
    }
    let d = tmp();
    let (_, child) = pair(d.path());
    let old = std::fs::read(&child).unwrap();
    let sha = virtual_sha(&child);
    let journal = PathBuf::from(format!("{}.vhdkit-journal", child.display()));
    let bin = Path::new(env!("CARGO_BIN_EXE_vhdkit"));
    let args = ["flatten", s(&child)];
    let fresh = || {
        std::fs::write(&child, &old).unwrap();
        if journal.exists() {
            std::fs::remove_file(&journal).unwrap();
        }
    };
    let counts = kill::count_syscalls(bin, &args, TRACED, &d.path().join("strace.log"));
    eprintln!("syscalls of one flatten: {counts:?}");
    assert!(
        counts.get("pwrite64").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
    let mut ended_standalone = 0;
    let after_kill = |name: &str, k: usize| {
        assert_eq!(virtual_sha(&child), sha, "{name}#{k}: contents changed");
        ended_standalone += usize::from(disk_type(&child) == "dynamic");
        run_success(["flatten", s(&child)]);
        assert_eq!(disk_type(&child), "dynamic", "{name}#{k}");
        assert!(!journal.exists(), "{name}#{k}: journal left");
        assert_eq!(virtual_sha(&child), sha, "{name}#{k}: after the rerun");
    };
    let done = |name: &str| {
        assert_eq!(disk_type(&child), "dynamic", "{name}: past the last point");
    };
    let all = |n: usize| (1..=n).collect();
    let runs = kill::every_point(bin, &args, &counts, all, fresh, after_kill, done);
    eprintln!("process kills: {runs} runs, {ended_standalone} already standalone");
    assert!(runs > 10 && ended_standalone > 0);
}

#[test]
fn vhd_process_kill_at_every_syscall() {
    kill_case(vhd_pair);
}

#[test]
fn vhdx_process_kill_at_every_syscall() {
    kill_case(vhdx_pair);
}

/// Not enough free space for the blocks to copy: refused before the first write (exit 1, the
/// child byte-identical), then done once there is room. Needs a small tmpfs (root).
#[test]
fn not_enough_free_space_is_refused_before_writing() {
    let Some(fs) = Tmpfs::mount("16m", "flatten free-space refusal") else {
        return;
    };
    let at = fs.at.clone();
    // The parent has data in every block, the child in its first only: 3 blocks to allocate.
    let mut base = VhdBuilder::dynamic(SIZE).block_size(MIB as u32);
    for b in 0..SIZE / MIB {
        base.write(b * MIB + 512, &[b as u8 + 1; 4096]);
    }
    let mut c = VhdBuilder::differencing(SIZE, base.id())
        .block_size(MIB as u32)
        .parent_name("base.vhd")
        .locator(Locator::w2ru(r".\base.vhd"));
    c.write(1024, &[9; 1024]);
    std::fs::write(at.join("base.vhd"), base.build().bytes).unwrap();
    let child = at.join("child.vhd");
    std::fs::write(&child, c.build().bytes).unwrap();
    let sha = virtual_sha(&child);
    let plan = run_success(["flatten", "--dry-run", "--json", s(&child)]).json();
    assert_eq!(plan["plan"]["whole_blocks"], 3, "{plan}");
    // Leave about 1 MiB free.
    let filler = at.join("filler");
    let free = free_bytes(&at);
    std::fs::write(&filler, vec![1u8; (free - (1 << 20)) as usize]).unwrap();
    let before = std::fs::read(&child).unwrap();
    let r = run(["flatten", "--json", s(&child)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["kind"], "refused", "{r:?}");
    assert!(r.stderr.contains("not enough free space"), "{r:?}");
    assert_eq!(std::fs::read(&child).unwrap(), before);
    std::fs::remove_file(&filler).unwrap();
    run_success(["flatten", s(&child)]);
    assert_eq!(disk_type(&child), "dynamic");
    assert_eq!(virtual_sha(&child), sha);
}
