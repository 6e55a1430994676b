//! Helpers shared by the fuzz targets (included with `#[path]`, not a crate of its own).
//!
//! Everything here is in memory (a `Vec<u8>` or a [`Sparse`] image is a `vhdkit::Source`), so
//! no temp files and no unsafe.
//!
//! Cost per input is bounded whatever the input says: `Limits::fuzzing()` caps what the parsers
//! load, [`read_sampled_view`] reads a fixed number of small samples spread across the view
//! rather than the whole disk, and a [`Sparse`] image presents a file of any length (a 127 GiB
//! VHD, a 4 MiB VHDX head) from an input of a few KiB without allocating it.

#![allow(dead_code)]

use std::io;

use vhdkit::{Allocation, ChainView, Limits, OpenOptions, Source};

/// Open options with the library's fuzzing profile (`Limits::fuzzing()`): anything the parser
/// allocates beyond these must be bounded by the input itself, and libFuzzer's `-rss_limit_mb`
/// and `-malloc_limit_mb` catch the rest.
pub fn tight_options() -> OpenOptions {
    OpenOptions::new().limits(Limits::fuzzing())
}

/// Evenly spaced sample positions per view (the first at 0, the last ending at the disk's end).
pub const SAMPLES: u64 = 16;
/// `allocation()` runs followed from each sample position.
pub const STEPS_PER_SAMPLE: u32 = 4;
/// Most bytes read per run followed (so at most 16 * 4 * 16 KiB = 1 MiB per input).
pub const SAMPLE_BYTES: u64 = 16 << 10;

/// Read a bounded sample of the view: from each of [`SAMPLES`] positions spread across it, follow
/// up to [`STEPS_PER_SAMPLE`] `allocation()` runs, reading the first [`SAMPLE_BYTES`] of each.
/// Checks the `allocation()` contract (a run of at least one byte, inside the disk) and that
/// a run it calls `Zero` reads as zeros. Work per input does not grow with the virtual size.
pub fn read_sampled_view(view: &ChainView) {
    let size = view.virtual_size();
    if size == 0 {
        return;
    }
    let mut buf = vec![0u8; SAMPLE_BYTES as usize];
    let mut done_to = 0u64;
    for i in 0..SAMPLES {
        // The last start leaves one sample's length before the end, so the tail is read too.
        let start = if i + 1 == SAMPLES {
            size.saturating_sub(SAMPLE_BYTES)
        } else {
            (u128::from(size) * u128::from(i) / u128::from(SAMPLES)) as u64
        };
        let mut offset = start.max(done_to);
        for _ in 0..STEPS_PER_SAMPLE {
            if offset >= size {
                break;
            }
            let Ok((alloc, len)) = view.allocation(offset, size - offset) else {
                break;
            };
            assert!(
                len >= 1 && len <= size - offset,
                "allocation({offset:#x}) returned a run of {len} bytes, {} left",
                size - offset
            );
            let b = &mut buf[..len.min(SAMPLE_BYTES) as usize];
            b.fill(0xa5);
            let read = view.read_exact_at(b, offset);
            if alloc == Allocation::Zero && read.is_ok() {
                assert!(
                    b.iter().all(|&x| x == 0),
                    "range at {offset:#x} is Allocation::Zero but does not read as zeros"
                );
            }
            offset += len;
        }
        done_to = offset;
    }
}

/// The 512-byte VHD footer signature.
pub const VHD_COOKIE: &[u8; 8] = b"conectix";

/// If `data` starts with a VHD footer copy (dynamic and differencing disks) but does not end
/// with a footer (libFuzzer truncated or grew it), append a copy of the head footer so the input
/// still reaches the dynamic-header/BAT parsers. Otherwise the input is used as it is.
pub fn with_vhd_footer(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    let ends_with_footer = |d: &[u8]| {
        let l = d.len();
        (l >= 512 && d[l - 512..].starts_with(VHD_COOKIE))
            || (l >= 511 && d[l - 511..].starts_with(VHD_COOKIE))
    };
    if !ends_with_footer(data) && data.len() >= 512 && data.starts_with(VHD_COOKIE) {
        v.extend_from_slice(&data[..512]);
    }
    v
}

/// First bytes of a sparse image input (see [`Sparse`]).
pub const SPARSE_MAGIC: &[u8; 8] = b"vhdkitSP";
/// Largest file a sparse input may describe (1 TiB): far past any limit, never allocated.
pub const SPARSE_MAX_LEN: u64 = 1 << 40;
/// Most segments read from a sparse input, so a read costs a bounded number of copies.
pub const SPARSE_MAX_SEGMENTS: usize = 256;

/// An image file given as its non-zero parts: `vhdkitSP`, the file length (`u64` LE, at most
/// [`SPARSE_MAX_LEN`]), then segments, each a `u32` LE offset in 512-byte sectors and a `u32` LE
/// count `n`, followed by `n` bytes (cut short at the input's end) or, when the count's top bit
/// is set, by one byte that fills `n & 0x7fff_ffff` bytes (a VHD's unallocated BAT is all
/// `0xff`). Bytes no segment covers read as zeros; a later segment wins where two overlap;
/// what lies past the file length is not seen.
///
/// `fuzz/seed.sh` writes the large seed images this way: a 4-8 MiB image is 1-70 KiB of
/// structures, so libFuzzer hashes, mutates and copies that instead of megabytes per run.
#[derive(Debug)]
pub struct Sparse {
    data: Vec<u8>,
    len: u64,
    segments: Vec<Segment>,
}

/// One segment of a [`Sparse`] image.
#[derive(Debug)]
struct Segment {
    at: u64,
    n: u64,
    /// The fill byte, or where the bytes start in `data`.
    what: Fill,
}

#[derive(Debug)]
enum Fill {
    Byte(u8),
    Data(usize),
}

impl Sparse {
    /// Parse `input` if it starts with [`SPARSE_MAGIC`] and holds a length.
    pub fn parse(input: &[u8]) -> Option<Sparse> {
        let rest = input.strip_prefix(SPARSE_MAGIC.as_slice())?;
        let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?).min(SPARSE_MAX_LEN);
        let data = rest[8..].to_vec();
        let mut segments = Vec::new();
        let mut pos = 0usize;
        while segments.len() < SPARSE_MAX_SEGMENTS && pos + 8 <= data.len() {
            let sector = u32::from_le_bytes(data[pos..pos + 4].try_into().ok()?);
            let count = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().ok()?);
            pos += 8;
            let at = u64::from(sector) * 512;
            if count >> 31 == 1 {
                let Some(&b) = data.get(pos) else { break };
                pos += 1;
                let n = u64::from(count & 0x7fff_ffff);
                segments.push(Segment {
                    at,
                    n,
                    what: Fill::Byte(b),
                });
            } else {
                let n = (count as usize).min(data.len() - pos);
                segments.push(Segment {
                    at,
                    n: n as u64,
                    what: Fill::Data(pos),
                });
                pos += n;
            }
        }
        Some(Sparse {
            data,
            len,
            segments,
        })
    }
}

impl Source for Sparse {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.fill(0);
        for seg in &self.segments {
            let (s, e) = (seg.at.max(offset), (seg.at + seg.n).min(end));
            if s >= e {
                continue;
            }
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match seg.what {
                Fill::Byte(b) => dst.fill(b),
                Fill::Data(start) => {
                    let from = start + (s - seg.at) as usize;
                    dst.copy_from_slice(&self.data[from..from + dst.len()]);
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// An image input: a [`Sparse`] one, or the raw bytes of the file.
#[derive(Debug)]
pub enum Image {
    /// The input is the file.
    Raw(Vec<u8>),
    /// The input describes the file (`vhdkitSP`).
    Sparse(Sparse),
}

impl Image {
    /// The image an input describes. With `fix_footer`, raw inputs get [`with_vhd_footer`]'s
    /// repair (`check` goes without it: a missing footer is one of its findings).
    pub fn from_input(data: &[u8], fix_footer: bool) -> Image {
        match Sparse::parse(data) {
            Some(s) => Image::Sparse(s),
            None if fix_footer => Image::Raw(with_vhd_footer(data)),
            None => Image::Raw(data.to_vec()),
        }
    }
}

impl Source for Image {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Image::Raw(v) => v.read_exact_at(buf, offset),
            Image::Sparse(s) => s.read_exact_at(buf, offset),
        }
    }

    fn len(&self) -> io::Result<u64> {
        match self {
            Image::Raw(v) => Ok(v.len() as u64),
            Image::Sparse(s) => s.len(),
        }
    }
}
