//! `vhdkit resize` killed at its system calls (strace fault injection): SIGKILL at every write,
//! pwrite64, fsync, fdatasync, ftruncate, rename(at/at2) and unlink(at), and EIO returned by
//! every pwrite64, fsync, fdatasync and ftruncate, for a VHD differencing grow that moves blocks
//! and locator data out of the BAT's way, a fixed VHD grow, a VHDX differencing grow, and a
//! VHDX grow to 200 GiB that moves the BAT to a larger region, and a VHDX grow that first zeroes
//! stale bytes past the old end. After
//! each: the disk reads its old or its new size with the kept range unchanged and zeros after
//! it; a rerun completes; then `check` is clean and no journal is left.
//!
//! Every kill is proven (the process died of SIGKILL, or strace's log shows the injected EIO),
//! and a run with the injection one past the last counted call completes. CI runs every
//! `EVERY`th point (and the last) of each call; `VHDKIT_FULL_MATRIX=1` runs every point.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::{build_chain, sampled, ChainFormat};
use vhdkit_testkit::kill;
use vhdkit_testkit::through::{read_chain, read_chain_at};

use super::{s, write};
use crate::util::*;

const MIB: u64 = 1 << 20;
const NEW: u64 = 128 * MIB;
/// Past what a 1 MiB BAT region of 1 MiB blocks holds (128 GiB): the BAT moves.
const NEW_BIG: u64 = 200 << 30;
const TRACED: &str =
    "write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat";
const EIO_CALLS: [&str; 4] = ["pwrite64", "fsync", "fdatasync", "ftruncate"];
/// CI samples every `EVERY`th injection point of each call.
const EVERY: usize = 4;

#[derive(Debug, Clone, Copy)]
enum Case {
    VhdDifferencing,
    VhdFixed,
    VhdxDifferencing,
    VhdxBatMove,
    VhdxStaleTail,
}

/// The files restored before every run.
struct Fixture {
    dir: PathBuf,
    disk: PathBuf,
    files: Vec<PathBuf>,
    pristine: Vec<Vec<u8>>,
    before: Vec<u8>,
    args: Vec<String>,
    /// The size the resize gives.
    new: u64,
}

impl Fixture {
    fn new(root: &Path, case: Case) -> Fixture {
        let dir = root.join("vm");
        std::fs::create_dir(&dir).unwrap();
        let files = match case {
            Case::VhdDifferencing => vhd_pair(&dir),
            Case::VhdxDifferencing => {
                build_chain(&dir, ChainFormat::Vhdx(512), 4 * MIB, 1, 42).files
            }
            Case::VhdFixed => {
                let p = dir.join("fixed.vhd");
                run_success([
                    "create",
                    s(&p),
                    "--size",
                    "4M",
                    "--fixed",
                    "--format",
                    "vhd",
                ]);
                write(&p, 4 * MIB - 8192, &[0x42; 8192]);
                vec![p]
            }
            Case::VhdxStaleTail => vec![stale_tail(&dir)],
            Case::VhdxBatMove => {
                let p = dir.join("dyn.vhdx");
                run_success(["create", s(&p), "--size", "8M", "--block-size", "1M"]);
                write(&p, 3 * MIB - 4096, &[0x42; 8192]);
                write(&p, 8 * MIB - 4096, &[0x43; 4096]);
                vec![p]
            }
        };
        let new = match case {
            Case::VhdxBatMove => NEW_BIG,
            _ => NEW,
        };
        let disk = files.last().unwrap().clone();
        let args = vec![
            "resize".to_string(),
            s(&disk).to_string(),
            "--size".to_string(),
            new.to_string(),
        ];
        let pristine = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let before = read_chain(&disk);
        Fixture {
            dir,
            disk,
            files,
            pristine,
            before,
            args,
            new,
        }
    }

    /// Everything in the folder removed, the files written back as built.
    fn fresh(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (p, b) in self.files.iter().zip(&self.pristine) {
            std::fs::write(p, b).unwrap();
        }
    }

    /// The disk reads its old or its new size, the kept range unchanged, zeros after it.
    /// Returns whether it has the new size.
    #[track_caller]
    fn assert_old_or_new(&self, ctx: &str) -> bool {
        let n = self.before.len();
        if self.new > 1 << 30 {
            // Too large to read whole: the kept range, and samples of the grown one.
            let at = [0, n as u64, self.new / 2, self.new - MIB];
            let (size, reads) = read_chain_at(&self.disk, &at, n);
            assert!(size == n as u64 || size == self.new, "{ctx}: size {size}");
            assert!(reads[0] == self.before[..], "{ctx}: kept range changed");
            let zero = reads[1..].iter().flatten().all(|&b| b == 0);
            assert!(zero, "{ctx}: grown range not zero");
            return size == self.new;
        }
        let now = read_chain(&self.disk);
        assert!(
            now.len() == n || now.len() as u64 == self.new,
            "{ctx}: size {}",
            now.len()
        );
        assert!(now[..n] == self.before[..], "{ctx}: kept range changed");
        assert!(
            now[n..].iter().all(|&b| b == 0),
            "{ctx}: grown range not zero"
        );
        now.len() as u64 == self.new
    }

    #[track_caller]
    fn rerun_and_check(&self, ctx: &str) {
        let r = run(&self.args);
        assert_eq!(r.code, 0, "{ctx}: rerun: {r:?}");
        self.assert_done(ctx);
    }

    #[track_caller]
    fn assert_done(&self, ctx: &str) {
        assert!(self.assert_old_or_new(ctx), "{ctx}: not resized");
        let r = run(["check", "--chain", s(&self.disk)]);
        // A child larger than its parent is a chain warning (chain.size_mismatch), nothing else.
        let bad: Vec<&str> = r
            .stdout
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                (t.starts_with("warning") || t.starts_with("error")) && !l.contains("size_mismatch")
            })
            .collect();
        assert!(bad.is_empty() && r.code != 2, "{ctx}: check: {r:?}");
        let journal = PathBuf::from(format!("{}.vhdkit-journal", self.disk.display()));
        assert!(!journal.exists(), "{ctx}: journal left");
    }
}

/// A base and its child with small blocks: growing the child to [`NEW`] moves its first
/// blocks and its `W2ru` locator data out of the BAT's way.
fn vhd_pair(dir: &Path) -> Vec<PathBuf> {
    let (base, child) = (dir.join("base.vhd"), dir.join("child.vhd"));
    let bs = ["--block-size", "64K", "--format", "vhd"];
    run_success([&["create", s(&base), "--size", "4M"][..], &bs].concat());
    write(&base, 0, &[0x5a; 200_000]);
    // 4 KiB blocks: the grown BAT (128 KiB) reaches past the W2ru data into the blocks.
    let small = ["--block-size", "4K", "--format", "vhd"];
    run_success([&["create", s(&child), "--parent", s(&base)][..], &small].concat());
    write(&child, 50_000, &[0x77; 30_000]);
    let j = run_success([
        "resize",
        "--dry-run",
        "--json",
        s(&child),
        "--size",
        &NEW.to_string(),
    ])
    .json();
    assert!(j["plan"]["moves"].as_array().unwrap().len() > 2, "{j}");
    vec![base, child]
}

/// A 7 MiB VHDX in 2 MiB blocks whose last block holds 0xEE bytes past 7 MiB.
fn stale_tail(dir: &Path) -> PathBuf {
    let p = dir.join("stale.vhdx");
    run_success(["create", s(&p), "--size", "7M", "--block-size", "2M"]);
    write(&p, 6 * MIB, &[0x5a; 4096]);
    let disk = vhdkit::Disk::open(&p).unwrap();
    let Ok((vhdkit::Extent::Data { file_offset }, _)) = disk.map(6 * MIB, 4096) else {
        panic!("block 3 is not stored");
    };
    drop(disk);
    let mut bytes = std::fs::read(&p).unwrap();
    let at = (file_offset + MIB) as usize;
    bytes[at..at + MIB as usize].fill(0xee);
    std::fs::write(&p, &bytes).unwrap();
    p
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vhdkit"))
}

/// SIGKILL at every (sampled) traced call; returns the points run.
fn kill_matrix(case: Case) -> usize {
    let d = tmp();
    let f = Fixture::new(d.path(), case);
    let log = d.path().join("strace.log");
    let counts = kill::count_syscalls(bin(), &f.args, TRACED, &log);
    let ctx0 = format!("{case:?}");
    println!("{ctx0}: syscalls of one resize: {counts:?}");
    f.assert_done(&format!("{ctx0}: the counting run"));
    assert!(
        counts.get("pwrite64").copied().unwrap_or(0) >= 2,
        "{ctx0}: {counts:?}"
    );
    let full: usize = counts.values().sum();
    let new = std::cell::Cell::new(0);
    let after_kill = |name: &str, k| {
        let ctx = format!("{ctx0}: kill at {name}#{k}");
        new.set(new.get() + usize::from(f.assert_old_or_new(&ctx)));
        f.rerun_and_check(&ctx);
    };
    let done = |name: &str| f.assert_done(&format!("{ctx0}: {name} past the last point"));
    let points = |n| sampled(n, EVERY);
    let fresh = || f.fresh();
    let runs = kill::every_point(bin(), &f.args, &counts, points, fresh, after_kill, done);
    let new = new.get();
    println!("{ctx0}: SIGKILL at {runs} of {full} points, new size already after {new}");
    assert!(
        runs > 5 && new > 0 && new < runs,
        "{ctx0}: {runs} runs, {new} new"
    );
    runs
}

/// EIO from every (sampled) pwrite64/fsync/fdatasync/ftruncate: exit non-zero with one error
/// line, old or new state, rerun completes.
fn eio_matrix(case: Case) -> usize {
    let d = tmp();
    let f = Fixture::new(d.path(), case);
    let log = d.path().join("strace.log");
    let traced = EIO_CALLS.join(",");
    let counts = kill::count_syscalls(bin(), &f.args, &traced, &log);
    let ctx0 = format!("{case:?} EIO");
    let after_error = |name: &str, k| {
        let ctx = format!("{ctx0} at {name}#{k}");
        f.assert_old_or_new(&ctx);
        f.rerun_and_check(&ctx);
    };
    let points = |n| sampled(n, EVERY);
    let also = "write,pwrite64,fsync,fdatasync,ftruncate";
    let fresh = || f.fresh();
    let injection = (also, "EIO", log.as_path());
    let runs = kill::every_error_point(
        bin(),
        &f.args,
        &counts,
        points,
        injection,
        fresh,
        after_error,
    );
    println!("{ctx0}: {runs} points");
    assert!(runs > 3, "{ctx0}: {counts:?}");
    runs
}

fn have_strace() -> bool {
    need_tool("strace", "resize crash matrix (process kills)")
}

#[test]
fn vhd_differencing_grow_kills() {
    if have_strace() {
        kill_matrix(Case::VhdDifferencing);
    }
}

#[test]
fn vhd_fixed_grow_kills() {
    if have_strace() {
        kill_matrix(Case::VhdFixed);
    }
}

#[test]
fn vhdx_differencing_grow_kills() {
    if have_strace() {
        kill_matrix(Case::VhdxDifferencing);
    }
}

#[test]
fn vhdx_grow_moving_the_bat_kills() {
    if have_strace() {
        kill_matrix(Case::VhdxBatMove);
    }
}

#[test]
fn vhdx_grow_zeroing_a_stale_tail_kills() {
    if have_strace() {
        kill_matrix(Case::VhdxStaleTail);
    }
}

#[test]
fn eio_every_case() {
    if have_strace() {
        for case in [
            Case::VhdDifferencing,
            Case::VhdFixed,
            Case::VhdxDifferencing,
            Case::VhdxBatMove,
            Case::VhdxStaleTail,
        ] {
            eio_matrix(case);
        }
    }
}
