//! The durability barrier of batched changes really reaches the kernel: `FsBarrier::barrier`
//! makes one `syncfs` call per file system it covers. No in-process test can see a missing
//! sync (the data is in the page cache either way), so this test runs its own binary under
//! strace and counts the calls; the child run (the same test, told by an environment
//! variable) only builds and raises the barrier.

use std::path::{Path, PathBuf};
use std::process::Command;

use vhdkit::txn::barrier::{Barrier, FsBarrier};

const CHILD: &str = "VHDKIT_BARRIER_CHILD";

#[test]
fn a_barrier_makes_one_syncfs_per_file_system() {
    if let Some(disks) = std::env::var_os(CHILD) {
        let paths: Vec<PathBuf> = std::env::split_paths(&disks).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let b = FsBarrier::for_disks(&refs).unwrap();
        for _ in 0..3 {
            b.barrier().unwrap();
        }
        return;
    }
    if !cfg!(target_os = "linux") || !vhdkit_testkit::have_tool("strace", "syncfs count") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disks: Vec<PathBuf> = ["a.vhd", "b.vhd"]
        .iter()
        .map(|n| d.path().join(n))
        .collect();
    for p in &disks {
        std::fs::write(p, b"disk").unwrap();
    }
    let log = d.path().join("strace.log");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=syncfs", "-o"])
        .arg(&log)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_barrier_makes_one_syncfs_per_file_system",
            "--test-threads=1",
        ])
        .env(CHILD, std::env::join_paths(&disks).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "child: {out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = text.lines().filter(|l| l.contains("syncfs(")).collect();
    // Two disks in one folder, one file system: one call per barrier, three barriers.
    assert_eq!(calls.len(), 3, "{text}");
    assert!(calls.iter().all(|l| l.ends_with("= 0")), "{text}");
}
