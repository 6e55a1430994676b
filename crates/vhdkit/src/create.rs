//! Creating new disks (`vhdkit create`): fixed, dynamic and differencing, with Hyper-V's
//! defaults.
//!
//! [`create`] never overwrites: the disk is built under a temporary name in the destination's
//! folder, synced, then linked to its final name only if that name is still free (so a
//! concurrent creator of the same name is not overwritten either), and the folder is synced.
//!
//! **VHD defaults** (what Windows 10 / Hyper-V write, checked on the Windows files in
//! `testdata-real`): creator `win ` version 10.0 (0x000A0000), host `Wi2k`; current size and
//! original size exactly the requested size (it must be a multiple of 512; vhdkit refuses
//! anything else rather than rounding); CHS by the spec's algorithm (it may cover less than the
//! current size, as in Windows files); 2 MiB blocks; BAT at 0x600 (dynamic) padded with 0xFF to
//! 4 KiB; block data aligned to 4 KiB; file padded to 4 KiB with the footer in its last 512
//! bytes; footer copy at 0 and dynamic header at 512. Differencing: size and linkage from the
//! parent (its footer unique id copied as raw bytes, parent time stamp 0), parent unicode name
//! and `W2ku` = the parent's absolute path (on Windows without `\\?\`; elsewhere the local
//! absolute path), `W2ru` = the path relative to the child's folder (`.\base.vhd`,
//! `..\ref\base.vhd`); `W2ku` data at 0x1000 (4096 bytes of space), BAT at 0x2000, `W2ru` data
//! after the BAT (65536 bytes of space), larger when a path needs it.
//!
//! **VHDX defaults** ([`crate::vhdx::create`]): Hyper-V's layout (log 1 MiB at 1 MiB, metadata
//! at 2 MiB, BAT at 3 MiB), blocks 32 MiB dynamic and 2 MiB fixed or differencing, 512-byte
//! logical (or 4096 with [`CreateParams::logical_sector_size`]) and 4096-byte physical sectors.
//! Differencing: size, sector sizes and virtual disk id from the parent, `parent_linkage` = its
//! DataWriteGuid, `absolute_win32_path` and `relative_path` as for VHD's `W2ku`/`W2ru`.
//!
//! **Unique id**: a random (version 4) GUID, stored as Windows stores it (the first three fields
//! little-endian, `Uuid::to_bytes_le`). vhdkit, like libvhdi, *displays* VHD ids as the raw
//! bytes read big-endian, so the id shown by `info` (and returned in [`Created::id`]) is the
//! byte-swapped form of the generated GUID, exactly as for disks made by Windows.

use std::fs::{self, File};

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{Chain, ChainOptions};
use crate::disk::{DiskFormat, DiskType};
use crate::error::{Error, Result, ResultExt};
use crate::guid;
use crate::newdisk::{NewKind, OutputSink, SinkIo};
use crate::sidefile::PartialGuard;
use crate::txn::Sink;
use crate::vhd::create as vhd_create;
use crate::vhdx::create as vhdx_create;

/// Builder methods that set optional fields: `name(value)` sets `self.name = Some(value)`.
macro_rules! optional_setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty,)*) => {$(
        $(#[$doc])*
        #[must_use]
        pub fn $name(mut self, value: $ty) -> Self {
            self.$name = Some(value);
            self
        }
    )*};
}

/// What to create. `Default` gives: format from the file extension, no size (it must be given
/// unless there is a parent), dynamic, no parent, the format's default block size (VHD 2 MiB),
/// a random id, default parent lookup.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CreateParams {
    /// Container format; `None` = from the extension (`.vhd`/`.avhd` VHD, `.vhdx`/`.avhdx` VHDX).
    pub format: Option<DiskFormat>,
    /// Virtual size in bytes. Required without a parent; with one, it must equal the parent's
    /// size when given.
    pub size: Option<u64>,
    /// Fixed instead of dynamic (not with a parent).
    pub fixed: bool,
    /// Parent disk: creates a differencing disk over it. The parent chain must be intact.
    pub parent: Option<PathBuf>,
    /// Block size in bytes; `None` = the format default (VHD: 2 MiB; VHDX: 32 MiB dynamic,
    /// 2 MiB fixed and differencing).
    pub block_size: Option<u32>,
    /// VHDX logical sector size, 512 or 4096; `None` = 512 (a differencing disk takes its
    /// parent's). VHD sectors are always 512 bytes.
    pub logical_sector_size: Option<u32>,
    /// The new disk's GUID; `None` = random (version 4). VHD: the footer unique id; VHDX: the
    /// DataWriteGuid (what children link to and `info` shows as `id`).
    pub id: Option<Uuid>,
    /// How to find the parent's own parents (to check the parent chain is intact).
    pub chain: ChainOptions,
}

impl CreateParams {
    /// A dynamic disk of `size` bytes.
    pub fn dynamic(size: u64) -> Self {
        CreateParams {
            size: Some(size),
            ..Self::default()
        }
    }

    /// A fixed disk of `size` bytes.
    pub fn fixed(size: u64) -> Self {
        CreateParams {
            size: Some(size),
            fixed: true,
            ..Self::default()
        }
    }

    /// A differencing disk over `parent`.
    pub fn differencing(parent: impl Into<PathBuf>) -> Self {
        CreateParams {
            parent: Some(parent.into()),
            ..Self::default()
        }
    }

    optional_setters! {
        /// Set the format.
        format: DiskFormat,
        /// Set the block size.
        block_size: u32,
        /// Set the VHDX logical sector size.
        logical_sector_size: u32,
        /// Set the id.
        id: Uuid,
    }

    /// Set the parent lookup options.
    #[must_use]
    pub fn chain_options(mut self, o: ChainOptions) -> Self {
        self.chain = o;
        self
    }
}

/// What [`create`] made.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Created {
    /// The new file.
    pub path: PathBuf,
    /// Format.
    pub format: DiskFormat,
    /// Type.
    pub disk_type: DiskType,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size (`None` for fixed VHD).
    pub block_size: Option<u64>,
    /// The id as `vhdkit info` shows it.
    pub id: Uuid,
    /// File size in bytes.
    pub file_size: u64,
    /// The parent (as given), for a differencing disk.
    pub parent: Option<PathBuf>,
}

/// Parse a size: a number, optionally with a fraction, then an optional unit `K`, `M`, `G`, `T`
/// (binary multiples: 1024, 1024^2...), each optionally followed by `B` or `iB`, or the unit `B`
/// alone; case-insensitive; spaces between number and unit allowed. `64MiB`, `10G`, `1.5GiB`,
/// `512`, `4096B` are valid. A fraction is allowed only when the result is a whole number of
/// bytes.
///
/// # Examples
///
/// ```
/// use vhdkit::parse_size;
///
/// assert_eq!(parse_size("10G")?, 10 << 30);
/// assert_eq!(parse_size("1.5GiB")?, 3 << 29);
/// assert_eq!(parse_size("1048576")?, 1 << 20);
/// assert!(parse_size("ten").is_err());
/// # Ok::<(), vhdkit::Error>(())
/// ```
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::InvalidArgument(format!(
            "size '{s}' {why} (examples: 64MiB, 10G, 1.5GiB, 1048576)"
        ))
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0u32,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad("has an unknown unit")),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return Err(bad("has no number"));
    }
    if frac.contains('.') || frac.len() > 18 {
        return Err(bad("is not a number"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad("is not a number"))?
    };
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("is too large"))?;
    if frac.is_empty() {
        return Ok(whole);
    }
    let f: u128 = frac.parse().map_err(|_| bad("is not a number"))?;
    let den = 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad("is not a number"))?);
    let num = f * (1u128 << shift);
    if num % den != 0 {
        return Err(bad("is not a whole number of bytes"));
    }
    u64::try_from(num / den)
        .ok()
        .and_then(|x| whole.checked_add(x))
        .ok_or_else(|| bad("is too large"))
}

/// Create a disk at `path`. Refuses to overwrite an existing file.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use vhdkit::{create, CreateParams, DiskFormat, DiskType};
///
/// let base = dir.path().join("base.vhd");
/// let made = create(&base, &CreateParams::dynamic(64 << 20))?;
/// assert_eq!((made.format, made.disk_type), (DiskFormat::Vhd, DiskType::Dynamic));
///
/// // The format follows the extension unless given.
/// let fixed = dir.path().join("fixed.img");
/// create(&fixed, &CreateParams::fixed(1 << 20).format(DiskFormat::Vhdx))?;
///
/// let child = create(&dir.path().join("child.vhd"), &CreateParams::differencing(&base))?;
/// assert_eq!(child.virtual_size, 64 << 20);
///
/// // An existing file is never overwritten.
/// assert!(create(&base, &CreateParams::dynamic(64 << 20)).is_err());
/// # Ok(())
/// # }
/// ```
pub fn create(path: impl AsRef<Path>, p: &CreateParams) -> Result<Created> {
    let path = path.as_ref();
    let format = request_format(path, p)?;
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let (new, created) = layout_for(path, format, p)?;
    build_output(path, false, true, |f| new.write(&*f))?;
    // A differencing disk must resolve to its parent exactly as any reader will do it.
    if created.disk_type == DiskType::Differencing {
        if let Err(e) = Chain::open(path, &p.chain) {
            let _ = fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(created)
}

/// Create a disk in `out` (a file, an in-memory `Cursor<Vec<u8>>`, any [`OutputSink`]), with
/// the bytes [`create`] would write at `name`. `name` is not opened: it gives the format (from
/// its extension, unless [`CreateParams::format`] is set) and, for a differencing disk, the
/// folder its parent locators are made relative to; nothing checks that such a disk resolves
/// to its parent until it is stored at `name`. `out` should be empty: it is sized to the new
/// disk and written in place (no temporary name).
///
/// # Examples
///
/// ```
/// use std::io::Cursor;
/// use vhdkit::{create_into, CreateParams, Disk, DiskType, OpenOptions};
///
/// let mut image = Cursor::new(Vec::new());
/// let made = create_into(&mut image, "memory.vhdx", &CreateParams::dynamic(8 << 20))?;
/// assert_eq!(image.get_ref().len() as u64, made.file_size);
///
/// let disk = Disk::from_source(Box::new(image.into_inner()), &OpenOptions::default())?;
/// assert_eq!(disk.info().disk_type, DiskType::Dynamic);
/// # Ok::<(), vhdkit::Error>(())
/// ```
pub fn create_into<W: OutputSink + ?Sized>(
    out: &mut W,
    name: impl AsRef<Path>,
    p: &CreateParams,
) -> Result<Created> {
    let name = name.as_ref();
    let (new, created) = layout_for(name, request_format(name, p)?, p)?;
    new.write(&SinkIo::new(out))?;
    Ok(created)
}

/// A new disk of either format, checked and ready to be written.
enum NewDisk {
    Vhd(vhd_create::NewVhd),
    Vhdx(vhdx_create::NewVhdx),
}

impl NewDisk {
    /// Write the new disk into the empty `sink` and sync it.
    fn write<S: Sink + ?Sized>(&self, sink: &S) -> Result<()> {
        match self {
            NewDisk::Vhd(n) => vhd_create::write_new(sink, n).map(|_| ()),
            NewDisk::Vhdx(n) => vhdx_create::write_new(sink, n).map(|_| ()),
        }
    }
}

/// The disk to write for `name` in `format`, and what [`create`] reports about it.
fn layout_for(name: &Path, format: DiskFormat, p: &CreateParams) -> Result<(NewDisk, Created)> {
    if p.fixed && p.parent.is_some() {
        return Err(Error::InvalidOption {
            option: "fixed",
            detail: "a differencing disk cannot be fixed".into(),
        });
    }
    match format {
        DiskFormat::Vhd => layout_vhd(name, p),
        DiskFormat::Vhdx => layout_vhdx(name, p),
    }
}

/// The format to create: the one asked for, else the one `path`'s extension names.
fn request_format(path: &Path, p: &CreateParams) -> Result<DiskFormat> {
    match p.format {
        Some(f) => Ok(f),
        None => crate::disk::claimed_format(path).ok_or_else(|| Error::InvalidOption {
            option: "format",
            detail: format!(
                "cannot tell the format of {} from its extension (.vhd, .avhd, .vhdx, .avhdx)",
                path.display()
            ),
        }),
    }
}

/// The size of a disk without parent: it must be given.
fn size_without_parent(p: &CreateParams) -> Result<u64> {
    p.size.ok_or_else(|| Error::InvalidOption {
        option: "size",
        detail: "a size is needed unless there is a parent".into(),
    })
}

/// A differencing disk has its parent's size: a `--size` that differs is refused.
fn check_parent_size(p: &CreateParams, parent_size: u64) -> Result<()> {
    match p.size.filter(|&s| s != parent_size) {
        Some(s) => Err(Error::InvalidOption {
            option: "size",
            detail: format!(
                "the size {s} differs from the parent's virtual size {parent_size}; a \
                 differencing disk has its parent's size"
            ),
        }),
        None => Ok(()),
    }
}

/// The VHD half of [`layout_for`].
fn layout_vhd(path: &Path, p: &CreateParams) -> Result<(NewDisk, Created)> {
    if p.logical_sector_size.is_some_and(|s| s != 512) {
        return Err(Error::InvalidArgument(
            "VHD sectors are always 512 bytes (a 4096-byte logical sector needs VHDX)".into(),
        ));
    }
    let (kind, size) = match &p.parent {
        Some(parent) => {
            let (np, size) = vhd_parent(path, parent, &p.chain)?;
            check_parent_size(p, size)?;
            (NewKind::Differencing(np), size)
        }
        None => (NewKind::without_parent(p.fixed), size_without_parent(p)?),
    };
    let new = vhd_create::NewVhd {
        kind,
        virtual_size: size,
        block_size: p.block_size.unwrap_or(vhd_create::DEFAULT_BLOCK_BYTES),
        unique_id: p.id.unwrap_or_else(Uuid::new_v4).to_bytes_le(),
        time_stamp: vhd_create::time_stamp_now(),
    };
    let disk_type = new.kind.disk_type();
    // Everything is checked before any file is made.
    let layout = vhd_create::build(&new)?;
    let created = Created {
        path: path.to_path_buf(),
        format: DiskFormat::Vhd,
        disk_type,
        virtual_size: size,
        block_size: (disk_type != DiskType::Fixed).then_some(u64::from(new.block_size)),
        id: guid::from_vhd_bytes(new.unique_id),
        file_size: layout.file_len,
        parent: p.parent.clone(),
    };
    Ok((NewDisk::Vhd(new), created))
}

/// Build `dst` under this process's partial-output name with `build`, then give it its name
/// ([`persist`]; without `overwrite`, never over an existing file; the folder is synced
/// unless `sync` is false, as for `convert --no-sync`). Errors while building name the partial
/// file, which is removed.
pub(crate) fn build_output<T>(
    dst: &Path,
    overwrite: bool,
    sync: bool,
    build: impl FnOnce(&mut File) -> Result<T>,
) -> Result<T> {
    let (guard, mut file) = start_partial(dst)?;
    let built = build(&mut file).with_path(guard.path());
    drop(file);
    let value = built?;
    persist(guard, dst, overwrite, sync)?;
    Ok(value)
}

/// The VHDX half of [`layout_for`].
fn layout_vhdx(path: &Path, p: &CreateParams) -> Result<(NewDisk, Created)> {
    let dwg = p.id.unwrap_or_else(Uuid::new_v4);
    let new = match &p.parent {
        Some(parent) => new_vhdx_child(path, parent, p, dwg)?,
        None => {
            let kind = NewKind::without_parent(p.fixed);
            let block = p
                .block_size
                .unwrap_or_else(|| vhdx_create::default_block_bytes(&kind));
            let mut n = vhdx_create::NewVhdx::new(kind, size_without_parent(p)?, block);
            n.logical_sector_size = p
                .logical_sector_size
                .unwrap_or(vhdx_create::DEFAULT_LOGICAL_SECTOR);
            n.data_write_guid = dwg;
            n
        }
    };
    // Everything is checked before any file is made.
    let layout = vhdx_create::build(&new)?;
    let created = Created {
        path: path.to_path_buf(),
        format: DiskFormat::Vhdx,
        disk_type: new.kind.disk_type(),
        virtual_size: new.virtual_size,
        block_size: Some(u64::from(new.block_size)),
        id: dwg,
        file_size: layout.file_len,
        parent: p.parent.clone(),
    };
    Ok((NewDisk::Vhdx(new), created))
}

/// A new VHDX child of `parent` at `path`: size, sector sizes and virtual disk id from the
/// parent, data write GUID `dwg`.
fn new_vhdx_child(
    path: &Path,
    parent: &Path,
    p: &CreateParams,
    dwg: Uuid,
) -> Result<vhdx_create::NewVhdx> {
    let pp = vhdx_parent(path, parent, &p.chain)?;
    check_parent_size(p, pp.size)?;
    if let Some(s) = p.logical_sector_size.filter(|&s| s != pp.logical) {
        return Err(Error::InvalidArgument(format!(
            "logical sector size {s} differs from the parent's {}; a differencing disk \
             has its parent's sector sizes",
            pp.logical
        )));
    }
    let kind = NewKind::Differencing(pp.parent);
    Ok(vhdx_create::NewVhdx {
        block_size: p
            .block_size
            .unwrap_or_else(|| vhdx_create::default_block_bytes(&kind)),
        kind,
        virtual_size: pp.size,
        logical_sector_size: pp.logical,
        physical_sector_size: pp.physical,
        virtual_disk_id: pp.virtual_disk_id,
        data_write_guid: dwg,
        file_write_guid: Uuid::new_v4(),
    })
}

/// What a new VHDX child takes from its parent.
struct VhdxParent {
    parent: vhdx_create::NewParent,
    size: u64,
    logical: u32,
    physical: u32,
    virtual_disk_id: Uuid,
}

fn vhdx_parent(child: &Path, parent: &Path, opts: &ChainOptions) -> Result<VhdxParent> {
    let chain = Chain::open(parent, opts)?;
    let top = chain
        .disks()
        .first()
        .ok_or_else(|| Error::InvalidArgument("the parent chain is empty".into()))?;
    let crate::disk::FormatInfo::Vhdx(v) = top.info().details else {
        return Err(Error::InvalidArgument(format!(
            "{} is a {} disk; a VHDX differencing disk needs a VHDX parent",
            parent.display(),
            top.format()
        )));
    };
    let (absolute, relative) = locator_paths(child, parent)?;
    Ok(VhdxParent {
        parent: vhdx_create::NewParent {
            linkage: top.identity(),
            absolute_path: absolute,
            relative_path: relative,
        },
        size: top.virtual_size(),
        logical: top.logical_sector_size(),
        physical: top.physical_sector_size(),
        virtual_disk_id: v.virtual_disk_id,
    })
}

/// The parent's absolute path (as a locator string) and its path relative to the child's
/// folder.
fn locator_paths(child: &Path, parent: &Path) -> Result<(String, Option<String>)> {
    let abs = fs::canonicalize(parent)
        .map_err(|e| Error::io("resolving the parent's absolute path", e))
        .with_path(parent)?;
    let folder = crate::sidefile::folder_of(child);
    let child_dir = fs::canonicalize(folder)
        .map_err(|e| Error::io("resolving the new disk's folder", e))
        .with_path(folder)?;
    Ok((
        display_absolute(&abs)?,
        relative_windows_path(&child_dir, &abs),
    ))
}

/// The linkage and locators of a new VHD child at `child` over `parent`, and the size.
fn vhd_parent(
    child: &Path,
    parent: &Path,
    opts: &ChainOptions,
) -> Result<(vhd_create::NewParent, u64)> {
    let chain = Chain::open(parent, opts)?;
    let top = chain
        .disks()
        .first()
        .ok_or_else(|| Error::InvalidArgument("the parent chain is empty".into()))?;
    if top.format() != DiskFormat::Vhd {
        return Err(Error::InvalidArgument(format!(
            "{} is a {} disk; a VHD differencing disk needs a VHD parent",
            parent.display(),
            top.format()
        )));
    }
    let (absolute, relative) = locator_paths(child, parent)?;
    let np = vhd_create::NewParent {
        unique_id: guid::to_vhd_bytes(&top.identity()),
        time_stamp: 0,
        unicode_name: absolute.clone(),
        absolute_path: absolute,
        relative_path: relative,
    };
    Ok((np, top.virtual_size()))
}

/// The absolute path as a locator string: on Windows without the `\\?\` prefix (as Windows
/// writes it), elsewhere the local absolute path.
fn display_absolute(p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| {
        Error::InvalidArgument(format!("parent path {} is not valid Unicode", p.display()))
    })?;
    if let Some(rest) = s.strip_prefix(r"\\?\UNC\") {
        return Ok(format!(r"\\{rest}"));
    }
    Ok(s.strip_prefix(r"\\?\").unwrap_or(s).to_string())
}

/// `target` relative to the folder `from`, with Windows separators: `.\name.vhd`,
/// `..\ref\name.vhd`. `None` when there is no relative path (different roots) or a component
/// is not Unicode or holds a `\`.
pub(crate) fn relative_windows_path(from: &Path, target: &Path) -> Option<String> {
    crate::winpath::relative_windows_path(from, target).ok()
}

/// Start building `dst` under this process's partial-output name (see [`crate::sidefile`]):
/// leftovers of killed runs on the same output are removed first, the file is created
/// exclusively, and the guard removes it on every error path.
pub(crate) fn start_partial(dst: &Path) -> Result<(PartialGuard, File)> {
    crate::sidefile::remove_stale_partials(dst);
    let tmp = crate::sidefile::partial_output(dst);
    let file = crate::fsx::create_new(&tmp)
        .map_err(|e| Error::io("creating the temporary file", e))
        .with_path(&tmp)?;
    Ok((PartialGuard::new(tmp), file))
}

/// Give the finished, synced file `tmp` the name `dst`. Without `overwrite`, fails (and removes
/// `tmp`) when `dst` exists, even if it appeared meanwhile: a hard link never replaces. With
/// `sync`, the folder is synced so that the name is durable too.
pub(crate) fn persist(guard: PartialGuard, dst: &Path, overwrite: bool, sync: bool) -> Result<()> {
    let tmp = guard.path().to_path_buf();
    let tmp = tmp.as_path();
    let result = if overwrite {
        fs::rename(tmp, dst).map_err(|e| Error::io(format!("renaming to {}", dst.display()), e))
    } else {
        match fs::hard_link(tmp, dst) {
            Ok(()) => fs::remove_file(tmp).map_err(|e| Error::io("removing the temporary name", e)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                path: dst.to_path_buf(),
            }),
            // A file system without hard links: check, then rename.
            Err(_) if fs::symlink_metadata(dst).is_ok() => Err(Error::AlreadyExists {
                path: dst.to_path_buf(),
            }),
            Err(_) => fs::rename(tmp, dst)
                .map_err(|e| Error::io(format!("renaming to {}", dst.display()), e)),
        }
    };
    result.with_path(tmp)?;
    guard.keep();
    if sync {
        sync_parent_dir(dst);
    }
    Ok(())
}

fn sync_parent_dir(p: &Path) {
    #[cfg(unix)]
    {
        if let Ok(d) = File::open(crate::sidefile::folder_of(p)) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = (p, File::open);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10gb").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size(" 2 T ").unwrap(), 2 << 40);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("1.0000000001K").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.2.3G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("-5M").is_err());
    }

    #[test]
    fn extensions() {
        assert_eq!(
            crate::disk::claimed_format(Path::new("a.VHD")),
            Some(DiskFormat::Vhd)
        );
        assert_eq!(
            crate::disk::claimed_format(Path::new("a.avhd")),
            Some(DiskFormat::Vhd)
        );
        assert_eq!(
            crate::disk::claimed_format(Path::new("a.avhdx")),
            Some(DiskFormat::Vhdx)
        );
        assert_eq!(crate::disk::claimed_format(Path::new("a.img")), None);
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_windows_path(Path::new("/a/b"), Path::new("/a/b/p.vhd")).as_deref(),
            Some(r".\p.vhd")
        );
        assert_eq!(
            relative_windows_path(Path::new("/a/b"), Path::new("/a/ref/p.vhd")).as_deref(),
            Some(r"..\ref\p.vhd")
        );
        assert_eq!(
            relative_windows_path(Path::new("/a/b"), Path::new("/a/b/sub/p.vhd")).as_deref(),
            Some(r".\sub\p.vhd")
        );
    }
}
