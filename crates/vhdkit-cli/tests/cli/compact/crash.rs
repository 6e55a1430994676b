//! `vhdkit compact` killed at its system calls (strace fault injection), every case of
//! `compact.rs` (VHD and VHDX, dynamic and differencing): SIGKILL at every write, pwrite64,
//! fsync, fdatasync, ftruncate, rename(at/at2) and unlink(at), and EIO returned by every
//! pwrite64, fsync, fdatasync and ftruncate. After each: the disk's virtual contents read the
//! same (a compaction never changes them: old and new state read alike); a rerun of the
//! command completes; then the file has the size the uninterrupted run reaches, reads the
//! same, no side file is left and `check --chain` is clean.
//!
//! Every kill is proven (the process died of SIGKILL, or strace's log shows the injected EIO),
//! and a run with the injection one past the last counted call completes. CI runs every
//! `EVERY`th point (and the last) of each call; `VHDKIT_FULL_MATRIX=1` runs every point.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::sampled;
use vhdkit_testkit::kill;

use super::{build, s, Case};
use crate::util::*;

const TRACED: &str =
    "write,pwrite64,fsync,fdatasync,ftruncate,rename,renameat,renameat2,unlink,unlinkat";
const EIO_CALLS: [&str; 4] = ["pwrite64", "fsync", "fdatasync", "ftruncate"];
/// CI samples every `EVERY`th injection point of each call.
const EVERY: usize = 4;

/// One case restored before every run.
struct Fixture {
    dir: PathBuf,
    files: Vec<PathBuf>,
    pristine: Vec<Vec<u8>>,
    want: String,
    /// The disk's length after an uninterrupted compaction.
    done_len: u64,
    args: Vec<String>,
}

impl Fixture {
    fn new(root: &Path, case: Case) -> Fixture {
        let dir = root.join("vm");
        std::fs::create_dir(&dir).unwrap();
        let files = build(&dir, case);
        let pristine: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let want = virtual_sha(&files[0]);
        let args = vec![
            "compact".to_string(),
            "--against-parent".to_string(),
            s(&files[0]).to_string(),
        ];
        let plan = run_success([
            "compact",
            "--json",
            "--dry-run",
            "--against-parent",
            s(&files[0]),
        ])
        .json();
        let done_len = plan["plan"]["file_size_after"].as_u64().unwrap();
        assert!(done_len < pristine[0].len() as u64, "{case:?}: {plan}");
        Fixture {
            dir,
            files,
            pristine,
            want,
            done_len,
            args,
        }
    }

    fn disk(&self) -> &Path {
        &self.files[0]
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

    #[track_caller]
    fn assert_contents_intact(&self, ctx: &str) {
        assert_eq!(virtual_sha(self.disk()), self.want, "{ctx}: contents");
    }

    #[track_caller]
    fn rerun_and_check(&self, ctx: &str) {
        let r = run(&self.args);
        assert_eq!(r.code, 0, "{ctx}: rerun: {r:?}");
        self.assert_done(ctx);
    }

    #[track_caller]
    fn assert_done(&self, ctx: &str) {
        assert_eq!(
            std::fs::metadata(self.disk()).unwrap().len(),
            self.done_len,
            "{ctx}: final size"
        );
        assert_eq!(virtual_sha(self.disk()), self.want, "{ctx}: contents");
        let names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            self.files.len(),
            "{ctx}: files left: {names:?}"
        );
        let r = run(["check", "--chain", s(self.disk())]);
        assert_eq!(r.code, 0, "{ctx}: check: {r:?}");
    }
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vhdkit"))
}

/// SIGKILL at every (sampled) traced call; returns (points run, points in the full matrix).
fn kill_matrix(case: Case) -> (usize, usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), case);
    let log = d.path().join("strace.log");
    let counts = kill::count_syscalls(bin(), &f.args, TRACED, &log);
    let ctx0 = format!("{case:?}");
    println!("{ctx0}: syscalls of one compaction: {counts:?}");
    f.assert_done(&format!("{ctx0}: the counting run"));
    assert!(
        counts.get("ftruncate").copied().unwrap_or(0) >= 1,
        "{ctx0}: the file is never cut: {counts:?}"
    );
    let (mut runs, mut full) = (0, 0);
    for (name, &n) in &counts {
        full += n;
        for k in sampled(n, EVERY) {
            let ctx = format!("{ctx0}: kill at {name}#{k}");
            f.fresh();
            kill::run_killed_at(bin(), &f.args, name, k);
            runs += 1;
            f.assert_contents_intact(&ctx);
            f.rerun_and_check(&ctx);
        }
        f.fresh();
        kill::run_past_last(bin(), &f.args, name, n);
        f.assert_done(&format!("{ctx0}: {name} past the last point"));
    }
    println!("{ctx0}: SIGKILL at {runs} of {full} points");
    (runs, full)
}

/// EIO from every (sampled) pwrite64/fsync/fdatasync/ftruncate: exit non-zero with one error
/// line, contents intact, rerun completes.
fn eio_matrix(case: Case) -> (usize, usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), case);
    let log = d.path().join("strace.log");
    let traced = EIO_CALLS.join(",");
    let counts = kill::count_syscalls(bin(), &f.args, &traced, &log);
    let ctx0 = format!("{case:?} EIO");
    let (mut runs, mut full) = (0, 0);
    for (name, &n) in &counts {
        full += n;
        for k in sampled(n, EVERY) {
            let ctx = format!("{ctx0} at {name}#{k}");
            f.fresh();
            let calls = (name.as_str(), "write,pwrite64,fsync,fdatasync,ftruncate");
            let o = kill::run_with_error(bin(), &f.args, calls, k, "EIO", &log);
            runs += 1;
            // Every sync's error is returned (close syncs once): exit 0 would mean an
            // injected EIO went unreported.
            assert!(
                !o.status.success(),
                "{ctx}: exit 0 after an injected EIO:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{ctx}: one error line: {stderr}"
            );
            f.assert_contents_intact(&ctx);
            f.rerun_and_check(&ctx);
        }
    }
    println!("{ctx0}: {runs} of {full} points, each one reported");
    assert!(runs > 5, "{ctx0}: {counts:?}");
    (runs, full)
}

fn have_strace() -> bool {
    need_tool("strace", "compact crash matrix (process kills)")
}

#[test]
fn vhd_dynamic_kills() {
    if have_strace() {
        kill_matrix(Case::VhdDynamic);
    }
}

#[test]
fn vhdx_dynamic_kills() {
    if have_strace() {
        kill_matrix(Case::VhdxDynamic);
    }
}

#[test]
fn vhd_differencing_kills() {
    if have_strace() {
        kill_matrix(Case::VhdDifferencing);
    }
}

#[test]
fn vhdx_differencing_kills() {
    if have_strace() {
        kill_matrix(Case::VhdxDifferencing);
    }
}

#[test]
fn eio_every_case() {
    if !have_strace() {
        return;
    }
    for case in Case::ALL {
        eio_matrix(case);
    }
}
