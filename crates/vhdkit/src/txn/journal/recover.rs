//! What a journal beside a file means for the file as it is now, and finishing it: [`inspect`]
//! (reads only), [`overlay_pending`] (read-only opens), [`recover`] (writes).

use std::io;

use super::apply::write_new;
use super::codec::decode;
use super::store::JournalStore;
use super::{io_err, remove_journal};
use crate::error::{Error, Result};
use crate::source::{source_len, Source};
use crate::txn::{Plan, Sink};

/// What `recover` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "state", rename_all = "snake_case"))]
#[non_exhaustive]
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

/// Bytes at `offset` of the target; bytes past the end of the file (`file_len`) read as zeros,
/// which is what they will be once the file grows.
pub(super) fn read_padded<S: Source + ?Sized>(
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
    match load(store)? {
        Loaded::Plan(plan) => classify(target, plan),
        Loaded::State(state) => Ok(state),
    }
}

/// A journal read and decoded, or what its absence or damage means.
enum Loaded {
    Plan(Plan),
    State(JournalState),
}

fn load(store: &dyn JournalStore) -> Result<Loaded> {
    let bytes = match store.load() {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Loaded::State(JournalState::Absent)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Ok(foreign(e.to_string()));
        }
        // Something planted at the journal's name (a link, FIFO, device, folder, a huge file)
        // is not a vhdkit journal: never read, never applied, and it blocks writers.
        Err(e) if crate::fsx::refusal(&e).is_some() => {
            return Ok(foreign(format!("what is at the journal's name: {e}")));
        }
        Err(e) => {
            return Err(io_err(
                &format!("reading the journal {}", store.describe()),
                e,
            ))
        }
    };
    Ok(match decode(&bytes) {
        Ok(p) => Loaded::Plan(p),
        Err(reason) => foreign(reason),
    })
}

fn foreign(reason: String) -> Loaded {
    Loaded::State(JournalState::Foreign { reason })
}

/// Whether every range of `plan` holds its old or its new bytes in `target`, and which.
fn classify<S: Source + ?Sized>(target: &S, plan: Plan) -> Result<JournalState> {
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

/// Finish or discard an interrupted change recorded in `store` for `target`.
pub fn recover(target: &dyn Sink, store: &dyn JournalStore) -> Result<Recovery> {
    let plan = match inspect(target, store)? {
        JournalState::Absent => return Ok(Recovery::Clean),
        JournalState::Foreign { reason } => return Ok(Recovery::Foreign { reason }),
        JournalState::Complete(_) => {
            remove_journal(store)?;
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
    remove_journal(store)?;
    Ok(Recovery::RolledForward {
        writes: replay.writes.len(),
    })
}

/// [`recover`] for a writer about to change the file: finish an interrupted vhdkit change
/// (`Ok(true)`), or nothing to finish (`Ok(false)`); a journal that does not belong to the file
/// is a refusal, since writing past it would lose what it could still tell.
pub fn recover_or_refuse(target: &dyn Sink, store: &dyn JournalStore) -> Result<bool> {
    match recover(target, store)? {
        Recovery::Foreign { reason } => Err(Error::refused(format!(
            "a vhdkit journal {} does not belong to the file ({reason}); nothing was written \
             (see `vhdkit repair`)",
            store.describe()
        ))),
        Recovery::Clean => Ok(false),
        _ => Ok(true),
    }
}
