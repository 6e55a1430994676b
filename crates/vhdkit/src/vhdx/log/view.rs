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
        crate::piecemap::put(&mut self.pieces, at, piece);
    }

    /// Lay the replayed bytes over `buf`, which holds the file's bytes at `offset`. Logged
    /// sectors are read from `file`, the file the log lives in.
    pub(crate) fn apply(&self, file: &dyn Source, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let end = offset.saturating_add(buf.len() as u64);
        for (at, piece) in crate::piecemap::overlapping(&self.pieces, offset, end) {
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

impl crate::piecemap::Piece for Piece {
    fn len(&self) -> u64 {
        self.len
    }

    fn slice(&self, from: u64, to: u64) -> Piece {
        Piece {
            len: to.saturating_sub(from),
            skip: self.skip.saturating_add(from),
            kind: self.kind.clone(),
        }
    }
}

impl Piece {
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
        crate::source::read_base(&*self.base, self.base_len, self.len, buf, offset)?;
        self.map.apply(&*self.base, buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guid::to_vhdx_bytes;
    use crate::txn::fault::{FaultPlan, FaultyFile};
    use crate::vhdx::format::{
        self, LogDataSector, LogDescriptor, LogEntryHeader, DATA_DESCRIPTOR_SIGNATURE,
        DATA_SECTOR_SIGNATURE, LOG_ENTRY_SIGNATURE, ZERO_DESCRIPTOR_SIGNATURE,
    };
    use crate::vhdx::header::ParsedHeader;
    use crate::vhdx::log::entry::{descriptor_sectors, entry_length};
    use crate::vhdx::log::{find_active_sequence, LogPlace};
    use crate::vhdx::update::Session;
    use uuid::Uuid;

    const LOG: u64 = 1 << 20;
    const RING: u64 = 1 << 20;
    const FILE: usize = 4 << 20;
    const GUID: Uuid = Uuid::from_u128(0x1234_5678);
    const T: u64 = 2 << 20;
    const K4: u64 = 4096;

    #[derive(Clone, Copy)]
    enum W {
        Data(u64, u8),
        Zero(u64, u64),
    }

    /// A sector whose every byte (leading and trailing ones included) depends on `tag`.
    fn pattern(tag: u8) -> Vec<u8> {
        (0..4096u32)
            .map(|i| tag ^ (i % 253) as u8 ^ (i >> 8) as u8)
            .collect()
    }

    fn entry(seq: u64, tail: u64, writes: &[W]) -> Vec<u8> {
        let n = writes.len() as u64;
        let data = writes.iter().filter(|w| matches!(w, W::Data(..))).count() as u64;
        let header = LogEntryHeader {
            signature: LOG_ENTRY_SIGNATURE,
            checksum: 0,
            entry_length: u32::try_from(entry_length(n, data).unwrap()).unwrap(),
            tail: u32::try_from(tail).unwrap(),
            sequence_number: seq,
            descriptor_count: u32::try_from(n).unwrap(),
            reserved: 0,
            log_guid: to_vhdx_bytes(&GUID),
            flushed_file_offset: FILE as u64,
            last_file_offset: FILE as u64,
        };
        let mut out = format::encode(&header);
        let mut sectors = Vec::new();
        for w in writes {
            let d = match *w {
                W::Data(off, tag) => {
                    let s = pattern(tag);
                    sectors.extend(format::encode(&LogDataSector {
                        signature: DATA_SECTOR_SIGNATURE,
                        sequence_high: (seq >> 32) as u32,
                        data: s[8..4092].try_into().unwrap(),
                        sequence_low: seq as u32,
                    }));
                    LogDescriptor {
                        signature: DATA_DESCRIPTOR_SIGNATURE,
                        trailing_bytes: s[4092..].try_into().unwrap(),
                        leading_bytes: s[..8].try_into().unwrap(),
                        file_offset: off,
                        sequence_number: seq,
                    }
                }
                W::Zero(off, len) => LogDescriptor {
                    signature: ZERO_DESCRIPTOR_SIGNATURE,
                    trailing_bytes: [0; 4],
                    leading_bytes: len.to_le_bytes(),
                    file_offset: off,
                    sequence_number: seq,
                },
            };
            out.extend(format::encode(&d));
        }
        out.resize((descriptor_sectors(n).unwrap() * K4) as usize, 0);
        out.extend(sectors);
        format::set_checksum(&mut out);
        out
    }

    /// A file whose bytes are a counter, with `entries` laid one after another into the ring
    /// from ring offset `start`, wrapping.
    fn file_with(start: u64, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut f: Vec<u8> = (0..FILE).map(|i| (i % 251) as u8).collect();
        f[LOG as usize..(LOG + RING) as usize].fill(0);
        let mut pos = start;
        for e in entries {
            for b in e {
                f[(LOG + pos) as usize] = *b;
                pos = (pos + 1) % RING;
            }
        }
        f
    }

    /// `base` with `writes` applied in order.
    fn model(base: &[u8], writes: &[W]) -> Vec<u8> {
        let mut m = base.to_vec();
        for w in writes {
            match *w {
                W::Data(off, tag) => m[off as usize..][..4096].copy_from_slice(&pattern(tag)),
                W::Zero(off, len) => m[off as usize..(off + len) as usize].fill(0),
            }
        }
        m
    }

    fn place() -> LogPlace {
        LogPlace {
            offset: LOG,
            length: RING,
            guid: GUID,
        }
    }

    /// The active sequence and the whole replayed view of `file`.
    fn replayed(file: &[u8]) -> (LogSequence, Vec<u8>) {
        let seq = find_active_sequence(&file.to_vec(), &place(), 1 << 30).unwrap();
        let v = LogView::new(Box::new(file.to_vec()), &seq).unwrap();
        assert_eq!(Source::len(&v).unwrap(), FILE as u64);
        let mut all = vec![0u8; FILE];
        v.read_exact_at(&mut all, 0).unwrap();
        // Reads that start and end inside pieces see the same bytes.
        for (off, len) in [(T + 4090, 10), (T + 7, 3 * 4096), (T + 65530, 70_000)] {
            let mut part = vec![0u8; len];
            v.read_exact_at(&mut part, off).unwrap();
            assert_eq!(part, all[off as usize..][..len], "read at {off:#x}+{len}");
        }
        (seq, all)
    }

    /// What replaying `seq` onto `file` itself leaves past the headers.
    fn replayed_to_disk(file: &[u8], seq: &LogSequence) -> Vec<u8> {
        let h = ParsedHeader {
            sequence_number: 1,
            file_write_guid: Uuid::nil(),
            data_write_guid: Uuid::nil(),
            log_guid: GUID,
            log_version: 0,
            log_length: RING as u32,
            log_offset: LOG,
        };
        let f = FaultyFile::new(file.to_vec(), FaultPlan::new(None));
        Session::new(&f, h, 0).replay_to_disk(seq).unwrap();
        f.contents_synced()
    }

    #[test]
    fn later_entries_win_and_zero_ranges_split() {
        let e1 = [
            W::Data(T, 1),
            W::Data(T + K4, 2),
            W::Zero(T + 16 * K4, 16 * K4),
        ];
        let e2 = [W::Data(T, 3), W::Data(T + 18 * K4, 4), W::Zero(T + K4, K4)];
        let e3 = [W::Data(T, 5), W::Data(T + 40 * K4, 6), W::Data(T, 7)];
        let entries = [entry(5, 0, &e1), entry(6, 0, &e2), entry(7, 0, &e3)];
        let file = file_with(0, &entries);
        let (seq, view) = replayed(&file);
        assert_eq!(seq.sequence_range(), (5, 7));
        let all: Vec<W> = [e1, e2, e3].concat();
        let want = model(&file, &all);
        assert_eq!(view[(T as usize)..][..4096], pattern(7)[..]);
        assert!(view[(T + K4) as usize..][..4096].iter().all(|&b| b == 0));
        assert_eq!(view[(T + 18 * K4) as usize..][..4096], pattern(4)[..]);
        assert!(view[(T + 17 * K4) as usize..][..4096]
            .iter()
            .all(|&b| b == 0));
        assert!(
            view == want,
            "the view differs from applying the writes in order"
        );
        let disk = replayed_to_disk(&file, &seq);
        let from = LOG as usize;
        assert!(disk[from..] == want[from..], "replay to disk differs");
    }

    #[test]
    fn an_entry_larger_than_a_read_chunk_wraps_the_ring() {
        // 130 data sectors need two descriptor sectors: 528 KiB, streamed in several chunks,
        // starting 64 KiB before the end of the ring.
        let writes: Vec<W> = (0..130u64)
            .map(|i| W::Data(T + i * K4, i as u8))
            .chain([W::Zero(T + 200 * K4, 8 * K4)])
            .collect();
        let start = RING - 16 * K4;
        let file = file_with(start, &[entry(9, start, &writes)]);
        let (seq, view) = replayed(&file);
        assert_eq!(seq.entries.len(), 1);
        assert_eq!(seq.entries[0].writes.len(), 131);
        assert!(view == model(&file, &writes));
        let disk = replayed_to_disk(&file, &seq);
        assert!(disk[LOG as usize..] == view[LOG as usize..]);
    }

    #[test]
    fn a_damaged_entry_ends_the_sequence_before_it() {
        let e = |tag| [W::Data(T, tag)];
        let entries = [entry(5, 0, &e(1)), entry(6, 0, &e(2)), entry(7, 0, &e(3))];
        // Entry 7's data sector, after two 8 KiB entries and its own descriptor sector.
        let data = (LOG + 5 * K4) as usize;
        // A bad checksum (one payload byte changed), then a torn write (the sector lost).
        for torn in [false, true] {
            let mut file = file_with(0, &entries);
            if torn {
                file[data..data + 4096].fill(0);
            } else {
                file[data + 100] ^= 0xFF;
            }
            let (seq, view) = replayed(&file);
            assert_eq!(seq.sequence_range(), (5, 6));
            assert_eq!(view[T as usize..][..4096], pattern(2)[..]);
        }
        // Damage in the tail entry leaves no complete sequence; the reason is kept.
        let mut file = file_with(0, &entries);
        file[LOG as usize + 5000] ^= 1;
        let err = find_active_sequence(&file, &place(), 1 << 30).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no complete entry sequence"), "{msg}");
        assert!(
            msg.contains("first rejected entry") && msg.contains("checksum"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_data_sector_is_reported_before_a_later_bad_descriptor() {
        // Descriptor 1's data sector lacks its signature and descriptor 2 is not a descriptor:
        // a sequential check stops at the data sector, and so does the streamed one.
        let mut e = entry(
            5,
            0,
            &[W::Data(T, 1), W::Data(T + K4, 2), W::Data(T + 2 * K4, 3)],
        );
        e[64 + 2 * 32..][..4].copy_from_slice(b"junk");
        e[2 * 4096..][..4].copy_from_slice(b"atad");
        format::set_checksum(&mut e);
        let file = file_with(0, &[e]);
        let msg = find_active_sequence(&file, &place(), 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data sector for descriptor 1"), "{msg}");
    }
}
