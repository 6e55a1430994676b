//! `vhdkit merge` killed at its system calls (strace fault injection), both formats, depth 1
//! (into the parent) and depth 3 (into the base, three files merged away): SIGKILL at every
//! write, pwrite64, copy_file_range (the payload the kernel copies), fsync, fdatasync,
//! ftruncate, rename(at/at2) and unlink(at), and EIO returned by every pwrite64,
//! copy_file_range, fsync and fdatasync. After each: the leaf's virtual contents read the same
//! (through CHILD while it exists, else through the ancestor); the rerun (`vhdkit merge CHILD`,
//! or `vhdkit repair ANCESTOR` once CHILD is gone) completes; then only the ancestor and its
//! parents are left, reading the leaf's contents, `check --chain` clean.
//!
//! Every kill is proven (the process died of SIGKILL, or strace's log shows the injected EIO),
//! and a run with the injection one past the last counted call completes. CI runs every
//! `EVERY`th point (and the last) of each call; `VHDKIT_FULL_MATRIX=1` runs every point.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::{build_chain, sampled, ChainFormat};
use vhdkit_testkit::kill;

use super::{names, s};
use crate::util::*;

const SIZE: u64 = 4 << 20;
const TRACED: &str = "write,pwrite64,copy_file_range,fsync,fdatasync,ftruncate,rename,renameat,\
                      renameat2,unlink,unlinkat";
const EIO_CALLS: [&str; 4] = ["pwrite64", "copy_file_range", "fsync", "fdatasync"];
/// CI samples every `EVERY`th injection point of each call.
const EVERY: usize = 4;

/// One chain restored before every run.
struct Fixture {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pristine: Vec<Vec<u8>>,
    level: usize,
    want: String,
    args: Vec<String>,
}

impl Fixture {
    fn new(root: &Path, format: ChainFormat, depth: usize) -> Fixture {
        let dir = root.join("vm");
        std::fs::create_dir(&dir).unwrap();
        let c = build_chain(&dir, format, SIZE, depth, 300 + depth as u64);
        // Depth 1 merges into the parent, depth 3 into the base: the ancestor is level 0.
        let level = 0;
        let mut args = vec!["merge".to_string()];
        if depth > 1 {
            args.extend(["--into".to_string(), s(&c.files[0]).to_string()]);
        }
        args.push(s(c.leaf()).to_string());
        let pristine = c.files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let want = virtual_sha(c.leaf());
        Fixture {
            dir,
            files: c.files.clone(),
            pristine,
            level,
            want,
            args,
        }
    }

    fn leaf(&self) -> &Path {
        self.files.last().unwrap()
    }

    fn ancestor(&self) -> &Path {
        &self.files[self.level]
    }

    /// Everything in the folder removed, the chain written back as built.
    fn fresh(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        for (p, b) in self.files.iter().zip(&self.pristine) {
            std::fs::write(p, b).unwrap();
        }
    }

    /// After a failure: the leaf's contents are readable and unchanged.
    #[track_caller]
    fn assert_contents_intact(&self, ctx: &str) -> bool {
        let child_left = self.leaf().exists();
        let through = if child_left {
            self.leaf()
        } else {
            self.ancestor()
        };
        assert_eq!(
            virtual_sha(through),
            self.want,
            "{ctx}: contents through {}",
            through.display()
        );
        child_left
    }

    /// The rerun completes the merge.
    #[track_caller]
    fn rerun_and_check(&self, child_left: bool, ctx: &str) {
        let r = if child_left {
            run(&self.args)
        } else {
            run(["repair", s(self.ancestor())])
        };
        assert_eq!(r.code, 0, "{ctx}: rerun (child left: {child_left}): {r:?}");
        self.assert_done(ctx);
    }

    #[track_caller]
    fn assert_done(&self, ctx: &str) {
        let left: std::collections::BTreeSet<String> = self.files[..=self.level]
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names(&self.dir), left, "{ctx}: files left");
        assert_eq!(
            virtual_sha(self.ancestor()),
            self.want,
            "{ctx}: merged contents"
        );
        let r = run(["check", "--chain", s(self.ancestor())]);
        assert_eq!(r.code, 0, "{ctx}: check: {r:?}");
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vhdkit"))
}

/// SIGKILL at every (sampled) traced call; returns (points run, points in the full matrix).
fn kill_matrix(format: ChainFormat, depth: usize) -> (usize, usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), format, depth);
    let log = d.path().join("strace.log");
    let counts = kill::count_syscalls(bin(), &f.args, TRACED, &log);
    let ctx0 = format!("{} depth {depth}", format.label());
    println!("{ctx0}: syscalls of one merge: {counts:?}");
    f.assert_done(&format!("{ctx0}: the counting run"));
    let merged = depth - f.level;
    // The payload goes by copy_file_range where the kernel copies it, else by pwrite64.
    let payload = ["pwrite64", "copy_file_range"]
        .iter()
        .map(|c| counts.get(*c).copied().unwrap_or(0))
        .sum::<usize>();
    assert!(payload >= 5, "{ctx0}: {counts:?}");
    let unlinks =
        counts.get("unlink").copied().unwrap_or(0) + counts.get("unlinkat").copied().unwrap_or(0);
    assert!(
        unlinks >= merged,
        "{ctx0}: {merged} files merged away, {counts:?}"
    );
    let renames: usize = ["rename", "renameat", "renameat2"]
        .iter()
        .map(|n| counts.get(*n).copied().unwrap_or(0))
        .sum();
    assert!(
        renames >= 1,
        "{ctx0}: the merge record is never renamed into place: {counts:?}"
    );
    let full: usize = counts.values().sum();
    let child_gone = std::cell::Cell::new(0);
    let after_kill = |name: &str, k| {
        let ctx = format!("{ctx0}: kill at {name}#{k}");
        let child_left = f.assert_contents_intact(&ctx);
        child_gone.set(child_gone.get() + usize::from(!child_left));
        f.rerun_and_check(child_left, &ctx);
    };
    let done = |name: &str| f.assert_done(&format!("{ctx0}: {name} past the last point"));
    let points = |n| sampled(n, EVERY);
    let fresh = || f.fresh();
    let runs = kill::every_point(bin(), &f.args, &counts, points, fresh, after_kill, done);
    let child_gone = child_gone.get();
    println!("{ctx0}: SIGKILL at {runs} of {full} points, CHILD already gone after {child_gone}");
    assert!(
        child_gone > 0,
        "{ctx0}: no kill came after the first deletion"
    );
    (runs, full)
}

/// EIO from every (sampled) pwrite64/copy_file_range/fsync/fdatasync: exit non-zero with one
/// error line, contents intact, rerun completes. No injection point may end in exit 0: every
/// sync the merge makes is the one that proves its writes durable (the disk is closed with one
/// sync, never a second unchecked one).
fn eio_matrix(format: ChainFormat, depth: usize) -> (usize, usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), format, depth);
    let log = d.path().join("strace.log");
    let traced = EIO_CALLS.join(",");
    let counts = kill::count_syscalls(bin(), &f.args, &traced, &log);
    let ctx0 = format!("{} depth {depth} EIO", format.label());
    let full = counts.values().sum();
    let after_error = |name: &str, k| {
        let ctx = format!("{ctx0} at {name}#{k}");
        let child_left = f.assert_contents_intact(&ctx);
        f.rerun_and_check(child_left, &ctx);
    };
    let points = |n| sampled(n, EVERY);
    let also = "write,pwrite64,fsync,fdatasync";
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
    println!("{ctx0}: EIO at {runs} of {full} points, each one reported");
    assert!(runs > 5, "{ctx0}: {counts:?}");
    (runs, full)
}

fn have_strace() -> bool {
    need_tool("strace", "merge crash matrix (process kills)")
}

#[test]
fn vhd_depth_1_kills() {
    if have_strace() {
        kill_matrix(ChainFormat::Vhd, 1);
    }
}

#[test]
fn vhd_depth_3_kills() {
    if have_strace() {
        kill_matrix(ChainFormat::Vhd, 3);
    }
}

#[test]
fn vhdx_depth_1_kills() {
    if have_strace() {
        kill_matrix(ChainFormat::Vhdx(512), 1);
    }
}

#[test]
fn vhdx_depth_3_kills() {
    if have_strace() {
        kill_matrix(ChainFormat::Vhdx(512), 3);
    }
}

#[test]
fn eio_both_formats_depth_1_and_3() {
    if !have_strace() {
        return;
    }
    for format in [ChainFormat::Vhd, ChainFormat::Vhdx(512)] {
        for depth in [1, 3] {
            eio_matrix(format, depth);
        }
    }
}
