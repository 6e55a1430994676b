//! Positional access to the bytes of an image file.
//!
//! Parsers and readers never seek: they ask a [`Source`] for `len` bytes at an absolute offset.
//! That keeps a disk shareable between threads (`&self` reads), lets a VHDX log replay lay an
//! in-memory overlay over a file without touching it, and lets fuzz targets use a plain buffer.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Read-only positional access to a file's bytes.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Fill `buf` from absolute offset `offset`. Reading past the end is an error
    /// (`UnexpectedEof`), never a short read.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;

    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file_read_exact_at(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

#[cfg(unix)]
fn file_read_exact_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn file_read_exact_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_read(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// An in-memory image (tests, fuzzing).
impl Source for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl Source for &'static [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        slice_read(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl Source for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        slice_read(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

fn slice_read(data: &[u8], buf: &mut [u8], offset: u64) -> io::Result<()> {
    let start =
        usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let end = start
        .checked_add(buf.len())
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    let src = data
        .get(start..end)
        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
    buf.copy_from_slice(src);
    Ok(())
}

/// Adapts any `Read + Seek` (a network stream, a decompressor with seeking) into a [`Source`].
/// Reads are serialised by a mutex.
#[derive(Debug)]
pub struct SeekSource<R> {
    inner: Mutex<R>,
}

impl<R: Read + Seek> SeekSource<R> {
    /// Wrap a reader.
    pub fn new(r: R) -> Self {
        SeekSource {
            inner: Mutex::new(r),
        }
    }
}

impl<R: Read + Seek + Send + std::fmt::Debug> Source for SeekSource<R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut r = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("reader lock poisoned"))?;
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(buf)
    }

    fn len(&self) -> io::Result<u64> {
        let mut r = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("reader lock poisoned"))?;
        r.seek(SeekFrom::End(0))
    }
}

/// A source with some ranges replaced in memory and a different length: how a read-only open
/// shows a pending journal's change without writing it. Bytes past the inner source's end
/// read as zeros.
#[derive(Debug)]
pub struct OverlaySource {
    inner: Box<dyn Source>,
    inner_len: u64,
    len: u64,
    writes: Vec<(u64, Vec<u8>)>,
}

impl OverlaySource {
    /// Lay `writes` (offset, bytes) over `inner`, giving a source of `len` bytes. On failure
    /// (the inner length cannot be read) the inner source is handed back.
    #[allow(clippy::type_complexity)]
    pub fn new(
        inner: Box<dyn Source>,
        writes: Vec<(u64, Vec<u8>)>,
        len: u64,
    ) -> std::result::Result<OverlaySource, (Box<dyn Source>, io::Error)> {
        match inner.len() {
            Ok(inner_len) => Ok(OverlaySource {
                inner,
                inner_len,
                len,
                writes,
            }),
            Err(e) => Err((inner, e)),
        }
    }
}

impl Source for OverlaySource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        buf.fill(0);
        if offset < self.inner_len {
            let n = usize::try_from((self.inner_len - offset).min(buf.len() as u64))
                .map_err(|_| eof())?;
            self.inner
                .read_exact_at(buf.get_mut(..n).ok_or_else(eof)?, offset)?;
        }
        for (at, data) in &self.writes {
            let w_end = at.saturating_add(data.len() as u64);
            let lo = offset.max(*at);
            let hi = end.min(w_end);
            if lo >= hi {
                continue;
            }
            let (b0, b1) = ((lo - offset) as usize, (hi - offset) as usize);
            let (d0, d1) = ((lo - at) as usize, (hi - at) as usize);
            if let (Some(dst), Some(src)) = (buf.get_mut(b0..b1), data.get(d0..d1)) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// Read `len` bytes at `offset`, for structure `structure`, with an error that says where.
///
/// A read past the end of the file is reported as corruption (the structure claims to be where
/// the file has no bytes), other failures as I/O errors.
#[allow(dead_code)] // used by the format modules
pub(crate) fn read_struct(
    src: &dyn Source,
    offset: u64,
    buf: &mut [u8],
    structure: &'static str,
) -> Result<()> {
    src.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::corrupt(
                structure,
                offset,
                format!("{} bytes needed, but the file ends before", buf.len()),
            )
        } else {
            Error::io(format!("reading {structure} at offset {offset:#x}"), e)
        }
    })
}

/// Length of the source as a library error.
pub(crate) fn source_len(src: &dyn Source) -> Result<u64> {
    src.len()
        .map_err(|e| Error::io("reading the file length", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vec_source_bounds() {
        let v: Vec<u8> = (0u8..16).collect();
        let mut b = [0u8; 4];
        v.read_exact_at(&mut b, 12).unwrap();
        assert_eq!(b, [12, 13, 14, 15]);
        assert_eq!(
            v.read_exact_at(&mut b, 13).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        assert!(v.read_exact_at(&mut b, u64::MAX).is_err());
    }

    #[test]
    fn read_struct_past_eof_is_corruption() {
        let v = vec![0u8; 10];
        let mut b = [0u8; 8];
        let e = read_struct(&v, 8, &mut b, "thing").unwrap_err();
        assert!(e.is_corruption(), "{e}");
        assert!(e.to_string().contains("thing at offset 0x8"));
    }

    #[test]
    fn overlay_reads_new_bytes_and_grows() {
        let base: Vec<u8> = (0u8..16).collect();
        let o = OverlaySource::new(Box::new(base), vec![(14, vec![0xAA; 4]), (2, vec![9])], 20)
            .map_err(|(_, e)| e)
            .unwrap();
        let mut b = [0u8; 20];
        o.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b[2], 9);
        assert_eq!(&b[13..20], &[13, 0xAA, 0xAA, 0xAA, 0xAA, 0, 0]);
        assert_eq!(Source::len(&o).unwrap(), 20);
        assert!(o.read_exact_at(&mut b, 1).is_err());
    }

    #[test]
    fn seek_source_reads() {
        let s = SeekSource::new(io::Cursor::new(vec![1u8, 2, 3, 4]));
        let mut b = [0u8; 2];
        s.read_exact_at(&mut b, 2).unwrap();
        assert_eq!(b, [3, 4]);
        assert_eq!(Source::len(&s).unwrap(), 4);
    }
}
