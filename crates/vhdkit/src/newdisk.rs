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
