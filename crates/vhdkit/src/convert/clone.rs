//! Payload the file system copies for a conversion instead of vhdkit reading and writing it.
//!
//! A run is cloned when it is one file's contiguous bytes (a run a single layer of the chain
//! stores whole: parent data, zero blocks and sectors a layer does not hold keep the buffered
//! path), and its virtual offset, its offset in that file and its offset in the output are all
//! multiples of the file system block. Only outputs on a file system that clones (XFS, btrfs)
//! are offered runs; elsewhere an in-kernel copy would write zeros the buffered copy leaves as
//! holes, so the buffered path stays. `VHDKIT_NO_CLONE=1` turns cloning off.
//!
//! Zeros: a run is read until its first non-zero byte (for data that is the first page). A run
//! of nothing but zeros is skipped as the buffered path skips it (a hole of a raw output, no
//! block allocated in a VHD or VHDX), so outputs keep the buffered path's layout; zero pieces
//! inside a run that holds data are cloned with it, sharing extents (no space used) where the
//! buffered path would leave 64 KiB holes in a raw output.

use std::fs::File;

use super::VirtualSource;
use crate::error::{Error, Result};
use crate::fsx::RangeCopier;
use crate::write::WritableImage;

/// The file system block runs are aligned to (the common 4 KiB; XFS and btrfs clone at it).
pub(crate) const ALIGN: u64 = 4096;

/// The output a conversion may clone into, and the copier of the run.
#[derive(Debug)]
pub(crate) struct CloneTo {
    dst: File,
    copier: RangeCopier,
}

/// A run of stored payload to clone: its file, its offset there, its length.
pub(crate) type Run<'s> = (&'s File, u64, u64);

/// What to do with the bytes at a position, when cloning is possible there.
pub(crate) enum Found<'s> {
    /// Clone this run.
    Clone(Run<'s>),
    /// The next this many bytes, a run that could have been cloned, are all zeros: skip them.
    Zeros(u64),
}

/// First bytes read from a run to find data; doubling up to [`PROBE_MAX`].
const PROBE_FIRST: usize = 4096;
const PROBE_MAX: usize = 1 << 20;

impl CloneTo {
    /// For the output file `dst` (a second handle of it): `None` when its file system does not
    /// clone, cloning is turned off, or the handle cannot be had.
    pub(crate) fn for_output(dst: Option<&File>) -> Option<CloneTo> {
        let dst = dst?.try_clone().ok()?;
        let copier = RangeCopier::for_sparse_output(&dst);
        copier.uses_kernel().then_some(CloneTo { dst, copier })
    }

    /// A copier for one thread of the run.
    pub(crate) fn copier(&self) -> RangeCopier {
        self.copier.clone()
    }

    /// The run of `src` at virtual `pos` (at most `len` bytes, a multiple of [`ALIGN`]) that
    /// may be cloned, or `None` (the buffered path).
    pub(crate) fn find<'s>(
        &self,
        src: &'s dyn VirtualSource,
        pos: u64,
        len: u64,
    ) -> Result<Option<Found<'s>>> {
        let Some(run) = self.run(src, pos, len)? else {
            return Ok(None);
        };
        Ok(Some(if holds_data(src, pos, run.2)? {
            Found::Clone(run)
        } else {
            Found::Zeros(run.2)
        }))
    }

    fn run<'s>(&self, src: &'s dyn VirtualSource, pos: u64, len: u64) -> Result<Option<Run<'s>>> {
        if pos % ALIGN != 0 || len < ALIGN {
            return Ok(None);
        }
        let Some((file, at, n)) = src.file_extent(pos, len)? else {
            return Ok(None);
        };
        let n = n - n % ALIGN;
        let ok = n > 0 && at % ALIGN == 0 && self.copier.clones_between(file, &self.dst);
        Ok(ok.then_some((file, at, n)))
    }

    /// Copy `run` to `dst_at` of the output, whose range there reads as zeros.
    pub(crate) fn copy(
        &self,
        copier: &mut RangeCopier,
        (file, at, len): Run<'_>,
        dst_at: u64,
    ) -> Result<()> {
        copier
            .copy(file, at, &self.dst, dst_at, len, true)
            .map(|_| ())
            .map_err(|e| {
                Error::io(
                    format!(
                        "copying {len} bytes of payload from {at:#x} to the output at {dst_at:#x}"
                    ),
                    e,
                )
            })
    }
}

/// Whether any of the `len` bytes at `pos` is not zero: read in growing pieces up to the first
/// non-zero byte.
fn holds_data(src: &dyn VirtualSource, pos: u64, len: u64) -> Result<bool> {
    let mut buf = vec![0u8; PROBE_FIRST];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done)
            .unwrap_or(buf.len())
            .min(buf.len());
        let piece = buf.get_mut(..n).unwrap_or_default();
        src.read_exact_at(piece, pos + done)?;
        if !super::is_zero(piece) {
            return Ok(true);
        }
        done += n as u64;
        if buf.len() < PROBE_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
    Ok(false)
}

/// Clone the stored run at `pos` (at most `len` bytes) into the block of `out` it belongs to,
/// when it may be cloned and the block stores it whole at an aligned offset; a run of zeros is
/// skipped, allocating nothing. Returns how many bytes were handled and whether they were
/// cloned (`false`: skipped as zeros), or `None` for the buffered path.
pub(crate) fn clone_into(
    src: &dyn VirtualSource,
    out: &mut dyn WritableImage,
    clone: Option<(&CloneTo, &mut RangeCopier)>,
    pos: u64,
    len: u64,
) -> Result<Option<(u64, bool)>> {
    let Some((c, copier)) = clone else {
        return Ok(None);
    };
    // A run goes into one block of the output.
    let len = match out.shape().block_size {
        Some(bs) if bs > 0 => len.min(bs - pos % bs),
        _ => len,
    };
    let run = match c.find(src, pos, len)? {
        Some(Found::Clone(run)) => run,
        Some(Found::Zeros(n)) => return Ok(Some((n, false))),
        None => return Ok(None),
    };
    match out.place_for_copy(pos, run.2)? {
        Some(dst_at) if dst_at % ALIGN == 0 => {
            c.copy(copier, run, dst_at)?;
            Ok(Some((run.2, true)))
        }
        _ => Ok(None),
    }
}
