//! Copying a byte range from one file to another the cheapest way the file systems allow:
//! `copy_file_range` (a reflink on XFS and btrfs: the new file shares the old one's extents and
//! no data moves; an in-kernel copy elsewhere), falling back to a bounded buffer where the
//! kernel refuses (`EXDEV`, `ENOSYS`, `EINVAL`, `EOPNOTSUPP`: across file systems on older
//! kernels, special files, overlapping ranges of one file), and for the rest of the run once it
//! refused. `VHDKIT_NO_CLONE=1` turns the kernel copy off (the plain copy, for comparisons).

use std::fs::File;
use std::io;

/// Largest single `copy_file_range` call; the kernel caps one call near 2 GiB anyway.
const MAX_CALL: u64 = 1 << 30;

/// Buffer of the fallback copy: bounded, whatever the range.
const BUFFER_BYTES: usize = 1 << 20;

/// Granularity at which the fallback leaves zeros unwritten (a page).
const PAGE: usize = 4096;

/// The environment variable that turns cloning off.
const NO_CLONE_ENV: &str = "VHDKIT_NO_CLONE";

/// File systems where `copy_file_range` within the file system clones extents (reflink).
#[cfg(target_os = "linux")]
const CLONING_FS_MAGIC: [u64; 2] = [
    0x5846_5342, // XFS
    0x9123_683e, // btrfs
];

/// What one kernel copy call did.
#[derive(Debug)]
pub(crate) enum Kernel {
    /// Moved this many bytes (0: the source ended early); the offsets were advanced.
    Moved(usize),
    /// The kernel cannot copy between these files: use the buffer.
    Refused,
    /// A real error (I/O, no space): reported.
    Failed(io::Error),
}

/// Copies ranges between files, remembering for the rest of its run that the kernel refused.
#[derive(Debug, Clone)]
pub struct RangeCopier {
    kernel: bool,
}

impl Default for RangeCopier {
    fn default() -> Self {
        RangeCopier::new()
    }
}

impl RangeCopier {
    /// A copier that tries the kernel first, unless `VHDKIT_NO_CLONE` is set (to anything but
    /// `0` or nothing).
    pub fn new() -> RangeCopier {
        RangeCopier {
            kernel: !cloning_disabled(),
        }
    }

    /// A copier that always uses the buffer.
    #[cfg(test)]
    pub fn buffered() -> RangeCopier {
        RangeCopier { kernel: false }
    }

    /// A copier for a file whose contents must keep their holes: the kernel is used only when
    /// `dst` lies on a file system that clones (XFS, btrfs), where a copied range of zeros
    /// shares extents and costs no space; elsewhere an in-kernel copy would write zeros the
    /// buffered copy leaves as holes.
    pub fn for_sparse_output(dst: &File) -> RangeCopier {
        RangeCopier {
            kernel: !cloning_disabled() && fs_clones(dst),
        }
    }

    /// Whether copies may still go to the kernel in this run.
    pub fn uses_kernel(&self) -> bool {
        self.kernel
    }

    /// Whether a copy from `src` to `dst` would go to the kernel: still allowed in this run,
    /// and both files on one file system (a clone never crosses one).
    pub fn clones_between(&self, src: &File, dst: &File) -> bool {
        self.kernel && same_device(src, dst)
    }

    /// Copy `len` bytes at `src_off` of `src` to `dst_off` of `dst`; returns how many the kernel
    /// moved (the rest went through the buffer). With `dst_zeroed` (the destination range
    /// already reads as zeros) the buffer leaves all-zero pages unwritten, as holes.
    pub fn copy(
        &mut self,
        src: &File,
        src_off: u64,
        dst: &File,
        dst_off: u64,
        len: u64,
        dst_zeroed: bool,
    ) -> io::Result<u64> {
        self.copy_with(
            &mut kernel_copy,
            (src, src_off),
            (dst, dst_off),
            len,
            dst_zeroed,
        )
    }

    /// [`RangeCopier::copy`] with the kernel call given (tests inject refusals).
    pub(crate) fn copy_with(
        &mut self,
        call: &mut dyn FnMut(&File, &mut u64, &File, &mut u64, usize) -> Kernel,
        (src, src_off): (&File, u64),
        (dst, dst_off): (&File, u64),
        len: u64,
        dst_zeroed: bool,
    ) -> io::Result<u64> {
        let end = src_off
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "copy range past 2^64"))?;
        let (mut i, mut o) = (src_off, dst_off);
        let mut moved = 0u64;
        while self.kernel && i < end {
            let want = usize::try_from((end - i).min(MAX_CALL)).unwrap_or(1 << 20);
            match call(src, &mut i, dst, &mut o, want) {
                Kernel::Moved(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the source ends at {i:#x}, before the {len} bytes copied from {src_off:#x}"),
                    ))
                }
                Kernel::Moved(n) => moved = moved.saturating_add(n as u64),
                Kernel::Refused => self.kernel = false,
                Kernel::Failed(e) => return Err(e),
            }
        }
        if i < end {
            copy_buffered(src, i, dst, o, end - i, dst_zeroed)?;
        }
        Ok(moved)
    }
}

fn cloning_disabled() -> bool {
    std::env::var_os(NO_CLONE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

#[cfg(target_os = "linux")]
fn kernel_copy(src: &File, i: &mut u64, dst: &File, o: &mut u64, want: usize) -> Kernel {
    use rustix::io::Errno;
    match rustix::fs::copy_file_range(src, Some(i), dst, Some(o), want) {
        Ok(n) => Kernel::Moved(n),
        Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP) => Kernel::Refused,
        Err(e) => Kernel::Failed(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn kernel_copy(_: &File, _: &mut u64, _: &File, _: &mut u64, _: usize) -> Kernel {
    Kernel::Refused
}

#[cfg(target_os = "linux")]
fn fs_clones(f: &File) -> bool {
    rustix::fs::fstatfs(f).is_ok_and(|s| {
        // `f_type`'s integer type differs between architectures.
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let magic = s.f_type as u64;
        CLONING_FS_MAGIC.contains(&magic)
    })
}

#[cfg(not(target_os = "linux"))]
fn fs_clones(_: &File) -> bool {
    false
}

#[cfg(unix)]
fn same_device(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_device(_: &File, _: &File) -> bool {
    false
}

/// Copy `len` bytes from `src_at` to `dst_at` through a bounded buffer; with `skip_zero_pages`,
/// all-zero pages (counted from `dst_at`) are not written.
pub(crate) fn copy_buffered(
    src: &File,
    src_at: u64,
    dst: &File,
    dst_at: u64,
    len: u64,
    skip_zero_pages: bool,
) -> io::Result<()> {
    // Positioned reads and writes on every OS (the crate's own `Source`/`Sink` for `File`).
    use crate::source::Source;
    use crate::txn::Sink;
    let cap = usize::try_from(len)
        .unwrap_or(BUFFER_BYTES)
        .min(BUFFER_BYTES);
    // Page-aligned: the kernel copies into it at about twice the speed (see `aligned`).
    let mut buf = crate::aligned::Aligned::default();
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from(len - done).unwrap_or(cap).min(cap);
        let chunk = buf.window(n);
        src.read_exact_at(chunk, src_at.saturating_add(done))?;
        let out = dst_at.saturating_add(done);
        if !skip_zero_pages {
            dst.write_all_at(chunk, out)?;
        } else {
            let mut page_at = out;
            for page in chunk.chunks(PAGE) {
                if page.iter().any(|&b| b != 0) {
                    dst.write_all_at(page, page_at)?;
                }
                page_at = page_at.saturating_add(page.len() as u64);
            }
        }
        done = done.saturating_add(n as u64);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn contents(f: &File) -> Vec<u8> {
        use crate::source::Source;
        let mut v = vec![0u8; usize::try_from(f.metadata().unwrap().len()).unwrap()];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8 | 1).collect()
    }

    #[test]
    fn copies_a_range_between_offsets() {
        let data = pattern(3 << 20);
        let src = file_with(&data);
        for mut c in [RangeCopier::new(), RangeCopier::buffered()] {
            let dst = tempfile::tempfile().unwrap();
            c.copy(&src, 4096, &dst, 8192, (2 << 20) + 512, false)
                .unwrap();
            let got = contents(&dst);
            assert_eq!(got.len(), 8192 + (2 << 20) + 512);
            assert!(got[..8192].iter().all(|&b| b == 0));
            assert_eq!(&got[8192..], &data[4096..4096 + (2 << 20) + 512]);
        }
    }

    #[test]
    fn a_refusal_falls_back_to_the_buffer_for_the_rest_of_the_run() {
        let data = pattern(5 << 20);
        let src = file_with(&data);
        let dst = tempfile::tempfile().unwrap();
        let mut c = RangeCopier { kernel: true };
        let mut calls = 0;
        // The kernel moves 1 MiB, then refuses as across file systems.
        let mut fake = |s: &File, i: &mut u64, d: &File, o: &mut u64, want: usize| {
            calls += 1;
            if calls > 1 {
                return Kernel::Refused;
            }
            let n = want.min(1 << 20);
            copy_buffered(s, *i, d, *o, n as u64, false).unwrap();
            *i += n as u64;
            *o += n as u64;
            Kernel::Moved(n)
        };
        let moved = c
            .copy_with(&mut fake, (&src, 0), (&dst, 0), 3 << 20, false)
            .unwrap();
        assert_eq!(moved, 1 << 20);
        assert_eq!(contents(&dst), &data[..3 << 20]);
        // Later copies of the run go straight to the buffer.
        let moved = c
            .copy_with(&mut fake, (&src, 3 << 20), (&dst, 3 << 20), 2 << 20, false)
            .unwrap();
        assert_eq!((moved, calls), (0, 2));
        assert_eq!(contents(&dst), data);
    }

    #[test]
    fn real_errors_are_reported_and_a_short_source_is_an_error() {
        let src = file_with(&pattern(8192));
        let dst = tempfile::tempfile().unwrap();
        let mut c = RangeCopier { kernel: true };
        let mut fail = |_: &File, _: &mut u64, _: &File, _: &mut u64, _: usize| {
            Kernel::Failed(io::Error::from(io::ErrorKind::StorageFull))
        };
        let e = c
            .copy_with(&mut fail, (&src, 0), (&dst, 0), 4096, false)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        // The real kernel: the source has 8 KiB, 16 KiB are asked for.
        let e = RangeCopier::new()
            .copy(&src, 0, &dst, 0, 16384, false)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn overlapping_ranges_of_one_file_are_refused_by_the_kernel_and_copied_by_the_buffer() {
        // EINVAL from the real kernel: same file, overlapping ranges.
        let data = pattern(64 << 10);
        let f = file_with(&data);
        let mut c = RangeCopier { kernel: true };
        c.copy(&f, 0, &f, 4096, 16 << 10, false).unwrap();
        assert!(!c.kernel, "the refusal is remembered");
        let got = contents(&f);
        assert_eq!(&got[4096..4096 + (16 << 10)], &data[..16 << 10]);
        assert_eq!(&got[..4096], &data[..4096]);
    }

    #[test]
    fn the_buffer_leaves_zero_pages_unwritten_only_when_asked() {
        let mut data = pattern(4 * PAGE);
        data[PAGE..2 * PAGE].fill(0);
        let src = file_with(&data);
        for skip in [false, true] {
            let dst = file_with(&vec![0xAA; 4 * PAGE]);
            copy_buffered(&src, 0, &dst, 0, data.len() as u64, skip).unwrap();
            let got = contents(&dst);
            let want = if skip { 0xAA } else { 0 };
            assert!(got[PAGE..2 * PAGE].iter().all(|&b| b == want), "{skip}");
            assert_eq!(&got[..PAGE], &data[..PAGE]);
            assert_eq!(&got[2 * PAGE..], &data[2 * PAGE..]);
        }
    }
}
