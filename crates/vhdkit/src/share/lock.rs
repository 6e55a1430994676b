//! Advisory locks on the files `share` and `relink` change.
//!
//! Before changing a file, vhdkit opens it for writing and takes an exclusive advisory lock
//! ([`std::fs::File::try_lock`]: `flock(2)` on Unix, `LockFileEx` on Windows). When another
//! process holds a lock on it, the change is refused politely and the file is left alone. The
//! lock is advisory: it keeps out programs that lock (vhdkit itself, and anything using
//! `flock`), not programs that write without asking. A read-only file is refused with its own
//! reason; vhdkit never changes permissions.

use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// An exclusive advisory lock on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Why a file cannot be changed now.
pub fn read_only_reason(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().readonly() => Some(
            "the file is read-only; vhdkit does not change permissions (make it writable to \
             include it)"
                .into(),
        ),
        Ok(_) => None,
        Err(e) => Some(format!("cannot read its metadata: {e}")),
    }
}

/// Open `path` for writing and take an exclusive advisory lock; `Err(reason)` (one line) when
/// it is read-only, cannot be opened for writing, or another process holds a lock on it.
pub fn lock_for_change(path: &Path) -> Result<FileLock, String> {
    if let Some(r) = read_only_reason(path) {
        return Err(r);
    }
    let file = match crate::fsx::open_disk_rw(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(format!(
                "the file cannot be opened for writing ({e}); vhdkit does not change permissions"
            ))
        }
        Err(e) => return Err(format!("cannot open it for writing: {e}")),
    };
    match file.try_lock() {
        Ok(()) => Ok(FileLock {
            file,
            path: path.to_path_buf(),
        }),
        Err(TryLockError::WouldBlock) => Err(
            "in use by another process (it holds a lock on the file); close it and run again"
                .into(),
        ),
        Err(TryLockError::Error(e)) => Err(format!("cannot lock it: {e}")),
    }
}

/// True when another process holds a lock on `path` (checked with a shared lock taken and
/// released at once; touches nothing).
pub fn is_locked_elsewhere(path: &Path) -> bool {
    let Ok(f) = crate::fsx::open_disk(path) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => {
            let _ = f.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_and_released() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let l = lock_for_change(&p).unwrap();
        assert!(is_locked_elsewhere(&p));
        let e = lock_for_change(&p).unwrap_err();
        assert!(e.contains("in use by another process"), "{e}");
        drop(l);
        assert!(!is_locked_elsewhere(&p));
        assert!(lock_for_change(&p).is_ok());
    }

    #[test]
    fn read_only_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(&p, perm).unwrap();
        let e = lock_for_change(&p).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
    }
}
