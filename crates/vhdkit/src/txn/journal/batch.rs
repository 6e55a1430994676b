//! Applying many plans with four barriers in all (the protocol and its crash analysis are in the
//! module docs of [`crate::txn::journal`]).

use std::io;

use super::apply::{check, write_ranges};
use super::codec::encode;
use super::io_err;
use super::store::JournalStore;
use crate::error::Result;
use crate::txn::barrier::Barrier;
use crate::txn::{Plan, Sink};

/// One file of a batch: its target, its journal and its plan.
#[derive(Clone, Copy)]
pub struct BatchItem<'a> {
    /// The file changed.
    pub target: &'a dyn Sink,
    /// Its journal (one per file, as for [`super::apply`]). `Sync`: the removals of step 4 run
    /// on a few threads.
    pub store: &'a (dyn JournalStore + Sync),
    /// The change.
    pub plan: &'a Plan,
}

/// Apply the plans of many files with four barriers in all, whatever their number (see the
/// module docs for the protocol and its crash analysis). Each file gets its own result; a file
/// that fails leaves the others going. Nothing is written to a file unless it still holds
/// every old value of its plan.
pub fn apply_batch(items: &[BatchItem<'_>], barrier: &dyn Barrier) -> Vec<Result<()>> {
    let mut b = Batch::new(items);
    b.stage();
    if !b.any_live() {
        return b.out;
    }
    // Barrier 1: the staged journals' bytes are durable before any is renamed into place.
    if let Err(e) = barrier.barrier() {
        b.unstage_live();
        b.fail_live("making the journals durable", &e);
        return b.out;
    }
    b.publish();
    // Barrier 2: every journal is in place before any file is written.
    if let Err(e) = barrier.barrier() {
        b.fail_live(
            "making the journals durable (the next open of each file finishes or ignores it)",
            &e,
        );
        return b.out;
    }
    b.write();
    // Barrier 3: every file holds its new bytes durably.
    if let Err(e) = barrier.barrier() {
        b.fail_live(
            "flushing the files (the journal beside each finishes it at the next open)",
            &e,
        );
        return b.out;
    }
    b.discard();
    // Barrier 4: the removals are durable (a journal that comes back is `AlreadyComplete`).
    if let Err(e) = barrier.barrier() {
        b.fail_live("making the journal removals durable", &e);
    }
    b.out
}

/// A batch in progress: each file's result so far, and whether it is still going.
struct Batch<'i, 'a> {
    items: &'i [BatchItem<'a>],
    out: Vec<Result<()>>,
    live: Vec<bool>,
}

impl<'i, 'a> Batch<'i, 'a> {
    fn new(items: &'i [BatchItem<'a>]) -> Self {
        Batch {
            items,
            out: items.iter().map(|_| Ok(())).collect(),
            live: items.iter().map(|i| !i.plan.is_empty()).collect(),
        }
    }

    fn any_live(&self) -> bool {
        self.live.contains(&true)
    }

    /// The files still going, with their index.
    fn live_items(&self) -> Vec<(usize, BatchItem<'a>)> {
        self.items
            .iter()
            .enumerate()
            .filter(|(i, _)| self.live[*i])
            .map(|(i, it)| (i, *it))
            .collect()
    }

    /// File `i` failed with `e`: it leaves the batch.
    fn fail(&mut self, i: usize, e: crate::Error) {
        self.out[i] = Err(e);
        self.live[i] = false;
    }

    /// A barrier failed: every file still going fails with it.
    fn fail_live(&mut self, what: &str, e: &io::Error) {
        for (i, _) in self.live_items() {
            self.fail(i, io_err(what, io::Error::new(e.kind(), e.to_string())));
        }
    }

    /// Step 1: check every file; stage every journal under its temporary name (not yet
    /// durable).
    fn stage(&mut self) {
        for (i, it) in self.live_items() {
            let r = check(it.target, it.store, it.plan).and_then(|()| {
                it.store.stage(&encode(it.plan)).map_err(|e| {
                    let _ = it.store.unstage();
                    io_err(&format!("writing the journal {}", it.store.describe()), e)
                })
            });
            if let Err(e) = r {
                self.fail(i, e);
            }
        }
    }

    fn unstage_live(&self) {
        for (_, it) in self.live_items() {
            let _ = it.store.unstage();
        }
    }

    /// Step 2: publish every journal.
    fn publish(&mut self) {
        for (i, it) in self.live_items() {
            if let Err(e) = it.store.publish() {
                let _ = it.store.unstage();
                let what = format!("putting the journal {} in place", it.store.describe());
                self.fail(i, io_err(&what, e));
            }
        }
    }

    /// Step 3: write every file.
    fn write(&mut self) {
        for (i, it) in self.live_items() {
            if let Err(e) = write_ranges(it.target, it.plan) {
                self.fail(i, e);
            }
        }
    }

    /// Step 4: remove every journal. On some file systems freeing a synced file's blocks is
    /// slow (ext4 mounted with `discard`: milliseconds per file), so the removals run on a few
    /// threads; their order does not matter (barrier 4 follows).
    fn discard(&mut self) {
        let todo: Vec<usize> = self.live_items().into_iter().map(|(i, _)| i).collect();
        for (i, e) in discard_all(self.items, &todo) {
            let what = format!("removing the journal {}", self.items[i].store.describe());
            self.fail(i, io_err(&what, e));
        }
    }
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
