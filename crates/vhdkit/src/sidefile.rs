//! The names of every file vhdkit puts beside a disk, in one place.
//!
//! - `<file>.vhdkit-journal`: the redo journal of an interrupted VHD metadata change
//!   ([`crate::txn::journal`]), and `<file>.vhdkit-journal.tmp` where it is written first;
//! - `.<name>.vhdkit-partial-<pid>`: an output being built (create, convert) by process `<pid>`;
//! - `.<name>.vhdkit-share-tmp-<pid>`: a keeper copy being made by `share` in process `<pid>`.
//!
//! Partial outputs carry the pid of the process writing them, so a later run can tell a
//! leftover of a killed run (its pid is gone) from one that is still being written.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

const JOURNAL: &str = ".vhdkit-journal";
const JOURNAL_TMP: &str = ".vhdkit-journal.tmp";
const PARTIAL: &str = ".vhdkit-partial-";
const SHARE_TMP: &str = ".vhdkit-share-tmp-";

/// The journal beside `disk`.
pub fn journal(disk: &Path) -> PathBuf {
    with_suffix(disk, JOURNAL)
}

/// Where the journal of `disk` is written before it is renamed into place.
pub fn journal_tmp(disk: &Path) -> PathBuf {
    with_suffix(disk, JOURNAL_TMP)
}

/// The name this process builds `dst` under (create, convert).
pub fn partial_output(dst: &Path) -> PathBuf {
    hidden(dst, PARTIAL, std::process::id())
}

/// The name this process copies a shared keeper `keeper` under.
pub fn share_tmp(keeper: &Path) -> PathBuf {
    hidden(keeper, SHARE_TMP, std::process::id())
}

/// Whether `name` (a file name) is a journal or its temporary name. Problems at these names are
/// findings of the disk beside them, never of a folder walk.
pub fn is_journal_name(name: &str) -> bool {
    name.ends_with(JOURNAL) || name.ends_with(JOURNAL_TMP)
}

/// Whether `name` (a file name) is one of vhdkit's side files (never a disk to act on).
pub fn is_side_file(name: &str) -> bool {
    is_journal_name(name) || partial_of(name).is_some()
}

/// A partial output found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    /// The partial file itself.
    pub path: PathBuf,
    /// The file name it was going to get (create/convert output or shared keeper).
    pub target: String,
    /// The process that was writing it.
    pub pid: u32,
    /// Whether that process is still running (a leftover of a killed run when false).
    pub alive: bool,
}

/// `(target name, pid)` when `name` is a partial output or share temporary copy.
fn partial_of(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix('.')?;
    [PARTIAL, SHARE_TMP].iter().find_map(|marker| {
        let at = rest.rfind(marker)?;
        let pid = rest.get(at + marker.len()..)?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((rest.get(..at)?.to_string(), pid.parse().ok()?))
    })
}

/// The partial output at `path`, when its name is one.
pub fn partial(path: &Path) -> Option<Partial> {
    let name = path.file_name()?.to_str()?;
    let (target, pid) = partial_of(name)?;
    Some(Partial {
        path: path.to_path_buf(),
        target,
        pid,
        alive: pid_alive(pid),
    })
}

/// Remove leftovers of killed runs that were building `dst` (same folder, same target name,
/// pid no longer running). Best effort: returns what was removed.
pub fn remove_stale_partials(dst: &Path) -> Vec<PathBuf> {
    let Some(want) = dst.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(folder_of(dst)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if let Some(part) = partial(&p) {
            if part.target == want
                && !part.alive
                && std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file())
                && std::fs::remove_file(&p).is_ok()
            {
                removed.push(p);
            }
        }
    }
    removed
}

/// Whether process `pid` exists. Unknown (no /proc) counts as alive: never remove a file a
/// running process may be writing.
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// The folder holding `p` (`.` for a bare file name): where vhdkit puts its side files, and
/// where relative parent paths of a disk start.
pub fn folder_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    p.with_file_name(name)
}

fn hidden(p: &Path, marker: &str, pid: u32) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    p.with_file_name(format!(".{name}{marker}{pid}"))
}

/// Removes a partial output when dropped, unless [`PartialGuard::keep`] was called: every error
/// path (an early return, a panic unwinding) cleans up.
#[derive(Debug)]
pub struct PartialGuard {
    path: Option<PathBuf>,
}

impl PartialGuard {
    /// Guard `path`.
    pub fn new(path: PathBuf) -> PartialGuard {
        PartialGuard { path: Some(path) }
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// The file got its final name (or was handed on): do not remove it.
    pub fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = crate::fsx::remove_entry(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let d = Path::new("/x/disk.vhd");
        assert_eq!(journal(d), Path::new("/x/disk.vhd.vhdkit-journal"));
        assert_eq!(journal_tmp(d), Path::new("/x/disk.vhd.vhdkit-journal.tmp"));
        let p = partial_output(d);
        let part = partial(&p).unwrap();
        assert_eq!(part.target, "disk.vhd");
        assert_eq!(part.pid, std::process::id());
        assert!(part.alive);
        assert!(partial(&share_tmp(d)).is_some());
        for n in [
            "disk.vhd.vhdkit-journal",
            ".a.vhdkit-partial-12",
            ".a.vhdkit-share-tmp-3",
        ] {
            assert!(is_side_file(n), "{n}");
        }
        for n in [
            "disk.vhd",
            ".a.vhdkit-partial-",
            ".a.vhdkit-partial-1x",
            "a.vhdkit-partial-1",
        ] {
            assert!(!is_side_file(n), "{n}");
        }
    }

    #[test]
    fn stale_partials_of_dead_pids_are_removed_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("out.vhd");
        // pid_max on Linux is at most 2^22: this pid cannot be running.
        let dead = d.path().join(".out.vhd.vhdkit-partial-4999999");
        let live = partial_output(&dst);
        let other = d.path().join(".other.vhd.vhdkit-partial-4999999");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_partials(&dst), vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    #[test]
    fn guard_removes_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        drop(PartialGuard::new(a.clone()));
        assert!(!a.exists());
        std::fs::write(&a, b"x").unwrap();
        PartialGuard::new(a.clone()).keep();
        assert!(a.exists());
    }
}
