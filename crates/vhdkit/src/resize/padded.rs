//! `convert --round-up`: a source read as a larger disk whose added range reads as zeros.

use std::fs::File;
use std::path::PathBuf;

use crate::convert::VirtualSource;
use crate::error::{Error, Result};
use crate::view::Allocation;

/// `inner` read as a disk of `size` bytes (at least its own): the bytes past its end are
/// zeros, left as holes by a sparse copy.
pub struct RoundedUp<'a> {
    inner: &'a dyn VirtualSource,
    size: u64,
}

impl<'a> RoundedUp<'a> {
    /// `inner` read as `size` bytes; an error when `size` is smaller than it.
    pub fn new(inner: &'a dyn VirtualSource, size: u64) -> Result<RoundedUp<'a>> {
        if size < inner.virtual_size() {
            return Err(Error::InvalidArgument(format!(
                "{size} bytes is smaller than the source's {}",
                inner.virtual_size()
            )));
        }
        Ok(RoundedUp { inner, size })
    }
}

impl VirtualSource for RoundedUp<'_> {
    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = self.inner.virtual_size();
        let own = usize::try_from(end.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let (head, tail) = buf.split_at_mut(own);
        if !head.is_empty() {
            self.inner.read_exact_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
        let end = self.inner.virtual_size();
        if offset < end {
            return self.inner.allocation(offset, max_len.min(end - offset));
        }
        if offset >= self.size || max_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "allocation query at {offset:#x} outside a {}-byte disk",
                self.size
            )));
        }
        Ok((Allocation::Zero, max_len.min(self.size - offset)))
    }

    fn files(&self) -> Vec<PathBuf> {
        self.inner.files()
    }

    fn file_extent(&self, offset: u64, max_len: u64) -> Result<Option<(&File, u64, u64)>> {
        let end = self.inner.virtual_size();
        if offset >= end {
            return Ok(None);
        }
        self.inner.file_extent(offset, max_len.min(end - offset))
    }
}
