//! Test-only instrument: how many times each file is parsed as a disk.
//!
//! Every parse of a disk file by path goes through [`crate::Disk::open_with`]; the format
//! plans of a reparent parse through the `open` closure the neutral layer hands them. Both
//! call [`note`]. The counts are per thread (tests run in parallel), keyed by canonical path.

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
