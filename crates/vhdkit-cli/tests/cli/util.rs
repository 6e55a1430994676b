//! Running the binary and making images with qemu.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use vhdkit_testkit::{have_tool, run_ok, sha256_file};

/// SHA-256 of the whole virtual disk through the chain, by `vhdkit convert --to raw`.
pub fn virtual_sha(child: &Path) -> String {
    vhdkit_testkit::through::convert_sha(Path::new(env!("CARGO_BIN_EXE_vhdkit")), child)
}

/// The `vhdkit` binary built for this test run.
pub fn vhdkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vhdkit"))
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Run `vhdkit ARGS...`.
pub fn run<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    vhdkit().args(args).output().expect("spawn vhdkit").into()
}

/// Run and require exit 0.
pub fn run_success<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let r = run(args);
    assert_eq!(r.code, 0, "vhdkit failed: {r:?}");
    r
}

/// `qemu-img create -f FMT -o OPTS PATH SIZE`.
pub fn qemu_create(fmt: &str, opts: &str, path: &Path, size: &str) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", fmt]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    c.arg(path).arg(size);
    run_ok(&mut c);
}

/// `qemu-io -f FMT -c CMD... PATH`.
pub fn qemu_io(fmt: &str, path: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(path);
    run_ok(&mut c);
}

/// `qemu-img convert -f FMT -O raw SRC DST`.
pub fn qemu_to_raw(fmt: &str, src: &Path, dst: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", fmt, "-O", "raw"])
            .arg(src)
            .arg(dst),
    );
}

/// Allocated bytes of a file (for sparseness checks).
pub fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).expect("stat").blocks() * 512
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// True when `cmd` runs; otherwise a loud skip (a failure when CI=true), see
/// `vhdkit_testkit::skip_or_fail`.
pub fn need_tool(cmd: &str, why: &str) -> bool {
    have_tool(cmd, why)
}

/// `vhdkit ARGS` is refused: exit 1, one stderr line saying `refused: ` and `needle`, no
/// panic; and nothing under `dir` changed (entries, bytes, lengths, mtimes).
pub fn assert_refused_in(dir: &Path, args: &[&str], needle: &str) {
    let before = vhdkit_testkit::snapshot::Snapshot::tree(dir);
    let r = run(args);
    assert_eq!(r.code, 1, "{args:?}: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "one line: {r:?}");
    assert!(r.stderr.contains("refused: "), "{r:?}");
    assert!(r.stderr.contains(needle), "{needle:?} in {r:?}");
    before.assert_unchanged(&format!("{args:?}"));
}

/// `out` reads `want_sha` through qemu-img (format `qemu_fmt`) and through vhdkit's own
/// `convert --to raw`.
pub fn assert_reads_back(out: &Path, qemu_fmt: &str, want_sha: &str, what: &str) {
    let back = out.with_extension("qemu-back.raw");
    qemu_to_raw(qemu_fmt, out, &back);
    assert_eq!(sha256_file(&back), want_sha, "{what}: qemu read-back");
    std::fs::remove_file(&back).expect("remove the read-back");
    assert_eq!(virtual_sha(out), want_sha, "{what}: vhdkit read-back");
}

/// `vhdkit ARGS` (a conversion onto the existing `out`, without `--force`) is refused with
/// exit 1, and `out` keeps its bytes, length and modification time.
pub fn assert_overwrite_refused<I, S>(args: I, out: &Path)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let before = vhdkit_testkit::snapshot::Snapshot::files(&[out]);
    let r = run(args);
    assert_eq!(r.code, 1, "overwrite without --force: {r:?}");
    assert!(r.stderr.contains("exists"), "{r:?}");
    before.assert_unchanged("a refused overwrite");
}

/// `vhdkit create BASE --size SIZE`, then `vhdkit create CHILD --parent BASE`.
pub fn create_pair(base: &Path, child: &Path, size: &str) {
    run_success([
        "create".as_ref(),
        base.as_os_str(),
        "--size".as_ref(),
        size.as_ref(),
    ]);
    run_success([
        "create".as_ref(),
        child.as_os_str(),
        "--parent".as_ref(),
        base.as_os_str(),
    ]);
}
