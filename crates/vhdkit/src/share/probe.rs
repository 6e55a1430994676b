//! How a dry run predicts what the real run will refuse: by meeting the same obstacles the same
//! way (the file opened for writing and locked; the folder asked by the kernel for write access),
//! never by reading mode bits, which mislead for another owner, ACLs or a read-only mount.
//! Nothing is written.

use std::path::Path;

use super::lock;
use super::scan::ScannedDisk;
use super::NoteReason;
use crate::disk::DiskFormat;

/// Why changing `path` will be refused: the file is opened for writing and the exclusive lock
/// taken, exactly as the real run does ([`lock::lock_for_change`]), then released at once.
pub fn change_refusal(path: &Path) -> Option<NoteReason> {
    lock::lock_for_change(path)
        .err()
        .map(NoteReason::CannotChange)
}

/// The error a change to the disk at `path` will be refused with, found the way the writers
/// meet it (the dry runs of `reparent` and `flatten`): its exclusive lock ([`change_refusal`]'s
/// probe, as an [`crate::Error::Locked`] or [`crate::Error::Refused`]), then for a VHD the
/// journal beside it ([`journal_refusal`]). Nothing is written.
pub(crate) fn change_error(path: &Path, format: DiskFormat) -> Option<crate::Error> {
    let why = lock::lock_for_change(path).err().or_else(|| {
        (format == DiskFormat::Vhd)
            .then(|| journal_refusal(path))
            .flatten()
            .map(|r| r.to_string())
    })?;
    Some(lock::refusal(path, why))
}

/// Why `path`'s folder will refuse to have a file created or removed in it (the journal beside
/// a VHD child, the deletion of a copy, the keeper in SHARED), asked of the kernel for the
/// effective user.
pub fn folder_refusal(path: &Path) -> Option<NoteReason> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    folder_access(dir).err().map(|e| NoteReason::FolderRefuses {
        folder: dir.to_path_buf(),
        error: e.to_string(),
    })
}

/// Why changing this child will be refused, found the way the real run will meet it: the lock
/// (open for writing) and, for a VHD, its folder (the journal is created beside it).
pub(crate) fn child_refusal(d: &ScannedDisk) -> Option<NoteReason> {
    change_refusal(&d.path).or_else(|| {
        (d.format == DiskFormat::Vhd)
            .then(|| journal_refusal(&d.path))
            .flatten()
    })
}

/// Why the journal of a VHD `disk` cannot be written beside it: the folder refuses new files,
/// or an entry already at one of the journal's names cannot be unlinked or replaced (a sticky
/// folder and another user's file; see [`sticky_refusal`]).
pub fn journal_refusal(disk: &Path) -> Option<NoteReason> {
    folder_refusal(disk)
        .or_else(|| sticky_refusal(&crate::sidefile::journal_tmp(disk)))
        .or_else(|| sticky_refusal(&crate::sidefile::journal(disk)))
}

/// Why the name `path` cannot be removed (a copy to delete): its folder refuses, or the folder
/// is sticky and the entry belongs to another user.
pub fn removal_refusal(path: &Path) -> Option<NoteReason> {
    folder_refusal(path).or_else(|| sticky_refusal(path))
}

/// Why the kernel will refuse to unlink `path` or rename over it for the sticky bit: in a
/// folder with `+t` (`/tmp`, shared drop folders) only the entry's owner, the folder's owner or
/// a process with `CAP_FOWNER` may, whatever the folder's write bits say. The rule is applied
/// exactly as the kernel does, to the entry itself (a link's own owner, not its target's) and
/// the filesystem uid and effective capabilities of this process; `None` when nothing is at
/// `path`, the folder is not sticky, or the process may.
pub fn sticky_refusal(path: &Path) -> Option<NoteReason> {
    let entry = std::fs::symlink_metadata(path).ok()?;
    let dir = crate::sidefile::folder_of(path);
    let dir_md = std::fs::metadata(dir).ok()?;
    let (owner, dir_owner) = sticky_owners(&entry, &dir_md)?;
    let me = creds()?;
    if me.fowner || me.fsuid == owner || me.fsuid == dir_owner {
        return None;
    }
    Some(NoteReason::StickyFolder {
        path: path.to_path_buf(),
        folder: dir.to_path_buf(),
        owner,
        folder_owner: dir_owner,
    })
}

/// Why deleting the copy `path` will be refused: its name cannot be removed
/// ([`removal_refusal`]), or another process holds a lock on it (the real run checks that
/// before deleting, with a shared lock taken and released at once, as here).
pub fn copy_refusal(path: &Path) -> Option<NoteReason> {
    removal_refusal(path).or_else(|| {
        lock::is_locked_elsewhere(path).then(|| NoteReason::CannotChange(lock::IN_USE.to_string()))
    })
}

/// Why the kernel will refuse to hard-link `src` (the first half of moving a keeper into
/// SHARED). With `fs.protected_hardlinks = 1` (the default on most Linux systems) a process may
/// link only a file it owns (or holds `CAP_FOWNER` for), or a regular file that is neither
/// set-user-id nor set-group-id-executable and that it may both read and write. The rule is
/// applied as the kernel does, the read and write access asked of the kernel itself; nothing is
/// linked. `None` when the link is allowed, or the setting or credentials cannot be read (then
/// no prediction is made; the real run still meets the rule).
pub fn hardlink_refusal(src: &Path) -> Option<NoteReason> {
    if !protected_hardlinks()? {
        return None;
    }
    let md = std::fs::symlink_metadata(src).ok()?;
    let me = creds()?;
    let (owner, safe_mode) = link_source(&md)?;
    if me.fowner || me.fsuid == owner || (safe_mode && file_access_rw(src).is_ok()) {
        return None;
    }
    Some(NoteReason::HardLinkRefused {
        path: src.to_path_buf(),
        owner,
    })
}

/// `fs.protected_hardlinks` is on; `None` when it cannot be read (not Linux, no `/proc`).
fn protected_hardlinks() -> Option<bool> {
    use std::io::Read;
    let f = std::fs::File::open("/proc/sys/fs/protected_hardlinks").ok()?;
    let mut v = String::new();
    f.take(16).read_to_string(&mut v).ok()?;
    Some(v.trim() != "0")
}

/// `(owner, mode allows a link by others)`: a regular file, not set-user-id, and not
/// set-group-id with group execute (the kernel's `safe_hardlink_source`, but for access).
#[cfg(unix)]
fn link_source(md: &std::fs::Metadata) -> Option<(u32, bool)> {
    use std::os::unix::fs::MetadataExt;
    const S_ISUID: u32 = 0o4000;
    const S_ISGID: u32 = 0o2000;
    const S_IXGRP: u32 = 0o0010;
    let mode = md.mode();
    let safe = md.file_type().is_file()
        && mode & S_ISUID == 0
        && mode & (S_ISGID | S_IXGRP) != (S_ISGID | S_IXGRP);
    Some((md.uid(), safe))
}

#[cfg(not(unix))]
fn link_source(_md: &std::fs::Metadata) -> Option<(u32, bool)> {
    None
}

/// `(entry owner, folder owner)` when the folder is sticky.
#[cfg(unix)]
fn sticky_owners(entry: &std::fs::Metadata, dir: &std::fs::Metadata) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    const S_ISVTX: u32 = 0o1000;
    (dir.mode() & S_ISVTX != 0).then(|| (entry.uid(), dir.uid()))
}

#[cfg(not(unix))]
fn sticky_owners(_entry: &std::fs::Metadata, _dir: &std::fs::Metadata) -> Option<(u32, u32)> {
    None
}

/// The credentials the kernel's sticky check uses.
struct Creds {
    fsuid: u32,
    /// `CAP_FOWNER` is in the effective set.
    fowner: bool,
}

/// From `/proc/self/status` (`Uid:` real, effective, saved, filesystem; `CapEff:` hex). `None`
/// when it cannot be read: then no prediction is made (the real run still meets the rule).
fn creds() -> Option<Creds> {
    use std::io::Read;
    let f = std::fs::File::open("/proc/self/status").ok()?;
    let mut status = String::new();
    f.take(64 << 10).read_to_string(&mut status).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let fsuid = field("Uid:")?.split_whitespace().nth(3)?.parse().ok()?;
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    const CAP_FOWNER: u32 = 3;
    Some(Creds {
        fsuid,
        fowner: cap_eff & (1 << CAP_FOWNER) != 0,
    })
}

#[cfg(target_os = "linux")]
fn folder_access(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    accessat(
        CWD,
        dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .map_err(std::io::Error::from)
}

/// Whether this process may read and write `file`, asked of the kernel (effective ids, and a
/// read-only mount refuses writing): the access the kernel demands of a link to another user's
/// file.
#[cfg(target_os = "linux")]
fn file_access_rw(file: &Path) -> std::io::Result<()> {
    use rustix::fs::{accessat, Access, AtFlags, CWD};
    accessat(
        CWD,
        file,
        Access::READ_OK | Access::WRITE_OK,
        AtFlags::EACCESS,
    )
    .map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn file_access_rw(_file: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn folder_access(dir: &Path) -> std::io::Result<()> {
    if std::fs::metadata(dir)?.permissions().readonly() {
        return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_file_and_folder_pass_a_missing_folder_does_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(change_refusal(&p), None);
        assert_eq!(folder_refusal(&p), None);
        assert!(folder_refusal(&d.path().join("missing/f")).is_some());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn sticky_rule_follows_the_owners_and_the_bit() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let me = creds().unwrap();
        assert_eq!(me.fsuid, std::fs::metadata(&p).unwrap().uid());
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Our own file in our own sticky folder, and nothing at a name: no refusal.
        assert_eq!(sticky_refusal(&p), None);
        assert_eq!(sticky_refusal(&d.path().join("none")), None);
        assert_eq!(removal_refusal(&p), None);
        // Another user's file in another user's sticky folder: only CAP_FOWNER may.
        let entry = std::fs::metadata(&p).unwrap();
        let dir = std::fs::metadata(d.path()).unwrap();
        assert_eq!(sticky_owners(&entry, &dir), Some((me.fsuid, me.fsuid)));
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = std::fs::metadata(d.path()).unwrap();
        assert_eq!(sticky_owners(&entry, &dir), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn hard_link_rule_follows_the_kernels() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let mode = |m: u32| {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
            link_source(&std::fs::symlink_metadata(&p).unwrap()).unwrap()
        };
        let me = std::fs::metadata(&p).unwrap().uid();
        assert_eq!(mode(0o644), (me, true));
        // Set-user-id, or set-group-id with group execute: never linkable by others.
        assert_eq!(mode(0o4644), (me, false));
        assert_eq!(mode(0o2654), (me, false));
        assert_eq!(mode(0o2644), (me, true));
        // A link itself (its own owner) and a folder are not safe sources.
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(
            !link_source(&std::fs::symlink_metadata(&l).unwrap())
                .unwrap()
                .1
        );
        assert!(
            !link_source(&std::fs::metadata(d.path()).unwrap())
                .unwrap()
                .1
        );
        // The owner may always link: no refusal for this process's own file, whatever its mode.
        mode(0o000);
        assert_eq!(hardlink_refusal(&p), None);
        assert_eq!(hardlink_refusal(&d.path().join("none")), None);
    }
}
