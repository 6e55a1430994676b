//! Redo journal for formats without a log of their own (VHD).
//!
//! Protocol for applying a [`Plan`](super::Plan):
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
//! replaces the per-file `fsync`s by four [`Barrier`](super::barrier::Barrier)s for the whole batch (on Linux one
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
//!
//! # Layout of this module
//! - `codec`: the journal's bytes (encode, decode, size bounds);
//! - `store`: where a journal lives ([`JournalStore`], [`FileJournal`] beside a disk; its names
//!   come from [`crate::sidefile`]);
//! - `recover`: what a journal means for a file ([`inspect`], [`recover`], [`overlay_pending`]);
//! - `apply`: one file ([`apply`]); `batch`: many files behind barriers ([`apply_batch`]).

mod apply;
mod batch;
mod codec;
mod recover;
mod store;
#[cfg(test)]
mod tests;

use std::io;

use crate::error::{Error, Result};

pub use apply::apply;
pub use batch::{apply_batch, BatchItem};
pub use codec::{encoded_len, MAX_JOURNAL_FILE};
pub use recover::{inspect, overlay_pending, recover, recover_or_refuse, JournalState, Recovery};
pub use store::{FileJournal, JournalStore};

fn io_err(what: &str, e: io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// Remove the journal durably, naming it on failure.
fn remove_journal(store: &dyn JournalStore) -> Result<()> {
    store
        .remove()
        .map_err(|e| io_err(&format!("removing the journal {}", store.describe()), e))
}
