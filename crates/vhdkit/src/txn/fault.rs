//! In-memory files that fail on purpose, to prove every write path crash-safe.
//!
//! A [`FaultPlan`] counts mutating operations (write, sync, resize, journal store operations)
//! across every file that shares it, and makes operation number `fail_at` (1-based) and every
//! one after it fail with `EIO`, as if the process had died there. A [`FaultyFile`] keeps two
//! images: what a reader would see if every write reached the disk, and what survives if only
//! synced writes did. Tests reopen both after every injected failure.
//!
//! Batches: one [`FaultPlan`] is shared by every file and journal of a batch and by its
//! [`FaultBarrier`]; a barrier is one counted operation that, when it succeeds, makes every
//! write so far durable on every file and journal it covers. A crash before a barrier loses
//! the unsynced writes of every file: [`FaultyFile::contents_synced`] and
//! [`MemJournal::load_synced`] give each file's state at the crash point if nothing unsynced
//! survived; `contents_all_written` / `load` if everything did.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::barrier::Barrier;
use super::journal::JournalStore;
use super::Sink;
use crate::source::Source;

/// Shared counter of mutating operations and the operation at which to fail.
#[derive(Debug, Default)]
pub struct FaultPlan {
    ops: AtomicUsize,
    fail_at: Option<usize>,
}

impl FaultPlan {
    /// Fail at mutating operation `n` (1-based) and after; `None` never fails.
    pub fn new(fail_at: Option<usize>) -> Arc<FaultPlan> {
        Arc::new(FaultPlan {
            ops: AtomicUsize::new(0),
            fail_at,
        })
    }

    /// Count one operation; `Err` once the failure point is reached.
    pub fn step(&self, what: &str) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        match self.fail_at {
            Some(f) if n >= f => Err(io::Error::other(format!(
                "injected failure at operation {n} ({what})"
            ))),
            _ => Ok(()),
        }
    }

    /// Operations counted so far (including failed ones).
    pub fn count(&self) -> usize {
        self.ops.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Default)]
struct Images {
    /// Every write applied.
    all: Vec<u8>,
    /// Only writes followed by a successful sync.
    synced: Vec<u8>,
}

/// An in-memory file whose writes can be made to fail.
#[derive(Debug, Clone)]
pub struct FaultyFile {
    images: Arc<Mutex<Images>>,
    plan: Arc<FaultPlan>,
}

impl FaultyFile {
    /// A file holding `data` (already durable).
    pub fn new(data: Vec<u8>, plan: Arc<FaultPlan>) -> FaultyFile {
        FaultyFile {
            images: Arc::new(Mutex::new(Images {
                all: data.clone(),
                synced: data,
            })),
            plan,
        }
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Images>> {
        self.images
            .lock()
            .map_err(|_| io::Error::other("fault file lock poisoned"))
    }

    /// Contents if every write so far reached the disk.
    pub fn contents_all_written(&self) -> Vec<u8> {
        self.lock().map(|i| i.all.clone()).unwrap_or_default()
    }

    /// Contents if only synced writes survived the crash.
    pub fn contents_synced(&self) -> Vec<u8> {
        self.lock().map(|i| i.synced.clone()).unwrap_or_default()
    }

    /// Make every write durable without counting an operation (a [`FaultBarrier`] counts).
    fn persist(&self) -> io::Result<()> {
        let mut i = self.lock()?;
        i.synced = i.all.clone();
        Ok(())
    }
}

impl Source for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let i = self.lock()?;
        i.all.as_slice().read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock()?.all.len() as u64)
    }
}

fn range(offset: u64, len: usize) -> io::Result<(usize, usize)> {
    let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let end = start
        .checked_add(len)
        .ok_or_else(|| io::Error::other("range overflows"))?;
    Ok((start, end))
}

impl Sink for FaultyFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.plan.step("write")?;
        let (start, end) = range(offset, buf.len())?;
        let mut i = self.lock()?;
        if i.all.len() < end {
            i.all.resize(end, 0);
        }
        i.all[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.plan.step("sync")?;
        let mut i = self.lock()?;
        i.synced = i.all.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.plan.step("set_len")?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        let mut i = self.lock()?;
        i.all.resize(len, 0);
        Ok(())
    }
}

/// What a [`MemJournal`] holds: the journal as written and as durable, and a staged one.
#[derive(Debug, Clone, Default)]
struct JState {
    /// The journal in place, if every operation so far reached the disk.
    all: Option<Vec<u8>>,
    /// The journal in place, if only what a barrier (or `store`) made durable survived.
    synced: Option<Vec<u8>>,
    /// A staged journal under its temporary name, and whether its bytes are durable.
    tmp: Option<(Vec<u8>, bool)>,
    /// Set when a staged journal was published before its bytes were durable (a rename could
    /// then publish a torn journal): the batch protocol must never do this.
    published_unsynced: bool,
}

/// An in-memory journal location sharing a [`FaultPlan`]. Storing is atomic (as the real one's
/// write-then-rename is): a failed store leaves the previous state.
#[derive(Debug, Clone)]
pub struct MemJournal {
    slot: Arc<Mutex<JState>>,
    plan: Arc<FaultPlan>,
}

impl MemJournal {
    /// An empty journal location.
    pub fn new(plan: Arc<FaultPlan>) -> MemJournal {
        MemJournal {
            slot: Arc::new(Mutex::new(JState::default())),
            plan,
        }
    }

    /// A journal location already holding `bytes` (for tests of foreign journals).
    pub fn with(bytes: Vec<u8>, plan: Arc<FaultPlan>) -> MemJournal {
        MemJournal {
            slot: Arc::new(Mutex::new(JState {
                all: Some(bytes.clone()),
                synced: Some(bytes),
                ..JState::default()
            })),
            plan,
        }
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, JState>> {
        self.slot
            .lock()
            .map_err(|_| io::Error::other("journal lock poisoned"))
    }

    /// The journal in place if only durable operations survived the crash.
    pub fn load_synced(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock()?.synced.clone())
    }

    /// True when a staged journal was ever published before a barrier made its bytes durable.
    pub fn published_unsynced(&self) -> bool {
        self.lock().map(|j| j.published_unsynced).unwrap_or(true)
    }

    /// True while a journal is staged under its temporary name (not published nor removed).
    pub fn staged(&self) -> bool {
        self.lock().map(|j| j.tmp.is_some()).unwrap_or(true)
    }

    /// Make every operation durable without counting one (a [`FaultBarrier`] counts).
    fn persist(&self) -> io::Result<()> {
        let mut j = self.lock()?;
        j.synced = j.all.clone();
        if let Some((_, durable)) = j.tmp.as_mut() {
            *durable = true;
        }
        Ok(())
    }
}

impl JournalStore for MemJournal {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock()?.all.clone())
    }

    fn store(&self, bytes: &[u8]) -> io::Result<()> {
        self.plan.step("journal store")?;
        let mut j = self.lock()?;
        j.all = Some(bytes.to_vec());
        j.synced = Some(bytes.to_vec());
        Ok(())
    }

    fn remove(&self) -> io::Result<()> {
        self.plan.step("journal remove")?;
        let mut j = self.lock()?;
        j.all = None;
        j.synced = None;
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory journal".into()
    }

    fn stage(&self, bytes: &[u8]) -> io::Result<()> {
        self.plan.step("journal stage")?;
        self.lock()?.tmp = Some((bytes.to_vec(), false));
        Ok(())
    }

    fn publish(&self) -> io::Result<()> {
        self.plan.step("journal publish")?;
        let mut j = self.lock()?;
        let (bytes, durable) = j
            .tmp
            .take()
            .ok_or_else(|| io::Error::other("no staged journal to publish"))?;
        if !durable {
            j.published_unsynced = true;
        }
        j.all = Some(bytes);
        Ok(())
    }

    fn discard(&self) -> io::Result<()> {
        self.plan.step("journal discard")?;
        self.lock()?.all = None;
        Ok(())
    }

    fn unstage(&self) -> io::Result<()> {
        self.lock()?.tmp = None;
        Ok(())
    }
}

/// A barrier over in-memory files and journals: one counted operation; when it succeeds every
/// write so far to each of them becomes durable.
#[derive(Debug, Clone)]
pub struct FaultBarrier {
    plan: Arc<FaultPlan>,
    files: Vec<FaultyFile>,
    journals: Vec<MemJournal>,
}

impl FaultBarrier {
    /// A barrier covering `files` and `journals`, counting on `plan`.
    pub fn new(plan: Arc<FaultPlan>, files: Vec<FaultyFile>, journals: Vec<MemJournal>) -> Self {
        FaultBarrier {
            plan,
            files,
            journals,
        }
    }
}

impl Barrier for FaultBarrier {
    fn barrier(&self) -> io::Result<()> {
        self.plan.step("barrier")?;
        for f in &self.files {
            f.persist()?;
        }
        for j in &self.journals {
            j.persist()?;
        }
        Ok(())
    }
}

/// Reopen a crash image: `image` as the file and `journal` (if any) beside it, then
/// [`recover`](super::journal::recover) it without faults. Returns what recovery did, the file
/// after it, and the journal left behind.
pub fn recover_crash_image(
    image: Vec<u8>,
    journal: Option<Vec<u8>>,
) -> (super::journal::Recovery, Vec<u8>, Option<Vec<u8>>) {
    let plan = FaultPlan::new(None);
    let file = FaultyFile::new(image, plan.clone());
    let store = match journal {
        Some(b) => MemJournal::with(b, plan),
        None => MemJournal::new(plan),
    };
    let r = super::journal::recover(&file, &store).unwrap_or_else(|e| {
        super::journal::Recovery::Foreign {
            reason: format!("recovery failed: {e}"),
        }
    });
    let left = store.load().unwrap_or_default();
    (r, file.contents_all_written(), left)
}
