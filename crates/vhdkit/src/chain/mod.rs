//! Differencing chains: find each parent from the child's locators, verify the linkage, stack the
//! disks for reading.
//!
//! Locator paths are data written on some other machine: they are turned into candidate local
//! paths (relative to the child's folder first, then absolute paths through the caller's prefix
//! maps, then the parent's file name in the child's folder and in the search folders), and a
//! candidate is accepted only when the file opens and carries the identity the child records.
//!
//! `locate` turns locator strings into candidate paths (no file is touched); `resolve` tries
//! them (opening files) and checks the linkage; `confined` keeps every read of a confined
//! parent inside its folder; this module walks the chain.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::{Disk, DiskFormat, DiskType, OpenOptions};
use crate::error::{ChainBroken, Error, Result};
use crate::view::ChainView;
use crate::winpath::canonical;

mod confined;
mod locate;
mod outcome;
mod resolve;

pub(crate) use locate::{held, Held};
pub use outcome::{AttemptOutcome, LocatorKind, Via};
pub use resolve::resolve_parent;
pub(crate) use resolve::{locator_leads_to_parent, locator_target, Rejected};

/// Maps a Windows path prefix (`C:\Lab`, `\\?\Volume{GUID}\`, `\\server\share`) to a local folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    /// The Windows prefix, compared case-insensitively, separators normalised.
    pub windows_prefix: String,
    /// The local folder that stands for it.
    pub local: PathBuf,
}

impl PathMap {
    /// Parse `PREFIX=LOCAL`, as given to `--map`.
    ///
    /// # Examples
    ///
    /// ```
    /// use vhdkit::{ChainOptions, PathMap};
    ///
    /// let opts = ChainOptions::default().path_map(PathMap::parse(r"C:\Lab=/srv/lab")?);
    /// # let _ = opts;
    /// assert!(PathMap::parse("no equals sign").is_err());
    /// # Ok::<(), vhdkit::Error>(())
    /// ```
    pub fn parse(s: &str) -> Result<PathMap> {
        let (prefix, local) = s.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("map '{s}' is not of the form 'C:\\Dir=/local/dir'"))
        })?;
        if prefix.is_empty() || local.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "map '{s}' has an empty side; expected 'C:\\Dir=/local/dir'"
            )));
        }
        Ok(PathMap {
            windows_prefix: prefix.to_string(),
            local: PathBuf::from(local),
        })
    }
}

/// How to find and open parents.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ChainOptions {
    /// Options (and limits) for every disk opened.
    pub open: OpenOptions,
    /// Extra folders where a parent may be found by its file name.
    pub search_dirs: Vec<PathBuf>,
    /// Windows prefix maps, tried longest first.
    pub path_maps: Vec<PathMap>,
    /// When not empty, only parent candidates inside one of these folders (after resolving
    /// links) are opened; any other is refused by confinement (see [`ChainOptions::confine`]).
    pub confine: Vec<PathBuf>,
}

impl ChainOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a search folder.
    #[must_use]
    pub fn search_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.search_dirs.push(d.into());
        self
    }

    /// Add a Windows prefix map.
    #[must_use]
    pub fn path_map(mut self, m: PathMap) -> Self {
        self.path_maps.push(m);
        self
    }

    /// Confine parent resolution to `dir` (repeatable: the union of the folders). For untrusted
    /// images: a locator may name any file (`/etc/shadow`, `..\..\..\etc\shadow`), and a
    /// candidate is opened only when its real path (links resolved) lies inside a confining
    /// folder. Others are reported as refused by confinement, without a word about the file.
    #[must_use]
    pub fn confine(mut self, dir: impl Into<PathBuf>) -> Self {
        self.confine.push(dir.into());
        self
    }

    /// Set the open options.
    #[must_use]
    pub fn open_options(mut self, o: OpenOptions) -> Self {
        self.open = o;
        self
    }
}

/// Which recorded identity the parent matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum IdMatch {
    /// The primary linkage (VHD parent unique id, VHDX `parent_linkage`).
    Primary,
    /// VHDX `parent_linkage2`.
    Alternate,
}

/// One candidate path tried for a parent, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Attempt {
    /// The local path tried.
    pub path: PathBuf,
    /// Which locator it came from (`W2ru`, `relative_path`, `search`...).
    pub via: Via,
    /// Accepted, or why it was not.
    pub outcome: AttemptOutcome,
}

/// How a child's parent was resolved.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ParentResolution {
    /// The identity the child requires.
    pub expected_id: Uuid,
    /// The parent's path, when one was accepted.
    pub path: Option<PathBuf>,
    /// The locator (or `search`) that led to it.
    pub via: Option<Via>,
    /// Which identity matched.
    pub id_match: Option<IdMatch>,
    /// Every candidate tried, in order.
    pub tried: Vec<Attempt>,
    /// Non-fatal findings about the link (time stamp or size differences).
    pub warnings: Vec<String>,
    /// Facts about the link that need no action (a physical sector size that differs).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Vec::is_empty"))]
    pub notes: Vec<String>,
}

/// One disk of a chain report.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Link {
    /// The disk's path.
    pub path: PathBuf,
    /// Format.
    pub format: DiskFormat,
    /// Type.
    pub disk_type: DiskType,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// The disk's own identity.
    pub id: Uuid,
    /// How its parent was found (differencing disks only).
    pub parent: Option<ParentResolution>,
    /// Warnings from opening the disk.
    pub warnings: Vec<String>,
}

/// A whole chain, child first, and whether it is intact.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ChainReport {
    /// The disks found, child first.
    pub links: Vec<Link>,
    /// True when every parent was found and matched.
    pub intact: bool,
    /// Why the chain is broken, when it is (serialised as its text, `broken_reason`).
    #[cfg_attr(feature = "serde", serde(rename = "broken_reason"))]
    pub broken: Option<ChainBroken>,
}

/// An intact, opened chain.
#[derive(Debug)]
pub struct Chain {
    report: ChainReport,
    view: ChainView,
}

impl Chain {
    /// Open `path` and every parent; fails unless the chain is intact.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use std::io::Read;
    /// use vhdkit::{create, Chain, ChainOptions, CreateParams, DiskType};
    ///
    /// let base = dir.path().join("base.vhd");
    /// let child = dir.path().join("child.vhd");
    /// create(&base, &CreateParams::dynamic(8 << 20))?;
    /// create(&child, &CreateParams::differencing(&base))?;
    ///
    /// let chain = Chain::open(&child, &ChainOptions::default().search_dir("/srv/base"))?;
    /// let links = &chain.report().links;
    /// assert_eq!(links[0].disk_type, DiskType::Differencing);
    /// assert_eq!(links[1].disk_type, DiskType::Dynamic);
    /// let mut view = chain.into_view();
    /// let mut first = [0u8; 512];
    /// view.read_exact(&mut first)?;
    ///
    /// // Without its parent, the child's chain does not open.
    /// std::fs::remove_file(&base)?;
    /// assert!(matches!(
    ///     Chain::open(&child, &ChainOptions::default()),
    ///     Err(vhdkit::Error::Chain { .. })
    /// ));
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<Chain> {
        let path = path.as_ref();
        let (report, disks) = walk(path, opts)?;
        if let Some(broken) = &report.broken {
            let at = report
                .links
                .last()
                .map_or_else(|| path.to_path_buf(), |l| l.path.clone());
            return Err(Error::Chain {
                path: Some(at),
                broken: broken.clone(),
            });
        }
        Ok(Chain {
            report,
            view: ChainView::new(disks),
        })
    }

    /// Follow the chain from `path` as far as it goes and report on every link. Fails only
    /// when `path` itself cannot be opened; a broken chain is reported, not returned as an error.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use vhdkit::{create, Chain, ChainOptions, CreateParams};
    ///
    /// let base = dir.path().join("base.vhdx");
    /// let child = dir.path().join("child.avhdx");
    /// create(&base, &CreateParams::dynamic(8 << 20))?;
    /// create(&child, &CreateParams::differencing(&base))?;
    /// std::fs::rename(&base, dir.path().join("moved.vhdx"))?;
    ///
    /// let report = Chain::inspect(&child, &ChainOptions::default())?;
    /// assert!(!report.intact);
    /// println!("broken: {}", report.broken.as_ref().map(ToString::to_string).unwrap_or_default());
    /// // Every path tried for the parent, and why each was rejected.
    /// for attempt in &report.links[0].parent.as_ref().unwrap().tried {
    ///     println!("{} via {}: {}", attempt.path.display(), attempt.via, attempt.outcome);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn inspect(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<ChainReport> {
        walk(path.as_ref(), opts).map(|(r, _)| r)
    }

    /// [`Chain::inspect`] with the first disk, the file at `path`, already parsed.
    pub(crate) fn inspect_parsed(
        first: Disk,
        path: &Path,
        opts: &ChainOptions,
    ) -> Result<ChainReport> {
        walk_from(first, path, opts).map(|(r, _)| r)
    }

    /// The report on the chain.
    pub fn report(&self) -> &ChainReport {
        &self.report
    }

    /// The disks, child first.
    pub fn disks(&self) -> &[Disk] {
        self.view.layers()
    }

    /// A `Read + Seek` view of the virtual disk through the whole chain.
    pub fn into_view(self) -> ChainView {
        self.view
    }
}

fn walk(path: &Path, opts: &ChainOptions) -> Result<(ChainReport, Vec<Disk>)> {
    walk_from(Disk::open_with(path, &opts.open)?, path, opts)
}

fn walk_from(first: Disk, path: &Path, opts: &ChainOptions) -> Result<(ChainReport, Vec<Disk>)> {
    let max_depth = opts.open.limits.max_chain_depth.max(1);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    seen.insert(canonical(path));
    let mut links = Vec::new();
    let mut disks = Vec::new();
    let mut current = first;
    let mut current_path = path.to_path_buf();
    let mut broken = None;
    loop {
        let mut link = Link {
            path: current_path.clone(),
            format: current.format(),
            disk_type: current.disk_type(),
            virtual_size: current.virtual_size(),
            id: current.identity(),
            parent: None,
            warnings: current.warnings(),
        };
        let Some(linkage) = current.parent_linkage() else {
            links.push(link);
            disks.push(current);
            break;
        };
        if links.len() + 1 >= max_depth {
            broken = Some(ChainBroken::TooDeep { limit: max_depth });
            links.push(link);
            disks.push(current);
            break;
        }
        let (resolution, parent) = resolve_parent(&current, &current_path, opts)?;
        let next = match (parent, &resolution.path) {
            (Some(p), Some(pp)) => {
                if !seen.insert(canonical(pp)) {
                    broken = Some(ChainBroken::Loop {
                        child: current_path.clone(),
                        parent: pp.clone(),
                    });
                    None
                } else {
                    Some((p, pp.clone()))
                }
            }
            _ => {
                broken = Some(ChainBroken::ParentNotFound {
                    child: current_path.clone(),
                    expected_id: linkage.id,
                    attempts: resolution.tried.clone(),
                });
                None
            }
        };
        link.parent = Some(resolution);
        links.push(link);
        disks.push(current);
        match next {
            Some((p, pp)) => {
                current = p;
                current_path = pp;
            }
            None => break,
        }
    }
    let intact = broken.is_none();
    Ok((
        ChainReport {
            links,
            intact,
            broken,
        },
        disks,
    ))
}
