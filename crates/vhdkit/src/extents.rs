//! Which layer of a chain holds each range of the virtual disk: the runs `vhdkit map` prints
//! and the NBD server's block status reports (`base:allocation`, `qemu:allocation-depth`).
//!
//! The runs are produced one at a time (an iterator), adjacent runs that say the same thing
//! merged, so a 64 TiB sparse disk costs one table walk and a handful of runs, never a list of
//! millions.

use crate::disk::Extent;
use crate::error::Result;
use crate::view::ChainView;

/// One run of the virtual disk of a chain, as [`ChainView::extents`] gives them: where it lies
/// and which layer, if any, holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MapExtent {
    /// Virtual offset of the first byte.
    pub start: u64,
    /// Length in bytes (at least 1).
    pub length: u64,
    /// The layer that decides what the range reads (0 = the top disk, the child), or `None`
    /// when no layer holds it (it reads as zeros).
    pub layer: Option<usize>,
    /// The range is stored as data in the file of `layer`.
    pub data: bool,
    /// The range reads as zeros (known without reading: a hole or a zero block).
    pub zero: bool,
    /// Offset of the range's first byte in the file of `layer`, when stored there contiguously.
    pub file_offset: Option<u64>,
}

impl MapExtent {
    /// Whether `next` continues `self` with the same answer (so the two may be one run).
    fn continued_by(&self, next: &MapExtent) -> bool {
        let end = self.start.checked_add(self.length);
        let offsets_follow = match (self.file_offset, next.file_offset) {
            (Some(a), Some(b)) => a.checked_add(self.length) == Some(b),
            (None, None) => true,
            _ => false,
        };
        end == Some(next.start)
            && self.layer == next.layer
            && self.data == next.data
            && self.zero == next.zero
            && offsets_follow
    }
}

/// The runs of `[pos, end)` of a view, merged.
struct Extents<'a> {
    view: &'a ChainView,
    pos: u64,
    end: u64,
    /// A run already read that did not merge into the last one given.
    pending: Option<MapExtent>,
    failed: bool,
}

impl Extents<'_> {
    /// The run at `self.pos` as the layers decide it, unmerged.
    fn raw(&mut self) -> Result<MapExtent> {
        let e = resolve(self.view, self.pos, self.end - self.pos)?;
        self.pos += e.length;
        Ok(e)
    }
}

impl Iterator for Extents<'_> {
    type Item = Result<MapExtent>;

    fn next(&mut self) -> Option<Result<MapExtent>> {
        if self.failed {
            return None;
        }
        let mut cur = match self.pending.take() {
            Some(e) => e,
            None if self.pos >= self.end => return None,
            None => match self.raw() {
                Ok(e) => e,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            },
        };
        while self.pos < self.end {
            match self.raw() {
                Ok(next) if cur.continued_by(&next) => cur.length += next.length,
                Ok(next) => {
                    self.pending = Some(next);
                    break;
                }
                Err(e) => {
                    // Give what was merged so far; the error comes next.
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        Some(Ok(cur))
    }
}

/// The run at `offset` (at most `max_len` bytes, at least 1): the first layer from the top that
/// holds the range decides it.
fn resolve(view: &ChainView, offset: u64, max_len: u64) -> Result<MapExtent> {
    let mut len = max_len;
    for (level, disk) in view.layers().iter().enumerate() {
        if offset >= disk.virtual_size() {
            // A parent smaller than its child: nothing below holds the rest.
            break;
        }
        let (extent, n) = disk.map(offset, len)?;
        len = n;
        let held = |data, zero, file_offset| MapExtent {
            start: offset,
            length: n,
            layer: Some(level),
            data,
            zero,
            file_offset,
        };
        match extent {
            Extent::Data { file_offset } => return Ok(held(true, false, Some(file_offset))),
            Extent::Zero => return Ok(held(false, true, None)),
            Extent::Unallocated => {}
        }
    }
    Ok(MapExtent {
        start: offset,
        length: len,
        layer: None,
        data: false,
        zero: true,
        file_offset: None,
    })
}

impl ChainView {
    /// The runs of `[offset, offset + len)` (clipped to the virtual disk), in order, adjacent
    /// runs with the same answer merged: for each, which layer holds it and whether it is data
    /// or zeros. The iterator stops after the first error.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("disk.vhdx");
    /// # vhdkit::create(&path, &vhdkit::CreateParams::dynamic(64 << 20))?;
    /// use vhdkit::{ChainView, Disk};
    ///
    /// // A new dynamic disk holds nothing: one run, no layer, zeros.
    /// let view = ChainView::new(vec![Disk::open(&path)?]);
    /// let runs = view.extents(0, u64::MAX).collect::<Result<Vec<_>, _>>()?;
    /// assert_eq!(runs.len(), 1);
    /// assert_eq!((runs[0].length, runs[0].layer, runs[0].zero), (64 << 20, None, true));
    /// # Ok(())
    /// # }
    /// ```
    pub fn extents(&self, offset: u64, len: u64) -> impl Iterator<Item = Result<MapExtent>> + '_ {
        let end = offset.saturating_add(len).min(self.virtual_size());
        Extents {
            view: self,
            pos: offset.min(end),
            end,
            pending: None,
            failed: false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::create::{create, CreateParams};
    use crate::disk::Disk;
    use crate::write::WritableDisk;
    use crate::ChainOptions;

    fn runs(v: &ChainView, off: u64, len: u64) -> Vec<MapExtent> {
        v.extents(off, len).collect::<Result<Vec<_>>>().unwrap()
    }

    #[test]
    fn chain_layers_and_merging() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.vhdx");
        let child = dir.path().join("child.avhdx");
        create(&base, &CreateParams::dynamic(64 << 20)).unwrap();
        let mut w = WritableDisk::open(&base, &ChainOptions::default()).unwrap();
        w.write_at(0, &[1u8; 4 << 20]).unwrap();
        w.close().unwrap();
        create(&child, &CreateParams::differencing(&base)).unwrap();
        let mut w = WritableDisk::open(&child, &ChainOptions::default()).unwrap();
        w.write_at(1 << 20, &[2u8; 4096]).unwrap();
        w.close().unwrap();
        let chain = crate::Chain::open(&child, &ChainOptions::default()).unwrap();
        let v = chain.into_view();
        let r = runs(&v, 0, u64::MAX);
        let shape: Vec<_> = r.iter().map(|e| (e.start, e.length, e.layer)).collect();
        assert_eq!(
            shape,
            vec![
                (0, 1 << 20, Some(1)),
                (1 << 20, 4096, Some(0)),
                // The base's 32 MiB block is stored whole (zeros past the write).
                ((1 << 20) + 4096, (31 << 20) - 4096, Some(1)),
                (32 << 20, 32 << 20, None),
            ]
        );
        assert!(r[1].data && !r[1].zero && r[1].file_offset.is_some());
        assert!(!r[3].data && r[3].zero && r[3].file_offset.is_none());
        // A window clips the first and last runs.
        let w = runs(&v, 4096, (1 << 20) - 4096 + 8192);
        let shape: Vec<_> = w.iter().map(|e| (e.start, e.length, e.layer)).collect();
        assert_eq!(
            shape,
            vec![
                (4096, (1 << 20) - 4096, Some(1)),
                (1 << 20, 4096, Some(0)),
                ((1 << 20) + 4096, 4096, Some(1))
            ]
        );
        // Past the end: nothing.
        assert!(runs(&v, 64 << 20, 10).is_empty());
    }

    #[test]
    fn fixed_vhd_is_one_data_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.vhd");
        create(&p, &CreateParams::fixed(8 << 20)).unwrap();
        let v = ChainView::new(vec![Disk::open(&p).unwrap()]);
        let r = runs(&v, 0, u64::MAX);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].length, r[0].data, r[0].file_offset),
            (8 << 20, true, Some(0))
        );
    }
}
