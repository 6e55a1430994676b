//! Test-only instrument: how many times each file is parsed as a disk.
//!
//! Every parse of a disk file by path goes through [`crate::Disk::open_with`], which calls
//! [`note`]; so does the reparent plan's own parse of the child. The format plans re-open
//! their simulated result from the source they were handed, without a path: they call
//! [`note_subject`], counted for the file the caller named with [`subject`]. The counts are
//! per thread (tests run in parallel), keyed by canonical path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

thread_local! {
    static COUNTS: RefCell<HashMap<PathBuf, usize>> = RefCell::new(HashMap::new());
}

/// One parse of `path` begins.
pub(crate) fn note(path: &Path) {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    COUNTS.with(|c| *c.borrow_mut().entry(key).or_default() += 1);
}

/// The parses counted on this thread since the last call, and a fresh start.
pub(crate) fn take() -> HashMap<PathBuf, usize> {
    COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Parses of `path` in `counts`.
pub(crate) fn of(counts: &HashMap<PathBuf, usize>, path: &Path) -> usize {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    counts.get(&key).copied().unwrap_or(0)
}

thread_local! {
    static SUBJECT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Names the file whose parses [`note_subject`] counts until the guard drops: a format layer
/// that re-parses a source it was handed (a plan's simulated result) does not know the path.
pub(crate) struct Subject(Option<PathBuf>);

/// Count [`note_subject`] calls as parses of `path` while the guard lives.
pub(crate) fn subject(path: &Path) -> Subject {
    Subject(SUBJECT.with(|s| s.borrow_mut().replace(path.to_path_buf())))
}

impl Drop for Subject {
    fn drop(&mut self) {
        let previous = self.0.take();
        SUBJECT.with(|s| *s.borrow_mut() = previous);
    }
}

/// One parse of the current [`subject`]'s file begins (nothing when there is none).
pub(crate) fn note_subject() {
    if let Some(p) = SUBJECT.with(|s| s.borrow().clone()) {
        note(&p);
    }
}
