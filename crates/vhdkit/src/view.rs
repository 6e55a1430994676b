//! `Read + Seek` over the virtual contents of a disk and its parents.
//!
//! Reads are range-based: each layer is asked for whole runs ([`Disk::map`]), data runs are read
//! from the file in one call, and only runs a differencing layer does not hold go down to its
//! parent. A read therefore costs one file read per run, not per sector.

use std::io::{self, SeekFrom};

use crate::disk::{Disk, DiskFormat, DiskType, Extent};
use crate::error::{Error, Result};

/// What a disk is, as its one parse found it: the read-only open ([`Disk`]) and the writable
/// open ([`crate::WritableImage`]) describe a file through the same value, so they cannot
/// disagree about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Container format.
    pub format: DiskFormat,
    /// Storage type.
    pub disk_type: DiskType,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes; `None` for a fixed VHD, which has no blocks.
    pub block_size: Option<u64>,
}

/// The virtual disk of a chain of disks, child first. Reads past the end return EOF.
#[derive(Debug)]
pub struct ChainView {
    layers: Vec<Disk>,
    pos: u64,
}

/// What the whole chain holds for a range, for sparse copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Some layer stores data for the range (it may still be zeros).
    Data,
    /// No layer stores anything: the range reads as zeros.
    Zero,
}

impl ChainView {
    /// A view over `layers`, child first, each the parent of the one before.
    pub fn new(layers: Vec<Disk>) -> ChainView {
        ChainView { layers, pos: 0 }
    }

    /// The disks, child first.
    pub fn layers(&self) -> &[Disk] {
        &self.layers
    }

    /// Take the disks back.
    pub fn into_layers(self) -> Vec<Disk> {
        self.layers
    }

    /// Virtual size of the chain: the child's.
    pub fn virtual_size(&self) -> u64 {
        self.layers.first().map_or(0, Disk::virtual_size)
    }

    /// Fill `buf` from virtual offset `offset`. The whole range must lie inside the disk.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("disk.vhdx");
    /// # vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
    /// use vhdkit::{ChainView, Disk};
    ///
    /// // A view of one disk; `Chain::into_view` gives one over a whole chain.
    /// let view = ChainView::new(vec![Disk::open(&path)?]);
    /// let mut sector = [0xffu8; 512];
    /// view.read_exact_at(&mut sector, 4096)?;
    /// assert_eq!(sector, [0u8; 512]);
    /// assert!(view.read_exact_at(&mut sector, view.virtual_size()).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.virtual_size())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "read of {} bytes at {offset:#x} past the end of a {}-byte virtual disk",
                    buf.len(),
                    self.virtual_size()
                ))
            })?;
        debug_assert!(end >= offset);
        self.read_layer(0, buf, offset)
    }

    fn read_layer(&self, level: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        let Some(disk) = self.layers.get(level) else {
            buf.fill(0);
            return Ok(());
        };
        let size = disk.virtual_size();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let rest = &mut buf[done..];
            if pos >= size {
                // A parent smaller than its child: the rest reads as zeros.
                rest.fill(0);
                return Ok(());
            }
            let (extent, len) = disk.map(pos, rest.len() as u64)?;
            // `map` never returns more than asked, and asked fits in usize.
            let n = usize::try_from(len).unwrap_or(rest.len()).min(rest.len());
            let chunk = &mut rest[..n];
            match extent {
                Extent::Data { file_offset } => disk.read_data(file_offset, chunk)?,
                Extent::Zero => chunk.fill(0),
                Extent::Unallocated => self.read_layer(level + 1, chunk, pos)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Whether any layer stores data for the range at `offset`, and for how many bytes (at
    /// least 1, at most `max_len`) that answer holds.
    pub fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
        let size = self.virtual_size();
        if offset >= size || max_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "allocation query at {offset:#x} outside a {size}-byte virtual disk"
            )));
        }
        self.alloc_layer(0, offset, max_len.min(size - offset))
    }

    fn alloc_layer(&self, level: usize, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
        let Some(disk) = self.layers.get(level) else {
            return Ok((Allocation::Zero, max_len));
        };
        if offset >= disk.virtual_size() {
            return Ok((Allocation::Zero, max_len));
        }
        let (extent, len) = disk.map(offset, max_len)?;
        match extent {
            Extent::Data { .. } => Ok((Allocation::Data, len)),
            Extent::Zero => Ok((Allocation::Zero, len)),
            Extent::Unallocated => self.alloc_layer(level + 1, offset, len),
        }
    }
}

/// `Read` and `Seek` at the cursor `pos` of a type with `virtual_size()` and
/// `read_exact_at(buf, offset) -> Result<()>`: the chain view and the writable disk move the
/// same way.
macro_rules! cursor_read_seek {
    ($t:ty) => {
        impl std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let (pos, size) = (self.pos, self.virtual_size());
                let n = $crate::view::read_from(pos, size, buf, |b, o| self.read_exact_at(b, o))?;
                self.pos += n as u64;
                Ok(n)
            }
        }

        impl std::io::Seek for $t {
            fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
                self.pos = $crate::view::seek_to(self.pos, self.virtual_size(), to)?;
                Ok(self.pos)
            }
        }
    };
}
pub(crate) use cursor_read_seek;

cursor_read_seek!(ChainView);

/// How many bytes a `Read` or `Write` of `want` bytes at `pos` of a `size`-byte virtual disk
/// covers: 0 at or past the end, else as many as fit before it.
pub(crate) fn read_len(pos: u64, size: u64, want: usize) -> usize {
    if pos >= size {
        return 0;
    }
    usize::try_from(size - pos).unwrap_or(usize::MAX).min(want)
}

/// One `Read::read` at `pos` of a `size`-byte virtual disk through `read_exact_at`: the bytes
/// read (0 at or past the end).
pub(crate) fn read_from(
    pos: u64,
    size: u64,
    buf: &mut [u8],
    read_exact_at: impl FnOnce(&mut [u8], u64) -> Result<()>,
) -> io::Result<usize> {
    let n = read_len(pos, size, buf.len());
    if n > 0 {
        read_exact_at(&mut buf[..n], pos)?;
    }
    Ok(n)
}

/// The position `to` leads to from `pos` on a `size`-byte virtual disk (it may lie past the
/// end, as with files).
pub(crate) fn seek_to(pos: u64, size: u64, to: SeekFrom) -> io::Result<u64> {
    let new = match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => size.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    new.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek to a negative or overflowing position",
        )
    })
}
