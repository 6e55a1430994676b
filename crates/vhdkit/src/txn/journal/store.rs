//! Where a journal lives: the [`JournalStore`] interface (in memory for fault-injection tests)
//! and [`FileJournal`], the journal beside a disk file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec::MAX_JOURNAL_FILE;
use crate::sidefile;

/// Where a journal lives.
pub trait JournalStore {
    /// The journal's bytes, or `None` when there is none.
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Store `bytes` durably and atomically, replacing any journal.
    fn store(&self, bytes: &[u8]) -> io::Result<()>;
    /// Remove the journal durably.
    fn remove(&self) -> io::Result<()>;
    /// Where it is, for messages.
    fn describe(&self) -> String;

    /// Batch step: write the journal under a temporary name that no recovery reads. Need not
    /// be durable (a [`Barrier`](crate::txn::barrier::Barrier) follows). The default stores it durably at once, which is
    /// also correct (only slower).
    fn stage(&self, bytes: &[u8]) -> io::Result<()> {
        self.store(bytes)
    }
    /// Batch step: move the staged journal into place. Called only after a barrier made the
    /// staged bytes durable; need not be durable itself.
    fn publish(&self) -> io::Result<()> {
        Ok(())
    }
    /// Batch step: remove the journal; need not be durable (a barrier follows).
    fn discard(&self) -> io::Result<()> {
        self.remove()
    }
    /// Best-effort cleanup of a staged journal that will not be published.
    fn unstage(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The journal beside a disk file: `<file>.vhdkit-journal`.
#[derive(Debug, Clone)]
pub struct FileJournal {
    path: PathBuf,
    tmp: PathBuf,
}

impl FileJournal {
    /// The journal location for `disk`.
    pub fn for_disk(disk: &Path) -> FileJournal {
        FileJournal {
            path: sidefile::journal(disk),
            tmp: sidefile::journal_tmp(disk),
        }
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a journal is written before it is renamed into place (never read by recovery).
    pub fn tmp_path(&self) -> PathBuf {
        self.tmp.clone()
    }

    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(unix)]
        File::open(sidefile::folder_of(&self.path))?.sync_all()?;
        Ok(())
    }
}

impl JournalStore for FileJournal {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        // Whatever sits at the journal's name may have been planted: no link is followed, a
        // FIFO or device is refused without blocking, and the read is bounded.
        crate::fsx::read_side(&self.path, MAX_JOURNAL_FILE)
    }

    fn store(&self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.tmp_path();
        let mut f = crate::fsx::create_new(&tmp)?;
        // A journal that could not be written whole (ENOSPC) is removed, never left behind.
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        drop(f);
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &self.path)) {
            let _ = crate::fsx::remove_entry(&tmp);
            return Err(e);
        }
        self.sync_dir()
    }

    fn remove(&self) -> io::Result<()> {
        remove_if_present(&self.path)?;
        self.sync_dir()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn stage(&self, bytes: &[u8]) -> io::Result<()> {
        let mut f = crate::fsx::create_new(&self.tmp)?;
        let written = f.write_all(bytes);
        if written.is_err() {
            let _ = crate::fsx::remove_entry(&self.tmp);
        }
        written
    }

    fn publish(&self) -> io::Result<()> {
        fs::rename(self.tmp_path(), &self.path)
    }

    fn discard(&self) -> io::Result<()> {
        remove_if_present(&self.path)
    }

    fn unstage(&self) -> io::Result<()> {
        remove_if_present(&self.tmp)
    }
}

/// Remove `p`; a name already gone is not an error (a retried removal, a crash in between).
fn remove_if_present(p: &Path) -> io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
