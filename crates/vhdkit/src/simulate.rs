//! Simulating a metadata plan before the first write: its writes laid over the file in memory
//! and the result parsed again, so that a plan whose result would not open, or would differ in
//! anything but what was asked, is refused before anything is written. One copy for both
//! formats' link editors.

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
        Err(Error::Internal(format!(
            "the planned file would have a different {what}"
        )))
    }
}
