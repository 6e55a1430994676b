//! Small file systems mounted for one test (root only; a loud skip otherwise, a failure with
//! `CI=true`), for the tests of full disks and free-space refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{run_ok, skip_or_fail};

/// A tmpfs of a given size, unmounted when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    /// The mount point.
    pub at: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount -o size=`, e.g. `16m`) in a fresh temporary folder.
    /// `None` after a skip naming `why` when this machine cannot (needs root).
    pub fn mount(size: &str, why: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).expect("create the mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            skip_or_fail(&format!(
                "{why}: cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)"
            ));
            return None;
        }
        Some(Tmpfs { _dir: dir, at })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Not a test failure (the test's outcome is already decided), but never silent:
            // the temporary folder cannot be removed while mounted.
            println!(
                "warning: could not unmount the test tmpfs at {}",
                self.at.display()
            );
        }
    }
}

/// Free bytes of the file system holding `dir` (`df`'s available column, 1 KiB blocks).
pub fn free_bytes(dir: &Path) -> u64 {
    let out = run_ok(Command::new("df").args(["-k", "--output=avail"]).arg(dir));
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("df output without an available figure: {out}"))
        * 1024
}
