//! Copy the virtual contents of a disk (through its chain) out to another container.
//!
//! Raw output is written sparsely: ranges no layer stores, and stored ranges that are all
//! zeros, are left as holes. The output is built under a temporary name in the destination's
//! folder and renamed into place only once complete and flushed, so an interrupted conversion
//! never leaves a truncated file under the destination's name.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, ResultExt};
use crate::view::{Allocation, ChainView};

/// Size of one copy step. Large enough that per-call overhead vanishes at storage speed,
/// small enough to keep peak memory far below the 64 MiB budget.
const CHUNK_BYTES: usize = 4 << 20;

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

/// Options for [`to_raw`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConvertOptions {
    /// Replace an existing destination.
    pub overwrite: bool,
}

impl ConvertOptions {
    /// Replace an existing destination.
    #[must_use]
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }
}

/// Write the whole virtual disk of `view` to `dst` as a raw image.
///
/// `progress` is called with the number of virtual bytes done so far, after every step.
pub fn to_raw(
    view: &ChainView,
    dst: &Path,
    opts: &ConvertOptions,
    mut progress: impl FnMut(u64),
) -> Result<ConvertStats> {
    if dst.exists() && !opts.overwrite {
        return Err(Error::InvalidArgument(format!(
            "{} already exists (use --force to replace it)",
            dst.display()
        )));
    }
    refuse_chain_member(view, dst)?;
    let tmp = temp_name(dst);
    let mut file = FsOpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io("creating the output file", e))
        .with_path(&tmp)?;
    // Sizing the file first makes every skipped range a hole and turns the writes into
    // in-place writes, which are cheaper than writes that extend the file.
    let result = finish_file(&file, view.virtual_size())
        .and_then(|()| copy_sparse(view, &mut file, &mut progress))
        .and_then(|stats| {
            file.sync_data()
                .map_err(|e| Error::io("flushing the output file", e))?;
            Ok(stats)
        })
        .with_path(&tmp);
    drop(file);
    match result {
        Ok(stats) => {
            std::fs::rename(&tmp, dst)
                .map_err(|e| Error::io(format!("renaming to {}", dst.display()), e))
                .with_path(&tmp)?;
            Ok(stats)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn refuse_chain_member(view: &ChainView, dst: &Path) -> Result<()> {
    let Ok(d) = std::fs::canonicalize(dst) else {
        return Ok(());
    };
    for disk in view.layers() {
        if let Some(p) = disk.path() {
            if std::fs::canonicalize(p).ok().as_deref() == Some(d.as_path()) {
                return Err(Error::InvalidArgument(format!(
                    "{} is part of the chain being converted; refusing to overwrite it",
                    dst.display()
                )));
            }
        }
    }
    Ok(())
}

fn temp_name(dst: &Path) -> PathBuf {
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    dst.with_file_name(format!(".{name}.vhdkit-partial-{}", std::process::id()))
}

/// Copy every stored, non-zero range of `view` to `out` at the same offset. The caller sizes
/// `out` to the virtual size afterwards (see [`finish_file`]) so trailing holes exist.
pub fn copy_sparse<W: Write + Seek>(
    view: &ChainView,
    out: &mut W,
    progress: &mut impl FnMut(u64),
) -> Result<ConvertStats> {
    let size = view.virtual_size();
    let mut stats = ConvertStats {
        virtual_size: size,
        ..ConvertStats::default()
    };
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(CHUNK_BYTES as u64);
        let (alloc, len) = view.allocation(pos, want)?;
        let n = usize::try_from(len).unwrap_or(CHUNK_BYTES).min(CHUNK_BYTES);
        match alloc {
            Allocation::Zero => stats.bytes_skipped += len,
            Allocation::Data => {
                let chunk = &mut buf[..n];
                view.read_exact_at(chunk, pos)?;
                stats.bytes_read += len;
                write_nonzero(out, chunk, pos, &mut stats)?;
            }
        }
        pos += len;
        progress(pos);
    }
    out.flush()
        .map_err(|e| Error::io("flushing the output", e))?;
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
pub fn finish_file(file: &File, size: u64) -> Result<()> {
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
