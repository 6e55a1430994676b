//! Simulating a metadata plan before the first write: its writes laid over the file in memory
//! and the result parsed again, so that a plan whose result would not open, or would differ in
//! anything but what was asked, is refused before anything is written. One copy for both
//! formats' link editors. The parsed result is kept with the plan (`Simulated`).

use std::sync::{Arc, Mutex, PoisonError};

use crate::disk::Parsed;
use crate::error::{Error, Result};
use crate::source::{OverlaySource, Source};

/// Lay `writes` over `src` (the result `new_len` bytes long) and parse the result with `open`.
pub(crate) fn reopen<T>(
    src: Box<dyn Source>,
    writes: Vec<(u64, Vec<u8>)>,
    new_len: u64,
    open: impl FnOnce(Box<dyn Source>) -> Result<T>,
) -> Result<T> {
    let sim = OverlaySource::new(src, writes, new_len)
        .map_err(|(_, e)| Error::io("simulating the plan", e))?;
    #[cfg(test)]
    crate::parse_count::note_subject();
    open(Box::new(sim))
        .map_err(|e| Error::Internal(format!("the planned file would not open: {e}")))
}

/// A property of the simulated result that must equal the planned one: a difference is a bug
/// in the plan (an internal error), never something the input did.
pub(crate) fn same(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(differs(what))
    }
}

/// The simulated result differs from the planned one in `what`.
pub(crate) fn differs(what: &str) -> Error {
    Error::Internal(format!("the planned file would have a different {what}"))
}

/// A plan's simulated result as parsed: the file as it will be once the plan is applied as
/// made. It travels with the plan so that whoever applies it can follow the file afterwards
/// without parsing it a third time, when the apply provably left exactly these bytes (see
/// `reparent::apply`). It keeps a read-only descriptor of the file open until it is taken or
/// dropped. Clones of a plan share it; the first to take it gets it.
#[derive(Clone, Default)]
pub(crate) struct Simulated(Arc<Mutex<Option<Parsed>>>);

impl Simulated {
    /// Keep `parsed`, the simulated result.
    pub(crate) fn new(parsed: Parsed) -> Simulated {
        Simulated(Arc::new(Mutex::new(Some(parsed))))
    }

    /// No result kept: for plans whose apply never follows the chain from it (flatten's unlink).
    pub(crate) fn none() -> Simulated {
        Simulated(Arc::new(Mutex::new(None)))
    }

    /// The simulated result, unless taken already.
    pub(crate) fn take(&self) -> Option<Parsed> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl std::fmt::Debug for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Simulated")
    }
}
