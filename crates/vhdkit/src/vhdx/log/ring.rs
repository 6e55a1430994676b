//! Bounded reads of the log ring through the [`Source`]: the ring is never held whole, so
//! memory does not grow with the log length (issue #10).

use super::entry::{bad, SECTOR};
use super::LogPlace;
use crate::error::Result;
use crate::source::{read_struct, Source};
use crate::vhdx::format::LOG_SECTOR_SIZE;

/// Bytes read at a time while streaming an entry: large enough for few reads, small enough
/// that a 4 GiB log costs no more memory than a 1 MiB one.
const CHUNK: usize = 256 << 10;

/// The log ring of one file.
pub(super) struct Ring<'a> {
    pub(super) src: &'a dyn Source,
    pub(super) place: &'a LogPlace,
}

impl Ring<'_> {
    /// Absolute file offset of ring offset `pos` (taken modulo the ring length).
    pub(super) fn absolute(&self, pos: u64) -> u64 {
        let rel = pos.checked_rem(self.place.length).unwrap_or(0);
        self.place.offset.saturating_add(rel)
    }

    /// Fill `buf` from ring offset `start`, which must not wrap (a sector or less, 4 KiB
    /// aligned).
    pub(super) fn read(&self, start: u64, buf: &mut [u8], structure: &'static str) -> Result<()> {
        read_struct(self.src, self.absolute(start), buf, structure)
    }

    /// Visit the `len` bytes from ring offset `start` (both 4 KiB multiples) one sector at a
    /// time, wrapping at the end of the ring: `f(sector index, sector bytes)`.
    pub(super) fn each_sector(
        &self,
        start: u64,
        len: u64,
        mut f: impl FnMut(u64, &[u8]),
    ) -> Result<()> {
        let length = self.place.length;
        if len > length || start >= length || start % LOG_SECTOR_SIZE != 0 {
            return Err(bad(
                self.absolute(start),
                format!("entry of {len:#x} bytes outside the log"),
            ));
        }
        // Sized by the entry (most are a few sectors), not CHUNK: the scan reads every
        // candidate entry, and a fresh 256 KiB buffer each time cost more than the reads.
        let mut buf = vec![0u8; usize::try_from(len.min(CHUNK as u64)).unwrap_or(CHUNK)];
        let mut done = 0u64;
        let mut index = 0u64;
        while done < len {
            let pos = start.saturating_add(done) % length;
            // Never read across the end of the ring: the rest comes from its start.
            let n = (len - done).min(length - pos).min(CHUNK as u64);
            let n_usize = usize::try_from(n).unwrap_or(CHUNK);
            let chunk = buf.get_mut(..n_usize).unwrap_or_default();
            read_struct(self.src, self.absolute(pos), chunk, super::entry::LOGE)?;
            for sector in chunk.chunks(SECTOR) {
                f(index, sector);
                index = index.saturating_add(1);
            }
            done = done.saturating_add(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn sectors_wrap_at_the_end_of_the_ring() {
        // A 1 MiB ring at 1 MiB whose sectors are numbered by their first byte.
        let mut file = vec![0u8; 2 << 20];
        for s in 0..256u64 {
            let at = usize::try_from((1 << 20) + s * 4096).unwrap();
            file[at] = u8::try_from(s).unwrap();
        }
        let place = LogPlace {
            offset: 1 << 20,
            length: 1 << 20,
            guid: Uuid::nil(),
        };
        let ring = Ring {
            src: &file,
            place: &place,
        };
        let mut seen = Vec::new();
        ring.each_sector(254 * 4096, 4 * 4096, |i, s| seen.push((i, s[0], s.len())))
            .unwrap();
        assert_eq!(
            seen,
            vec![(0, 254, 4096), (1, 255, 4096), (2, 0, 4096), (3, 1, 4096)]
        );
        assert!(ring.each_sector(0, (1 << 20) + 4096, |_, _| ()).is_err());
        assert!(ring.each_sector(1 << 20, 4096, |_, _| ()).is_err());
        let mut whole = 0;
        ring.each_sector(4096, 1 << 20, |_, _| whole += 1).unwrap();
        assert_eq!(whole, 256);
    }
}
