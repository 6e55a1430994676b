//! Redo journal for formats without a log of their own (VHD).
//!
//! Protocol for applying a [`Plan`]:
//! 1. check the file still holds the plan's old bytes (nothing changed since planning);
//! 2. store the journal (old and new bytes of every write, CRC-32C) durably and atomically:
//!    written under a temporary name, synced, renamed to `<file>.vhdkit-journal`, folder synced;
//! 3. resize if the file grows, apply every write, sync;
//! 4. remove the journal.
//!
//! A crash before step 2 completes leaves no journal and an untouched file. A crash after it
//! leaves a journal whose every range holds either its old or its new bytes: [`recover`] then
//! writes the new bytes (roll forward) and removes the journal. A journal whose ranges match
//! neither (the file was changed or replaced since) is never applied: it is reported and left.
//!
//! # Batches
//! [`apply_batch`] changes many files with the same per-file journals (so every later open,
//! the read-only overlay, `repair` and the next write recover each file exactly as above) but
//! replaces the per-file `fsync`s by four [`Barrier`]s for the whole batch (on Linux one
//! `syncfs` per file system, [`super::barrier::FsBarrier`]):
//! 1. check every file; write every journal under its temporary name (`.vhdkit-journal.tmp`),
//!    not synced; **barrier 1**;
//! 2. rename every journal into place; **barrier 2**;
//! 3. resize and write every file; **barrier 3**;
//! 4. remove every journal; **barrier 4**.
//!
//! Crash analysis, per file (a crash before a barrier may lose any unsynced write of *every*
//! file in the batch, in any combination; recovery looks at one file and its journal at a
//! time, so each file is analysed alone):
//! - before barrier 1 completes: at most a temporary journal exists, which recovery never
//!   reads; no file was written. The file is old.
//! - between barrier 1 and barrier 2: the renamed journal may or may not be in place; if it is,
//!   its bytes are complete (barrier 1 made them durable before the rename, so a rename can
//!   never publish a torn journal) and every range of the file holds its old bytes (files are
//!   written only after barrier 2). [`recover`] sees `Pending` and rolls forward, or finds no
//!   journal: the file ends old or new, both allowed.
//! - between barrier 2 and barrier 3: the journal is durable; each range holds old or new
//!   bytes (writes are whole ranges; a torn sector inside a range is the same risk as for
//!   [`apply`]): roll forward gives new.
//! - after barrier 3: every file holds its new bytes durably. A journal still present (removal
//!   not yet durable) has all ranges new: `Complete`, removed by recovery (`AlreadyComplete`).
//! - after barrier 4: nothing is left.
//!
//! A failed barrier stops the batch: every file still in it is reported failed, and its journal
//! (if any was published) is finished by the next open as above.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::barrier::Barrier;
use super::{Plan, Sink, WriteOp};
use crate::error::{Error, Result};
use crate::source::{source_len, Source};

const MAGIC: &[u8; 8] = b"VHDKITJ1";
const VERSION: u32 = 1;
/// A journal holds metadata only (headers, locators, footers); 64 MiB is far beyond any plan.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;
/// The most a journal file may hold: what is read back (and so held in memory) when a disk is
/// opened. A plan whose journal would be larger is refused before anything is written.
pub const MAX_JOURNAL_FILE: u64 = 16 << 20;

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
    /// be durable (a [`Barrier`] follows). The default stores it durably at once, which is
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
            path: crate::sidefile::journal(disk),
            tmp: crate::sidefile::journal_tmp(disk),
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
        {
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            File::open(dir)?.sync_all()?;
        }
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
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other?,
        }
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
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn unstage(&self) -> io::Result<()> {
        match fs::remove_file(self.tmp_path()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "state", rename_all = "snake_case"))]
pub enum Recovery {
    /// No journal: nothing was interrupted.
    Clean,
    /// An interrupted change was finished (its new bytes written) and the journal removed.
    RolledForward {
        /// Ranges rewritten.
        writes: usize,
    },
    /// The change had been fully applied; only the journal was left. It was removed.
    AlreadyComplete,
    /// A journal exists that does not match the file as it is now; it was left untouched.
    Foreign {
        /// Why it does not match.
        reason: String,
    },
}

fn encode(plan: &Plan) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(
        &u32::try_from(plan.writes.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    b.extend_from_slice(&plan.old_len.to_le_bytes());
    b.extend_from_slice(&plan.new_len.to_le_bytes());
    for w in &plan.writes {
        let what = w.what.as_bytes();
        let what = what.get(..what.len().min(u16::MAX as usize)).unwrap_or(&[]);
        b.extend_from_slice(&w.offset.to_le_bytes());
        b.extend_from_slice(
            &u32::try_from(w.data.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        b.extend_from_slice(&u16::try_from(what.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(what);
        b.extend_from_slice(&w.old);
        b.extend_from_slice(&w.data);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Size in bytes of the journal that applying `plan` writes.
pub fn encoded_len(plan: &Plan) -> usize {
    encode(plan).len()
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("journal truncated at byte {}", self.pos))?;
        let s = self.b.get(self.pos..end).ok_or("journal truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parse a journal; `Err` says why it is not a valid vhdkit journal.
fn decode(bytes: &[u8]) -> std::result::Result<Plan, String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or("journal shorter than its checksum")?;
    let (body, crc) = bytes.split_at(body_len);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err("journal checksum does not match (torn or foreign journal)".into());
    }
    let mut c = Cursor { b: body, pos: 0 };
    if c.take(8)? != MAGIC {
        return Err("not a vhdkit journal (bad magic)".into());
    }
    let v = c.u32()?;
    if v != VERSION {
        return Err(format!("journal version {v} is not supported"));
    }
    let count = c.u32()?;
    let mut plan = Plan {
        old_len: c.u64()?,
        new_len: c.u64()?,
        ..Plan::default()
    };
    for _ in 0..count {
        let offset = c.u64()?;
        let len = usize::try_from(c.u32()?).map_err(|_| "record too large")?;
        let what_len = usize::from(c.u16()?);
        let what = String::from_utf8_lossy(c.take(what_len)?).into_owned();
        let old = c.take(len)?.to_vec();
        let data = c.take(len)?.to_vec();
        plan.writes.push(WriteOp {
            offset,
            data,
            old,
            what,
        });
    }
    if c.pos != body.len() {
        return Err("journal has trailing bytes".into());
    }
    // vhdkit changes a file's length only to relocate metadata (a locator and the footer); a
    // journal that claims more, or writes past the file's new end, was not written by vhdkit
    // and must not be able to make recovery resize the file arbitrarily.
    let limit = plan.new_len;
    if plan.new_len.abs_diff(plan.old_len) > MAX_JOURNAL_BYTES {
        return Err(format!(
            "journal grows the file from {} to {} bytes, more than any vhdkit change",
            plan.old_len, plan.new_len
        ));
    }
    for w in &plan.writes {
        let end = w.offset.checked_add(w.data.len() as u64);
        if end.is_none_or(|e| e > limit) {
            return Err(format!(
                "journal record '{}' at offset {:#x} lies past the file's end ({limit:#x})",
                w.what, w.offset
            ));
        }
    }
    Ok(plan)
}

fn io_err(what: &str, e: io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// Bytes at `offset` of the target; bytes past the end of the file (`file_len`) read as zeros,
/// which is what they will be once the file grows.
fn read_padded<S: Source + ?Sized>(
    target: &S,
    offset: u64,
    len: usize,
    file_len: u64,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if offset < file_len {
        let avail = usize::try_from((file_len - offset).min(len as u64)).unwrap_or(len);
        if let Some(dst) = buf.get_mut(..avail) {
            target
                .read_exact_at(dst, offset)
                .map_err(|e| io_err("reading the file to verify a journal", e))?;
        }
    }
    Ok(buf)
}

/// What a journal beside a file means for the file as it is now. Found by reading only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalState {
    /// No journal: nothing was interrupted.
    Absent,
    /// A valid journal of an interrupted change: every range holds its old or its new bytes,
    /// and not all hold the new ones. Rolling forward finishes it.
    Pending(Plan),
    /// A valid journal whose change is already complete on the file; only the journal is left.
    Complete(Plan),
    /// A journal that does not belong to the file as it is now (damaged, or the file changed
    /// since). It must never be applied.
    Foreign {
        /// Why it does not match.
        reason: String,
    },
}

/// Classify the journal in `store` against `target` without writing anything.
pub fn inspect<S: Source + ?Sized>(target: &S, store: &dyn JournalStore) -> Result<JournalState> {
    let bytes = match store.load() {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(JournalState::Absent),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(JournalState::Foreign {
                reason: e.to_string(),
            })
        }
        // Something planted at the journal's name (a link, FIFO, device, folder, a huge file)
        // is not a vhdkit journal: never read, never applied, and it blocks writers.
        Err(e) if crate::fsx::refusal(&e).is_some() => {
            return Ok(JournalState::Foreign {
                reason: format!("what is at the journal's name is {e}"),
            })
        }
        Err(e) => {
            return Err(io_err(
                &format!("reading the journal {}", store.describe()),
                e,
            ))
        }
    };
    let plan = match decode(&bytes) {
        Ok(p) => p,
        Err(reason) => return Ok(JournalState::Foreign { reason }),
    };
    let len = target
        .len()
        .map_err(|e| Error::io("reading the file length", e))?;
    if len != plan.old_len && len != plan.new_len {
        return Ok(JournalState::Foreign {
            reason: format!(
                "file length {len} is neither the journal's old {} nor new {}",
                plan.old_len, plan.new_len
            ),
        });
    }
    let mut all_new = len == plan.new_len;
    for w in &plan.writes {
        if w.offset.checked_add(w.data.len() as u64).is_none() || w.old.len() != w.data.len() {
            return Ok(JournalState::Foreign {
                reason: format!("record '{}' is malformed", w.what),
            });
        }
        let cur = read_padded(target, w.offset, w.data.len(), len)?;
        let is_new = cur == w.data;
        let is_old = cur == w.old;
        if !is_new && !is_old {
            return Ok(JournalState::Foreign {
                reason: format!(
                    "{} at offset {:#x} holds neither the journal's old nor its new bytes",
                    w.what, w.offset
                ),
            });
        }
        all_new &= is_new;
    }
    Ok(if all_new {
        JournalState::Complete(plan)
    } else {
        JournalState::Pending(plan)
    })
}

/// For read-only opens: `src` with a pending journal's new bytes laid over it in memory, so a
/// reader sees the completed change without writing, plus a warning to show. A journal that
/// does not match is ignored (never applied) with a warning.
pub fn overlay_pending(
    src: Box<dyn Source>,
    store: &dyn JournalStore,
) -> (Box<dyn Source>, Option<String>) {
    match inspect(&*src, store) {
        Ok(JournalState::Absent) => (src, None),
        Ok(JournalState::Pending(plan)) => {
            let w = format!(
                "an interrupted vhdkit change is pending in {} (shown here as completed, \
                 nothing written); `vhdkit repair FILE` or the next write finishes it",
                store.describe()
            );
            let writes = plan
                .writes
                .into_iter()
                .map(|w| (w.offset, w.data))
                .collect();
            match crate::source::OverlaySource::new(src, writes, plan.new_len) {
                Ok(o) => (Box::new(o), Some(w)),
                Err((src, e)) => (
                    src,
                    Some(format!(
                        "an interrupted vhdkit change is pending in {} but could not be shown \
                         ({e}); `vhdkit repair FILE` finishes it",
                        store.describe()
                    )),
                ),
            }
        }
        Ok(JournalState::Complete(_)) => (
            src,
            Some(format!(
                "a finished vhdkit change left its journal {}; `vhdkit repair FILE` removes it",
                store.describe()
            )),
        ),
        Ok(JournalState::Foreign { reason }) => (
            src,
            Some(format!(
                "ignored the vhdkit journal {}: it does not match this file ({reason}); it was \
                 not applied",
                store.describe()
            )),
        ),
        Err(e) => (
            src,
            Some(format!(
                "could not check the vhdkit journal {}: {e}",
                store.describe()
            )),
        ),
    }
}

/// Check that `plan` can be applied to `target` now: no journal pending in `store`, and the
/// file still holds every old value of the plan. Reads only.
fn check(target: &dyn Sink, store: &dyn JournalStore, plan: &Plan) -> Result<()> {
    let pending = store.load().map_err(|e| match crate::fsx::refusal(&e) {
        Some(r) => Error::InvalidArgument(format!(
            "{}: {r}; it is not a vhdkit journal and blocks every change to the file (remove it)",
            store.describe()
        )),
        None => io_err("checking for a pending journal", e),
    })?;
    if encoded_len(plan) as u64 > MAX_JOURNAL_FILE {
        return Err(Error::InvalidArgument(format!(
            "the change needs a journal of {} bytes, more than the {MAX_JOURNAL_FILE} bytes \
             recovery reads back; nothing written",
            encoded_len(plan)
        )));
    }
    if pending.is_some() {
        return Err(Error::InvalidArgument(format!(
            "an earlier interrupted change is pending in {}; run `vhdkit repair` first",
            store.describe()
        )));
    }
    let len = source_len(target)?;
    if len != plan.old_len {
        return Err(Error::InvalidArgument(format!(
            "the file changed since the plan was made (length {len}, planned on {})",
            plan.old_len
        )));
    }
    for w in &plan.writes {
        if w.old.len() != w.data.len() {
            return Err(Error::InvalidArgument(format!(
                "plan write '{}' has old and new values of different lengths",
                w.what
            )));
        }
        if w.offset.checked_add(w.data.len() as u64).is_none() {
            return Err(Error::InvalidArgument(format!(
                "plan write '{}' at offset {:#x} overflows",
                w.what, w.offset
            )));
        }
        // Bytes past the current end count as zeros: a growing write carries zeros as its old
        // bytes there.
        if read_padded(target, w.offset, w.old.len(), len)? != w.old {
            return Err(Error::InvalidArgument(format!(
                "the file changed since the plan was made ({} at offset {:#x})",
                w.what, w.offset
            )));
        }
    }
    Ok(())
}

/// Apply `plan` to `target` through the journal `store`. Nothing is written unless the file
/// still holds every old value of the plan.
pub fn apply(target: &dyn Sink, store: &dyn JournalStore, plan: &Plan) -> Result<()> {
    if plan.is_empty() {
        return Ok(());
    }
    check(target, store, plan)?;
    store
        .store(&encode(plan))
        .map_err(|e| io_err(&format!("writing the journal {}", store.describe()), e))?;
    write_new(target, plan)?;
    store
        .remove()
        .map_err(|e| io_err(&format!("removing the journal {}", store.describe()), e))?;
    Ok(())
}

/// One file of a batch: its target, its journal and its plan.
#[derive(Clone, Copy)]
pub struct BatchItem<'a> {
    /// The file changed.
    pub target: &'a dyn Sink,
    /// Its journal (one per file, as for [`apply`]). `Sync`: the removals of step 4 run on a
    /// few threads.
    pub store: &'a (dyn JournalStore + Sync),
    /// The change.
    pub plan: &'a Plan,
}

/// Apply the plans of many files with four barriers in all, whatever their number (see the
/// module docs for the protocol and its crash analysis). Each file gets its own result; a file
/// that fails leaves the others going. Nothing is written to a file unless it still holds
/// every old value of its plan.
pub fn apply_batch(items: &[BatchItem<'_>], barrier: &dyn Barrier) -> Vec<Result<()>> {
    let mut out: Vec<Result<()>> = items.iter().map(|_| Ok(())).collect();
    let mut live: Vec<bool> = items.iter().map(|i| !i.plan.is_empty()).collect();
    let fail_all = |out: &mut Vec<Result<()>>, live: &mut Vec<bool>, what: &str, e: &io::Error| {
        for (o, l) in out.iter_mut().zip(live.iter_mut()) {
            if *l {
                *o = Err(io_err(what, io::Error::new(e.kind(), e.to_string())));
                *l = false;
            }
        }
    };
    // 1. Check every file; stage every journal under its temporary name (not yet durable).
    for (i, it) in items.iter().enumerate() {
        if !live[i] {
            continue;
        }
        let r = check(it.target, it.store, it.plan).and_then(|()| {
            it.store.stage(&encode(it.plan)).map_err(|e| {
                let _ = it.store.unstage();
                io_err(&format!("writing the journal {}", it.store.describe()), e)
            })
        });
        if let Err(e) = r {
            out[i] = Err(e);
            live[i] = false;
        }
    }
    if !live.contains(&true) {
        return out;
    }
    // Barrier 1: the staged journals' bytes are durable before any is renamed into place.
    if let Err(e) = barrier.barrier() {
        for (i, it) in items.iter().enumerate() {
            if live[i] {
                let _ = it.store.unstage();
            }
        }
        fail_all(&mut out, &mut live, "making the journals durable", &e);
        return out;
    }
    // 2. Publish every journal.
    for (i, it) in items.iter().enumerate() {
        if !live[i] {
            continue;
        }
        if let Err(e) = it.store.publish() {
            let _ = it.store.unstage();
            out[i] = Err(io_err(
                &format!("putting the journal {} in place", it.store.describe()),
                e,
            ));
            live[i] = false;
        }
    }
    // Barrier 2: every journal is in place before any file is written.
    if let Err(e) = barrier.barrier() {
        fail_all(
            &mut out,
            &mut live,
            "making the journals durable (the next open of each file finishes or ignores it)",
            &e,
        );
        return out;
    }
    // 3. Write every file.
    for (i, it) in items.iter().enumerate() {
        if live[i] {
            if let Err(e) = write_ranges(it.target, it.plan) {
                out[i] = Err(e);
                live[i] = false;
            }
        }
    }
    // Barrier 3: every file holds its new bytes durably.
    if let Err(e) = barrier.barrier() {
        fail_all(
            &mut out,
            &mut live,
            "flushing the files (the journal beside each finishes it at the next open)",
            &e,
        );
        return out;
    }
    // 4. Remove every journal. On some file systems freeing a synced file's blocks is slow
    //    (ext4 mounted with `discard`: milliseconds per file), so the removals run on a few
    //    threads; their order does not matter (barrier 4 follows).
    let todo: Vec<usize> = (0..items.len()).filter(|&i| live[i]).collect();
    for (i, e) in discard_all(items, &todo) {
        out[i] = Err(io_err(
            &format!("removing the journal {}", items[i].store.describe()),
            e,
        ));
        live[i] = false;
    }
    // Barrier 4: the removals are durable (a journal that comes back is `AlreadyComplete`).
    if let Err(e) = barrier.barrier() {
        fail_all(
            &mut out,
            &mut live,
            "making the journal removals durable",
            &e,
        );
    }
    out
}

/// Threads removing journals in [`apply_batch`].
const DISCARD_THREADS: usize = 8;

/// `discard` the journals of `items[todo]`, on up to [`DISCARD_THREADS`] threads; the failures.
fn discard_all(items: &[BatchItem<'_>], todo: &[usize]) -> Vec<(usize, io::Error)> {
    let stores: Vec<(usize, &(dyn JournalStore + Sync))> =
        todo.iter().map(|&i| (i, items[i].store)).collect();
    let discard = |c: &[(usize, &(dyn JournalStore + Sync))]| -> Vec<(usize, io::Error)> {
        c.iter()
            .filter_map(|(i, s)| s.discard().err().map(|e| (*i, e)))
            .collect()
    };
    if stores.len() < 16 {
        return discard(&stores);
    }
    let per = stores.len().div_ceil(DISCARD_THREADS);
    std::thread::scope(|sc| {
        let handles: Vec<_> = stores
            .chunks(per)
            .map(|c| (c, sc.spawn(move || discard(c))))
            .collect();
        handles
            .into_iter()
            .flat_map(|(c, h)| {
                h.join().unwrap_or_else(|_| {
                    c.iter()
                        .map(|(i, _)| (*i, io::Error::other("a journal removal thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

fn write_new(target: &dyn Sink, plan: &Plan) -> Result<()> {
    write_ranges(target, plan)?;
    target.sync().map_err(|e| io_err("flushing the file", e))
}

/// Resize and write the new bytes of `plan`, without syncing.
fn write_ranges(target: &dyn Sink, plan: &Plan) -> Result<()> {
    if plan.new_len > plan.old_len {
        target
            .set_len(plan.new_len)
            .map_err(|e| io_err("growing the file", e))?;
    }
    for w in &plan.writes {
        target
            .write_all_at(&w.data, w.offset)
            .map_err(|e| io_err(&format!("writing {} at offset {:#x}", w.what, w.offset), e))?;
    }
    if plan.new_len < plan.old_len {
        target
            .set_len(plan.new_len)
            .map_err(|e| io_err("shrinking the file", e))?;
    }
    Ok(())
}

/// Finish or discard an interrupted change recorded in `store` for `target`.
pub fn recover(target: &dyn Sink, store: &dyn JournalStore) -> Result<Recovery> {
    let plan = match inspect(target, store)? {
        JournalState::Absent => return Ok(Recovery::Clean),
        JournalState::Foreign { reason } => return Ok(Recovery::Foreign { reason }),
        JournalState::Complete(_) => {
            store
                .remove()
                .map_err(|e| io_err(&format!("removing the journal {}", store.describe()), e))?;
            return Ok(Recovery::AlreadyComplete);
        }
        JournalState::Pending(plan) => plan,
    };
    let len = source_len(target)?;
    let replay = Plan {
        old_len: len,
        ..plan
    };
    // Growing is idempotent, so replay from the current length.
    write_new(target, &replay)?;
    store
        .remove()
        .map_err(|e| io_err(&format!("removing the journal {}", store.describe()), e))?;
    Ok(Recovery::RolledForward {
        writes: replay.writes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::fault::{FaultBarrier, FaultPlan, FaultyFile, MemJournal};
    use super::*;

    fn sample() -> (Vec<u8>, Plan) {
        let old: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let plan = Plan {
            changes: vec![],
            writes: vec![
                WriteOp {
                    offset: 4096,
                    data: vec![0xAA; 512],
                    old: vec![0; 512],
                    what: "relocated locator".into(),
                },
                WriteOp {
                    offset: 512,
                    data: vec![0xBB; 1024],
                    old: old[512..1536].to_vec(),
                    what: "header".into(),
                },
                WriteOp {
                    offset: 0,
                    data: vec![0xCC; 512],
                    old: old[..512].to_vec(),
                    what: "footer copy".into(),
                },
            ],
            old_len: 4096,
            new_len: 8192,
        };
        (old, plan)
    }

    fn expected_new(old: &[u8], plan: &Plan) -> Vec<u8> {
        let mut v = old.to_vec();
        if plan.is_empty() {
            return v;
        }
        v.resize(plan.new_len as usize, 0);
        for w in &plan.writes {
            v[w.offset as usize..w.offset as usize + w.data.len()].copy_from_slice(&w.data);
        }
        v
    }

    /// Found by the journal_recover fuzz target: a journal claiming a 1 TiB old length and a
    /// record past the current end made recovery write at a terabyte offset.
    // testdata/ is outside the published package (see build.rs).
    #[cfg(vhdkit_workspace)]
    #[test]
    fn fuzz_regression_huge_old_len() {
        let input = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/fuzz-regressions/journal_recover-huge-old-len"
        ));
        // The target's first byte says "fix the CRC up"; do what it did.
        let mut j = input[1..].to_vec();
        let crc = crc32c::crc32c(&j);
        j.extend_from_slice(&crc.to_le_bytes());
        assert!(decode(&j).is_err());
        let plan = super::super::fault::FaultPlan::new(None);
        let file = super::super::fault::FaultyFile::new(vec![7u8; 65536], plan.clone());
        let store = super::super::fault::MemJournal::with(j, plan);
        assert!(matches!(
            recover(&file, &store).unwrap(),
            Recovery::Foreign { .. }
        ));
        assert_eq!(file.contents_all_written(), vec![7u8; 65536]);
    }

    #[test]
    fn journals_that_grow_files_arbitrarily_are_foreign() {
        let (_, mut plan) = sample();
        plan.new_len = plan.old_len + (1 << 40);
        assert!(decode(&encode(&plan))
            .unwrap_err()
            .contains("grows the file"));
        let (_, mut plan) = sample();
        plan.old_len = 1 << 40;
        assert!(decode(&encode(&plan))
            .unwrap_err()
            .contains("grows the file"));
        let (_, mut plan) = sample();
        plan.writes[0].offset = 1 << 40;
        assert!(decode(&encode(&plan))
            .unwrap_err()
            .contains("past the file's end"));
    }

    /// A journal is only recovered onto a file whose length is its old or its new length: a
    /// file of any other length (here the old bytes plus zeros, so every record still reads
    /// as old) is not the file the journal was written for, and is left alone.
    #[test]
    fn file_length_matching_neither_old_nor_new_is_foreign() {
        let (old, plan) = sample();
        for len in [4096 + 512, 8192 + 512, 8192 - 512] {
            let mut other = old.clone();
            other.resize(len, 0);
            let fp = FaultPlan::new(None);
            let f = FaultyFile::new(other.clone(), fp.clone());
            let j = MemJournal::with(encode(&plan), fp);
            match inspect(&f, &j).unwrap() {
                JournalState::Foreign { reason } => {
                    assert!(reason.contains("file length"), "{len}: {reason}")
                }
                s => panic!("{len}: {s:?}"),
            }
            assert!(matches!(recover(&f, &j).unwrap(), Recovery::Foreign { .. }));
            assert_eq!(f.contents_all_written(), other, "{len}");
            assert!(j.load().unwrap().is_some(), "{len}: journal kept");
        }
        // At the old and the new length the same journal is recognised.
        for (bytes, complete) in [(old.clone(), false), (expected_new(&old, &plan), true)] {
            let fp = FaultPlan::new(None);
            let f = FaultyFile::new(bytes, fp.clone());
            let j = MemJournal::with(encode(&plan), fp);
            let st = inspect(&f, &j).unwrap();
            assert_eq!(matches!(st, JournalState::Complete(_)), complete, "{st:?}");
            assert_eq!(matches!(st, JournalState::Pending(_)), !complete, "{st:?}");
        }
    }

    /// apply refuses a file whose length is not the plan's old length, before writing anything.
    #[test]
    fn apply_refuses_a_file_whose_length_changed() {
        let (old, plan) = sample();
        let mut longer = old.clone();
        longer.resize(old.len() + 512, 0);
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(longer.clone(), fp.clone());
        let j = MemJournal::new(fp.clone());
        let e = apply(&f, &j, &plan).unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
        assert_eq!(f.contents_all_written(), longer);
        assert_eq!(j.load().unwrap(), None);
        assert_eq!(fp.count(), 0, "nothing written");
    }

    #[test]
    fn encode_decode_round_trip() {
        let (_, plan) = sample();
        assert_eq!(decode(&encode(&plan)).unwrap(), plan);
        let mut bad = encode(&plan);
        bad[20] ^= 1;
        assert!(decode(&bad).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn apply_without_faults() {
        let (old, plan) = sample();
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        let j = MemJournal::new(fp);
        apply(&f, &j, &plan).unwrap();
        assert_eq!(f.contents_synced(), expected_new(&old, &plan));
        assert_eq!(j.load().unwrap(), None);
    }

    /// Fail at every mutating operation in turn; after each, recovery on either crash image
    /// gives exactly the old or exactly the new file.
    #[test]
    fn failure_at_every_operation_recovers_to_old_or_new() {
        let (old, plan) = sample();
        let new = expected_new(&old, &plan);
        let total = {
            let fp = FaultPlan::new(None);
            apply(
                &FaultyFile::new(old.clone(), fp.clone()),
                &MemJournal::new(fp.clone()),
                &plan,
            )
            .unwrap();
            fp.count()
        };
        assert!(total >= 5);
        for k in 1..=total {
            let fp = FaultPlan::new(Some(k));
            let f = FaultyFile::new(old.clone(), fp.clone());
            let j = MemJournal::new(fp.clone());
            assert!(apply(&f, &j, &plan).is_err(), "k={k} should fail");
            for image in [f.contents_all_written(), f.contents_synced()] {
                let fp2 = FaultPlan::new(None);
                let f2 = FaultyFile::new(image, fp2.clone());
                let j2 = MemJournal::new(fp2);
                if let Some(b) = j.load().unwrap() {
                    j2.store(&b).unwrap();
                }
                let r = recover(&f2, &j2).unwrap();
                let got = f2.contents_all_written();
                assert!(
                    got == old || got == new,
                    "k={k}: neither old nor new ({r:?})"
                );
                assert!(!matches!(r, Recovery::Foreign { .. }), "k={k}: {r:?}");
                assert_eq!(j2.load().unwrap(), None, "k={k}");
            }
        }
    }

    /// Five files: (old contents, plan), each different (one grows, one is a no-op).
    fn batch_sample(count: u8) -> Vec<(Vec<u8>, Plan)> {
        (0..count)
            .map(|n| {
                let (mut old, mut plan) = sample();
                for b in old.iter_mut() {
                    *b = b.wrapping_add(n);
                }
                if n % 5 == 3 {
                    return (old, Plan::default());
                }
                if n % 2 == 1 {
                    plan.writes.remove(0);
                    plan.new_len = plan.old_len;
                }
                for w in plan.writes.iter_mut() {
                    let (s, e) = (w.offset as usize, w.offset as usize + w.data.len());
                    w.old = old.get(s..e).map(<[u8]>::to_vec).unwrap_or(vec![0; e - s]);
                    for b in w.data.iter_mut() {
                        *b = b.wrapping_add(n);
                    }
                }
                (old, plan)
            })
            .collect()
    }

    fn run_batch(
        sample: &[(Vec<u8>, Plan)],
        fail_at: Option<usize>,
    ) -> (
        Arc<FaultPlan>,
        Vec<FaultyFile>,
        Vec<MemJournal>,
        Vec<Result<()>>,
    ) {
        let fp = FaultPlan::new(fail_at);
        let files: Vec<FaultyFile> = sample
            .iter()
            .map(|(o, _)| FaultyFile::new(o.clone(), fp.clone()))
            .collect();
        let journals: Vec<MemJournal> =
            sample.iter().map(|_| MemJournal::new(fp.clone())).collect();
        let barrier = FaultBarrier::new(fp.clone(), files.clone(), journals.clone());
        let items: Vec<BatchItem<'_>> = sample
            .iter()
            .zip(files.iter().zip(&journals))
            .map(|((_, plan), (f, j))| BatchItem {
                target: f,
                store: j,
                plan,
            })
            .collect();
        let r = apply_batch(&items, &barrier);
        (fp, files, journals, r)
    }

    use std::sync::Arc;

    #[test]
    fn batch_without_faults_uses_four_barriers() {
        let sample = batch_sample(5);
        let (fp, files, journals, r) = run_batch(&sample, None);
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
        for ((old, plan), (f, j)) in sample.iter().zip(files.iter().zip(&journals)) {
            assert_eq!(f.contents_synced(), expected_new(old, plan));
            assert_eq!(j.load().unwrap(), None);
            assert_eq!(j.load_synced().unwrap(), None);
            assert!(!j.published_unsynced());
        }
        // 4 changing files of 5: stage + publish + discard each, their writes, and 4 barriers; no
        // per-file sync.
        let writes: usize = sample
            .iter()
            .map(|(_, p)| p.writes.len() + usize::from(p.new_len != p.old_len))
            .sum();
        assert_eq!(fp.count(), 4 * 3 + writes + 4);
    }

    /// Fail at every operation of a batch of five (and of twenty: journals then removed on
    /// several threads); after each, every file recovers (from any combination of its durable
    /// and its fully written image, and of its journal's) to exactly its old or its new bytes,
    /// and never through a foreign journal.
    #[test]
    fn batch_failure_at_every_operation_recovers_each_file_to_old_or_new() {
        for count in [5, 20] {
            batch_failure_at_every_operation(count);
        }
    }

    fn batch_failure_at_every_operation(count: u8) {
        let sample = batch_sample(count);
        let total = run_batch(&sample, None).0.count();
        for k in 1..=total {
            let (_, files, journals, r) = run_batch(&sample, Some(k));
            assert!(r.iter().any(|r| r.is_err()), "k={k} should fail");
            for (n, ((old, plan), (f, j))) in
                sample.iter().zip(files.iter().zip(&journals)).enumerate()
            {
                assert!(
                    !j.published_unsynced(),
                    "k={k}: torn journal could be published"
                );
                let new = expected_new(old, plan);
                for image in [f.contents_all_written(), f.contents_synced()] {
                    for jb in [j.load().unwrap(), j.load_synced().unwrap()] {
                        let fp2 = FaultPlan::new(None);
                        let f2 = FaultyFile::new(image.clone(), fp2.clone());
                        let j2 = MemJournal::new(fp2);
                        if let Some(b) = &jb {
                            j2.store(b).unwrap();
                        }
                        let r = recover(&f2, &j2).unwrap();
                        assert!(!matches!(r, Recovery::Foreign { .. }), "k={k} #{n}: {r:?}");
                        let got = f2.contents_all_written();
                        assert!(
                            got == *old || got == new,
                            "k={k} #{n}: neither old nor new ({r:?})"
                        );
                        assert_eq!(j2.load().unwrap(), None, "k={k} #{n}");
                    }
                }
            }
        }
    }

    #[test]
    fn batch_skips_a_changed_file_and_applies_the_others() {
        let mut sample = batch_sample(5);
        sample[0].0[0] ^= 1; // file 0 no longer holds its plan's old bytes
        let (_, files, journals, r) = run_batch(&sample, None);
        assert!(r[0].is_err());
        assert_eq!(files[0].contents_all_written(), sample[0].0);
        assert_eq!(journals[0].load().unwrap(), None);
        for (i, (old, plan)) in sample.iter().enumerate().skip(1) {
            assert!(r[i].is_ok(), "{i}: {:?}", r[i]);
            assert_eq!(files[i].contents_synced(), expected_new(old, plan));
        }
    }

    #[test]
    fn foreign_journal_is_never_applied() {
        let (old, plan) = sample();
        let fp = FaultPlan::new(None);
        let mut other = old.clone();
        other[600] ^= 0xFF; // the header range now matches neither old nor new
        let f = FaultyFile::new(other.clone(), fp.clone());
        let j = MemJournal::with(encode(&plan), fp);
        let r = recover(&f, &j).unwrap();
        assert!(matches!(r, Recovery::Foreign { .. }), "{r:?}");
        assert_eq!(f.contents_all_written(), other);
        assert!(
            j.load().unwrap().is_some(),
            "foreign journal must be left in place"
        );
    }

    #[test]
    fn refuses_when_file_changed_since_plan() {
        let (mut old, plan) = sample();
        old[0] ^= 1;
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        let j = MemJournal::new(fp.clone());
        assert!(apply(&f, &j, &plan).is_err());
        assert_eq!(fp.count(), 0, "nothing may be written");
    }

    #[test]
    fn file_journal_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let j = FileJournal::for_disk(&d.path().join("child.vhd"));
        assert_eq!(j.path().file_name().unwrap(), "child.vhd.vhdkit-journal");
        assert_eq!(j.load().unwrap(), None);
        j.store(b"abc").unwrap();
        assert_eq!(j.load().unwrap().unwrap(), b"abc");
        j.remove().unwrap();
        assert_eq!(j.load().unwrap(), None);
        j.remove().unwrap();
    }

    /// A journal file larger than any vhdkit journal is refused before it is read (memory
    /// bound); one of exactly the bound is read.
    #[test]
    fn file_journal_over_the_size_bound_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let j = FileJournal::for_disk(&d.path().join("child.vhd"));
        let f = fs::File::create(j.path()).unwrap();
        f.set_len(MAX_JOURNAL_FILE + 1).unwrap(); // sparse
        let e = j.load().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        f.set_len(MAX_JOURNAL_FILE).unwrap();
        assert_eq!(j.load().unwrap().unwrap().len() as u64, MAX_JOURNAL_FILE);
    }
}
