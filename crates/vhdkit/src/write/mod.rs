//! Writing through the virtual disk: a format-neutral [`WritableDisk`] (`Read + Write + Seek`)
//! over a [`WritableImage`] (one per format) and, for differencing disks, a read-only
//! [`ChainView`] of its parents.
//!
//! Each format owns its crash-safety rules behind [`WritableImage`]:
//! - `write_at` may keep metadata changes (BAT entries, sector bitmaps) in memory, as long as
//!   reads through the same image see them and the file on disk stays a valid disk whose
//!   contents are the old ones for every range not yet committed;
//! - `flush` commits them durably, in an order where a crash never makes metadata point at data
//!   that is not durable (VHD: data, sync, BAT/bitmaps, sync; VHDX: data, sync, then BAT and
//!   bitmap sectors through the log, as MS-VHDX 2.3 says; the first write of a session changes
//!   the VHDX FileWriteGuid/DataWriteGuid inside `write_at`).
//!
//! Both sparse formats run on one engine (`engine`): it splits writes per block, completes
//! partial sectors, keeps the sector bitmap cache and the dirty sets; the format supplies its
//! BAT encoding, allocation, bit order and commit. The range of every read and write is checked
//! once, here in [`WritableDisk`]; images rely on it.
//!
//! Opening for write finishes an interrupted vhdkit metadata change first
//! ([`crate::txn::journal::recover`]) and refuses a journal that does not belong to the file;
//! a VHDX with a dirty log has it replayed into the file.
//!
//! **Do not write a disk that has children.** Writing changes what its children read through
//! it; for VHDX it also changes the DataWriteGuid, which the children's `parent_linkage`
//! names, so they stop opening. The file does not know its children: checking is the caller's
//! business.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::chain::{Chain, ChainOptions};
use crate::disk::{detect, DiskFormat, DiskType};
use crate::error::{Error, Result, ResultExt};
use crate::txn::journal::{self, FileJournal, Recovery};
use crate::view::{read_len, ChainView, Shape};

pub(crate) mod engine;

/// Reads the virtual disk *below* an image (its parent chain), for differencing writes that need
/// the old contents of a partially written sector. Offsets are virtual-disk offsets.
pub type ParentRead<'a> = dyn FnMut(u64, &mut [u8]) -> Result<()> + 'a;

/// One writable disk file of some format. Offsets are virtual-disk offsets, and callers keep
/// `offset + len <= virtual_size()` ([`WritableDisk`] checks it; the images do not again).
pub trait WritableImage: Send + fmt::Debug {
    /// Format, storage type, virtual size and block size, from the same parse as the
    /// read-only open.
    fn shape(&self) -> Shape;
    /// Container format.
    fn format(&self) -> DiskFormat {
        self.shape().format
    }
    /// Storage type.
    fn disk_type(&self) -> DiskType {
        self.shape().disk_type
    }
    /// Virtual size in bytes.
    fn virtual_size(&self) -> u64 {
        self.shape().virtual_size
    }
    /// Read the virtual disk as this image holds it now (including uncommitted changes); ranges
    /// the image does not hold come from `parent` (differencing) or are zeros.
    fn read_at(&mut self, offset: u64, buf: &mut [u8], parent: &mut ParentRead<'_>) -> Result<()>;
    /// Write `data` at `offset`. `parent` supplies the old contents of sectors this image does
    /// not hold (needed to complete partial sectors of a differencing disk).
    fn write_at(&mut self, offset: u64, data: &[u8], parent: &mut ParentRead<'_>) -> Result<()>;
    /// Commit every change durably (metadata included).
    fn flush(&mut self) -> Result<()>;
    /// Where `len` bytes at `offset` go in the file when copied there directly rather than
    /// written (a conversion, merge or flatten cloning payload), allocating their block first
    /// when needed; the range must lie in one block, and in a block that tracks sectors be
    /// whole sectors (then marked written). `None` when the image cannot take them that way
    /// (partial sectors of such a block; the default).
    fn place_for_copy(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        let _ = (offset, len);
        Ok(None)
    }
    /// Where the byte at virtual `offset` is stored in the file now, when this image stores
    /// its block (a merge checks the committed map against it); `None` by default.
    fn stored_at(&self, offset: u64) -> Result<Option<u64>> {
        let _ = offset;
        Ok(None)
    }
}

/// `Read + Write + Seek` over the virtual disk of a writable image and its parents.
///
/// Writes go to the image only; parents are opened read-only. Call [`WritableDisk::flush`] (or
/// `Write::flush`) to make writes durable, or [`WritableDisk::close`]; dropping a disk that was
/// not closed flushes too, but ignores errors.
#[derive(Debug)]
pub struct WritableDisk {
    image: Box<dyn WritableImage>,
    parent: Option<ChainView>,
    path: Option<PathBuf>,
    pos: u64,
    /// Set when payload copied into the file directly failed: dropping then commits nothing
    /// more (the places given for it would otherwise be committed over missing data).
    abandoned: bool,
    /// Set by `close`: its flush was the last, so `Drop` must not sync again (a second sync could
    /// fail unseen after the first reported success).
    closed: bool,
    /// The writers' lock on the file, held as long as the disk is open (last: released after
    /// the final flush of `Drop`).
    _lock: Option<crate::lock::FileLock>,
}

fn read_parent(parent: Option<&ChainView>, offset: u64, buf: &mut [u8]) -> Result<()> {
    let Some(p) = parent else {
        buf.fill(0);
        return Ok(());
    };
    // A parent smaller than the child reads as zeros past its end.
    let size = p.virtual_size();
    let have = usize::try_from(size.saturating_sub(offset))
        .unwrap_or(usize::MAX)
        .min(buf.len());
    let (head, tail) = buf.split_at_mut(have);
    if !head.is_empty() {
        p.read_exact_at(head, offset)?;
    }
    tail.fill(0);
    Ok(())
}

impl WritableDisk {
    /// Open `path` for writing. A differencing disk's parents are found with `opts` and must
    /// form an intact chain; they are opened read-only.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use std::io::{Seek, SeekFrom, Write};
    /// use vhdkit::{create, ChainOptions, CreateParams, WritableDisk};
    ///
    /// let path = dir.path().join("disk.vhd");
    /// create(&path, &CreateParams::dynamic(8 << 20))?;
    ///
    /// let mut disk = WritableDisk::open(&path, &ChainOptions::default())?;
    /// disk.seek(SeekFrom::Start(3 << 20))?;
    /// disk.write_all(&[0xab; 4096])?;
    /// let mut back = [0u8; 4096];
    /// disk.read_exact_at(&mut back, 3 << 20)?;
    /// assert_eq!(back, [0xab; 4096]);
    /// // Commit the new block; `close` reports what a drop could not.
    /// disk.close()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<WritableDisk> {
        let path = path.as_ref();
        // One writer at a time: another holder of the lock is a refusal, and every write goes
        // through the locked descriptor (a duplicate of it shares the lock).
        let (lock, file) = crate::lock::locked_file(path)?;
        // A merge into this disk is unfinished: writing it now would change what the merged
        // disks (still on disk, still linking to it) read.
        if crate::fsx::entry_exists(&crate::sidefile::merge_record(path)) {
            return Err(Error::refused(format!(
                "an unfinished merge into this disk is recorded in {}: finish it first \
                 (`vhdkit check` says how)",
                crate::sidefile::merge_record(path).display()
            ))
            .with_path(path));
        }
        match journal::recover(&file, &FileJournal::for_disk(path)).with_path(path)? {
            Recovery::Foreign { reason } => {
                return Err(Error::Unsupported {
                    path: Some(path.to_path_buf()),
                    detail: format!(
                        "a vhdkit journal beside the file does not belong to it ({reason}); \
                         refusing to write until it is dealt with (`vhdkit repair`)"
                    ),
                });
            }
            Recovery::Clean | Recovery::RolledForward { .. } | Recovery::AlreadyComplete => {}
        }
        let format = detect(&file).with_path(path)?;
        let image: Box<dyn WritableImage> = match format {
            DiskFormat::Vhd => {
                Box::new(crate::vhd::write::VhdWriter::open(file, &opts.open).with_path(path)?)
            }
            // Replays a dirty log into the file first.
            DiskFormat::Vhdx => {
                Box::new(crate::vhdx::write::VhdxWriter::open(file, &opts.open).with_path(path)?)
            }
        };
        let parent = if image.disk_type() == DiskType::Differencing {
            let chain = Chain::open(path, opts)?;
            let mut layers = chain.into_view().into_layers();
            if layers.is_empty() {
                None
            } else {
                layers.remove(0);
                Some(ChainView::new(layers))
            }
        } else {
            None
        };
        Ok(WritableDisk {
            image,
            parent,
            path: Some(path.to_path_buf()),
            pos: 0,
            abandoned: false,
            closed: false,
            _lock: Some(lock),
        })
    }

    /// A writable disk from an image and (for a differencing image) the view of its parents.
    // Hidden: the image trait is not public; the repository's tests build disks from their
    // own writers (feature `test-support`).
    #[doc(hidden)]
    pub fn from_parts(image: Box<dyn WritableImage>, parent: Option<ChainView>) -> WritableDisk {
        WritableDisk {
            image,
            parent,
            path: None,
            pos: 0,
            abandoned: false,
            closed: false,
            _lock: None,
        }
    }

    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.image.virtual_size()
    }

    /// Container format.
    pub fn format(&self) -> DiskFormat {
        self.image.format()
    }

    /// Storage type.
    pub fn disk_type(&self) -> DiskType {
        self.image.disk_type()
    }

    fn check_range(&self, offset: u64, len: usize, what: &str) -> Result<()> {
        let size = self.virtual_size();
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{what} of {len} bytes at {offset:#x} past the end of a {size}-byte virtual disk"
            ))),
        }
    }

    /// Write `data` at virtual offset `offset`; the whole range must lie inside the disk.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.in_range(offset, data.len(), "write", |image, parent| {
            image.write_at(offset, data, parent)
        })
    }

    /// Fill `buf` from virtual offset `offset`; the whole range must lie inside the disk.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let len = buf.len();
        self.in_range(offset, len, "read", |image, parent| {
            image.read_at(offset, buf, parent)
        })
    }

    /// The one range check of every read and write, then `op` on the image with the parents
    /// below it; errors name the file.
    fn in_range(
        &mut self,
        offset: u64,
        len: usize,
        what: &str,
        op: impl FnOnce(&mut dyn WritableImage, &mut ParentRead<'_>) -> Result<()>,
    ) -> Result<()> {
        self.check_range(offset, len, what)?;
        if len == 0 {
            return Ok(());
        }
        let parent = self.parent.as_ref();
        let mut pr = |o: u64, b: &mut [u8]| read_parent(parent, o, b);
        let r = op(&mut *self.image, &mut pr);
        self.attach_path(r)
    }

    /// See [`WritableImage::place_for_copy`] (the range is checked first).
    pub(crate) fn place_for_copy(&mut self, offset: u64, len: u64) -> Result<Option<u64>> {
        self.check_range(offset, usize::try_from(len).unwrap_or(usize::MAX), "copy")?;
        let r = self.image.place_for_copy(offset, len);
        self.attach_path(r)
    }

    /// A copy into a place [`WritableDisk::place_for_copy`] gave failed: commit nothing more,
    /// not even when dropped (the file stays as its last flush left it, as after a crash).
    pub(crate) fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// See [`WritableImage::stored_at`].
    pub(crate) fn stored_at(&self, offset: u64) -> Result<Option<u64>> {
        self.image.stored_at(offset)
    }

    /// Make every write durable.
    pub fn flush(&mut self) -> Result<()> {
        let r = self.image.flush();
        self.attach_path(r)
    }

    /// Flush once and close, returning that flush's error (a drop without `close` also
    /// flushes, but cannot report). The disk is not flushed again when dropped, even when this
    /// flush failed: a retried sync can succeed without the data having reached the disk.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.flush()
    }

    fn attach_path<T>(&self, r: Result<T>) -> Result<T> {
        match &self.path {
            Some(p) => r.with_path(p),
            None => r,
        }
    }
}

impl Drop for WritableDisk {
    fn drop(&mut self) {
        if !self.closed && !self.abandoned {
            let _ = self.image.flush();
        }
    }
}

crate::view::cursor_read_seek!(WritableDisk);

impl Write for WritableDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = read_len(self.pos, self.virtual_size(), buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write at {:#x}: the virtual disk ends at {:#x}",
                    self.pos,
                    self.virtual_size()
                ),
            ));
        }
        self.write_at(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        WritableDisk::flush(self).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create, CreateParams, Disk};

    /// The read-only and the writable open describe a disk through one shape.
    #[test]
    fn reader_and_writer_share_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        for (name, fixed) in [("d.vhd", false), ("f.vhd", true), ("d.vhdx", false)] {
            let path = dir.path().join(name);
            let params = if fixed {
                CreateParams::fixed(3 << 20)
            } else {
                CreateParams::dynamic(8 << 20)
            };
            create(&path, &params).unwrap();
            let read = Disk::open(&path).unwrap();
            let expected = Shape {
                format: read.format(),
                disk_type: read.disk_type(),
                virtual_size: read.virtual_size(),
                block_size: read.block_size(),
            };
            let w = WritableDisk::open(&path, &ChainOptions::default()).unwrap();
            assert_eq!(w.image.shape(), expected, "{name}");
            assert_eq!(w.virtual_size(), expected.virtual_size);
        }
    }

    /// An image whose flushes are counted and fail from the `fail_from`th on.
    #[derive(Debug)]
    struct CountingImage {
        flushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        fail_from: usize,
    }

    impl WritableImage for CountingImage {
        fn shape(&self) -> Shape {
            Shape {
                format: DiskFormat::Vhd,
                disk_type: DiskType::Fixed,
                virtual_size: 4096,
                block_size: None,
            }
        }
        fn read_at(&mut self, _: u64, buf: &mut [u8], _: &mut ParentRead<'_>) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&mut self, _: u64, _: &[u8], _: &mut ParentRead<'_>) -> Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            use std::sync::atomic::Ordering;
            let n = self.flushes.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.fail_from {
                return Err(Error::Io {
                    path: None,
                    what: "sync".into(),
                    source: io::Error::other("injected sync failure"),
                });
            }
            Ok(())
        }
    }

    fn counted(fail_from: usize) -> (WritableDisk, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let flushes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let image = CountingImage {
            flushes: flushes.clone(),
            fail_from,
        };
        (WritableDisk::from_parts(Box::new(image), None), flushes)
    }

    /// `close` syncs exactly once and returns that sync's outcome; the drop after it does not
    /// sync again (a second, failing sync would otherwise go unseen, or a retry could hide the
    /// first failure).
    #[test]
    fn close_syncs_once_and_reports_that_sync() {
        use std::sync::atomic::Ordering;
        let (mut w, flushes) = counted(usize::MAX);
        w.write_at(0, &[1; 512]).unwrap();
        w.close().unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "close then drop");

        let (w, flushes) = counted(1);
        let err = w.close().unwrap_err();
        assert!(err.to_string().contains("injected sync failure"), "{err}");
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            1,
            "a failed close is not retried"
        );

        // Without `close`, the drop is the one flush.
        let (w, flushes) = counted(usize::MAX);
        drop(w);
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "drop without close");
    }
}
