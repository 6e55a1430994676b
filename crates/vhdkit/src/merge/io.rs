//! Every change a merge makes to the file system goes through [`Io`]: the writes, flushes
//! and resizes of the files it writes (ANCESTOR, and D's linkage for a VHDX), the payload the
//! kernel copies, and the record's create, flush, rename and removal, the deletions and the
//! folder syncs. The real layer passes them on; the fault-injection layer (tests, feature
//! `test-support`) counts them on a shared [`FaultPlan`] and fails operation N and every one
//! after it, as if the process had stopped there: what was done before stays on disk.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::source::Source;
#[cfg(feature = "test-support")]
use crate::txn::fault::FaultPlan;
use crate::txn::Sink;

/// The merge's way to the file system.
#[derive(Debug, Clone, Default)]
pub(crate) struct Io {
    #[cfg(feature = "test-support")]
    fault: Option<Arc<FaultPlan>>,
}

impl Io {
    /// A layer failing as `plan` says.
    #[cfg(feature = "test-support")]
    pub(crate) fn faulty(plan: Arc<FaultPlan>) -> Io {
        Io { fault: Some(plan) }
    }

    /// Count one change about to be made; an error once the failure point is reached.
    pub(crate) fn step(&self, what: &str) -> io::Result<()> {
        #[cfg(feature = "test-support")]
        if let Some(p) = &self.fault {
            return p.step(what);
        }
        let _ = what;
        Ok(())
    }

    /// `file` as the sink the writers use, counted by this layer.
    pub(crate) fn sink(&self, file: File) -> IoFile {
        IoFile {
            file: Arc::new(file),
            io: self.clone(),
        }
    }

    /// Flush `f`.
    pub(crate) fn sync(&self, f: &File) -> io::Result<()> {
        self.step("fsync")?;
        f.sync_all()
    }

    /// Rename `from` to `to`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step("rename")?;
        std::fs::rename(from, to)
    }

    /// Remove the entry at `p` (nothing there is fine).
    pub(crate) fn remove(&self, p: &Path) -> io::Result<()> {
        if !crate::fsx::entry_exists(p) {
            return Ok(());
        }
        self.step("unlink")?;
        crate::fsx::remove_entry(p)
    }

    /// Create `p`, which must not exist.
    pub(crate) fn create_new(&self, p: &Path) -> io::Result<File> {
        self.step("create")?;
        crate::fsx::create_new(p)
    }

    /// Write all of `buf` to a file just created.
    pub(crate) fn write_all(&self, f: &mut File, buf: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.step("write")?;
        f.write_all(buf)
    }
}

/// A file the merge writes, shared by its writer and the parses of it (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct IoFile {
    file: Arc<File>,
    io: Io,
}

impl IoFile {
    /// The file itself (the kernel copies payload into it; `Io::step` counts each copy).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

impl Source for IoFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Source::read_exact_at(&*self.file, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Source::len(&*self.file)
    }
}

impl Sink for IoFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.io.step("pwrite")?;
        Sink::write_all_at(&*self.file, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.io.step("fsync")?;
        Sink::sync(&*self.file)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.io.step("ftruncate")?;
        Sink::set_len(&*self.file, len)
    }
}
