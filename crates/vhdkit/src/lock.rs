//! One writer at a time: the exclusive advisory lock every vhdkit writer takes on a disk file.
//!
//! `reparent`, `repair`, `share`, `relink` and [`crate::WritableDisk::open`] (so `create` and
//! `convert` writers too) open the file for writing and take an exclusive advisory lock
//! ([`std::fs::File::try_lock`]: `flock(2)` on Unix, `LockFileEx` on Windows) before they
//! re-validate what they planned against and write. When another process holds a lock on it
//! (another vhdkit, `flock FILE cmd`, any program that locks), the change is refused at once and
//! the file is left alone: waiting would leave a plan made on bytes the other writer is
//! changing. The lock is advisory: it keeps out programs that lock, not programs that write
//! without asking. A read-only file is refused with its own reason; vhdkit never changes
//! permissions.
//!
//! Within one process the lock is re-entrant: `flock` locks belong to an open file description,
//! so a second open of the same file by the same process would conflict with the first (share
//! holds a child's lock while it repairs and reparents it). Locks are therefore shared per file
//! identity (device and inode) inside the process, and released when the last holder drops.

use std::fs::{File, TryLockError};
use std::io::ErrorKind;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};

/// The file's identity, to share one lock per file within the process.
type Key = (u64, u64);

/// Locks this process holds, by file identity.
static HELD: Mutex<Vec<(Key, Weak<Held>)>> = Mutex::new(Vec::new());

#[derive(Debug)]
struct Held {
    file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// An exclusive advisory lock on a file, released when the last holder in the process drops.
#[derive(Debug, Clone)]
pub struct FileLock {
    held: Arc<Held>,
}

impl FileLock {
    /// The locked descriptor, open for reading and writing: re-validate and write through it,
    /// so the bytes checked and the bytes written are those of the file that is locked (a name
    /// swapped for another file in between cannot receive the change).
    pub fn file(&self) -> &File {
        &self.held.file
    }
}

#[cfg(unix)]
fn key_of(f: &File) -> std::io::Result<Key> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn key_of(_: &File) -> std::io::Result<Key> {
    // No file identity in std off Unix: nothing is shared (a look-alike key could hand one
    // file's descriptor to a writer of another); a second lock in one process is refused.
    Err(std::io::Error::other("no file identity on this platform"))
}

/// Lock `path` for writing ([`lock_disk`]) and a duplicate of the locked descriptor to write
/// through (it shares the lock); keep the [`FileLock`] alive while writing.
pub(crate) fn locked_file(path: &Path) -> Result<(FileLock, File)> {
    let lock = lock_disk(path)?;
    let f = lock.file().try_clone().map_err(|e| Error::Io {
        path: Some(path.to_path_buf()),
        what: "duplicating the locked descriptor".into(),
        source: e,
    })?;
    Ok((lock, f))
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
    let key = if cfg!(unix) {
        Some(key_of(&file).map_err(|e| format!("cannot read its metadata: {e}"))?)
    } else {
        None
    };
    let mut held = HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    held.retain(|(_, w)| w.strong_count() > 0);
    if let Some(h) = held
        .iter()
        .find(|(k, _)| Some(*k) == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(FileLock { held: h });
    }
    match file.try_lock() {
        Ok(()) => {
            let h = Arc::new(Held { file });
            if let Some(k) = key {
                held.push((k, Arc::downgrade(&h)));
            }
            Ok(FileLock { held: h })
        }
        Err(TryLockError::WouldBlock) => Err(IN_USE.into()),
        Err(TryLockError::Error(e)) => Err(format!("cannot lock it: {e}")),
    }
}

/// What a second writer is told.
pub const IN_USE: &str =
    "in use by another process (it holds a lock on the file); close it and run again";

/// [`lock_for_change`] for a writer: the refusal is an [`Error::Locked`] when another process
/// holds the lock, an [`Error::Refused`] otherwise, naming the file (exit status 1 in the CLI,
/// one line).
pub fn lock_disk(path: &Path) -> Result<FileLock> {
    lock_for_change(path).map_err(|r| refusal(path, r))
}

/// The error for a `reason` from [`lock_for_change`] (to which a caller may have added a
/// remark): [`Error::Locked`] for [`IN_USE`], [`Error::Refused`] for the others.
pub fn refusal(path: &Path, reason: String) -> Error {
    let path = Some(path.to_path_buf());
    if reason.starts_with(IN_USE) {
        Error::Locked { path, reason }
    } else {
        Error::Refused { path, reason }
    }
}

/// True when another process holds a lock on `path` (checked with a shared lock taken and
/// released at once; touches nothing). A lock this process holds does not count.
pub fn is_locked_elsewhere(path: &Path) -> bool {
    let Ok(f) = crate::fsx::open_disk(path) else {
        return false;
    };
    if let Ok(key) = key_of(&f) {
        let held = HELD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.iter().any(|(k, w)| *k == key && w.strong_count() > 0) {
            return false;
        }
    }
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

    /// Another open file description stands for another process: `flock` does not know
    /// processes, only descriptions.
    fn other_holder(p: &Path) -> Option<File> {
        let f = File::open(p).unwrap();
        f.try_lock().ok().map(|()| f)
    }

    #[test]
    fn lock_is_exclusive_across_holders_and_released() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let l = lock_for_change(&p).unwrap();
        assert!(other_holder(&p).is_none(), "another holder got the lock");
        drop(l);
        let other = other_holder(&p).expect("released on drop");
        assert!(is_locked_elsewhere(&p));
        let e = lock_for_change(&p).unwrap_err();
        assert!(e.contains("in use by another process"), "{e}");
        let e = lock_disk(&p).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("in use"), "{e}");
        drop(other);
        assert!(!is_locked_elsewhere(&p));
        assert!(lock_for_change(&p).is_ok());
    }

    #[test]
    fn lock_is_reentrant_within_the_process() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let a = lock_for_change(&p).unwrap();
        let b = lock_for_change(&p).expect("a second holder in the same process");
        assert!(
            !is_locked_elsewhere(&p),
            "our own lock is not someone else's"
        );
        drop(a);
        assert!(
            other_holder(&p).is_none(),
            "still held by the second holder"
        );
        drop(b);
        assert!(other_holder(&p).is_some(), "released by the last holder");
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
