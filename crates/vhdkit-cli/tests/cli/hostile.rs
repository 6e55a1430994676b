//! Helpers for adversarial tests: a small lab of VHD chains, objects planted where vhdkit
//! reads or creates its side files, and runs of the binary under a watchdog.
//!
//! To add a case: add a [`Plant`] variant (and its arm in [`plant`] and
//! [`Planted::assert_untouched`]), or a side-file name in `hostile_side_files.rs`.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

/// Print a loud skip; in CI (`CI=true`) a missing capability is a failure instead.
pub fn skip(reason: &str) {
    vhdkit_testkit::skip_or_fail(reason);
}

/// Run `vhdkit ARGS...`, killed (and the test failed) when it runs longer than `secs`.
pub fn run_within<I, S>(secs: u64, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let child = vhdkit()
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vhdkit");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (done, timed_out) = (done.clone(), timed_out.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if start.elapsed() > Duration::from_secs(secs) {
                    timed_out.store(true, Ordering::SeqCst);
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let out = child.wait_with_output().expect("wait for vhdkit");
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    assert!(
        !timed_out.load(Ordering::SeqCst),
        "vhdkit {args:?} hung (killed after {secs} s)"
    );
    out.into()
}

/// Two VMs, each a differencing disk over its own identical copy of one base, and a folder
/// outside holding a file that must never be written.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub vms: PathBuf,
    pub shared: PathBuf,
    pub base1: PathBuf,
    pub child1: PathBuf,
    pub base2: PathBuf,
    pub child2: PathBuf,
    pub outside: PathBuf,
    pub secret: PathBuf,
}

pub const SECRET: &[u8] = b"root:x:0:0:not yours to write\n";

pub fn lab() -> Lab {
    let dir = tmp();
    let p = |s: &str| dir.path().join(s);
    for d in ["vms/vm1", "vms/vm2", "shared", "outside"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    let (base1, child1, base2, child2) = (
        p("vms/vm1/base.vhd"),
        p("vms/vm1/child.vhd"),
        p("vms/vm2/base.vhd"),
        p("vms/vm2/child.vhd"),
    );
    run_success([
        "create".as_ref(),
        base1.as_os_str(),
        "--size".as_ref(),
        "8M".as_ref(),
    ]);
    std::fs::copy(&base1, &base2).unwrap();
    for (c, b) in [(&child1, &base1), (&child2, &base2)] {
        run_success([
            "create".as_ref(),
            c.as_os_str(),
            "--parent".as_ref(),
            b.as_os_str(),
        ]);
    }
    let secret = p("outside/secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    Lab {
        vms: p("vms"),
        shared: p("shared"),
        outside: p("outside"),
        base1,
        child1,
        base2,
        child2,
        secret,
        dir,
    }
}

/// What a hostile user (or an unlucky tree) may leave at a name vhdkit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    LinkOutside,
    LinkDisk,
    LinkDir,
    LinkDevZero,
    LinkUrandom,
    Dangling,
    Fifo,
    CharDev,
    Socket,
    Folder,
    HardLink,
    Sparse1T,
}

impl Plant {
    /// Whether the planted object is a regular file under the name (not a link to one).
    pub fn is_regular(self) -> bool {
        matches!(self, Plant::HardLink | Plant::Sparse1T)
    }
}

const FIFO_SENTINEL: &[u8] = b"bytes nobody may read";
/// `O_NONBLOCK` on Linux (the tests run there): the FIFO holder must never block.
const O_NONBLOCK: i32 = 0o4000;

/// A planted object, with what is needed to prove it was left alone.
pub struct Planted {
    pub kind: Plant,
    pub path: PathBuf,
    fifo: Option<File>,
    _sock: Option<std::os::unix::net::UnixListener>,
    disk_before: Option<(PathBuf, Vec<u8>)>,
}

/// Plant `kind` at `at` (beside or inside `lab`). `None` (after a loud skip) when this
/// machine cannot make it (`mknod` needs root).
pub fn plant(kind: Plant, at: &Path, lab: &Lab) -> Option<Planted> {
    let link = |to: &Path| std::os::unix::fs::symlink(to, at).unwrap();
    let mut fifo = None;
    let mut sock = None;
    let mut disk_before = None;
    match kind {
        Plant::LinkOutside => link(&lab.secret),
        Plant::LinkDisk => {
            disk_before = Some((lab.base2.clone(), std::fs::read(&lab.base2).unwrap()));
            link(&lab.base2)
        }
        Plant::LinkDir => link(&lab.outside),
        Plant::LinkDevZero => link(Path::new("/dev/zero")),
        Plant::LinkUrandom => link(Path::new("/dev/urandom")),
        Plant::Dangling => link(&lab.outside.join("nothing-here")),
        Plant::Fifo => {
            run_ok(Command::new("mkfifo").arg(at));
            // Held open read-write by the test (so no open of it can block on a missing
            // peer), with bytes in it that must still be there afterwards.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(at)
                .unwrap();
            f.write_all(FIFO_SENTINEL).unwrap();
            fifo = Some(f);
        }
        Plant::CharDev => {
            // /dev/zero's numbers: endless zeros to whoever reads it.
            let ok = Command::new("mknod")
                .arg(at)
                .args(["c", "1", "5"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                skip("mknod of a character device is not permitted here (needs root)");
                return None;
            }
        }
        Plant::Socket => sock = Some(std::os::unix::net::UnixListener::bind(at).unwrap()),
        Plant::Folder => std::fs::create_dir(at).unwrap(),
        Plant::HardLink => std::fs::hard_link(&lab.secret, at).unwrap(),
        Plant::Sparse1T => File::create(at).unwrap().set_len(1 << 40).unwrap(),
    }
    Some(Planted {
        kind,
        path: at.to_path_buf(),
        fifo,
        _sock: sock,
        disk_before,
    })
}

impl Planted {
    /// Nothing reachable through the planted object was read or written.
    pub fn assert_untouched(&mut self, lab: &Lab, what: &str) {
        assert_eq!(
            std::fs::read(&lab.secret).unwrap(),
            SECRET,
            "{what}: the file outside was written"
        );
        let names: Vec<_> = std::fs::read_dir(&lab.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["secret.txt"],
            "{what}: the folder outside was written"
        );
        if let Some((p, bytes)) = &self.disk_before {
            assert!(
                std::fs::read(p).unwrap() == *bytes,
                "{what}: the disk behind the link was written"
            );
        }
        if let Some(f) = self.fifo.as_mut() {
            // Drain what is in the FIFO now: exactly the sentinel, nothing read, nothing added.
            let mut buf = vec![0u8; 4096];
            let n = f.read(&mut buf).unwrap_or(0);
            assert_eq!(
                &buf[..n],
                FIFO_SENTINEL,
                "{what}: the FIFO was read or written"
            );
            f.write_all(FIFO_SENTINEL).unwrap();
        }
        if self.kind == Plant::Sparse1T && std::fs::symlink_metadata(&self.path).is_ok() {
            let md = std::fs::metadata(&self.path).unwrap();
            assert_eq!(md.len(), 1 << 40, "{what}: the sparse file was resized");
            assert!(md.blocks() < 64, "{what}: the sparse file was written");
        }
    }

    /// The planted object is still at its name (never removed or replaced).
    pub fn assert_still_there(&self, what: &str) {
        let md = std::fs::symlink_metadata(&self.path)
            .unwrap_or_else(|e| panic!("{what}: the planted {:?} is gone: {e}", self.kind));
        let is_link = md.file_type().is_symlink();
        let want_link = matches!(
            self.kind,
            Plant::LinkOutside
                | Plant::LinkDisk
                | Plant::LinkDir
                | Plant::LinkDevZero
                | Plant::LinkUrandom
                | Plant::Dangling
        );
        assert_eq!(
            is_link, want_link,
            "{what}: the planted {:?} was replaced",
            self.kind
        );
    }
}

/// A file's bytes, for before/after comparisons.
pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// One line on stderr (the error contract).
pub fn assert_one_line(r: &Run, what: &str) {
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "{what}: not one line on stderr: {r:?}"
    );
}
