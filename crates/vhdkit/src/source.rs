//! Positional access to the bytes of an image file.
//!
//! Parsers and readers never seek: they ask a [`Source`] for `len` bytes at an absolute offset.
//! That keeps a disk shareable between threads (`&self` reads), lets a VHDX log replay lay an
//! in-memory overlay over a file without touching it, and lets fuzz targets use a plain buffer.

use std::collections::BTreeMap;
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

    /// The file itself, when reads go straight to one (no overlay or recorder in between): a
    /// conversion may then clone its bytes with the file system instead of reading them.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        file_read_exact_at(self, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn as_file(&self) -> Option<&File> {
        Some(self)
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
/// A source shared between owners (a parsed file and the simulated re-open of a plan laid
/// over it; a reader and its table) reads as the source itself.
impl<T: Source + ?Sized> Source for std::sync::Arc<T> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
}

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

/// Adapts any `Read + Seek` (a network stream, a decompressor with seeking) into a [`Source`]
/// (behind `Disk::from_reader`). Reads are serialised by a mutex.
#[derive(Debug)]
pub(crate) struct SeekSource<R> {
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
/// shows a pending journal's change without writing. Bytes past the inner source's end read as
/// zeros unless replaced.
#[derive(Debug)]
pub struct OverlaySource {
    inner: Box<dyn Source>,
    inner_len: u64,
    len: u64,
    /// Replaced ranges by start offset. They never overlap: a later layer cuts the parts it
    /// covers out of earlier ones, so a read finds its pieces with one range lookup.
    pieces: BTreeMap<u64, Bytes>,
}

/// One replaced range: its bytes.
#[derive(Debug, Clone)]
struct Bytes(Vec<u8>);

impl crate::piecemap::Piece for Bytes {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn slice(&self, from: u64, to: u64) -> Bytes {
        let r =
            usize::try_from(from).unwrap_or(usize::MAX)..usize::try_from(to).unwrap_or(usize::MAX);
        Bytes(self.0.get(r).unwrap_or_default().to_vec())
    }
}

impl OverlaySource {
    /// Lay `writes` (offset, bytes; a later one wins where they overlap) over `inner`, giving a
    /// source of `len` bytes. On failure (the inner length cannot be read) the inner source is
    /// handed back.
    #[allow(clippy::type_complexity)]
    pub fn new(
        inner: Box<dyn Source>,
        writes: Vec<(u64, Vec<u8>)>,
        len: u64,
    ) -> std::result::Result<OverlaySource, (Box<dyn Source>, io::Error)> {
        match inner.len() {
            Ok(inner_len) => {
                let mut o = OverlaySource {
                    inner,
                    inner_len,
                    len,
                    pieces: BTreeMap::new(),
                };
                for (at, data) in writes {
                    crate::piecemap::put(&mut o.pieces, at, Bytes(data));
                }
                Ok(o)
            }
            Err(e) => Err((inner, e)),
        }
    }
}

/// The first step of reading an overlay view `len` bytes long: `buf` filled from `offset` with
/// the base's bytes where the base (`base_len` bytes) has them and zeros past it. Returns the
/// end of the range; a range past `len` is an `UnexpectedEof`.
pub(crate) fn read_base(
    base: &dyn Source,
    base_len: u64,
    len: u64,
    buf: &mut [u8],
    offset: u64,
) -> io::Result<u64> {
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    let end = offset
        .checked_add(u64::try_from(buf.len()).map_err(|_| eof())?)
        .ok_or_else(eof)?;
    if end > len {
        return Err(eof());
    }
    buf.fill(0);
    if offset < base_len {
        let n = usize::try_from((base_len - offset).min(end - offset)).map_err(|_| eof())?;
        base.read_exact_at(buf.get_mut(..n).ok_or_else(eof)?, offset)?;
    }
    Ok(end)
}

impl Source for OverlaySource {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let end = read_base(&*self.inner, self.inner_len, self.len, buf, offset)?;
        use crate::piecemap::Piece as _;
        for (at, piece) in crate::piecemap::overlapping(&self.pieces, offset, end) {
            let lo = offset.max(*at);
            let hi = end.min(at.saturating_add(piece.len()));
            let idx = |v: u64| usize::try_from(v).map_err(|_| eof());
            let dst = buf
                .get_mut(idx(lo - offset)?..idx(hi - offset)?)
                .ok_or_else(eof)?;
            dst.copy_from_slice(piece.0.get(idx(lo - at)?..idx(hi - at)?).ok_or_else(eof)?);
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

/// A source that records every read, for tests of what a pass reads and how much at once.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ReadLog {
    bytes: Vec<u8>,
    reads: std::sync::Mutex<Vec<(u64, usize)>>,
}

#[cfg(test)]
impl ReadLog {
    pub(crate) fn new(bytes: Vec<u8>) -> ReadLog {
        ReadLog {
            bytes,
            reads: Default::default(),
        }
    }

    /// The reads so far: (offset, length), in order.
    pub(crate) fn reads(&self) -> Vec<(u64, usize)> {
        self.reads.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
impl Source for ReadLog {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Ok(mut r) = self.reads.lock() {
            r.push((offset, buf.len()));
        }
        self.bytes.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }
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
    fn overlay_later_layers_win_and_split_earlier_ones() {
        let base: Vec<u8> = vec![1; 32];
        let writes = vec![
            (4, vec![2; 16]),
            (8, vec![0; 4]),
            (30, vec![3; 6]),
            (2, vec![4; 3]),
        ];
        let o = OverlaySource::new(Box::new(base), writes, 40)
            .map_err(|(_, e)| e)
            .unwrap();
        let mut b = [9u8; 40];
        o.read_exact_at(&mut b, 0).unwrap();
        let mut want = vec![1u8; 32];
        want.resize(40, 0);
        want[4..20].fill(2);
        want[8..12].fill(0);
        want[30..36].fill(3);
        want[2..5].fill(4);
        assert_eq!(&b[..], &want[..]);
        let mut part = [9u8; 5];
        o.read_exact_at(&mut part, 9).unwrap();
        assert_eq!(part, [0, 0, 0, 2, 2]);
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
