//! `vhdkit compact` killed at its system calls (strace fault injection), every case of
//! `compact.rs` (VHD and VHDX, dynamic and differencing): SIGKILL at every write, pwrite64,
//! copy_file_range (the block moves), fsync, fdatasync, ftruncate, rename(at/at2) and
//! unlink(at), and EIO returned by every pwrite64, copy_file_range, fsync, fdatasync and
//! ftruncate. After each: the disk's virtual contents read the
//! same (a compaction never changes them: old and new state read alike); a rerun of the
//! command completes; then the file has the size the uninterrupted run reaches, reads the
//! same, no side file is left and `check --chain` is clean.
//!
//! A VHDX grown past its BAT region (the table at the end of the file) is compacted too: the
//! blocks move down and then the table after them.
//!
//! Every kill is proven (the process died of SIGKILL, or strace's log shows the injected EIO),
//! and a run with the injection one past the last counted call completes. CI runs every
//! `EVERY`th point (and the last) of each call; `VHDKIT_FULL_MATRIX=1` runs every point.

use std::path::{Path, PathBuf};

use vhdkit_testkit::chains::sampled;
use vhdkit_testkit::kill;

use super::{build, s, Case};
use crate::util::*;

const TRACED: &str = "write,pwrite64,copy_file_range,fsync,fdatasync,ftruncate,rename,renameat,\
                      renameat2,unlink,unlinkat";
const EIO_CALLS: [&str; 5] = [
    "pwrite64",
    "copy_file_range",
    "fsync",
    "fdatasync",
    "ftruncate",
];
/// Calls traced beside the failing one, to show in the log where the error struck.
const ALSO: &str = "write,pwrite64,copy_file_range,fsync,fdatasync,ftruncate";
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
    let full = counts.values().sum();
    let after_kill = |name: &str, k| {
        let ctx = format!("{ctx0}: kill at {name}#{k}");
        f.assert_contents_intact(&ctx);
        f.rerun_and_check(&ctx);
    };
    let done = |name: &str| f.assert_done(&format!("{ctx0}: {name} past the last point"));
    let points = |n| sampled(n, EVERY);
    let fresh = || f.fresh();
    let runs = kill::every_point(bin(), &f.args, &counts, points, fresh, after_kill, done);
    println!("{ctx0}: SIGKILL at {runs} of {full} points");
    (runs, full)
}

/// EIO from every (sampled) pwrite64/copy_file_range/fsync/fdatasync/ftruncate: exit non-zero
/// with one error line, contents intact, rerun completes.
fn eio_matrix(case: Case) -> (usize, usize) {
    let d = tmp();
    let f = Fixture::new(d.path(), case);
    let log = d.path().join("strace.log");
    let traced = EIO_CALLS.join(",");
    let counts = kill::count_syscalls(bin(), &f.args, &traced, &log);
    let ctx0 = format!("{case:?} EIO");
    let full = counts.values().sum();
    let after_error = |name: &str, k| {
        let ctx = format!("{ctx0} at {name}#{k}");
        f.assert_contents_intact(&ctx);
        f.rerun_and_check(&ctx);
    };
    let points = |n| sampled(n, EVERY);
    let also = ALSO;
    let fresh = || f.fresh();
    let runs = kill::every_error_point(
        bin(),
        &f.args,
        &counts,
        points,
        (also, "EIO", &log),
        fresh,
        after_error,
    );
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

/// Offsets checked in [`TableCase`] (4 MiB read at each): the data, and zeros around it.
const TABLE_CASE_AT: [u64; 5] = [0, 8 << 20, 150 << 30, (150 << 30) + (8 << 20), 199 << 30];

/// A VHDX grown past its BAT region (the table moved to the end of the file), then written past
/// the table and with its first blocks zeroed: a compaction moves blocks down and then the
/// table after them. 200 GiB virtual, too large to read whole: the contents are checked at the
/// data and at zeros around it (the small cases above read everything).
struct TableCase {
    dir: PathBuf,
    disk: PathBuf,
    pristine: Vec<u8>,
    want: (u64, Vec<Vec<u8>>),
    done_len: u64,
    args: Vec<String>,
}

fn write_at(p: &Path, at: u64, data: &[u8]) {
    let mut w = vhdkit::WritableDisk::open(p, &vhdkit::ChainOptions::default()).unwrap();
    w.write_at(at, data).unwrap();
    w.close().unwrap();
}

impl TableCase {
    fn new(root: &Path) -> TableCase {
        let dir = root.join("vm");
        std::fs::create_dir(&dir).unwrap();
        let disk = dir.join("grown.vhdx");
        run_success(["create", s(&disk), "--size", "8M", "--block-size", "1M"]);
        write_at(&disk, 0, &[0x5a; 8 << 20]);
        run_success(["resize", s(&disk), "--size", &(200u64 << 30).to_string()]);
        write_at(&disk, 150 << 30, &[0x77; 3 << 20]);
        write_at(&disk, 0, &[0; 5 << 20]);
        let args: Vec<String> = ["compact", s(&disk)].map(String::from).to_vec();
        let plan = run_success(["compact", "--json", "--dry-run", s(&disk)]).json();
        let notes = plan["plan"]["notes"].to_string();
        assert!(notes.contains("moves down"), "{plan}");
        TableCase {
            pristine: std::fs::read(&disk).unwrap(),
            want: Self::read(&disk),
            done_len: plan["plan"]["file_size_after"].as_u64().unwrap(),
            dir,
            disk,
            args,
        }
    }

    fn read(disk: &Path) -> (u64, Vec<Vec<u8>>) {
        vhdkit_testkit::through::read_chain_at(disk, &TABLE_CASE_AT, 4 << 20)
    }

    fn fresh(&self) {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        std::fs::write(&self.disk, &self.pristine).unwrap();
    }

    #[track_caller]
    fn assert_intact(&self, ctx: &str) {
        assert!(Self::read(&self.disk) == self.want, "{ctx}: contents");
    }

    #[track_caller]
    fn assert_done(&self, ctx: &str) {
        self.assert_intact(ctx);
        let len = std::fs::metadata(&self.disk).unwrap().len();
        assert_eq!(len, self.done_len, "{ctx}: final size");
        assert_eq!(std::fs::read_dir(&self.dir).unwrap().count(), 1, "{ctx}");
        let r = run(["check", s(&self.disk)]);
        let clean = r.stdout.contains(" 0 error(s), 0 warning(s)");
        assert!(r.code == 0 && clean, "{ctx}: {r:?}");
    }
}

/// SIGKILL at every (sampled) call, and EIO at every (sampled) write, sync and truncate, of
/// the compaction of [`TableCase`]: contents intact, a rerun completes.
#[test]
fn vhdx_table_moving_down_kills_and_eio() {
    if !have_strace() {
        return;
    }
    let d = tmp();
    let f = TableCase::new(d.path());
    let log = d.path().join("strace.log");
    let counts = kill::count_syscalls(bin(), &f.args, TRACED, &log);
    f.assert_done("the counting run");
    let points = |n| sampled(n, EVERY);
    let after = |what: &str, name: &str, k| {
        let ctx = format!("{what} at {name}#{k}");
        f.assert_intact(&ctx);
        assert_eq!(run(&f.args).code, 0, "{ctx}: rerun");
        f.assert_done(&ctx);
    };
    let done = |name: &str| f.assert_done(&format!("{name} past the last point"));
    let fresh = || f.fresh();
    let kill_at = |name: &str, k| after("kill", name, k);
    let kills = kill::every_point(bin(), &f.args, &counts, points, fresh, kill_at, done);
    let mut eio_counts = counts.clone();
    eio_counts.retain(|name, _| EIO_CALLS.contains(&name.as_str()));
    let also = ALSO;
    let eio_at = |name: &str, k| after("EIO", name, k);
    let injection = (also, "EIO", log.as_path());
    let eios = kill::every_error_point(
        bin(),
        &f.args,
        &eio_counts,
        points,
        injection,
        fresh,
        eio_at,
    );
    println!("table moving down: SIGKILL at {kills}, EIO at {eios} points of {counts:?}");
    assert!(kills > 10 && eios > 5, "{counts:?}");
}
