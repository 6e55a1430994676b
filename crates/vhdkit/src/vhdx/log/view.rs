//! The replayed view of a dirty log without copying its payload: an index from target ranges
//! to where their bytes come from (a log data sector plus the descriptor's leading and
//! trailing bytes, zeros, or bytes given in memory). The index costs tens of bytes per 4 KiB
//! sector; the sector bytes are read from the file when asked for.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use super::{LogSequence, LogWrite};
use crate::error::Result;
use crate::source::{source_len, Source};
use crate::vhdx::format::{
    LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET, LOG_LEADING_BYTES, LOG_SECTOR_SIZE, LOG_TRAILING_BYTES,
};

/// Where a replayed range's bytes come from.
#[derive(Debug, Clone)]
enum Kind {
    Zeros,
    /// Bytes given in memory ([`LogWrite::Data`]); shared when a later write splits the range.
    Bytes(Arc<[u8]>),
    /// A [`LogWrite::Logged`] sector.
    Logged {
        data_sector: u64,
        leading: [u8; LOG_LEADING_BYTES],
        trailing: [u8; LOG_TRAILING_BYTES],
    },
}

/// `len` bytes of `kind`, starting `skip` bytes into it.
#[derive(Debug, Clone)]
struct Piece {
    len: u64,
    skip: u64,
    kind: Kind,
}

/// Replayed ranges of a file, by start offset. They never overlap: a later write cuts the parts
/// it covers out of earlier ones, so the last write to a byte wins.
#[derive(Debug, Default)]
pub(crate) struct ReplayMap {
    pieces: BTreeMap<u64, Piece>,
}

impl ReplayMap {
    /// The index of every write of `seq`, in order.
    pub(crate) fn new(seq: &LogSequence) -> ReplayMap {
        let mut m = ReplayMap::default();
        for w in seq.entries.iter().flat_map(|e| &e.writes) {
            let (at, len, kind) = match w {
                LogWrite::Data {
                    file_offset,
                    sector,
                } => (
                    *file_offset,
                    sector.len() as u64,
                    Kind::Bytes(Arc::from(&sector[..])),
                ),
                LogWrite::Logged {
                    file_offset,
                    data_sector_offset,
                    leading_bytes,
                    trailing_bytes,
                } => (
                    *file_offset,
                    LOG_SECTOR_SIZE,
                    Kind::Logged {
                        data_sector: *data_sector_offset,
                        leading: *leading_bytes,
                        trailing: *trailing_bytes,
                    },
                ),
                LogWrite::Zero {
                    file_offset,
                    length,
                } => (*file_offset, *length, Kind::Zeros),
            };
            m.put(at, Piece { len, skip: 0, kind });
        }
        m
    }

    fn put(&mut self, at: u64, piece: Piece) {
        let end = at.saturating_add(piece.len);
        if end == at {
            return;
        }
        let before = self
            .pieces
            .range(..at)
            .next_back()
            .filter(|(k, p)| k.saturating_add(p.len) > at)
            .map(|(k, _)| *k);
        let hit: Vec<u64> = before
            .into_iter()
            .chain(self.pieces.range(at..end).map(|(k, _)| *k))
            .collect();
        for k in hit {
            let Some(old) = self.pieces.remove(&k) else {
                continue;
            };
            let old_end = k.saturating_add(old.len);
            if k < at {
                self.pieces.insert(k, old.slice(0, at - k));
            }
            if old_end > end {
                self.pieces.insert(end, old.slice(end - k, old_end - k));
            }
        }
        self.pieces.insert(at, piece);
    }

    /// Lay the replayed bytes over `buf`, which holds the file's bytes at `offset`. Logged
    /// sectors are read from `file`, the file the log lives in.
    pub(crate) fn apply(&self, file: &dyn Source, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let end = offset.saturating_add(buf.len() as u64);
        let first = self
            .pieces
            .range(..offset)
            .next_back()
            .filter(|(k, p)| k.saturating_add(p.len) > offset);
        for (at, piece) in first.into_iter().chain(self.pieces.range(offset..end)) {
            let lo = offset.max(*at);
            let hi = end.min(at.saturating_add(piece.len));
            let idx = |v: u64| usize::try_from(v).map_err(|_| eof());
            let dst = buf
                .get_mut(idx(lo - offset)?..idx(hi - offset)?)
                .ok_or_else(eof)?;
            piece.read(file, lo - at, dst)?;
        }
        Ok(())
    }
}

impl Piece {
    /// Bytes `from..to` of the piece (both within it).
    fn slice(&self, from: u64, to: u64) -> Piece {
        Piece {
            len: to.saturating_sub(from),
            skip: self.skip.saturating_add(from),
            kind: self.kind.clone(),
        }
    }

    /// Fill `dst` with the piece's bytes from `from` on.
    fn read(&self, file: &dyn Source, from: u64, dst: &mut [u8]) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let start = self.skip.saturating_add(from);
        match &self.kind {
            Kind::Zeros => dst.fill(0),
            Kind::Bytes(b) => {
                let s = usize::try_from(start).map_err(|_| eof())?;
                let src = b.get(s..s.saturating_add(dst.len())).ok_or_else(eof)?;
                dst.copy_from_slice(src);
            }
            Kind::Logged {
                data_sector,
                leading,
                trailing,
            } => logged_part(file, *data_sector, leading, trailing, start, dst)?,
        }
        Ok(())
    }
}

/// Bytes `from..from + dst.len()` of the 4 KiB sector a logged write rebuilds: the leading
/// bytes, the data sector's middle, the trailing bytes (MS-VHDX 2.3.1.3, 2.3.1.5).
fn logged_part(
    file: &dyn Source,
    data_sector: u64,
    leading: &[u8; LOG_LEADING_BYTES],
    trailing: &[u8; LOG_TRAILING_BYTES],
    from: u64,
    dst: &mut [u8],
) -> io::Result<()> {
    let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
    let to = from.saturating_add(dst.len() as u64);
    if to > LOG_SECTOR_SIZE {
        return Err(eof());
    }
    let lead = LOG_LEADING_BYTES as u64;
    let tail = LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET as u64;
    for (start, stop) in [(0, lead), (lead, tail), (tail, LOG_SECTOR_SIZE)] {
        let (lo, hi) = (from.max(start), to.min(stop));
        if lo >= hi {
            continue;
        }
        let idx = |v: u64| usize::try_from(v).map_err(|_| eof());
        let out = dst
            .get_mut(idx(lo - from)?..idx(hi - from)?)
            .ok_or_else(eof)?;
        if start == 0 {
            out.copy_from_slice(leading.get(idx(lo)?..idx(hi)?).ok_or_else(eof)?);
        } else if stop == LOG_SECTOR_SIZE {
            let t = trailing.get(idx(lo - tail)?..idx(hi - tail)?);
            out.copy_from_slice(t.ok_or_else(eof)?);
        } else {
            file.read_exact_at(out, data_sector.saturating_add(lo))?;
        }
    }
    Ok(())
}

/// The 4 KiB sector `w` writes, into `out` (4096 bytes), reading a logged sector from `file`.
/// `Ok(false)` for a zero write, which has no sector.
pub(crate) fn logged_sector(file: &dyn Source, w: &LogWrite, out: &mut [u8]) -> io::Result<bool> {
    match w {
        LogWrite::Data { sector, .. } => {
            let src = sector.get(..out.len());
            out.copy_from_slice(src.ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?);
        }
        LogWrite::Logged {
            data_sector_offset,
            leading_bytes,
            trailing_bytes,
            ..
        } => logged_part(
            file,
            *data_sector_offset,
            leading_bytes,
            trailing_bytes,
            0,
            out,
        )?,
        LogWrite::Zero { .. } => return Ok(false),
    }
    Ok(true)
}

/// A file seen with its dirty log replayed, without writing and without copying the logged
/// sectors: reads go to the index, then to the file. The length covers every write and each
/// entry's LastFileOffset; bytes past the file's end read as zeros unless written.
#[derive(Debug)]
pub(crate) struct LogView {
    base: Box<dyn Source>,
    base_len: u64,
    len: u64,
    map: ReplayMap,
}

impl LogView {
    /// `base` with `seq` replayed over it.
    pub(crate) fn new(base: Box<dyn Source>, seq: &LogSequence) -> Result<LogView> {
        let base_len = source_len(&*base)?;
        let mut len = base_len;
        for e in &seq.entries {
            for w in &e.writes {
                let end = match w {
                    LogWrite::Data { file_offset, .. } | LogWrite::Logged { file_offset, .. } => {
                        file_offset.saturating_add(LOG_SECTOR_SIZE)
                    }
                    LogWrite::Zero {
                        file_offset,
                        length,
                    } => file_offset.saturating_add(*length),
                };
                len = len.max(end);
            }
            len = len.max(e.last_file_offset);
        }
        Ok(LogView {
            base,
            base_len,
            len,
            map: ReplayMap::new(seq),
        })
    }
}

impl Source for LogView {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let end = offset
            .checked_add(u64::try_from(buf.len()).map_err(|_| eof())?)
            .ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        buf.fill(0);
        if offset < self.base_len {
            let n =
                usize::try_from((self.base_len - offset).min(end - offset)).map_err(|_| eof())?;
            self.base
                .read_exact_at(buf.get_mut(..n).ok_or_else(eof)?, offset)?;
        }
        self.map.apply(&*self.base, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}
