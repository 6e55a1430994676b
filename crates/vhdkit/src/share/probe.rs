//! How a dry run predicts what the real run will refuse: by meeting the same obstacles the same
//! way (the file opened for writing and locked; the folder asked by the kernel for write access),
//! never by reading mode bits, which mislead for another owner, ACLs or a read-only mount.
//! Nothing is written.

use std::path::Path;

use super::lock;
use super::scan::ScannedDisk;
use crate::disk::DiskFormat;

/// Why changing `path` will be refused: the file is opened for writing and the exclusive lock
/// taken, exactly as the real run does ([`lock::lock_for_change`]), then released at once.
pub fn change_refusal(path: &Path) -> Option<String> {
    lock::lock_for_change(path).err()
}

/// Why `path`'s folder will refuse to have a file created or removed in it (the journal beside
/// a VHD child, the deletion of a copy, the keeper in SHARED), asked of the kernel for the
/// effective user.
pub fn folder_refusal(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    folder_access(dir).err().map(|e| {
        format!(
            "its folder {} does not allow creating or removing files ({e})",
            dir.display()
        )
    })
}

/// Why changing this child will be refused, found the way the real run will meet it: the lock
/// (open for writing) and, for a VHD, its folder (the journal is created beside it).
pub(crate) fn child_refusal(d: &ScannedDisk) -> Option<String> {
    change_refusal(&d.path).or_else(|| {
        (d.format == DiskFormat::Vhd)
            .then(|| folder_refusal(&d.path))
            .flatten()
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
}
