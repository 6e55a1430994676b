//! Applying one plan through its journal (the protocol in the module docs of
//! [`crate::txn::journal`]), and the checks and writes a batch shares with it.

use super::codec::{encode, encoded_len, MAX_JOURNAL_FILE};
use super::recover::read_padded;
use super::store::JournalStore;
use super::{io_err, remove_journal};
use crate::error::{Error, Result};
use crate::source::source_len;
use crate::txn::{Plan, Sink};

/// Check that `plan` can be applied to `target` now: no journal pending in `store`, and the
/// file still holds every old value of the plan. Reads only.
pub(super) fn check(target: &dyn Sink, store: &dyn JournalStore, plan: &Plan) -> Result<()> {
    let pending = store.load().map_err(|e| match crate::fsx::refusal(&e) {
        Some(r) => Error::InvalidArgument(format!(
            "{}: {r}; it is not a vhdkit journal and blocks every change to the file (remove it)",
            store.describe()
        )),
        None => io_err("checking for a pending journal", e),
    })?;
    let journal_len = encoded_len(plan);
    if journal_len as u64 > MAX_JOURNAL_FILE {
        return Err(Error::InvalidArgument(format!(
            "the change needs a journal of {journal_len} bytes, more than the {MAX_JOURNAL_FILE} \
             bytes recovery reads back; nothing written"
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
    remove_journal(store)
}

pub(super) fn write_new(target: &dyn Sink, plan: &Plan) -> Result<()> {
    write_ranges(target, plan)?;
    target.sync().map_err(|e| io_err("flushing the file", e))
}

/// Resize and write the new bytes of `plan`, without syncing.
pub(super) fn write_ranges(target: &dyn Sink, plan: &Plan) -> Result<()> {
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
