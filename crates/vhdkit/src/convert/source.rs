//! What a conversion reads: [`VirtualSource`], for a chain's view and for a raw image.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};
use crate::view::{Allocation, ChainView};

/// The virtual disk being copied: a chain, or a raw image. `Sync`, so a reader thread can fill
/// the next buffer while the previous one is written.
pub trait VirtualSource: Sync {
    /// Size in bytes.
    fn virtual_size(&self) -> u64;
    /// Fill `buf` from `offset`; the range lies inside the disk.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Whether the range at `offset` holds data, and for how many bytes (1..=`max_len`).
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)>;
    /// The files read (so that none of them is overwritten by the output).
    fn files(&self) -> Vec<PathBuf>;
}

impl VirtualSource for ChainView {
    fn virtual_size(&self) -> u64 {
        ChainView::virtual_size(self)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        ChainView::read_exact_at(self, buf, offset)
    }
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
        ChainView::allocation(self, offset, max_len)
    }
    fn files(&self) -> Vec<PathBuf> {
        self.layers()
            .iter()
            .filter_map(|d| d.path().map(Path::to_path_buf))
            .collect()
    }
}

/// A raw image file: every byte is virtual data.
#[derive(Debug)]
pub struct RawSource {
    file: File,
    len: u64,
    path: PathBuf,
}

impl RawSource {
    /// Open a raw image.
    pub fn open(path: impl AsRef<Path>) -> Result<RawSource> {
        let path = path.as_ref();
        let file = crate::fsx::open_disk(path)
            .map_err(|e| Error::io("opening the raw image", e))
            .with_path(path)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading the raw image length", e))
            .with_path(path)?
            .len();
        Ok(RawSource {
            file,
            len,
            path: path.to_path_buf(),
        })
    }
}

impl VirtualSource for RawSource {
    fn virtual_size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::source::Source::read_exact_at(&self.file, buf, offset)
            .map_err(|e| Error::io(format!("reading the raw image at {offset:#x}"), e))
            .with_path(&self.path)
    }
    fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
        if offset >= self.len || max_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "allocation query at {offset:#x} outside a {}-byte image",
                self.len
            )));
        }
        Ok((Allocation::Data, max_len.min(self.len - offset)))
    }
    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
}
