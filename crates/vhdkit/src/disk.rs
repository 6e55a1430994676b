//! The format-neutral disk: open a VHD or VHDX file, learn what it is, map its virtual blocks.
//!
//! A [`Disk`] is one file. It knows its own blocks only; reading through a differencing chain is
//! the job of [`crate::Chain`] and [`crate::ChainView`], which stack disks and ask each one, via
//! [`Disk::map`], which byte ranges it holds.

use std::fmt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::error::{Error, Result, ResultExt};
use crate::limits::Limits;
use crate::source::{source_len, Source};
use crate::{vhd, vhdx};

/// The container format of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DiskFormat {
    /// VHD version 1 ("conectix").
    Vhd,
    /// VHDX.
    Vhdx,
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
        })
    }
}

/// How the virtual disk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum DiskType {
    /// Every block is allocated up front.
    Fixed,
    /// Blocks are allocated on first write; unallocated blocks read as zeros.
    Dynamic,
    /// Blocks not held by this file are read from a parent disk.
    Differencing,
}

impl fmt::Display for DiskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        })
    }
}

/// What one disk file holds for a range of the virtual disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// The bytes are stored in this file, contiguously, starting at `file_offset`.
    Data {
        /// Absolute offset in the file of the first byte of the range.
        file_offset: u64,
    },
    /// The range reads as zeros, whatever the parent holds (VHDX `PAYLOAD_BLOCK_ZERO`,
    /// `UNMAPPED`, `UNDEFINED`).
    Zero,
    /// This file holds nothing for the range: a differencing disk reads it from its parent, any
    /// other disk reads zeros.
    Unallocated,
}

impl Extent {
    /// A run of a block's sector bitmap, `len` bytes: stored from `file_offset` when its
    /// sectors are present, else held by nothing in this file.
    pub(crate) fn bitmap_run(present: bool, file_offset: u64, len: u64) -> (Extent, u64) {
        if present {
            (Extent::Data { file_offset }, len)
        } else {
            (Extent::Unallocated, len)
        }
    }
}

/// How a locator's path is to be interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum PathStyle {
    /// Relative to the child's folder, Windows separators (`.\parent.vhd`, `..\base\p.vhdx`).
    Relative,
    /// An absolute Windows path (`C:\Lab\p.vhd`, `\\?\C:\...`, `\\server\share\...`).
    AbsoluteWindows,
    /// A Windows volume path (`\\?\Volume{GUID}\dir\p.vhdx`).
    Volume,
    /// A `file://` URL (VHD `MacX`).
    FileUrl,
    /// A bare name or a path of unknown style (VHD parent unicode name).
    Name,
    /// Not a path vhdkit can use (VHD `Mac ` alias records).
    Opaque,
}

/// One way a differencing disk names its parent, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ParentLocator {
    /// The spec's name: `W2ru`, `W2ku`, `Wi2r`, `Wi2k`, `MacX`, `Mac`, `parent_name` for VHD;
    /// `relative_path`, `volume_path`, `absolute_win32_path` for VHDX.
    pub kind: crate::chain::LocatorKind,
    /// The decoded path, or `None` when the data could not be decoded.
    pub path: Option<String>,
    /// How to interpret `path`.
    pub style: PathStyle,
    /// Absolute file offset of the locator's data, when it has its own.
    pub file_offset: Option<u64>,
    /// Why the data could not be decoded, when it could not.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

/// How a differencing disk identifies its parent, and where it says to look for it (the
/// parent part of [`DiskInfo`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ParentLinkage {
    /// The identity the parent must have ([`Disk::identity`] of the parent): VHD parent unique
    /// id; VHDX `parent_linkage` (the parent's DataWriteGuid).
    pub id: Uuid,
    /// VHDX `parent_linkage2`, when present and not all zeros: a second accepted identity.
    pub alternate_id: Option<Uuid>,
    /// VHD parent time stamp (seconds since 2000-01-01 UTC); 0 when the writer left it empty.
    pub timestamp: Option<u32>,
    /// The parent locators, in the order they should be tried ([`Disk::parent_locators`]).
    pub locators: Vec<ParentLocator>,
}

/// Options for opening a disk.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Resource limits.
    pub limits: Limits,
    /// Record every read of one file's own bytes (a reparent's new parent, whose chain is opened
    /// with these options), so a writer can re-check under its lock, without parsing it again,
    /// that the file is still the one planned on.
    pub(crate) record: Option<Recorded>,
}

/// The file whose reads [`OpenOptions::record`] records, and where.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// The file, canonical.
    pub(crate) path: PathBuf,
    /// Its reads.
    pub(crate) reads: crate::readset::ReadSet,
}

impl OpenOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the limits.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Format-specific facts, for `info`.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(untagged))]
#[non_exhaustive]
pub enum FormatInfo {
    /// VHD facts.
    Vhd(vhd::VhdInfo),
    /// VHDX facts.
    Vhdx(vhdx::VhdxInfo),
}

/// Everything `vhdkit info` shows about one file.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DiskInfo {
    /// The file, when opened from a path.
    pub path: Option<PathBuf>,
    /// Container format.
    pub format: DiskFormat,
    /// Storage type.
    pub disk_type: DiskType,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes (`None` for a fixed VHD, which has no blocks).
    pub block_size: Option<u64>,
    /// Logical sector size in bytes (always 512 for VHD).
    pub logical_sector_size: u32,
    /// Physical sector size in bytes (always 512 for VHD).
    pub physical_sector_size: u32,
    /// The identity children link to: VHD unique id; VHDX DataWriteGuid.
    pub id: Uuid,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// The parent linkage and locators, for a differencing disk.
    pub parent: Option<ParentLinkage>,
    /// Things that are wrong but did not stop the open (a damaged redundant copy, a replayed log).
    pub warnings: Vec<String>,
    /// Format-specific facts.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub details: FormatInfo,
}

/// The per-format implementation behind a [`Disk`]. Both formats implement it; the rest of the
/// crate sees only this.
pub(crate) trait Image: Send + Sync + fmt::Debug {
    /// The description the writable open shares (see [`crate::view::Shape`]).
    fn shape(&self) -> crate::view::Shape;
    fn logical_sector_size(&self) -> u32;
    fn physical_sector_size(&self) -> u32;
    /// See [`Disk::identity`].
    fn identity(&self) -> Uuid;
    fn parent_linkage(&self) -> Option<ParentLinkage>;
    /// Locators in the order the format says to try them.
    fn parent_locators(&self) -> Vec<ParentLocator>;
    /// See [`Disk::map`]. Called only with `offset < virtual_size` and `max_len > 0`.
    fn map(&self, offset: u64, max_len: u64) -> Result<(Extent, u64)>;
    fn details(&self) -> FormatInfo;
    /// What every format keeps alike, so the accessors below are written once.
    fn parts(&self) -> ImageParts<'_>;
    /// Read file bytes at `file_offset` (after any in-memory log overlay).
    fn read_data(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        let p = self.parts();
        crate::source::read_struct(p.src, file_offset, buf, p.data)
    }
    fn file_size(&self) -> u64 {
        self.parts().file_size
    }
    fn warnings(&self) -> Vec<String> {
        self.parts().warnings.to_vec()
    }
}

/// The parts of an opened image every format has: the source data is read from (after any
/// in-memory log overlay), the structure name its data reads are reported under, the real
/// file size and the warnings of the open.
pub(crate) struct ImageParts<'a> {
    src: &'a dyn Source,
    data: &'static str,
    file_size: u64,
    warnings: &'a [String],
}

impl<'a> ImageParts<'a> {
    pub(crate) fn new(
        src: &'a dyn Source,
        data: &'static str,
        file_size: u64,
        warnings: &'a [String],
    ) -> Self {
        ImageParts {
            src,
            data,
            file_size,
            warnings,
        }
    }
}

/// One VHD or VHDX file, opened read-only.
#[derive(Debug)]
pub struct Disk {
    image: Parsed,
    path: Option<PathBuf>,
    /// Warnings about the file's surroundings (a pending or foreign journal beside it).
    extra_warnings: Vec<String>,
}

/// The parsed file behind a [`Disk`], by format: a writer that planned on a [`Disk`] takes its
/// model from here instead of parsing the file again.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A VHD file.
    Vhd(Box<vhd::VhdFile>),
    /// A VHDX file.
    Vhdx(Box<vhdx::VhdxFile>),
}

const VHDX_SIGNATURE: &[u8; 8] = b"vhdxfile";

/// The bytes of the file at `path` as a read-only source, with a pending vhdkit journal's change
/// laid over it in memory (see [`Disk::open_with`]), and the warning to show about the journal.
pub fn open_source(path: impl AsRef<Path>) -> Result<(Box<dyn Source>, Option<String>)> {
    let path = path.as_ref();
    open_source_recorded(path, None)
}

/// [`open_source`], with every read of the file itself (under the journal overlay) recorded in
/// `reads`, so a writer can re-check under its lock the bytes a plan was made on.
pub fn open_source_recorded(
    path: &Path,
    reads: Option<&crate::readset::ReadSet>,
) -> Result<(Box<dyn Source>, Option<String>)> {
    let file = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e))
        .with_path(path)?;
    let journal = crate::txn::journal::FileJournal::for_disk(path);
    Ok(source_over(file, &journal, reads))
}

/// `file` as a source, with the pending change of its `journal` laid over it.
fn source_over(
    file: std::fs::File,
    journal: &dyn crate::txn::journal::JournalStore,
    reads: Option<&crate::readset::ReadSet>,
) -> (Box<dyn Source>, Option<String>) {
    let raw: Box<dyn Source> = match reads {
        Some(r) => r.wrap(Box::new(file)),
        None => Box::new(file),
    };
    crate::txn::journal::overlay_pending(raw, journal)
}

/// Where reads of the file at `path` are recorded, when `opts` asks for that file.
fn recorded_reads<'o>(path: &Path, opts: &'o OpenOptions) -> Option<&'o crate::readset::ReadSet> {
    let r = opts.record.as_ref()?;
    let canon = std::fs::canonicalize(path).ok()?;
    (canon == r.path).then_some(&r.reads)
}

/// Which format the bytes are in, by signature (never by file name).
pub fn detect(src: &dyn Source) -> Result<DiskFormat> {
    let len = source_len(src)?;
    let mut head = [0u8; 8];
    if len >= 8 {
        src.read_exact_at(&mut head, 0)
            .map_err(|e| Error::io("reading the file signature", e))?;
        if &head == VHDX_SIGNATURE {
            return Ok(DiskFormat::Vhdx);
        }
    }
    if vhd::looks_like_vhd(src, len)? {
        return Ok(DiskFormat::Vhd);
    }
    // Nothing about a file that is not a disk (its size, its bytes) goes into the message: the
    // file may be a secret a hostile locator pointed at.
    Err(Error::NotADisk {
        path: None,
        detail: "no 'vhdxfile' signature and no 'conectix' footer".into(),
    })
}

/// The format a file name claims by its extension (`.vhd`, `.avhd`: VHD; `.vhdx`, `.avhdx`:
/// VHDX; any case), or `None` for a name that claims nothing.
pub(crate) fn claimed_format(path: impl AsRef<Path>) -> Option<DiskFormat> {
    let path = path.as_ref();
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "vhd" | "avhd" => Some(DiskFormat::Vhd),
        "vhdx" | "avhdx" => Some(DiskFormat::Vhdx),
        _ => None,
    }
}

impl Disk {
    /// Open a disk file read-only with default options.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("disk.vhdx");
    /// # vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
    /// use vhdkit::{Disk, DiskFormat};
    ///
    /// let disk = Disk::open(&path)?;
    /// let info = disk.info();
    /// assert_eq!(info.format, DiskFormat::Vhdx);
    /// assert_eq!(info.virtual_size, 8 << 20);
    /// assert!(disk.warnings().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Open a disk file read-only.
    ///
    /// When a vhdkit journal of an interrupted change lies beside the file
    /// (`<file>.vhdkit-journal`) and matches it, the disk is shown as if the change had
    /// completed (an in-memory overlay; nothing is written) and a warning says so. A journal
    /// that does not match is ignored, with a warning.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Disk> {
        let path = path.as_ref();
        #[cfg(test)]
        crate::parse_count::note(path);
        let reads = recorded_reads(path, opts);
        let (src, warning) = open_source_recorded(path, reads)?;
        Self::from_opened(path, src, warning, opts)
    }

    /// [`Disk::open_with`] on a file the caller opened from `path` itself, with its `journal`
    /// read where the caller says (a confined parent candidate: both beneath its confining
    /// folder).
    pub(crate) fn open_file_with(
        path: &Path,
        file: std::fs::File,
        journal: &dyn crate::txn::journal::JournalStore,
        opts: &OpenOptions,
    ) -> Result<Disk> {
        #[cfg(test)]
        crate::parse_count::note(path);
        let reads = recorded_reads(path, opts);
        let (src, warning) = source_over(file, journal, reads);
        Self::from_opened(path, src, warning, opts)
    }

    fn from_opened(
        path: &Path,
        src: Box<dyn Source>,
        warning: Option<String>,
        opts: &OpenOptions,
    ) -> Result<Disk> {
        let mut disk = Self::from_source(src, opts).with_path(path)?;
        disk.path = Some(path.to_path_buf());
        disk.extra_warnings.extend(warning);
        Ok(disk)
    }

    /// Open a disk from any `Read + Seek` (a network stream, a decompressor that can seek):
    /// [`Disk::from_source`] over it, reads serialised by a mutex. See there for an example.
    pub fn from_reader(
        r: impl std::io::Read + std::io::Seek + Send + std::fmt::Debug + 'static,
        opts: &OpenOptions,
    ) -> Result<Disk> {
        Self::from_source(Box::new(crate::source::SeekSource::new(r)), opts)
    }

    /// Open a disk from any byte source (a buffer, a file; [`Disk::from_reader`] for a reader).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("disk.vhd");
    /// # vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
    /// use std::io::Cursor;
    /// use vhdkit::{Disk, OpenOptions};
    ///
    /// // From bytes in memory...
    /// let bytes: Vec<u8> = std::fs::read(&path)?;
    /// let disk = Disk::from_source(Box::new(bytes.clone()), &OpenOptions::default())?;
    /// assert_eq!(disk.virtual_size(), 8 << 20);
    /// // ...or from any `Read + Seek`.
    /// let disk = Disk::from_reader(Cursor::new(bytes), &OpenOptions::default())?;
    /// assert_eq!(disk.path(), None);
    ///
    /// // Anything else is not a disk, and says so.
    /// let err = Disk::from_source(Box::new(vec![0u8; 4096]), &OpenOptions::default()).unwrap_err();
    /// assert!(matches!(err, vhdkit::Error::NotADisk { .. }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_source(src: Box<dyn Source>, opts: &OpenOptions) -> Result<Disk> {
        let image = match detect(&*src)? {
            DiskFormat::Vhd => Parsed::Vhd(Box::new(vhd::VhdFile::open(src, opts)?)),
            DiskFormat::Vhdx => Parsed::Vhdx(Box::new(vhdx::VhdxFile::open(src, opts)?)),
        };
        Ok(Disk {
            image,
            path: None,
            extra_warnings: Vec::new(),
        })
    }

    /// The path the disk was opened from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn image(&self) -> &dyn Image {
        match &self.image {
            Parsed::Vhd(f) => &**f,
            Parsed::Vhdx(f) => &**f,
        }
    }

    /// The parsed file itself, for a writer that planned on this disk.
    pub(crate) fn into_parsed(self) -> Parsed {
        self.image
    }

    /// Container format.
    pub fn format(&self) -> DiskFormat {
        self.image().shape().format
    }

    /// Storage type.
    pub fn disk_type(&self) -> DiskType {
        self.image().shape().disk_type
    }

    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.image().shape().virtual_size
    }

    /// Block size in bytes; `None` for a fixed VHD.
    pub fn block_size(&self) -> Option<u64> {
        self.image().shape().block_size
    }

    /// Logical sector size in bytes.
    pub fn logical_sector_size(&self) -> u32 {
        self.image().logical_sector_size()
    }

    /// Physical sector size in bytes.
    pub fn physical_sector_size(&self) -> u32 {
        self.image().physical_sector_size()
    }

    /// The identity that children of this disk record as their parent's: the VHD footer's
    /// unique id, or the VHDX current header's DataWriteGuid.
    pub fn identity(&self) -> Uuid {
        self.image().identity()
    }

    /// How this disk identifies and locates its parent; `None` unless it is a differencing
    /// disk.
    pub fn parent_linkage(&self) -> Option<ParentLinkage> {
        self.image().parent_linkage()
    }

    /// The parent locators, in the order they should be tried.
    pub fn parent_locators(&self) -> Vec<ParentLocator> {
        self.image().parent_locators()
    }

    /// Problems that did not stop the open (a damaged redundant copy, a log replayed in memory).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.extra_warnings.clone();
        w.extend(self.image().warnings());
        w
    }

    /// What this file holds for the virtual range starting at `offset`: the extent kind and how
    /// many bytes (at least 1, at most `max_len`) it covers. Runs never cross a block boundary.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("disk.vhdx");
    /// # vhdkit::create(&path, &vhdkit::CreateParams::dynamic(8 << 20))?;
    /// use vhdkit::{Disk, Extent};
    ///
    /// // A new dynamic disk holds no data yet: its first run is unallocated.
    /// let disk = Disk::open(&path)?;
    /// let (extent, len) = disk.map(0, disk.virtual_size())?;
    /// assert_eq!(extent, Extent::Unallocated);
    /// assert!(len > 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map(&self, offset: u64, max_len: u64) -> Result<(Extent, u64)> {
        let size = self.virtual_size();
        if offset >= size || max_len == 0 {
            return Err(Error::InvalidArgument(format!(
                "map of {max_len} bytes at {offset:#x} outside a virtual disk of {size} bytes"
            )));
        }
        let max_len = max_len.min(size - offset);
        let (extent, len) = self.image().map(offset, max_len)?;
        if len == 0 || len > max_len {
            // A format mapper that breaks its contract must not send the reader into a loop.
            return Err(Error::internal(format!(
                "block map at {offset:#x}: mapper returned a run of {len} bytes for a request of \
                 {max_len}"
            )));
        }
        Ok((extent, len))
    }

    /// Read bytes of the file (not the virtual disk) at `file_offset`.
    pub(crate) fn read_data(&self, file_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.image().read_data(file_offset, buf)
    }

    /// The open file data is read from, when reads go straight to it (no journal overlay and
    /// no in-memory log replay) and `len` bytes at `file_offset` lie inside it as opened: what
    /// a conversion may clone from (elsewhere the read reports what is wrong).
    pub(crate) fn data_file(&self, file_offset: u64, len: u64) -> Option<&std::fs::File> {
        let p = self.image().parts();
        let end = file_offset.checked_add(len)?;
        (end <= p.file_size).then_some(())?;
        p.src.as_file()
    }

    /// Everything about this file, for display.
    pub fn info(&self) -> DiskInfo {
        let parent = self.parent_linkage();
        DiskInfo {
            path: self.path.clone(),
            format: self.format(),
            disk_type: self.disk_type(),
            virtual_size: self.virtual_size(),
            block_size: self.block_size(),
            logical_sector_size: self.logical_sector_size(),
            physical_sector_size: self.physical_sector_size(),
            id: self.identity(),
            file_size: self.image().file_size(),
            parent,
            warnings: self.warnings(),
            details: self.image().details(),
        }
    }

    /// A `Read + Seek` view of this one file's virtual disk, with no parent: a differencing
    /// disk's unallocated ranges read as zeros. Use [`crate::Chain`] to read through parents.
    pub fn view(self) -> crate::ChainView {
        crate::ChainView::new(vec![self])
    }
}

impl Disk {
    /// The disk at `path` from a model parsed elsewhere: a plan's simulated result, once the
    /// apply left the file exactly as simulated (no journal beside it, so no warning about one).
    pub(crate) fn from_parsed(image: Parsed, path: &Path) -> Disk {
        Disk {
            image,
            path: Some(path.to_path_buf()),
            extra_warnings: Vec::new(),
        }
    }
}
