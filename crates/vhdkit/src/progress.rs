//! Progress reporting and cancellation for long operations: one [`Progress`] trait that
//! conversion ([`crate::convert`]), `share` and `relink` ([`crate::share`]) and the check of a
//! tree ([`crate::check::check_tree`]) report to, and ask whether to stop.
//!
//! An operation reports *phases*: [`Progress::start`] names one (`"convert"`, `"scan"`,
//! `"hash"`, `"repoint"`, `"relink"`, `"check"`) with its total when known,
//! [`Progress::advance`] adds the units done (bytes for `"convert"` and `"hash"`, disks
//! otherwise), [`Progress::finish`] ends it. Between steps the operation asks
//! [`Progress::cancelled`]; once it says yes, the operation stops at the next safe point and
//! returns an error for which [`Error::is_cancelled`] is true: a conversion removes its partial
//! output (a path) and leaves a sink partly written, a check stops between disks (it writes
//! nothing), `share` and `relink` stop between children (each change is crash-safe on its own,
//! so the disks are consistent and a rerun finishes the work).
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use vhdkit::{Progress};
//!
//! /// Counts bytes, and stops once `stop` is set (from another thread, a signal handler...).
//! struct Counter<'a> {
//!     done: u64,
//!     stop: &'a AtomicBool,
//! }
//!
//! impl Progress for Counter<'_> {
//!     fn advance(&mut self, n: u64) {
//!         self.done += n;
//!     }
//!     fn cancelled(&self) -> bool {
//!         self.stop.load(Ordering::Relaxed)
//!     }
//! }
//!
//! let stop = AtomicBool::new(false);
//! let mut c = Counter { done: 0, stop: &stop };
//! c.advance(512);
//! assert!(!c.cancelled());
//! stop.store(true, Ordering::Relaxed);
//! assert!(c.cancelled());
//! assert!(!().cancelled());
//! ```

use crate::error::{Error, Result};

/// Receives the progress of a long operation and may cancel it. Every method has a default
/// that does nothing (and never cancels), so an implementation names only what it uses.
pub trait Progress {
    /// A phase starts: `what` names it, `total` is its size in units (bytes or disks) when
    /// known.
    fn start(&mut self, _what: &str, _total: Option<u64>) {}
    /// `n` more units of the current phase are done.
    fn advance(&mut self, _n: u64) {}
    /// The current phase is over.
    fn finish(&mut self) {}
    /// True when the operation should stop at its next safe point.
    fn cancelled(&self) -> bool {
        false
    }
}

/// `()` is the progress that shows nothing and never cancels: pass `()` where no progress is
/// wanted.
impl Progress for () {}

impl<P: Progress + ?Sized> Progress for &mut P {
    fn start(&mut self, what: &str, total: Option<u64>) {
        (**self).start(what, total);
    }
    fn advance(&mut self, n: u64) {
        (**self).advance(n);
    }
    fn finish(&mut self) {
        (**self).finish();
    }
    fn cancelled(&self) -> bool {
        (**self).cancelled()
    }
}

/// The reason of the [`Error::Refused`] that a cancelled operation returns.
const CANCELLED: &str = "cancelled";

/// The error of an operation stopped because its [`Progress`] said so.
pub(crate) fn cancelled() -> Error {
    Error::refused(CANCELLED)
}

/// `Err(cancelled())` once `p` asks to stop: the check an operation makes between steps.
pub(crate) fn check(p: &dyn Progress) -> Result<()> {
    if p.cancelled() {
        return Err(cancelled());
    }
    Ok(())
}

impl Error {
    /// True when this error is an operation stopping because its [`Progress`] was cancelled (it
    /// is an [`Error::Refused`], kind [`crate::ErrorKind::Refused`], whose reason is
    /// `cancelled`).
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Refused { reason, .. } if reason == CANCELLED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelled_error_is_recognised_and_others_are_not() {
        assert!(cancelled().is_cancelled());
        assert!(cancelled()
            .with_path(std::path::Path::new("x.vhd"))
            .is_cancelled());
        assert!(!Error::refused("a loop").is_cancelled());
        assert!(!Error::internal("cancelled").is_cancelled());
        assert!(check(&()).is_ok());
        struct Stop;
        impl Progress for Stop {
            fn cancelled(&self) -> bool {
                true
            }
        }
        assert!(check(&Stop).is_err_and(|e| e.is_cancelled()));
        let mut s = Stop;
        let by_ref: &mut dyn Progress = &mut s;
        assert!(check(&by_ref).is_err());
    }
}
