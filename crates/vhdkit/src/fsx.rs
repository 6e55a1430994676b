//! How vhdkit opens files: the one place that decides, so every open follows the same rules.
//!
//! - **Disks and parent candidates** ([`open_disk`], [`open_disk_rw`]): links are followed (a
//!   disk may be reached through a link), but the open never blocks (`O_NONBLOCK`, so a FIFO
//!   swapped in cannot hang a reader) and the type is checked with `fstat` on the open
//!   descriptor, never by a path check followed by a second open. Anything but a regular file
//!   is refused with a [`Refused`] error.
//! - **Confined parent candidates** ([`open_disk_beneath`]): the same rules, and the path is
//!   resolved by the kernel beneath the confining folder (`openat2` with `RESOLVE_BENEATH`), so
//!   a path component swapped for a link after the candidate was checked cannot lead outside.
//! - **Side files read** ([`read_side`]): vhdkit's own files beside a disk (the journal). Never
//!   through a link (`O_NOFOLLOW`), never blocking, regular files only, read with a hard size
//!   bound fixed by the caller.
//! - **Files created** ([`create_new`]): a stale entry at the name is unlinked first (the link
//!   itself, never its target), then the file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so
//!   nothing planted at the name is ever truncated or written through.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

mod clone;
mod room;
pub use clone::RangeCopier;
pub(crate) use room::ensure_room;

/// Why a file was refused by an opening rule (carried inside an [`io::Error`] of kind
/// `InvalidInput`; [`refusal`] gets it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a regular file: what it is instead ("symbolic link", "FIFO", "folder", ...).
    NotRegular(&'static str),
    /// Reached only by leaving the confining folder (a link or `..` leading out of it, possibly
    /// swapped in after the path was checked): refused by the kernel, nothing opened.
    OutsideConfinement,
    /// Larger than the bound the caller allows.
    TooLarge {
        /// The file's length.
        len: u64,
        /// The bound.
        max: u64,
    },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NotRegular(kind) => write!(f, "not a regular file (a {kind}); not opened"),
            Refused::OutsideConfinement => {
                f.write_str("leads outside the confining folder; not opened")
            }
            Refused::TooLarge { len, max } => {
                write!(
                    f,
                    "{len} bytes, more than the {max} bytes allowed; not read"
                )
            }
        }
    }
}

impl std::error::Error for Refused {}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, r)
    }
}

/// The [`Refused`] reason inside `e`, when an opening rule produced it.
pub fn refusal(e: &io::Error) -> Option<&Refused> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
}

/// What kind of object `md` describes, in words.
pub fn kind_of(md: &std::fs::Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_file() {
        return "regular file";
    }
    if t.is_dir() {
        return "folder";
    }
    if t.is_symlink() {
        return "symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    "special file"
}

fn require_regular(file: &File) -> io::Result<u64> {
    let md = file.metadata()?;
    if md.is_file() {
        Ok(md.len())
    } else {
        Err(Refused::NotRegular(kind_of(&md)).into())
    }
}

/// Open a disk (or a parent candidate) read-only: links followed, never blocking, regular
/// files only (checked on the descriptor).
pub fn open_disk(path: &Path) -> io::Result<File> {
    let f = open_flags(path, false, true).map_err(|e| explain_open(path, true, e))?;
    require_regular(&f)?;
    Ok(f)
}

/// Open `path` read-only without blocking (and, unless `follow`, without following a link),
/// whatever it is: for walkers that check the type on the descriptor themselves.
pub(crate) fn open_nonblocking(path: &Path, follow: bool) -> io::Result<File> {
    open_flags(path, false, follow)
}

/// Open a disk for reading and writing, with the rules of [`open_disk`].
pub fn open_disk_rw(path: &Path) -> io::Result<File> {
    let f = open_flags(path, true, true).map_err(|e| explain_open(path, true, e))?;
    require_regular(&f)?;
    Ok(f)
}

/// Read a vhdkit side file: `Ok(None)` when nothing is at `path`; refused when it is a link,
/// not a regular file, or longer than `max` bytes.
pub fn read_side(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match open_flags(path, false, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(explain_open(path, false, e)),
    };
    read_bounded(f, max).map(Some)
}

/// [`read_side`] of the side file `rel` of a confined parent, resolved by the kernel beneath
/// `root` (as [`open_disk_beneath`] opens the parent itself): a folder on the way swapped for
/// a link out of `root` is refused ([`Refused::OutsideConfinement`]), and the name itself is
/// never followed (a link there is refused as one). Without `openat2`, [`read_side`] of
/// `root/rel`.
pub fn read_side_beneath(root: &Path, rel: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let f = match open_beneath(root, rel, false) {
        Ok(Some(f)) => f,
        Ok(None) => return read_side(&root.join(rel), max),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_bounded(f, max).map(Some)
}

/// The whole of the regular file `f`, refused past `max` bytes.
fn read_bounded(f: File, max: u64) -> io::Result<Vec<u8>> {
    let len = require_regular(&f)?;
    if len > max {
        return Err(Refused::TooLarge { len, max }.into());
    }
    // The file may grow after the fstat (another process writing): the bound holds anyway.
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > max {
        return Err(Refused::TooLarge {
            len: u64::try_from(buf.len()).unwrap_or(u64::MAX),
            max,
        }
        .into());
    }
    Ok(buf)
}

/// The length of the side file at `path` without reading it (`Ok(None)`: nothing there), with
/// the rules of [`read_side`].
pub fn probe_side(path: &Path) -> io::Result<Option<u64>> {
    match open_flags(path, false, false) {
        Ok(f) => require_regular(&f).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(explain_open(path, false, e)),
    }
}

/// Whether anything at all is at `path` (a dangling link counts).
pub fn entry_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// What is at `path` when it is not a regular file (not following links), for messages and
/// `check`; `None` for a regular file or nothing at all.
#[cfg(any(test, not(target_os = "linux")))]
pub fn odd_entry(path: &Path) -> Option<&'static str> {
    let md = std::fs::symlink_metadata(path).ok()?;
    (!md.is_file()).then(|| kind_of(&md))
}

/// Create a new file for writing (and reading) at `path`: whatever is at the name is unlinked
/// first (a link is removed, its target untouched; a folder makes this fail), then the file is
/// created exclusively without following links.
pub fn create_new(path: &Path) -> io::Result<File> {
    remove_entry(path)?;
    open_create(path)
}

/// Remove the entry at `path` (never what a link points to); nothing there is fine.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An open that failed on something that is not a regular file (ELOOP for a link under
/// `O_NOFOLLOW`, ENXIO for a socket, ...) is the refusal it is; other errors stay as they are.
fn explain_open(path: &Path, follow: bool, e: io::Error) -> io::Error {
    let md = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match md {
        Ok(md) if !md.is_file() => Refused::NotRegular(kind_of(&md)).into(),
        _ => e,
    }
}

/// Copy the whole of `src` into the new, empty file `dst` keeping holes: only the data ranges
/// (`SEEK_DATA`/`SEEK_HOLE`) are copied, with `copy_file_range` (falling back to a bounded
/// buffer across file systems that refuse it; see [`RangeCopier`]). Returns the length copied
/// (holes included).
pub fn copy_sparse(src: &File, dst: &File) -> io::Result<u64> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut copier = RangeCopier::new();
    let mut off = 0u64;
    while off < len {
        let Some((start, end)) = next_data(src, off, len)? else {
            break;
        };
        copier.copy(src, start, dst, start, end - start, true)?;
        off = end;
    }
    Ok(len)
}

/// The next data range at or after `off`: `None` when only a hole is left.
#[cfg(target_os = "linux")]
fn next_data(src: &File, off: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let start = match seek(src, SeekFrom::Data(off)) {
        Ok(s) => s,
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        // No hole support: all of it is data.
        Err(rustix::io::Errno::INVAL) => return Ok(Some((off, len))),
        Err(e) => return Err(e.into()),
    };
    let end = match seek(src, SeekFrom::Hole(start)) {
        Ok(e) => e,
        Err(_) => len,
    };
    Ok((start < len).then_some((start, end.min(len))))
}

#[cfg(not(target_os = "linux"))]
fn next_data(_src: &File, off: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    Ok(Some((off, len)))
}

#[cfg(target_os = "linux")]
fn open_flags(path: &Path, write: bool, follow: bool) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let mut flags = OFlags::NONBLOCK | OFlags::CLOEXEC;
    flags |= if write { OFlags::RDWR } else { OFlags::RDONLY };
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let fd = rustix::fs::open(path, flags, Mode::empty())?;
    Ok(File::from(fd))
}

#[cfg(target_os = "linux")]
fn open_create(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::from_bits_truncate(0o666))?;
    Ok(File::from(fd))
}

// Elsewhere: the portable subset (no O_NONBLOCK/O_NOFOLLOW from std); the type check on the
// descriptor and the exclusive create still hold.
#[cfg(not(target_os = "linux"))]
fn open_flags(path: &Path, write: bool, follow: bool) -> io::Result<File> {
    if !follow && odd_entry(path) == Some("symbolic link") {
        return Err(Refused::NotRegular("symbolic link").into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_create(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// Open the parent candidate `rel` (a path relative to `root`, normally its real path with the
/// canonical `root` stripped) read-only with the rules of [`open_disk`], never leaving `root`.
///
/// On Linux the kernel resolves `rel` beneath an open descriptor of `root` (`openat2` with
/// `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`): a link or `..` that leads out of `root` is
/// refused ([`Refused::OutsideConfinement`]) even when it was swapped in after the caller
/// checked the path. Kernels without `openat2` (before 5.6: `ENOSYS`) and other systems fall
/// back to opening `root/rel` by path, so there confinement rests on the caller's check made
/// just before, and a component swapped in that window is not caught.
pub fn open_disk_beneath(root: &Path, rel: &Path) -> io::Result<File> {
    let f = match open_beneath(root, rel, true)? {
        Some(f) => f,
        None => return open_disk(&root.join(rel)),
    };
    require_regular(&f)?;
    Ok(f)
}

/// `Ok(None)`: no `openat2` here, the caller opens by path. Unless `follow`, a link at the
/// last component is refused as a link (`O_NOFOLLOW`).
#[cfg(target_os = "linux")]
fn open_beneath(root: &Path, rel: &Path, follow: bool) -> io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename elsewhere raced a `..` in the walk; the kernel asks for a retry.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => return Ok(Some(File::from(fd))),
            Err(Errno::NOSYS) => return Ok(None),
            Err(Errno::XDEV) => return Err(Refused::OutsideConfinement.into()),
            Err(Errno::LOOP) if !follow => return Err(Refused::NotRegular("symbolic link").into()),
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_beneath(_root: &Path, _rel: &Path, _follow: bool) -> io::Result<Option<File>> {
    Ok(None)
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn read_side_refuses_links_and_odd_files_and_bounds_size() {
        let d = dir();
        let target = d.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read_side(&link, 100).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("symbolic link")));
        let e = read_side(d.path(), 100).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("folder")));
        let e = read_side(&target, 3).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::TooLarge { len: 6, max: 3 }));
        assert_eq!(read_side(&target, 6).unwrap().unwrap(), b"secret");
        assert!(read_side(&d.path().join("none"), 6).unwrap().is_none());
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let d = dir();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let e = read_side(&fifo, 10).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("FIFO")));
        let e = open_disk(&fifo).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("FIFO")));
        assert_eq!(odd_entry(&fifo), Some("FIFO"));
        let sock_path = d.path().join("sock");
        let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
        let e = read_side(&sock_path, 10).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("socket")));
        let e = open_disk(&sock_path).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("socket")));
    }

    #[test]
    fn create_new_replaces_a_link_and_never_writes_its_target() {
        use std::io::Write;
        let d = dir();
        let target = d.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let name = d.path().join("new");
        std::os::unix::fs::symlink(&target, &name).unwrap();
        let mut f = create_new(&name).unwrap();
        f.write_all(b"mine").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(&name).unwrap(), b"mine");
        assert!(!std::fs::symlink_metadata(&name)
            .unwrap()
            .file_type()
            .is_symlink());
        // A folder at the name is not removed: the create fails.
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(create_new(&sub).is_err());
        assert!(sub.is_dir());
    }

    #[test]
    fn copy_sparse_keeps_holes_and_bytes() {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let d = dir();
        let src_p = d.path().join("src");
        let src = File::create(&src_p).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(&[7u8; 16 << 10], 8 << 20).unwrap();
        src.write_all_at(b"end", (64 << 20) - 3).unwrap();
        src.sync_all().unwrap();
        let dst_p = d.path().join("dst");
        let dst = create_new(&dst_p).unwrap();
        assert_eq!(
            copy_sparse(&File::open(&src_p).unwrap(), &dst).unwrap(),
            64 << 20
        );
        assert_eq!(
            std::fs::read(&src_p).unwrap(),
            std::fs::read(&dst_p).unwrap()
        );
        let md = std::fs::metadata(&dst_p).unwrap();
        assert!(
            md.blocks() * 512 <= 1 << 20,
            "{} blocks allocated",
            md.blocks()
        );
        // The buffered fallback keeps holes too.
        let dst2_p = d.path().join("dst2");
        let dst2 = create_new(&dst2_p).unwrap();
        dst2.set_len(64 << 20).unwrap();
        clone::copy_buffered(&File::open(&src_p).unwrap(), 0, &dst2, 0, 64 << 20, true).unwrap();
        assert_eq!(
            std::fs::read(&src_p).unwrap(),
            std::fs::read(&dst2_p).unwrap()
        );
        assert!(std::fs::metadata(&dst2_p).unwrap().blocks() * 512 <= 1 << 20);
    }

    #[test]
    fn open_disk_follows_links_to_regular_files_only() {
        let d = dir();
        let target = d.path().join("disk");
        std::fs::write(&target, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_disk(&link).is_ok());
        let e = open_disk(d.path()).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("folder")));
        let e = open_disk(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("character device")));
    }

    #[test]
    fn open_disk_beneath_stays_inside_the_root() {
        let d = dir();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/disk"), b"in").unwrap();
        std::fs::write(d.path().join("secret"), b"out").unwrap();
        let read = |rel: &str| {
            let mut s = String::new();
            open_disk_beneath(&root, Path::new(rel))
                .map(|mut f| f.read_to_string(&mut s).map(|_| s))
        };
        assert_eq!(read("sub/disk").unwrap().unwrap(), "in");
        // A link that stays inside is followed; one that leaves (or a `..` that does) is not.
        std::os::unix::fs::symlink("sub", root.join("inlink")).unwrap();
        assert_eq!(read("inlink/disk").unwrap().unwrap(), "in");
        std::os::unix::fs::symlink(d.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("s")).unwrap();
        for rel in [
            "out/secret",
            "s",
            "../secret",
            "sub/../../secret",
            "/proc/self/root/x",
        ] {
            let e = read(rel).unwrap_err();
            assert_eq!(refusal(&e), Some(&Refused::OutsideConfinement), "{rel}");
        }
        let e = read("sub").unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::NotRegular("folder")));
        assert_eq!(read("none").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn read_side_beneath_stays_inside_and_follows_no_link_at_the_name() {
        let d = dir();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/j"), b"in").unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("j"), b"secret").unwrap();
        let read = |rel: &str| read_side_beneath(&root, Path::new(rel), 100);
        assert_eq!(read("sub/j").unwrap().unwrap(), b"in");
        assert!(read("sub/none").unwrap().is_none());
        // A folder swapped for a link to outside (as after the parent was checked): refused,
        // where reading by path would have returned the outside bytes.
        std::os::unix::fs::symlink(&outside, root.join("swapped")).unwrap();
        assert_eq!(
            read_side(&root.join("swapped/j"), 100).unwrap().unwrap(),
            b"secret"
        );
        let e = read("swapped/j").unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::OutsideConfinement));
        // The name itself a link, inside or out: refused as a link, never followed.
        std::os::unix::fs::symlink(outside.join("j"), root.join("sub/out")).unwrap();
        std::os::unix::fs::symlink("j", root.join("sub/in")).unwrap();
        for rel in ["sub/out", "sub/in"] {
            let e = read(rel).unwrap_err();
            assert_eq!(
                refusal(&e),
                Some(&Refused::NotRegular("symbolic link")),
                "{rel}"
            );
        }
        let e = read_side_beneath(&root, Path::new("sub/j"), 1).unwrap_err();
        assert_eq!(refusal(&e), Some(&Refused::TooLarge { len: 2, max: 1 }));
    }
}

/// One open file shared by the parts of a change (the writer, read-only parses, the final
/// step), read and written through [`Source`](crate::source::Source) and
/// [`Sink`](crate::txn::Sink).
#[derive(Debug, Clone)]
pub(crate) struct SharedFile(pub(crate) std::sync::Arc<File>);

impl crate::source::Source for SharedFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        crate::source::Source::read_exact_at(&*self.0, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        crate::source::Source::len(&*self.0)
    }
}

impl crate::txn::Sink for SharedFile {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        crate::txn::Sink::write_all_at(&*self.0, buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        crate::txn::Sink::sync(&*self.0)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        crate::txn::Sink::set_len(&*self.0, len)
    }
}
