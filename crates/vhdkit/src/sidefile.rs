//! The names of every file vhdkit puts beside a disk, in one place.
//!
//! - `<file>.vhdkit-journal`: the redo journal of an interrupted VHD metadata change
//!   ([`crate::txn::journal`]), and `<file>.vhdkit-journal.tmp` where it is written first;
//! - `.<name>.vhdkit-partial-<host>-<pid>`: an output being built (create, convert) by process
//!   `<pid>` on host `<host>`;
//! - `.<name>.vhdkit-share-tmp-<host>-<pid>`: a keeper copy being made by `share` in process
//!   `<pid>` on host `<host>`.
//!
//! Partial outputs carry the host and pid of the process writing them, so a later run can tell
//! a leftover of a killed run (same host, its pid is gone) from one that is still being written.
//! A pid means something only on the host that runs it: on storage shared between hosts, a
//! partial output of another host (or one whose host is not recorded: older vhdkit, or a host
//! with no identity) is never removed, and `check` reports it as unknown. `<host>` is
//! [`host_id`]: 12 hex digits of a SHA-256 of `/etc/machine-id` and the host name.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    partial_output_of(dst, std::process::id())
}

/// The name process `pid` of this host builds `dst` under (for tools and tests that look for
/// another run's partial output).
pub fn partial_output_of(dst: &Path, pid: u32) -> PathBuf {
    hidden(dst, PARTIAL, pid)
}

/// The name this process copies a shared keeper `keeper` under.
pub fn share_tmp(keeper: &Path) -> PathBuf {
    hidden(keeper, SHARE_TMP, std::process::id())
}

/// This host's identity in partial-output names: the first 12 hex digits of a SHA-256 of
/// `/etc/machine-id` and the host name (both, so that clones sharing a machine id and containers
/// sharing a host name still differ). `None` when neither can be read: then names carry no
/// host and no leftover is ever taken for this host's.
pub fn host_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(compute_host_id).as_deref()
}

fn compute_host_id() -> Option<String> {
    use sha2::{Digest, Sha256};
    let machine = read_small(Path::new("/etc/machine-id"));
    let name = read_small(Path::new("/proc/sys/kernel/hostname"))
        .or_else(|| read_small(Path::new("/etc/hostname")));
    if machine.is_none() && name.is_none() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(b"vhdkit host\0");
    h.update(machine.unwrap_or_default().trim().as_bytes());
    h.update(b"\0");
    h.update(name.unwrap_or_default().trim().as_bytes());
    let digest = h.finalize();
    let hex: String = digest
        .iter()
        .take(HOST_ID_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(hex)
}

/// A short system file (`/etc/machine-id`, the host name): at most 256 bytes, non-empty.
fn read_small(p: &Path) -> Option<String> {
    let f = std::fs::File::open(p).ok()?;
    let mut s = String::new();
    f.take(256).read_to_string(&mut s).ok()?;
    (!s.trim().is_empty()).then_some(s)
}

/// Hex digits of [`host_id`].
const HOST_ID_LEN: usize = 12;

/// Whether `name` (a file name) is a journal or its temporary name. Problems at these names are
/// findings of the disk beside them, never of a folder walk.
pub fn is_journal_name(name: &str) -> bool {
    name.ends_with(JOURNAL) || name.ends_with(JOURNAL_TMP)
}

/// Whether `name` (a file name) is one of vhdkit's side files (never a disk to act on).
pub fn is_side_file(name: &str) -> bool {
    is_journal_name(name) || is_merge_record_name(name) || partial_of(name).is_some()
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
    /// The host that process ran on ([`host_id`]); `None` when the name records none.
    pub host: Option<String>,
    /// Whether its writer is known to run, known to be gone, or cannot be known here.
    pub writer: Writer,
}

/// What is known of the process that wrote a partial output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// A process of this host with that pid runs (or `/proc` cannot tell): in progress.
    Running,
    /// No process of this host has that pid: a leftover of a killed run, safe to remove.
    Gone,
    /// Written on another host, or the name records no host: its pid means nothing here, so
    /// it may still be in progress; never removed automatically.
    Unknown,
}

/// `(target name, host, pid)` when `name` is a partial output or share temporary copy.
fn partial_of(name: &str) -> Option<(String, Option<String>, u32)> {
    let rest = name.strip_prefix('.')?;
    [PARTIAL, SHARE_TMP].iter().find_map(|marker| {
        let at = rest.rfind(marker)?;
        let tail = rest.get(at + marker.len()..)?;
        let (host, pid) = match tail.rsplit_once('-') {
            Some((h, p)) => (Some(h), p),
            None => (None, tail),
        };
        let digits = |s: &str, hex: bool| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
        };
        if !digits(pid, false) || host.is_some_and(|h| h.len() != HOST_ID_LEN || !digits(h, true)) {
            return None;
        }
        Some((
            rest.get(..at)?.to_string(),
            host.map(str::to_string),
            pid.parse().ok()?,
        ))
    })
}

/// The partial output at `path`, when its name is one.
pub fn partial(path: &Path) -> Option<Partial> {
    let name = path.file_name()?.to_str()?;
    let (target, host, pid) = partial_of(name)?;
    let writer = match (&host, host_id()) {
        (Some(h), Some(me)) if h == me => {
            if pid_alive(pid) {
                Writer::Running
            } else {
                Writer::Gone
            }
        }
        _ => Writer::Unknown,
    };
    Some(Partial {
        path: path.to_path_buf(),
        target,
        pid,
        host,
        writer,
    })
}

/// Remove leftovers of killed runs that were building `dst` (same folder, same target name,
/// this host, pid no longer running). Best effort: returns what was removed.
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
                && part.writer == Writer::Gone
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
    match host_id() {
        Some(host) => p.with_file_name(format!(".{name}{marker}{host}-{pid}")),
        None => p.with_file_name(format!(".{name}{marker}{pid}")),
    }
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

// The merge record (issue 12): `<ancestor>.vhdkit-merge`, and `.tmp` while it is written.
const MERGE: &str = ".vhdkit-merge";
const MERGE_TMP: &str = ".vhdkit-merge.tmp";

/// The merge record beside `ancestor` (the disk a merge writes into; see `merge::record`).
pub fn merge_record(ancestor: &Path) -> PathBuf {
    with_suffix(ancestor, MERGE)
}

/// Where the merge record of `ancestor` is written before it is renamed into place.
pub fn merge_record_tmp(ancestor: &Path) -> PathBuf {
    with_suffix(ancestor, MERGE_TMP)
}

/// Whether `name` (a file name) is a merge record or its temporary name.
pub fn is_merge_record_name(name: &str) -> bool {
    name.ends_with(MERGE) || name.ends_with(MERGE_TMP)
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
        assert_eq!(part.host.as_deref(), host_id());
        assert_eq!(part.writer, Writer::Running);
        let me = host_id().unwrap();
        assert_eq!(me.len(), HOST_ID_LEN);
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            format!(".disk.vhd.vhdkit-partial-{me}-{}", std::process::id())
        );
        assert!(partial(&share_tmp(d)).is_some());
        for n in [
            "disk.vhd.vhdkit-journal",
            ".a.vhdkit-partial-12",
            ".a.vhdkit-share-tmp-3",
            ".a.vhdkit-partial-0123456789ab-12",
            ".a-b.vhdkit-share-tmp-0123456789ab-3",
        ] {
            assert!(is_side_file(n), "{n}");
        }
        for n in [
            "disk.vhd",
            ".a.vhdkit-partial-",
            ".a.vhdkit-partial-1x",
            "a.vhdkit-partial-1",
            ".a.vhdkit-partial-0123456789AB-1",
            ".a.vhdkit-partial-0123456789a-1",
            ".a.vhdkit-partial-0123456789ab-",
            ".a.vhdkit-partial--1",
        ] {
            assert!(!is_side_file(n), "{n}");
        }
    }

    /// pid_max on Linux is at most 2^22: this pid cannot be running.
    const DEAD: u32 = 4_999_999;

    /// A host id that is not this host's.
    fn other_host() -> &'static str {
        if host_id() == Some("0123456789ab") {
            "ba9876543210"
        } else {
            "0123456789ab"
        }
    }

    #[test]
    fn stale_partials_of_dead_pids_of_this_host_are_removed_others_kept() {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("out.vhd");
        let dead = partial_output_of(&dst, DEAD);
        let dead_copy = d.path().join(format!(
            ".out.vhd.vhdkit-share-tmp-{}-{DEAD}",
            host_id().unwrap()
        ));
        let live = partial_output(&dst);
        let other = partial_output_of(&d.path().join("other.vhd"), DEAD);
        // Another host's run (its pid means nothing here) and a name without a host.
        let elsewhere = d
            .path()
            .join(format!(".out.vhd.vhdkit-partial-{}-{DEAD}", other_host()));
        let no_host = d.path().join(format!(".out.vhd.vhdkit-partial-{DEAD}"));
        for p in [&dead, &dead_copy, &live, &other, &elsewhere, &no_host] {
            std::fs::write(p, b"x").unwrap();
        }
        let mut removed = remove_stale_partials(&dst);
        removed.sort();
        let mut want = vec![dead.clone(), dead_copy.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert!(!dead.exists() && !dead_copy.exists());
        for p in [&live, &other, &elsewhere, &no_host] {
            assert!(p.exists(), "{}", p.display());
        }
        assert_eq!(partial(&elsewhere).unwrap().writer, Writer::Unknown);
        assert_eq!(
            partial(&elsewhere).unwrap().host.as_deref(),
            Some(other_host())
        );
        assert_eq!(partial(&no_host).unwrap().writer, Writer::Unknown);
        assert_eq!(partial(&no_host).unwrap().host, None);
        assert_eq!(partial(&other).unwrap().writer, Writer::Gone);
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
