//! What a conversion reads: [`VirtualSource`], for a chain's view and for a raw image.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::disk::Extent;
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
    /// Where the bytes at `offset` are one file's contiguous bytes, so that the file system may
    /// copy (clone) them: the file, the offset in it, and for how many bytes (1..=`max_len`).
    /// `None` where they are not, or not known to be (zeros, parent data behind a layer read
    /// through an overlay). The default: never.
    fn file_extent(&self, offset: u64, max_len: u64) -> Result<Option<(&File, u64, u64)>> {
        let _ = (offset, max_len);
        Ok(None)
    }
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
    fn file_extent(&self, offset: u64, max_len: u64) -> Result<Option<(&File, u64, u64)>> {
        // The first layer that says anything about the range decides, as for reads.
        let mut len = max_len;
        for disk in self.layers() {
            if offset >= disk.virtual_size() {
                return Ok(None);
            }
            match disk.map(offset, len)? {
                (Extent::Data { file_offset }, n) => {
                    return Ok(disk.data_file(file_offset, n).map(|f| (f, file_offset, n)))
                }
                (Extent::Zero, _) => return Ok(None),
                (Extent::Unallocated, n) => len = n,
            }
        }
        Ok(None)
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
    fn file_extent(&self, offset: u64, max_len: u64) -> Result<Option<(&File, u64, u64)>> {
        let n = max_len.min(self.len.saturating_sub(offset));
        Ok((n > 0).then_some((&self.file, offset, n)))
    }
}

/// A forward walk's view of where a source reads as zeros. Queries reach past the range asked
/// about while holes keep coming whole (doubling each time) and shrink back after data, so a
/// long hole costs a few lookups, and no lookup scans much more of a table than the hole it
/// finds (a walk over a big disk stays linear whatever its layout).
#[derive(Debug, Default)]
pub(crate) struct ZeroAhead {
    /// The last zero run found, `start..end`.
    zero: (u64, u64),
    /// How far the next query looks.
    ahead: u64,
}

impl ZeroAhead {
    /// What `src` holds at `pos` (inside it): zeros for how many bytes (at least 1, possibly
    /// more than `len`), or data for how many (1..=`len`). `pos` must not go back between
    /// calls.
    pub(crate) fn next(
        &mut self,
        src: &dyn VirtualSource,
        pos: u64,
        len: u64,
    ) -> Result<(Allocation, u64)> {
        let (start, end) = self.zero;
        if start <= pos && pos < end {
            return Ok((Allocation::Zero, end - pos));
        }
        let want = len
            .max(self.ahead)
            .min(src.virtual_size().saturating_sub(pos))
            .max(1);
        let (alloc, n) = src.allocation(pos, want)?;
        if alloc == Allocation::Data {
            self.ahead = 0;
            return Ok((alloc, n.min(len).max(1)));
        }
        self.zero = (pos, pos.saturating_add(n));
        self.ahead = if n >= want { want.saturating_mul(2) } else { n };
        Ok((alloc, n))
    }

    /// Whether all `len` bytes at `pos` read as zeros.
    pub(crate) fn all_zero(&mut self, src: &dyn VirtualSource, pos: u64, len: u64) -> Result<bool> {
        let end = pos.saturating_add(len);
        let mut at = pos;
        while at < end {
            match self.next(src, at, end - at)? {
                (Allocation::Data, _) => return Ok(false),
                (Allocation::Zero, n) => at = at.saturating_add(n),
            }
        }
        Ok(true)
    }

    /// End of the zero run holding `pos`, if one is known (for skipping whole steps).
    pub(crate) fn zero_end(&self, pos: u64) -> Option<u64> {
        let (start, end) = self.zero;
        (start <= pos && pos < end).then_some(end)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A source made of runs `(data?, len)`, counting queries and the bytes they look at.
    struct Runs {
        runs: Vec<(bool, u64)>,
        queries: std::sync::atomic::AtomicU64,
        looked: std::sync::atomic::AtomicU64,
    }

    impl Runs {
        fn new(runs: Vec<(bool, u64)>) -> Runs {
            Runs {
                runs,
                queries: 0.into(),
                looked: 0.into(),
            }
        }
        fn data_at(&self, pos: u64) -> bool {
            let mut at = 0;
            for &(d, n) in &self.runs {
                if pos < at + n {
                    return d;
                }
                at += n;
            }
            unreachable!()
        }
    }

    impl VirtualSource for Runs {
        fn virtual_size(&self) -> u64 {
            self.runs.iter().map(|r| r.1).sum()
        }
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> Result<()> {
            Ok(())
        }
        fn allocation(&self, offset: u64, max_len: u64) -> Result<(Allocation, u64)> {
            use std::sync::atomic::Ordering::Relaxed;
            assert!(max_len >= 1 && offset + max_len <= self.virtual_size());
            self.queries.fetch_add(1, Relaxed);
            // A mapper scans as far as its run goes, within the range asked about.
            let mut at = 0;
            for &(d, n) in &self.runs {
                if offset < at + n {
                    let len = (at + n - offset).min(max_len);
                    self.looked.fetch_add(len, Relaxed);
                    let a = if d {
                        Allocation::Data
                    } else {
                        Allocation::Zero
                    };
                    return Ok((a, len));
                }
                at += n;
            }
            unreachable!()
        }
        fn files(&self) -> Vec<PathBuf> {
            Vec::new()
        }
    }

    #[test]
    fn answers_match_the_source_in_every_walk() {
        let seed = Cell::new(7u64);
        let next = |m: u64| {
            seed.set(seed.get().wrapping_mul(6364136223846793005).wrapping_add(1));
            (seed.get() >> 33) % m
        };
        for round in 0..200 {
            let runs: Vec<(bool, u64)> = (0..1 + next(12))
                .map(|i| {
                    (
                        i % 2 == round % 2,
                        1 + next(if next(3) == 0 { 500 } else { 5 }),
                    )
                })
                .collect();
            let src = Runs::new(runs);
            let size = src.virtual_size();
            let mut z = ZeroAhead::default();
            let mut pos = 0;
            while pos < size {
                let len = (1 + next(20)).min(size - pos);
                let want = (pos..pos + len).all(|p| !src.data_at(p));
                assert_eq!(z.all_zero(&src, pos, len).unwrap(), want, "{round} {pos}");
                if want {
                    let end = z.zero_end(pos + len - 1).unwrap();
                    assert!(end >= pos + len && end <= size);
                    assert!((pos..end).all(|p| !src.data_at(p)), "{round} {pos}..{end}");
                }
                let (a, n) = z.next(&src, pos, len).unwrap();
                assert!(n >= 1 && pos + n <= size);
                assert_eq!(a == Allocation::Data, src.data_at(pos));
                if a == Allocation::Data {
                    assert!(n <= len);
                }
                pos += len;
            }
        }
    }

    #[test]
    fn a_long_hole_costs_few_queries_and_no_walk_looks_far_past_what_it_finds() {
        use std::sync::atomic::Ordering::Relaxed;
        // One hole of 2^20 units walked a unit at a time: about 20 doublings.
        let src = Runs::new(vec![(false, 1 << 20), (true, 1)]);
        let mut z = ZeroAhead::default();
        for pos in 0..1 << 20 {
            assert!(z.all_zero(&src, pos, 1).unwrap());
        }
        assert!(src.queries.load(Relaxed) <= 22, "{:?}", src.queries);
        // Holes and data in turn, and holes cut short: what the queries look at stays a small
        // multiple of the disk, however far the lookahead has grown.
        for layout in [
            vec![(false, 1u64), (true, 1)],
            vec![(false, 1000), (true, 1), (false, 3), (true, 1)],
        ] {
            let runs: Vec<(bool, u64)> = layout.iter().cycle().take(4000).copied().collect();
            let src = Runs::new(runs);
            let size = src.virtual_size();
            let mut z = ZeroAhead::default();
            for pos in 0..size {
                z.all_zero(&src, pos, 1).unwrap();
            }
            assert!(
                src.looked.load(Relaxed) <= 4 * size,
                "{:?} of {size}",
                src.looked
            );
        }
    }
}
