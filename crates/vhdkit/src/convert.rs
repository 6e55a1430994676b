//! Copy the virtual contents of a disk (through its chain), or of a raw image, out to another
//! container.
//!
//! Inputs are anything implementing [`VirtualSource`]: a [`ChainView`] (a VHD/VHDX and its
//! parents, flattened) or a [`RawSource`] (a plain file, all of it data).
//!
//! Raw output is written sparsely: ranges no layer stores, and stored ranges that are all
//! zeros, are left as holes. VHD output ([`to_vhd`]) is dynamic by default: blocks that are all
//! zeros are never allocated; fixed output leaves zero ranges as holes of the data area; VHDX
//! output ([`to_vhdx`]) likewise. The output is built under a temporary name in the destination's
//! folder and renamed into place only once complete and flushed, so an interrupted conversion
//! never leaves a truncated file under the destination's name.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::create::build_output;
use crate::error::{Error, Result, ResultExt};
use crate::newdisk::NewKind;
use crate::vhd::create as vhd_create;
use crate::vhdx::create as vhdx_create;
use crate::view::{Allocation, ChainView};
use crate::write::{WritableDisk, WritableImage};

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
}

/// Size of one copy step. Large enough that per-call overhead vanishes at storage speed,
/// small enough to keep peak memory far below the 64 MiB budget.
const CHUNK_BYTES: usize = 4 << 20;

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ConvertStats {
    /// Virtual size copied, in bytes.
    pub virtual_size: u64,
    /// Bytes actually written (non-zero data).
    pub bytes_written: u64,
    /// Bytes read from the chain's files.
    pub bytes_read: u64,
    /// Bytes left as holes.
    pub bytes_skipped: u64,
}

impl ConvertStats {
    /// Nothing done yet on a disk of `size` bytes.
    fn of_size(size: u64) -> ConvertStats {
        ConvertStats {
            virtual_size: size,
            ..ConvertStats::default()
        }
    }
}

/// Options for [`to_raw`], [`to_vhd`] and [`to_vhdx`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// Replace an existing destination.
    pub overwrite: bool,
    /// VHD/VHDX output: fixed instead of dynamic.
    pub fixed: bool,
    /// VHD/VHDX output: block size in bytes (`None` = the format's default: VHD 2 MiB, VHDX
    /// 32 MiB dynamic, 2 MiB fixed).
    pub block_size: Option<u32>,
}

impl ConvertOptions {
    /// Replace an existing destination.
    #[must_use]
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }

    /// VHD output: fixed instead of dynamic.
    #[must_use]
    pub fn fixed(mut self, yes: bool) -> Self {
        self.fixed = yes;
        self
    }

    /// VHD output: block size in bytes.
    #[must_use]
    pub fn block_size(mut self, bytes: Option<u32>) -> Self {
        self.block_size = bytes;
        self
    }
}

/// Write the whole virtual disk of `view` to `dst` as a raw image.
///
/// `progress` is called with the number of virtual bytes done so far, after every step.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::convert::{to_raw, ConvertOptions};
/// use vhdkit::{create, Chain, ChainOptions, CreateParams};
///
/// let src = dir.path().join("disk.vhdx");
/// create(&src, &CreateParams::dynamic(8 << 20))?;
/// let view = Chain::open(&src, &ChainOptions::default())?.into_view();
/// let raw = dir.path().join("disk.img");
/// let stats = to_raw(&view, &raw, &ConvertOptions::default(), |_done| {})?;
/// assert_eq!(std::fs::metadata(&raw)?.len(), stats.virtual_size);
/// # Ok(())
/// # }
/// ```
pub fn to_raw(
    view: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(u64),
) -> Result<ConvertStats> {
    check_destination(view, dst, opts, dst.exists())?;
    // As for vhd/vhdx: without --force a name that appeared meanwhile is never replaced.
    build_output(dst, opts.overwrite, |file| {
        // Sizing the file first makes every skipped range a hole and turns the writes into
        // in-place writes, which are cheaper than writes that extend the file.
        finish_file(file, view.virtual_size())?;
        let stats = copy_sparse(view, file, &mut progress)?;
        file.sync_data()
            .map_err(|e| Error::io("flushing the output file", e))?;
        Ok(stats)
    })
}

/// Refuse a destination that `exists` (unless `--force`), that is part of the chain read, or
/// that another writer holds.
fn check_destination(
    src: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    exists: bool,
) -> Result<()> {
    if exists && !opts.overwrite {
        return Err(Error::AlreadyExists {
            path: dst.to_path_buf(),
        });
    }
    refuse_chain_member(src, dst)?;
    refuse_locked_dst(dst)
}

/// `--force` replaces DST by a rename, which would pull a disk from under another writer that
/// holds the writers' lock on it ([`crate::lock`]): refused, as that writer would refuse us.
fn refuse_locked_dst(dst: &Path) -> Result<()> {
    if crate::lock::is_locked_elsewhere(dst) {
        return Err(crate::lock::refusal(dst, crate::lock::IN_USE.into()));
    }
    Ok(())
}

fn refuse_chain_member(view: &dyn VirtualSource, dst: &Path) -> Result<()> {
    let Ok(d) = std::fs::canonicalize(dst) else {
        return Ok(());
    };
    for p in view.files() {
        if std::fs::canonicalize(&p).ok().as_deref() == Some(d.as_path()) {
            return Err(Error::InvalidArgument(format!(
                "{} is part of the chain being converted; refusing to overwrite it",
                dst.display()
            )));
        }
    }
    Ok(())
}

/// Copy every stored, non-zero range of `view` to `out` at the same offset. The caller sizes
/// `out` to the virtual size afterwards (see [`finish_file`]) so trailing holes exist.
pub(crate) fn copy_sparse<W: Write + Seek>(
    view: &dyn VirtualSource,
    out: &mut W,
    progress: &mut impl FnMut(u64),
) -> Result<ConvertStats> {
    let size = view.virtual_size();
    let mut stats = ConvertStats::of_size(size);
    // A reader thread fills buffers while this thread writes the previous ones, so reading the
    // source and writing the output overlap (as qemu-img's parallel requests do). At most
    // `IN_FLIGHT` + 2 buffers exist: memory stays a few chunks whatever the disk size.
    const IN_FLIGHT: usize = 2;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Step>>(IN_FLIGHT);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        scope.spawn(move || read_ahead(view, size, &tx, &back_rx));
        for step in rx {
            match step? {
                Step::Skip { end, len } => {
                    stats.bytes_skipped += len;
                    progress(end);
                }
                Step::Data { pos, buf } => {
                    let len = buf.len() as u64;
                    stats.bytes_read += len;
                    write_nonzero(out, &buf, pos, &mut stats)?;
                    // The reader may have finished already; then the buffer is simply dropped.
                    let _ = back_tx.send(buf);
                    progress(pos + len);
                }
            }
        }
        Ok(())
    })?;
    out.flush()
        .map_err(|e| Error::io("flushing the output", e))?;
    Ok(stats)
}

/// One unit of work handed from the reader thread to the writer.
enum Step {
    /// A range no layer stores, ending at `end`.
    Skip { end: u64, len: u64 },
    /// Stored data read from `pos`.
    Data { pos: u64, buf: Vec<u8> },
}

/// The reader side of [`copy_sparse`]: walks the allocation map and reads stored ranges into
/// recycled buffers. Stops at the first error (sent to the writer) or when the writer hangs up.
fn read_ahead(
    view: &dyn VirtualSource,
    size: u64,
    tx: &std::sync::mpsc::SyncSender<Result<Step>>,
    back: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(CHUNK_BYTES as u64);
        let step = view
            .allocation(pos, want)
            .and_then(|(alloc, len)| match alloc {
                Allocation::Zero => Ok(Step::Skip {
                    end: pos + len,
                    len,
                }),
                Allocation::Data => {
                    let n = usize::try_from(len).unwrap_or(CHUNK_BYTES).min(CHUNK_BYTES);
                    let mut buf = back.try_recv().unwrap_or_default();
                    buf.resize(n, 0);
                    view.read_exact_at(&mut buf, pos)?;
                    Ok(Step::Data { pos, buf })
                }
            });
        let advance = match &step {
            Ok(Step::Skip { len, .. }) => *len,
            Ok(Step::Data { buf, .. }) => buf.len() as u64,
            Err(_) => 0,
        };
        let failed = step.is_err();
        if tx.send(step).is_err() || failed || advance == 0 {
            return;
        }
        pos += advance;
    }
}

/// Write the whole virtual disk of `src` to `dst` as a new VHD: dynamic (all-zero blocks left
/// unallocated) or, with `opts.fixed`, fixed (zero ranges left as holes). A source whose size
/// is not a multiple of 512 is padded with zeros to the next sector. The output is built under
/// a temporary name and renamed into place once complete and synced.
pub fn to_vhd(
    src: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    progress: impl FnMut(u64),
) -> Result<ConvertStats> {
    let new = vhd_create::NewVhd {
        kind: NewKind::without_parent(opts.fixed),
        virtual_size: padded_size(src),
        block_size: opts.block_size.unwrap_or(vhd_create::DEFAULT_BLOCK_BYTES),
        unique_id: uuid::Uuid::new_v4().to_bytes_le(),
        time_stamp: vhd_create::time_stamp_now(),
    };
    vhd_create::build(&new)?;
    convert_into(src, dst, opts, progress, new.block_size, |file| {
        vhd_create::write_new(file, &new)?;
        let w = crate::vhd::write::VhdWriter::open(reopen(file)?, &crate::OpenOptions::default())?;
        Ok(Box::new(w))
    })
}

/// The virtual size of a new image holding `src`: padded with zeros to a whole 512-byte
/// sector.
fn padded_size(src: &dyn VirtualSource) -> u64 {
    src.virtual_size().div_ceil(512).saturating_mul(512)
}

/// A second handle on the new image, for its writer.
fn reopen(file: &File) -> Result<File> {
    file.try_clone()
        .map_err(|e| Error::io("reopening the output file", e))
}

/// Write the whole virtual disk of `src` to `dst` as a new VHDX (Hyper-V's layout, 512-byte
/// logical and 4096-byte physical sectors): dynamic with 32 MiB blocks by default (all-zero
/// blocks left unallocated) or, with `opts.fixed`, fixed with 2 MiB blocks (every block
/// allocated, zero ranges left as holes). A source whose size is not a multiple of 512 is
/// padded with zeros. Built under a temporary name, renamed into place once complete and
/// synced.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::convert::{to_vhdx, ConvertOptions};
/// use vhdkit::{create, Chain, ChainOptions, CreateParams, Disk, DiskFormat};
///
/// let src = dir.path().join("disk.vhd");
/// create(&src, &CreateParams::dynamic(8 << 20))?;
/// let view = Chain::open(&src, &ChainOptions::default())?.into_view();
/// let dst = dir.path().join("disk.vhdx");
/// to_vhdx(&view, &dst, &ConvertOptions::default(), |_done| {})?;
/// assert_eq!(Disk::open(&dst)?.info().format, DiskFormat::Vhdx);
/// # Ok(())
/// # }
/// ```
pub fn to_vhdx(
    src: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    progress: impl FnMut(u64),
) -> Result<ConvertStats> {
    let kind = NewKind::without_parent(opts.fixed);
    let block = opts
        .block_size
        .unwrap_or_else(|| vhdx_create::default_block_bytes(&kind));
    let new = vhdx_create::NewVhdx::new(kind, padded_size(src), block);
    vhdx_create::build(&new)?;
    convert_into(src, dst, opts, progress, new.block_size, |file| {
        vhdx_create::write_new(file, &new)?;
        let w =
            crate::vhdx::write::VhdxWriter::open(reopen(file)?, &crate::OpenOptions::default())?;
        Ok(Box::new(w))
    })
}

/// The shared part of [`to_vhd`] and [`to_vhdx`]: make the new, empty image under a temporary
/// name with `make`, copy into it (block by block, or in large steps for fixed output), close
/// (flush) it, and give it its name.
fn convert_into(
    src: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(u64),
    block_size: u32,
    make: impl FnOnce(&File) -> Result<Box<dyn WritableImage>>,
) -> Result<ConvertStats> {
    // `symlink_metadata`: a dangling link at DST counts as existing.
    check_destination(src, dst, opts, std::fs::symlink_metadata(dst).is_ok())?;
    let step = if opts.fixed {
        CHUNK_BYTES as u64
    } else {
        u64::from(block_size)
    };
    build_output(dst, opts.overwrite, |file| {
        let image = make(file)?;
        let mut out = WritableDisk::from_parts(image, None);
        let stats = copy_blocks(src, &mut out, step, &mut progress)?;
        out.close()?;
        Ok(stats)
    })
}

/// Copy `src` into `out` in aligned steps of `step` bytes, skipping steps that hold no data or
/// only zeros.
fn copy_blocks(
    src: &dyn VirtualSource,
    out: &mut WritableDisk,
    step: u64,
    progress: &mut impl FnMut(u64),
) -> Result<ConvertStats> {
    let size = src.virtual_size();
    let mut stats = ConvertStats::of_size(size);
    let step = step.clamp(512, CHUNK_BYTES as u64);
    let mut buf = vec![0u8; usize::try_from(step).unwrap_or(CHUNK_BYTES)];
    let mut pos = 0u64;
    while pos < size {
        let len = (size - pos).min(step - pos % step);
        // Does any part of this step hold data?
        let mut any = false;
        let mut at = pos;
        while at < pos + len {
            let (alloc, n) = src.allocation(at, pos + len - at)?;
            if alloc == Allocation::Data {
                any = true;
                break;
            }
            at += n;
        }
        let n = usize::try_from(len).unwrap_or(buf.len()).min(buf.len());
        if any {
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, pos)?;
            stats.bytes_read += len;
            if is_zero(chunk) {
                stats.bytes_skipped += len;
            } else {
                out.write_at(pos, chunk)?;
                stats.bytes_written += len;
            }
        } else {
            stats.bytes_skipped += len;
        }
        pos += len;
        progress(pos);
    }
    Ok(stats)
}

/// Granularity of hole detection inside stored data: one 64 KiB piece at a time.
const ZERO_GRAIN: usize = 64 << 10;

fn write_nonzero<W: Write + Seek>(
    out: &mut W,
    data: &[u8],
    offset: u64,
    stats: &mut ConvertStats,
) -> Result<()> {
    // Maximal runs of non-zero grains go out in one write each: few, large writes.
    let mut run_start: Option<usize> = None;
    let mut at = 0usize;
    for piece in data.chunks(ZERO_GRAIN) {
        let zero = is_zero(piece);
        match (zero, run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                write_run(
                    out,
                    data.get(start..at).unwrap_or(&[]),
                    offset + start as u64,
                    stats,
                )?;
                run_start = None;
            }
            _ => {}
        }
        if zero {
            stats.bytes_skipped += piece.len() as u64;
        }
        at += piece.len();
    }
    if let Some(start) = run_start {
        write_run(
            out,
            data.get(start..).unwrap_or(&[]),
            offset + start as u64,
            stats,
        )?;
    }
    Ok(())
}

fn write_run<W: Write + Seek>(
    out: &mut W,
    run: &[u8],
    at: u64,
    stats: &mut ConvertStats,
) -> Result<()> {
    out.seek(SeekFrom::Start(at))
        .and_then(|_| out.write_all(run))
        .map_err(|e| Error::io(format!("writing the output at offset {at:#x}"), e))?;
    stats.bytes_written += run.len() as u64;
    Ok(())
}

/// True when every byte is zero; compares 16 bytes at a time.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(16);
    let wide = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    wide && chunks.remainder().iter().all(|&x| x == 0)
}

/// Set a file's length (used for trailing holes when the writer is a plain file).
pub(crate) fn finish_file(file: &File, size: u64) -> Result<()> {
    file.set_len(size)
        .map_err(|e| Error::io("setting the output length", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
