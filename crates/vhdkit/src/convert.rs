//! Copy the virtual contents of a disk (through its chain), or of a raw image, out to another
//! container.
//!
//! Inputs are anything implementing [`VirtualSource`]: a [`ChainView`](crate::ChainView) (a
//! VHD/VHDX and its parents, flattened) or a [`RawSource`] (a plain file, all of it data).
//! Outputs are a path ([`to_path`]) or any
//! [`OutputSink`], such as an in-memory `Cursor<Vec<u8>>` ([`to_sink`] with a [`Target`]: the
//! same bytes, written in place). Every conversion
//! reports to a [`Progress`], which may cancel it.
//!
//! Raw output is written sparsely: ranges no layer stores, and stored ranges that are all
//! zeros, are left as holes. VHD output is dynamic by default: blocks that are all
//! zeros are never allocated; fixed output leaves zero ranges as holes of the data area; VHDX
//! output likewise. The output is built under a temporary name in the destination's
//! folder and renamed into place only once complete and flushed, so an interrupted (or
//! cancelled) conversion never leaves a truncated file under the destination's name.
//!
//! On a file system that clones (XFS, btrfs), payload one disk file stores whole at 4 KiB-aligned
//! offsets is copied by the file system (`copy_file_range`: the output shares its extents), with
//! the same resulting bytes and layout; zeros inside such a run share extents instead of being
//! holes. `VHDKIT_NO_CLONE=1` turns this off. [`ConvertStats::bytes_cloned`] counts it.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use crate::aligned::Aligned;
use crate::create::build_output;
use crate::error::{Error, Result};
use crate::newdisk::{NewKind, OutFile, OutputSink, SinkIo};
use crate::progress::Progress;
use crate::txn::Sink;
use crate::vhd::create as vhd_create;
use crate::vhd::write::VhdWriter;
use crate::vhdx::create as vhdx_create;
use crate::vhdx::write::VhdxWriter;
use crate::view::Allocation;
use crate::write::WritableImage;

mod clone;
mod source;
use clone::CloneTo;
pub(crate) use source::ZeroAhead;
pub use source::{RawSource, VirtualSource};

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
    /// Of `bytes_written`, bytes the file system copied (cloned on XFS and btrfs) instead of
    /// vhdkit reading and writing them.
    pub bytes_cloned: u64,
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

/// Options for [`to_path`] and [`to_sink`].
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
    /// [`to_path`]: never sync the output (no `fsync`, no early writeback), for scratch
    /// copies. A crash can leave the destination incomplete; the rename into place still
    /// happens only at the end.
    pub no_sync: bool,
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

    /// Never sync the output (see [`ConvertOptions::no_sync`]).
    #[must_use]
    pub fn no_sync(mut self, yes: bool) -> Self {
        self.no_sync = yes;
        self
    }
}

/// Write the whole virtual disk of `src` to `dst` in the `target` format: the copy behind
/// `vhdkit convert`.
///
/// - [`Target::Raw`]: a raw image; zero ranges are left as holes.
/// - [`Target::Vhd`]: a new VHD, dynamic (all-zero blocks left unallocated) or, with
///   `opts.fixed`, fixed (zero ranges left as holes).
/// - [`Target::Vhdx`]: a new VHDX in Hyper-V's layout (512-byte logical and 4096-byte physical
///   sectors), dynamic with 32 MiB blocks by default or, with `opts.fixed`, fixed with 2 MiB
///   blocks.
///
/// A source whose size is not a multiple of 512 is padded with zeros to the next sector for
/// VHD and VHDX. The output is built under a temporary name beside `dst` and renamed into place
/// once complete and synced (unless `opts.no_sync`); `dst` is replaced only with
/// `opts.overwrite`. `progress` hears one
/// `"convert"` phase in virtual bytes and may cancel it (the partial output is then removed;
/// see [`crate::Progress`]). To write into memory or any other sink, see [`to_sink`].
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::convert::{to_path, ConvertOptions, Target};
/// use vhdkit::{create, Chain, ChainOptions, CreateParams, Disk, DiskFormat};
///
/// let src = dir.path().join("disk.vhd");
/// create(&src, &CreateParams::dynamic(8 << 20))?;
/// let view = Chain::open(&src, &ChainOptions::default())?.into_view();
/// let raw = dir.path().join("disk.img");
/// let stats = to_path(&view, &raw, Target::Raw, &ConvertOptions::default(), ())?;
/// assert_eq!(std::fs::metadata(&raw)?.len(), stats.virtual_size);
/// let dst = dir.path().join("disk.vhdx");
/// to_path(&view, &dst, Target::Vhdx, &ConvertOptions::default(), ())?;
/// assert_eq!(Disk::open(&dst)?.info().format, DiskFormat::Vhdx);
/// # Ok(())
/// # }
/// ```
pub fn to_path(
    src: &dyn VirtualSource,
    dst: impl AsRef<Path>,
    target: Target,
    opts: &ConvertOptions,
    progress: impl Progress,
) -> Result<ConvertStats> {
    match target {
        Target::Raw => to_raw(src, dst, opts, progress),
        Target::Vhd => to_vhd(src, dst, opts, progress),
        Target::Vhdx => to_vhdx(src, dst, opts, progress),
    }
}

/// Write the whole virtual disk of `view` to `dst` as a raw image.
///
/// `progress` hears one `"convert"` phase in virtual bytes and may cancel it (the partial
/// output is then removed; see [`crate::Progress`]).
fn to_raw(
    view: &dyn VirtualSource,
    dst: impl AsRef<Path>,
    opts: &ConvertOptions,
    mut progress: impl Progress,
) -> Result<ConvertStats> {
    let dst = dst.as_ref();
    check_destination(view, dst, opts, dst.exists())?;
    // As for vhd/vhdx: without --force a name that appeared meanwhile is never replaced.
    build_output(dst, opts.overwrite, !opts.no_sync, |file| {
        raw_into(view, &mut OutFile::new(file, !opts.no_sync), &mut progress)
    })
}

/// The raw conversion into an empty `out`, as one `"convert"` phase of `progress`.
fn raw_into<W: OutputSink + ?Sized>(
    view: &dyn VirtualSource,
    out: &mut W,
    progress: &mut dyn Progress,
) -> Result<ConvertStats> {
    // Sizing the output first makes every skipped range a hole and turns the writes into
    // in-place writes, which are cheaper than writes that extend the file.
    out.set_len(view.virtual_size())
        .map_err(|e| Error::io("setting the output length", e))?;
    let clone = CloneTo::for_output(out.as_file());
    let stats = phase(view, progress, |p| {
        copy_sparse(view, out, clone.as_ref(), p)
    })?;
    out.sync()
        .map_err(|e| Error::io("flushing the output file", e))?;
    Ok(stats)
}

/// `copy` as the `"convert"` phase of `progress`, over the virtual size of `src`.
fn phase<T>(
    src: &dyn VirtualSource,
    progress: &mut dyn Progress,
    copy: impl FnOnce(&mut dyn Progress) -> Result<T>,
) -> Result<T> {
    progress.start("convert", Some(src.virtual_size()));
    let r = copy(progress);
    progress.finish();
    r
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

/// Copy every stored, non-zero range of `view` to `out` at the same offset; `out` is already
/// sized to the virtual size, so skipped ranges are holes. Checks `progress` for a cancel
/// before each step.
fn copy_sparse<W: Write + Seek + ?Sized>(
    view: &dyn VirtualSource,
    out: &mut W,
    clone: Option<&CloneTo>,
    progress: &mut dyn Progress,
) -> Result<ConvertStats> {
    let size = view.virtual_size();
    let mut stats = ConvertStats::of_size(size);
    // A reader thread fills buffers while this thread writes the previous ones, so reading the
    // source and writing the output overlap (as qemu-img's parallel requests do). At most
    // `IN_FLIGHT` + 2 buffers exist: memory stays a few chunks whatever the disk size.
    const IN_FLIGHT: usize = 2;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Step<'_>>>(IN_FLIGHT);
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Aligned>();
        scope.spawn(move || read_ahead(view, size, clone, &tx, &back_rx));
        let mut copier = clone.map(CloneTo::copier);
        // Returning early drops `rx`, which stops the reader at its next send.
        for step in rx {
            crate::progress::check(progress)?;
            match step? {
                Step::Skip { len } => {
                    stats.bytes_skipped += len;
                    progress.advance(len);
                }
                Step::Data { pos, buf } => {
                    let len = buf.data().len() as u64;
                    stats.bytes_read += len;
                    write_nonzero(out, buf.data(), pos, &mut stats)?;
                    // The reader may have finished already; then the buffer is simply dropped.
                    let _ = back_tx.send(buf);
                    progress.advance(len);
                }
                Step::Clone { pos, run } => {
                    if let (Some(c), Some(copier)) = (clone, copier.as_mut()) {
                        c.copy(copier, run, pos)?;
                    }
                    stats.bytes_written += run.2;
                    stats.bytes_cloned += run.2;
                    progress.advance(run.2);
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
enum Step<'s> {
    /// A range of `len` bytes that no layer stores.
    Skip { len: u64 },
    /// Stored data read from `pos`.
    Data { pos: u64, buf: Aligned },
    /// Stored data at `pos` for the file system to copy.
    Clone { pos: u64, run: clone::Run<'s> },
}

/// The reader side of [`copy_sparse`]: walks the allocation map and reads stored ranges into
/// recycled buffers. Stops at the first error (sent to the writer) or when the writer hangs up.
fn read_ahead<'s>(
    view: &'s dyn VirtualSource,
    size: u64,
    clone: Option<&CloneTo>,
    tx: &std::sync::mpsc::SyncSender<Result<Step<'s>>>,
    back: &std::sync::mpsc::Receiver<Aligned>,
) {
    let mut zeros = ZeroAhead::default();
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(CHUNK_BYTES as u64);
        let step = zeros
            .next(view, pos, want)
            .and_then(|(alloc, len)| match alloc {
                Allocation::Zero => Ok(Step::Skip { len }),
                Allocation::Data => {
                    match clone.map(|c| c.find(view, pos, len)).transpose()?.flatten() {
                        Some(clone::Found::Clone(run)) => return Ok(Step::Clone { pos, run }),
                        Some(clone::Found::Zeros(len)) => return Ok(Step::Skip { len }),
                        None => {}
                    }
                    let n = usize::try_from(len).unwrap_or(CHUNK_BYTES).min(CHUNK_BYTES);
                    let mut buf = back.try_recv().unwrap_or_default();
                    view.read_exact_at(buf.window(n), pos)?;
                    Ok(Step::Data { pos, buf })
                }
            });
        let advance = match &step {
            Ok(Step::Skip { len, .. }) => *len,
            Ok(Step::Data { buf, .. }) => buf.data().len() as u64,
            Ok(Step::Clone { run, .. }) => run.2,
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
/// a temporary name and renamed into place once complete and synced; `progress` hears one
/// `"convert"` phase and may cancel it (the partial output is then removed).
fn to_vhd(
    src: &dyn VirtualSource,
    dst: impl AsRef<Path>,
    opts: &ConvertOptions,
    progress: impl Progress,
) -> Result<ConvertStats> {
    image_to_path(src, dst.as_ref(), opts, NewImage::vhd(src, opts)?, progress)
}

/// The virtual size of a new image holding `src`: padded with zeros to a whole 512-byte
/// sector.
fn padded_size(src: &dyn VirtualSource) -> u64 {
    src.virtual_size().div_ceil(512).saturating_mul(512)
}

/// Write the whole virtual disk of `src` to `dst` as a new VHDX (Hyper-V's layout, 512-byte
/// logical and 4096-byte physical sectors): dynamic with 32 MiB blocks by default (all-zero
/// blocks left unallocated) or, with `opts.fixed`, fixed with 2 MiB blocks (every block
/// allocated, zero ranges left as holes). A source whose size is not a multiple of 512 is
/// padded with zeros. Built under a temporary name, renamed into place once complete and
/// synced; `progress` as for `to_vhd`.
fn to_vhdx(
    src: &dyn VirtualSource,
    dst: impl AsRef<Path>,
    opts: &ConvertOptions,
    progress: impl Progress,
) -> Result<ConvertStats> {
    image_to_path(
        src,
        dst.as_ref(),
        opts,
        NewImage::vhdx(src, opts)?,
        progress,
    )
}

/// The container [`to_sink`] writes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A raw image.
    Raw,
    /// A VHD.
    Vhd,
    /// A VHDX.
    Vhdx,
}

/// Write the whole virtual disk of `src` into `out` as a new `target` image: the bytes
/// [`to_path`] writes to a file (`opts.overwrite` does not apply, and
/// a raw image ignores `opts`). `out` should be empty (or, for raw, all zeros: only non-zero
/// data is written, after sizing it to the virtual size); after an error (a cancel included)
/// it holds a partial image.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use std::io::Cursor;
/// use vhdkit::convert::{to_sink, ConvertOptions, RawSource, Target};
/// use vhdkit::{create, Chain, ChainOptions, CreateParams, Disk, DiskFormat};
///
/// let src = dir.path().join("disk.vhdx");
/// create(&src, &CreateParams::dynamic(8 << 20))?;
/// let view = Chain::open(&src, &ChainOptions::default())?.into_view();
/// let mut vhd = Cursor::new(Vec::new());
/// to_sink(&view, &mut vhd, Target::Vhd, &ConvertOptions::default(), ())?;
/// let disk = Disk::from_source(Box::new(vhd.into_inner()), &Default::default())?;
/// assert_eq!(disk.info().format, DiskFormat::Vhd);
///
/// let img = dir.path().join("disk.img");
/// std::fs::write(&img, [7u8; 4096])?;
/// let mut raw = Cursor::new(Vec::new());
/// to_sink(&RawSource::open(&img)?, &mut raw, Target::Raw, &ConvertOptions::default(), ())?;
/// assert_eq!(raw.into_inner(), std::fs::read(&img)?);
/// # Ok(())
/// # }
/// ```
pub fn to_sink<W: OutputSink + ?Sized>(
    src: &dyn VirtualSource,
    out: &mut W,
    target: Target,
    opts: &ConvertOptions,
    mut progress: impl Progress,
) -> Result<ConvertStats> {
    let new = match target {
        Target::Raw => return raw_into(src, out, &mut progress),
        Target::Vhd => NewImage::vhd(src, opts)?,
        Target::Vhdx => NewImage::vhdx(src, opts)?,
    };
    let clone = CloneTo::for_output(out.as_file());
    image_into(src, SinkIo::new(out), clone, &new, &mut progress)
}

/// The new, empty image a VHD or VHDX conversion starts from, checked, and the size of its
/// copy steps.
enum NewImage {
    Vhd(u64, vhd_create::NewVhd),
    Vhdx(u64, vhdx_create::NewVhdx),
}

impl NewImage {
    fn vhd(src: &dyn VirtualSource, opts: &ConvertOptions) -> Result<NewImage> {
        let new = vhd_create::NewVhd {
            kind: NewKind::without_parent(opts.fixed),
            virtual_size: padded_size(src),
            block_size: opts.block_size.unwrap_or(vhd_create::DEFAULT_BLOCK_BYTES),
            unique_id: uuid::Uuid::new_v4().to_bytes_le(),
            time_stamp: vhd_create::time_stamp_now(),
        };
        vhd_create::build(&new)?;
        Ok(NewImage::Vhd(step_size(opts, new.block_size), new))
    }

    fn vhdx(src: &dyn VirtualSource, opts: &ConvertOptions) -> Result<NewImage> {
        let kind = NewKind::without_parent(opts.fixed);
        let block = opts
            .block_size
            .unwrap_or_else(|| vhdx_create::default_block_bytes(&kind));
        let new = vhdx_create::NewVhdx::new(kind, padded_size(src), block);
        vhdx_create::build(&new)?;
        Ok(NewImage::Vhdx(step_size(opts, new.block_size), new))
    }
}

/// Copy steps: block by block, or in large steps for fixed output.
fn step_size(opts: &ConvertOptions, block_size: u32) -> u64 {
    if opts.fixed {
        CHUNK_BYTES as u64
    } else {
        u64::from(block_size)
    }
}

/// The path half of `to_vhd` and `to_vhdx`: check `dst`, then build the image under a
/// temporary name ([`image_into`] on a second handle of it) and give it its name.
fn image_to_path(
    src: &dyn VirtualSource,
    dst: &Path,
    opts: &ConvertOptions,
    new: NewImage,
    mut progress: impl Progress,
) -> Result<ConvertStats> {
    // `symlink_metadata`: a dangling link at DST counts as existing.
    check_destination(src, dst, opts, std::fs::symlink_metadata(dst).is_ok())?;
    build_output(dst, opts.overwrite, !opts.no_sync, |file| {
        let clone = CloneTo::for_output(Some(file));
        image_into(
            src,
            OutFile::new(file, !opts.no_sync),
            clone,
            &new,
            &mut progress,
        )
    })
}

/// Lay `new` out in the empty `sink`, open it with the format's writer, copy `src` into it as
/// one `"convert"` phase, and flush it.
fn image_into<S: Sink>(
    src: &dyn VirtualSource,
    sink: S,
    clone: Option<CloneTo>,
    new: &NewImage,
    progress: &mut dyn Progress,
) -> Result<ConvertStats> {
    let opts = crate::OpenOptions::default();
    let (mut image, step): (Box<dyn WritableImage + '_>, u64) = match new {
        NewImage::Vhd(step, n) => {
            vhd_create::write_new(&sink, n)?;
            (Box::new(VhdWriter::open(sink, &opts)?), *step)
        }
        NewImage::Vhdx(step, n) => {
            vhdx_create::write_new(&sink, n)?;
            (Box::new(VhdxWriter::open(sink, &opts)?), *step)
        }
    };
    let clone = clone.as_ref();
    let stats = phase(src, progress, |p| {
        copy_blocks(src, &mut *image, step, clone, p)
    })?;
    image.flush()?;
    Ok(stats)
}

/// Copy `src` into `out` in aligned steps of `step` bytes, skipping steps that hold no data or
/// only zeros. Checks `progress` for a cancel before each step.
fn copy_blocks(
    src: &dyn VirtualSource,
    out: &mut dyn WritableImage,
    step: u64,
    clone: Option<&CloneTo>,
    progress: &mut dyn Progress,
) -> Result<ConvertStats> {
    let mut copier = clone.map(CloneTo::copier);
    let size = src.virtual_size();
    let mut stats = ConvertStats::of_size(size);
    let step = step.clamp(512, CHUNK_BYTES as u64);
    let mut buf = vec![0u8; usize::try_from(step).unwrap_or(CHUNK_BYTES)];
    // The new image has no parent: sectors it does not hold are zeros.
    let mut no_parent = |_: u64, b: &mut [u8]| {
        b.fill(0);
        Ok(())
    };
    let mut zeros = ZeroAhead::default();
    let mut pos = 0u64;
    while pos < size {
        crate::progress::check(progress)?;
        let len = (size - pos).min(step - pos % step);
        let len = if zeros.all_zero(src, pos, len)? {
            // The hole may go on: every whole step it covers is skipped at once.
            let len = skip_len(&zeros, pos, len, step, size);
            stats.bytes_skipped += len;
            len
        } else if let Some((n, cloned)) =
            clone::clone_into(src, out, clone.zip(copier.as_mut()), pos, len)?
        {
            if cloned {
                stats.bytes_written += n;
                stats.bytes_cloned += n;
            } else {
                stats.bytes_skipped += n;
            }
            n
        } else {
            let n = usize::try_from(len).unwrap_or(buf.len()).min(buf.len());
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, pos)?;
            stats.bytes_read += len;
            if is_zero(chunk) {
                stats.bytes_skipped += len;
            } else {
                out.write_at(pos, chunk, &mut no_parent)?;
                stats.bytes_written += len;
            }
            len
        };
        pos += len;
        progress.advance(len);
    }
    Ok(stats)
}

/// Bytes to skip from `pos`, where a step of `len` bytes reads as zeros: up to the last step
/// boundary (or the end of the disk) the zero run holding the step's last byte reaches, at
/// least `len`.
fn skip_len(zeros: &ZeroAhead, pos: u64, len: u64, step: u64, size: u64) -> u64 {
    let last = pos.saturating_add(len).saturating_sub(1);
    let end = zeros.zero_end(last).unwrap_or(0).min(size);
    let end = if end == size { end } else { end - end % step };
    end.saturating_sub(pos).max(len)
}

/// Granularity of hole detection inside stored data: one 64 KiB piece at a time.
const ZERO_GRAIN: usize = 64 << 10;

fn write_nonzero<W: Write + Seek + ?Sized>(
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

fn write_run<W: Write + Seek + ?Sized>(
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
