//! What a new disk is before a format lays it out, shared by
//! [`crate::create`](mod@crate::create), [`crate::convert`] and the per-format layouts
//! ([`crate::vhd::create`], [`crate::vhdx::create`]).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use crate::disk::DiskType;
use crate::error::{Error, Result};
use crate::source::Source;
use crate::txn::Sink;

/// The kind of disk to create. `P` is what a differencing disk records about its parent, which
/// each format defines ([`crate::vhd::create::NewParent`], [`crate::vhdx::create::NewParent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind<P> {
    /// Every block allocated up front.
    Fixed,
    /// Blocks allocated on write.
    Dynamic,
    /// Differencing over the parent described.
    Differencing(P),
}

impl<P> NewKind<P> {
    /// A disk without parent: fixed or dynamic.
    pub fn without_parent(fixed: bool) -> Self {
        if fixed {
            NewKind::Fixed
        } else {
            NewKind::Dynamic
        }
    }

    /// The type of the disk made.
    pub fn disk_type(&self) -> DiskType {
        match self {
            NewKind::Fixed => DiskType::Fixed,
            NewKind::Dynamic => DiskType::Dynamic,
            NewKind::Differencing(_) => DiskType::Differencing,
        }
    }
}

/// Write a new disk's layout into an empty `sink` and make it durable: size it to `len` (the
/// rest is holes of zeros), let `tables` write what is streamed through a bounded buffer (the
/// BAT), write `writes` in order, sync. `what` names the format in errors (`"vhd"`).
pub(crate) fn write_layout<S: Sink + ?Sized>(
    sink: &S,
    what: &str,
    len: u64,
    tables: impl FnOnce(&S) -> Result<()>,
    writes: &[(u64, Vec<u8>)],
) -> Result<()> {
    sink.set_len(len)
        .map_err(|e| Error::io(format!("sizing the new {what}"), e))?;
    tables(sink)?;
    for (at, data) in writes {
        sink.write_all_at(data, *at)
            .map_err(|e| Error::io(format!("writing the new {what} at offset {at:#x}"), e))?;
    }
    sink.sync()
        .map_err(|e| Error::io(format!("flushing the new {what}"), e))
}

/// A format's laid-out new disk, as [`write_built`] writes it.
pub(crate) trait Built {
    /// The format's name in errors (`"vhd"`).
    const FORMAT: &'static str;
    /// File length, and the writes in order.
    fn bytes(&self) -> (u64, &[(u64, Vec<u8>)]);
    /// Write what is streamed through a bounded buffer (the BAT), before the writes.
    fn write_streamed<S: Sink + ?Sized>(&self, sink: &S) -> Result<()>;
}

/// Write `layout` into an empty `sink` and make it durable (see [`write_layout`]); returns
/// the layout.
pub(crate) fn write_built<S: Sink + ?Sized, L: Built>(sink: &S, layout: L) -> Result<L> {
    let (len, writes) = layout.bytes();
    write_layout(sink, L::FORMAT, len, |s| layout.write_streamed(s), writes)?;
    Ok(layout)
}

/// Where [`crate::create::create_into`] and the `convert::*_into` functions write a new image
/// instead of a path: any seekable byte store that can be read back (the writers re-read the
/// structures they made) and resized. Implemented for [`std::fs::File`], for
/// `std::io::Cursor<Vec<u8>>` (an image in memory) and for `&mut` of any sink.
///
/// A sink gets no crash safety from vhdkit: the path functions build under a temporary name
/// and rename, a sink is written in place, and after an error it holds a partial image.
pub trait OutputSink: Read + Write + Seek + Send {
    /// Truncate or extend the store to `len` bytes; new bytes read as zeros.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Make everything written durable. The default flushes.
    fn sync(&mut self) -> io::Result<()> {
        self.flush()
    }
    /// The file written, when the store is one: a conversion may then let the file system copy
    /// payload into it. The default: none.
    fn as_file(&self) -> Option<&std::fs::File> {
        None
    }
}

impl OutputSink for std::fs::File {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
    fn as_file(&self) -> Option<&std::fs::File> {
        Some(self)
    }
}

impl OutputSink for io::Cursor<Vec<u8>> {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let n = usize::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("an image of {len} bytes does not fit in memory"),
            )
        })?;
        let v = self.get_mut();
        v.try_reserve(n.saturating_sub(v.len()))
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
        v.resize(n, 0);
        Ok(())
    }
}

impl<T: OutputSink + ?Sized> OutputSink for &mut T {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn as_file(&self) -> Option<&std::fs::File> {
        (**self).as_file()
    }
}

/// An [`OutputSink`] seen as the crate's positional [`Sink`], which the layout writers and the
/// image writers take. Every access seeks first, under one lock.
pub(crate) struct SinkIo<'a, W: ?Sized>(Mutex<&'a mut W>);

impl<'a, W: OutputSink + ?Sized> SinkIo<'a, W> {
    pub(crate) fn new(w: &'a mut W) -> Self {
        SinkIo(Mutex::new(w))
    }

    fn with<T>(&self, op: impl FnOnce(&mut W) -> io::Result<T>) -> io::Result<T> {
        let mut g = self
            .0
            .lock()
            .map_err(|_| io::Error::other("the output sink's lock is poisoned"))?;
        op(&mut **g)
    }
}

impl<W: ?Sized> std::fmt::Debug for SinkIo<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkIo")
    }
}

impl<W: OutputSink + ?Sized> Source for SinkIo<'_, W> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|w| {
            w.seek(SeekFrom::Start(offset))?;
            w.read_exact(buf)
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.with(|w| w.seek(SeekFrom::End(0)))
    }
}

impl<W: OutputSink + ?Sized> Sink for SinkIo<'_, W> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|w| {
            w.seek(SeekFrom::Start(offset))?;
            w.write_all(buf)
        })
    }
    fn sync(&self) -> io::Result<()> {
        self.with(|w| OutputSink::sync(w))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|w| OutputSink::set_len(w, len))
    }
}

/// Written bytes between two starts of writeback on a durable output. Large enough that the
/// calls cost nothing next to the copy, small enough that the final `fsync` finds at most
/// this much still dirty, whatever the disk size.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Writes smaller than this (headers, BAT entries, bitmaps) are left to the page cache and the
/// final `fsync`; only payload runs bypass it or start writeback early.
const PAYLOAD_MIN_WRITE: usize = 64 << 10;

/// Alignment of direct writes (offset, length and memory): the largest logical block size of
/// common disks, so it suits every device.
const DIRECT_ALIGN: usize = 4096;

/// Largest direct write: the bounce buffer's size.
const DIRECT_CHUNK: usize = 4 << 20;

/// A new output file, under its temporary name, as the convert writers see it.
///
/// Durable (`sync` true): payload writes aligned to [`DIRECT_ALIGN`] go to the disk directly
/// (`O_DIRECT`, through a second open of the file), and others start their writeback every
/// [`WRITEBACK_STEP`] (`posix_fadvise(DONTNEED)`, which Linux turns into an asynchronous
/// writeback of the range's dirty pages; rustix wraps it safely but not `sync_file_range`), so
/// the final `fsync` has little left. Direct writes also skip the copy into the page cache,
/// which dominates a buffered copy's CPU time. Not durable: plain buffered writes and `sync`
/// does nothing (`convert --no-sync`).
pub(crate) struct OutFile<'a> {
    file: &'a std::fs::File,
    sync: bool,
    /// The file opened again with `O_DIRECT`, and its aligned bounce buffer; `None` where
    /// that is not possible (another OS, no `/proc`, a file system without direct I/O).
    direct: Option<Mutex<Direct>>,
    /// Payload range written through the page cache since the last start of writeback.
    pending: Mutex<Option<(u64, u64)>>,
    /// The file's cursor, for the `Write` side (saves an `lseek` per write).
    pos: u64,
}

/// The direct side of an [`OutFile`].
struct Direct {
    file: std::fs::File,
    /// `DIRECT_CHUNK + DIRECT_ALIGN` bytes; the aligned window is used.
    bounce: Vec<u8>,
    /// False once a direct write was refused as misaligned.
    usable: bool,
}

impl<'a> OutFile<'a> {
    pub(crate) fn new(file: &'a std::fs::File, sync: bool) -> Self {
        // Direct writes pay the disk's speed now to spare the final fsync; with no fsync to
        // come (`--no-sync`), the page cache is the faster road.
        let direct = sync.then(|| open_direct(file)).flatten().map(|file| {
            Mutex::new(Direct {
                file,
                bounce: Vec::new(),
                usable: true,
            })
        });
        OutFile {
            file,
            sync,
            direct,
            pending: Mutex::new(None),
            pos: 0,
        }
    }

    /// Write `buf` at `offset`: directly when it is payload and aligned, else through the
    /// page cache.
    fn put(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(d) = self.direct.as_ref().filter(|_| direct_fits(buf, offset)) {
            let mut d = d
                .lock()
                .map_err(|_| io::Error::other("the output's direct-write lock is poisoned"))?;
            if d.usable {
                match d.write_all_at(buf, offset) {
                    // A file system that opens with O_DIRECT but wants another alignment:
                    // the page cache from now on, this write included.
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => d.usable = false,
                    r => return r,
                }
            }
        }
        Sink::write_all_at(self.file, buf, offset)?;
        self.wrote(offset, buf.len());
        Ok(())
    }

    /// `len` bytes were written through the page cache at `offset`.
    fn wrote(&self, offset: u64, len: usize) {
        if !self.sync || len < PAYLOAD_MIN_WRITE {
            return;
        }
        let end = offset.saturating_add(len as u64);
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        let (lo, hi) = p.map_or((offset, end), |(lo, hi)| (lo.min(offset), hi.max(end)));
        if hi - lo >= WRITEBACK_STEP {
            *p = None;
            drop(p);
            start_writeback(self.file, lo, hi - lo);
        } else {
            *p = Some((lo, hi));
        }
    }
}

/// Whether a write of `buf` at `offset` is payload the direct side can take.
fn direct_fits(buf: &[u8], offset: u64) -> bool {
    let a = DIRECT_ALIGN as u64;
    buf.len() >= PAYLOAD_MIN_WRITE && offset % a == 0 && (buf.len() as u64) % a == 0
}

impl Direct {
    /// Write `buf` as it is when aligned in memory, else through the aligned bounce buffer.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return Sink::write_all_at(&self.file, buf, offset);
        }
        if self.bounce.is_empty() {
            self.bounce = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        }
        let skip = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let window = self
            .bounce
            .get_mut(skip..skip.saturating_add(DIRECT_CHUNK))
            .ok_or_else(|| io::Error::other("the direct-write buffer cannot be aligned"))?;
        let mut at = offset;
        for piece in buf.chunks(DIRECT_CHUNK) {
            let w = window.get_mut(..piece.len()).unwrap_or_default();
            w.copy_from_slice(piece);
            Sink::write_all_at(&self.file, w, at)?;
            at = at.saturating_add(piece.len() as u64);
        }
        Ok(())
    }
}

/// A second open file description of `file` with `O_DIRECT` (flags belong to the description,
/// so a `dup` would not do), through `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn open_direct(file: &std::fs::File) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = i32::try_from(rustix::fs::OFlags::DIRECT.bits()).ok()?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flags)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_file: &std::fs::File) -> Option<std::fs::File> {
    None
}

/// Ask the kernel to start writing back `len` bytes at `offset` without waiting. Only a hint:
/// a failure changes nothing, since the final `fsync` still makes everything durable.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

impl std::fmt::Debug for OutFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutFile")
            .field("sync", &self.sync)
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

impl Source for OutFile<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Source::read_exact_at(self.file, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Source::len(self.file)
    }
}

impl Sink for OutFile<'_> {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.put(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        if self.sync {
            self.file.sync_all()
        } else {
            Ok(())
        }
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

/// The raw path writes through `Write + Seek`: positioned writes at a cursor kept here.
impl Read for OutFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_at(self.file, buf, self.pos)?;
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, at)
}

#[cfg(windows)]
fn read_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(f, buf, at)
}

impl Write for OutFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.put(buf, self.pos)?;
        self.pos = self.pos.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for OutFile<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let end = || Source::len(self.file);
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => end()?.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

impl OutputSink for OutFile<'_> {
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        Sink::sync(self)
    }
    // Cloned payload goes into the file itself, around the direct descriptor's writes.
    fn as_file(&self) -> Option<&std::fs::File> {
        Some(self.file)
    }
}
