//! Walk folders for VHD/VHDX files (by signature, never by name), open each, and resolve every
//! differencing disk's parent.
//!
//! The walk ([`crate::tree`]) never follows symlinked folders (no loops), is bounded in depth and
//! in entries, sorts entries so results are deterministic, and reports every path it could not
//! inspect. Symlinked *files* that lead to a disk are
//! recorded as links (the `mklink` setups `share` replaces). Hard links to one file are one disk
//! with several names. A file that has a disk signature but fails to open is skipped with the
//! reason. vhdkit's own journal and temporary files are ignored.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chain::{resolve_parent, ChainOptions, Via};
use crate::disk::{Disk, DiskFormat, DiskType};
use crate::error::{Error, Result};
use crate::tree::{self, FoundDisk, Uninspected, WalkLimits};

use super::{NoteReason, PathNote};

/// A file identity that survives renames and sees hard links as one file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey(Vec<u8>);

/// The identity of the file at `path` (metadata followed through symlinks).
pub fn file_key(path: &Path, meta: &fs::Metadata) -> FileKey {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        let mut v = meta.dev().to_le_bytes().to_vec();
        v.extend(meta.ino().to_le_bytes());
        FileKey(v)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        let c = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        FileKey(c.to_string_lossy().to_lowercase().into_bytes())
    }
}

/// Bytes a file occupies on disk: allocated blocks where the OS tells, else its length.
pub fn allocated(meta: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// How a differencing disk's parent resolved.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ParentRef {
    /// The identity the parent must have.
    pub expected_id: Uuid,
    /// A second accepted identity (VHDX `parent_linkage2`).
    pub alternate_id: Option<Uuid>,
    /// The path the resolver accepted (may be a symlink, or a hard-link name).
    pub resolved: Option<PathBuf>,
    /// The real file behind it (symlinks resolved).
    pub resolved_real: Option<PathBuf>,
    /// Which locator (or `search`) led to it.
    pub via: Option<Via>,
    /// True when the accepted path is itself a symlink.
    pub via_symlink: bool,
    /// Why it did not resolve, when it did not.
    pub failure: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) resolved_key: Option<FileKey>,
    /// Whether the locator that led to the parent holds a relative path, judged by what it
    /// holds rather than by its slot (vhd-lib writes relative paths in `W2ku` and the parent
    /// name; VirtualBox 2.x absolute ones in `W2ru`).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) via_relative_path: bool,
}

impl ParentRef {
    /// True when the parent was found through a locator that holds a relative path (whatever
    /// its slot) and not through a symlink.
    pub fn via_relative(&self) -> bool {
        self.resolved.is_some() && !self.via_symlink && self.via_relative_path
    }
}

/// Whether `disk`'s locator named `via` holds a relative path (see [`ParentRef::via_relative`]).
fn locator_is_relative(disk: &Disk, via: Option<&Via>) -> bool {
    let Some(kind) = via.and_then(Via::locator) else {
        return false;
    };
    disk.parent_locators().iter().any(|l| {
        l.kind == *kind
            && l.path
                .as_deref()
                .and_then(|p| crate::chain::held(p, l.style))
                .is_some_and(|h| matches!(h, crate::chain::Held::Relative(_)))
    })
}

/// One disk found.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ScannedDisk {
    /// Its path (the first name found).
    pub path: PathBuf,
    /// Every name found for this file (hard links), `path` first.
    pub names: Vec<PathBuf>,
    /// Format.
    pub format: DiskFormat,
    /// Type.
    pub disk_type: DiskType,
    /// Virtual size.
    pub virtual_size: u64,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// The identity children record (VHD unique id, VHDX DataWriteGuid).
    pub id: Uuid,
    /// File size in bytes.
    pub file_size: u64,
    /// Bytes allocated to it on disk (what `du` counts; holes are free).
    pub allocated: u64,
    /// True when a vhdkit journal lies beside it (an interrupted change).
    pub pending_journal: bool,
    /// True when the disk lies outside the scanned folders (a parent found elsewhere).
    pub outside: bool,
    /// Its parent, for a differencing disk.
    pub parent: Option<ParentRef>,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) key: FileKey,
}

/// A symlink to a disk file.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub(crate) struct Symlink {
    /// The link.
    pub path: PathBuf,
    /// The real file it leads to.
    #[cfg_attr(not(feature = "serde"), allow(dead_code))] // shown in --json plans only
    pub target: PathBuf,
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) key: FileKey,
}

/// Everything a scan found.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Scan {
    /// The folders walked (canonical).
    pub roots: Vec<PathBuf>,
    /// Disks, in walk order (then parents found outside the roots).
    pub disks: Vec<ScannedDisk>,
    /// Files with a disk signature that could not be used.
    pub skipped: Vec<PathNote>,
    /// Symlinks to disk files.
    pub symlinks: Vec<Symlink>,
    /// Notes.
    pub notes: Vec<String>,
    /// Paths under the roots that could not be inspected (each may hide a disk).
    pub uninspected: Vec<Uninspected>,
    /// Directory entries looked at.
    pub entries: usize,
}

impl Scan {
    /// The disk with this file identity.
    pub(crate) fn by_key(&self) -> HashMap<FileKey, usize> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| (d.key.clone(), i))
            .collect()
    }

    /// How many ancestors disk `i` has (following resolved parents inside the scan).
    pub fn ancestors(&self, i: usize) -> usize {
        let idx = self.by_key();
        let mut n = 0;
        let mut cur = i;
        while let Some(k) = self
            .disks
            .get(cur)
            .and_then(|d| d.parent.as_ref())
            .and_then(|p| p.resolved_key.as_ref())
        {
            match idx.get(k) {
                Some(&j) if n < 1024 => {
                    n += 1;
                    cur = j;
                }
                _ => {
                    n += 1;
                    break;
                }
            }
        }
        n
    }
}

fn is_ours(name: &str) -> bool {
    crate::sidefile::is_side_file(name)
}

/// Walk `roots` (recursively), open every disk, resolve every parent. `on_file` is called once
/// per disk opened (for progress). Paths that cannot be inspected are in `uninspected`.
pub fn scan(
    roots: &[PathBuf],
    chain: &ChainOptions,
    wl: &WalkLimits,
    on_file: &mut dyn FnMut(&Path),
) -> Result<Scan> {
    let mut out = Scan::default();
    let mut index: HashMap<FileKey, usize> = HashMap::new();
    for root in roots {
        let root = fs::canonicalize(root)
            .map_err(|e| Error::io("opening the folder", e).with_path(root))?;
        if out.roots.contains(&root) {
            continue;
        }
        out.roots.push(root.clone());
        // A name that claims a disk is opened even without a signature, so that a `.vhdx`
        // that is not one is reported as skipped rather than passed over.
        let select = tree::Select {
            ignore: &is_ours,
            also: &|p| crate::disk::claimed_format(p).is_some(),
        };
        let w = tree::walk(&root, wl, &select)?;
        out.entries += w.entries;
        out.uninspected.extend(w.uninspected);
        for l in w.links {
            let target = fs::canonicalize(&l.path).unwrap_or_else(|_| l.path.clone());
            out.symlinks.push(Symlink {
                key: file_key(&l.path, &l.meta),
                path: l.path,
                target,
            });
        }
        for FoundDisk { path, meta } in w.disks {
            let key = file_key(&path, &meta);
            if let Some(&i) = index.get(&key) {
                if let Some(d) = out.disks.get_mut(i) {
                    d.names.push(path);
                }
                continue;
            }
            on_file(&path);
            match open_one(&path, key.clone(), &meta, chain, false) {
                Ok(d) => {
                    index.insert(key, out.disks.len());
                    out.disks.push(d);
                }
                Err(e) => out.skipped.push(PathNote::new(
                    path,
                    NoteReason::Error(e.to_string().replace('\n', " ")),
                )),
            }
        }
    }
    finish(out, index, chain)
}

/// Add parents that lie outside the roots (each opened once).
fn finish(mut out: Scan, mut index: HashMap<FileKey, usize>, chain: &ChainOptions) -> Result<Scan> {
    let mut i = 0;
    while i < out.disks.len() {
        let pr = out.disks.get(i).and_then(|d| d.parent.clone());
        if let Some(ParentRef {
            resolved_real: Some(real),
            resolved_key: Some(k),
            ..
        }) = pr
        {
            if let std::collections::hash_map::Entry::Vacant(slot) = index.entry(k.clone()) {
                if let Ok(meta) = fs::metadata(&real) {
                    if let Ok(d) = open_one(&real, k, &meta, chain, true) {
                        slot.insert(out.disks.len());
                        out.disks.push(d);
                    }
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

fn open_one(
    path: &Path,
    key: FileKey,
    meta: &fs::Metadata,
    chain: &ChainOptions,
    outside: bool,
) -> Result<ScannedDisk> {
    let disk = Disk::open_with(path, &chain.open)?;
    let parent = match disk.parent_linkage() {
        None => None,
        Some(l) => {
            let (res, _p) = resolve_parent(&disk, path, chain)?;
            let via_symlink = res
                .path
                .as_ref()
                .and_then(|p| fs::symlink_metadata(p).ok())
                .is_some_and(|m| m.file_type().is_symlink());
            let resolved_real = res
                .path
                .as_ref()
                .map(|p| fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
            let resolved_key = res
                .path
                .as_ref()
                .and_then(|p| fs::metadata(p).ok().map(|m| file_key(p, &m)));
            let failure = res.path.is_none().then(|| {
                let tried: Vec<String> = res
                    .tried
                    .iter()
                    .map(|a| format!("{} ({}: {})", a.path.display(), a.via, a.outcome))
                    .collect();
                if tried.is_empty() {
                    "no usable locator".to_string()
                } else {
                    format!("tried {}", tried.join("; "))
                }
            });
            Some(ParentRef {
                expected_id: l.id,
                alternate_id: l.alternate_id,
                resolved: res.path.clone(),
                resolved_real,
                via_relative_path: locator_is_relative(&disk, res.via.as_ref()),
                via: res.via.clone(),
                via_symlink,
                failure,
                resolved_key,
            })
        }
    };
    Ok(ScannedDisk {
        path: path.to_path_buf(),
        names: vec![path.to_path_buf()],
        format: disk.format(),
        disk_type: disk.disk_type(),
        virtual_size: disk.virtual_size(),
        logical_sector_size: disk.logical_sector_size(),
        id: disk.identity(),
        file_size: meta.len(),
        allocated: allocated(meta),
        pending_journal: crate::fsx::entry_exists(&crate::sidefile::journal(path)),
        outside,
        parent,
        key,
    })
}
