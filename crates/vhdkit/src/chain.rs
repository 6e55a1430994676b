//! Differencing chains: find each parent from the child's locators, verify the linkage, stack the
//! disks for reading.
//!
//! Locator paths are data written on some other machine: they are turned into candidate local
//! paths (relative to the child's folder first, then absolute paths through the caller's prefix
//! maps, then the parent's file name in the child's folder and in the search folders), and a
//! candidate is accepted only when the file opens and carries the identity the child records.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::disk::{Disk, DiskFormat, DiskType, OpenOptions, ParentLocator, PathStyle};
use crate::error::{Error, Result};
use crate::view::ChainView;

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

    /// If `win_path` starts with this prefix (at a component boundary), the local path.
    fn apply(&self, win_path: &str) -> Option<PathBuf> {
        let prefix = win_components(strip_verbatim(&self.windows_prefix));
        let path = win_components(strip_verbatim(win_path));
        if prefix.is_empty() || path.len() < prefix.len() {
            return None;
        }
        let matches = prefix
            .iter()
            .zip(&path)
            .all(|(a, b)| a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase());
        if !matches {
            return None;
        }
        let mut out = self.local.clone();
        for c in path.get(prefix.len()..).unwrap_or_default() {
            out.push(c);
        }
        Some(out)
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
pub enum IdMatch {
    /// The primary linkage (VHD parent unique id, VHDX `parent_linkage`).
    Primary,
    /// VHDX `parent_linkage2`.
    Alternate,
}

/// One candidate path tried for a parent, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Attempt {
    /// The local path tried.
    pub path: PathBuf,
    /// Which locator it came from (`W2ru`, `relative_path`, `search`...).
    pub via: String,
    /// `"accepted"`, or why it was not.
    pub outcome: String,
}

/// How a child's parent was resolved.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ParentResolution {
    /// The identity the child requires.
    pub expected_id: Uuid,
    /// The parent's path, when one was accepted.
    pub path: Option<PathBuf>,
    /// The locator (or `search`) that led to it.
    pub via: Option<String>,
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
pub struct ChainReport {
    /// The disks found, child first.
    pub links: Vec<Link>,
    /// True when every parent was found and matched.
    pub intact: bool,
    /// Why the chain is broken, when it is.
    pub broken_reason: Option<String>,
}

/// An intact, opened chain.
#[derive(Debug)]
pub struct Chain {
    report: ChainReport,
    view: ChainView,
}

impl Chain {
    /// Open `path` and every parent; fails unless the chain is intact.
    pub fn open(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<Chain> {
        let path = path.as_ref();
        let (report, disks) = walk(path, opts)?;
        if let Some(reason) = &report.broken_reason {
            let at = report
                .links
                .last()
                .map_or_else(|| path.to_path_buf(), |l| l.path.clone());
            return Err(Error::Chain {
                path: Some(at),
                detail: reason.clone(),
            });
        }
        Ok(Chain {
            report,
            view: ChainView::new(disks),
        })
    }

    /// Follow the chain from `path` as far as it goes and report on every link. Fails only
    /// when `path` itself cannot be opened; a broken chain is reported, not returned as an error.
    pub fn inspect(path: impl AsRef<Path>, opts: &ChainOptions) -> Result<ChainReport> {
        walk(path.as_ref(), opts).map(|(r, _)| r)
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
    let max_depth = opts.open.limits.max_chain_depth.max(1);
    let first = Disk::open_with(path, &opts.open)?;
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
            broken = Some(format!(
                "chain deeper than {max_depth} disks (the limit); a loop or a hostile chain?"
            ));
            links.push(link);
            disks.push(current);
            break;
        }
        let (resolution, parent) = resolve_parent(&current, &current_path, opts)?;
        let next = match (parent, &resolution.path) {
            (Some(p), Some(pp)) => {
                if !seen.insert(canonical(pp)) {
                    broken = Some(format!(
                        "loop: {} names {} as its parent, which is already in the chain",
                        current_path.display(),
                        pp.display()
                    ));
                    None
                } else {
                    Some((p, pp.clone()))
                }
            }
            _ => {
                broken = Some(describe_failure(&current_path, &resolution, linkage.id));
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
            broken_reason: broken,
        },
        disks,
    ))
}

fn describe_failure(child: &Path, res: &ParentResolution, expected: Uuid) -> String {
    if res.tried.is_empty() {
        return format!(
            "parent of {} not found: no usable locator and no search folder to look in",
            child.display()
        );
    }
    let tried: Vec<String> = res
        .tried
        .iter()
        .map(|a| format!("{} ({}: {})", a.path.display(), a.via, a.outcome))
        .collect();
    format!(
        "parent of {} (id {expected}) not found; tried {}",
        child.display(),
        tried.join("; ")
    )
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Find and verify the parent of `child` (opened from `child_path`).
///
/// Returns the resolution record and, when a parent was accepted, the opened parent.
pub fn resolve_parent(
    child: &Disk,
    child_path: &Path,
    opts: &ChainOptions,
) -> Result<(ParentResolution, Option<Disk>)> {
    let Some(linkage) = child.parent_linkage() else {
        return Err(Error::InvalidArgument(format!(
            "{} is not a differencing disk",
            child_path.display()
        )));
    };
    let child_dir = child_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let child_dir = if child_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        child_dir
    };
    let candidates = candidates(&child.parent_locators(), &child_dir, opts);
    let mut res = ParentResolution {
        expected_id: linkage.id,
        path: None,
        via: None,
        id_match: None,
        tried: Vec::new(),
        warnings: Vec::new(),
        notes: Vec::new(),
    };
    let child_canon = canonical(child_path);
    let mut seen = HashSet::new();
    for (cand, via) in candidates {
        if !seen.insert(cand.clone()) {
            continue;
        }
        let mut attempt = Attempt {
            path: cand.clone(),
            via: via.clone(),
            outcome: String::new(),
        };
        let (parent, id_match) = match try_candidate(child, &linkage, &cand, &child_canon, opts) {
            Ok(x) => x,
            Err(why) => {
                attempt.outcome = why.to_string();
                res.tried.push(attempt);
                continue;
            }
        };
        if parent.virtual_size() != child.virtual_size() {
            res.warnings.push(format!(
                "parent virtual size {} differs from the child's {}",
                parent.virtual_size(),
                child.virtual_size()
            ));
        }
        if let Some(n) = crate::sectors::compare(child, &parent).note() {
            res.notes.push(n);
        }
        if let Some(ts) = linkage.timestamp.filter(|&t| t != 0) {
            if let Some(w) = vhd_timestamp_warning(ts, &parent, &cand) {
                res.warnings.push(w);
            }
        }
        attempt.outcome = "accepted".into();
        res.tried.push(attempt);
        res.path = Some(cand);
        res.via = Some(via);
        res.id_match = Some(id_match);
        return Ok((res, Some(parent)));
    }
    note_unmapped_windows_paths(&child.parent_locators(), opts, &mut res);
    Ok((res, None))
}

/// When no parent was found, name every absolute Windows locator that gave no local path (off
/// Windows, without a matching `--map`), so the error shows it and how to use it.
fn note_unmapped_windows_paths(
    locators: &[ParentLocator],
    opts: &ChainOptions,
    res: &mut ParentResolution,
) {
    if cfg!(windows) {
        return;
    }
    for loc in locators {
        let Some(p) = loc.path.as_deref().filter(|p| is_windows_absolute(p)) else {
            continue;
        };
        if opts.path_maps.iter().any(|m| m.apply(p).is_some()) {
            continue;
        }
        res.tried.push(Attempt {
            path: PathBuf::from(p),
            via: loc.kind.clone(),
            outcome: "skipped: an absolute Windows path has no local meaning here; map it with \
                      --map 'PREFIX=LOCAL_FOLDER' (e.g. --map 'C:\\Lab=/srv/lab')"
                .into(),
        });
    }
}

/// Why a candidate path was not accepted as the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Certain: the path does not lead to a file with the parent's identity.
    NotParent(String),
    /// Uncertain: the file exists but could not be opened.
    Unreadable(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::NotParent(s) | Rejected::Unreadable(s) => f.write_str(s),
        }
    }
}

/// Open `cand` and accept it as the parent of `child` when it carries the recorded identity,
/// the same format and sector sizes the one rule in [`crate::sectors`] accepts.
fn try_candidate(
    child: &Disk,
    linkage: &crate::disk::ParentLinkage,
    cand: &Path,
    child_canon: &Path,
    opts: &ChainOptions,
) -> std::result::Result<(Disk, IdMatch), Rejected> {
    if !cand.is_file() {
        return Err(Rejected::NotParent(if cand.exists() {
            "not a regular file".into()
        } else {
            "not found".into()
        }));
    }
    if canonical(cand) == child_canon {
        return Err(Rejected::NotParent("is the child itself".into()));
    }
    let parent = Disk::open_with(cand, &opts.open)
        .map_err(|e| Rejected::Unreadable(format!("cannot open: {e}")))?;
    let pid = parent.identity();
    let id_match = if pid == linkage.id {
        IdMatch::Primary
    } else if linkage.alternate_id == Some(pid) {
        IdMatch::Alternate
    } else {
        return Err(Rejected::NotParent(format!("id mismatch: it has {pid}")));
    };
    if parent.format() != child.format() {
        return Err(Rejected::NotParent(format!(
            "format mismatch: a {} child cannot have a {} parent",
            child.format(),
            parent.format()
        )));
    }
    if let Some(why) = crate::sectors::compare(child, &parent).refusal() {
        return Err(Rejected::NotParent(why));
    }
    Ok((parent, id_match))
}

/// Whether the one locator `loc` of `child` (opened from `child_path`) leads to its parent by
/// itself, through the same candidate paths [`resolve_parent`] tries for it (no file-name or
/// search-folder fallbacks). `Ok(true)`: one of them is the parent; `Ok(false)`: certainly not
/// (every candidate is missing or is another disk); `Err`: cannot tell (a candidate exists but
/// does not open).
pub(crate) fn locator_leads_to_parent(
    child: &Disk,
    child_path: &Path,
    loc: &ParentLocator,
    opts: &ChainOptions,
) -> std::result::Result<bool, Rejected> {
    let Some(linkage) = child.parent_linkage() else {
        return Ok(false);
    };
    let Some(p) = loc.path.as_deref() else {
        return Ok(false);
    };
    let child_dir = match child_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let child_canon = canonical(child_path);
    let mut unsure = None;
    for cand in local_paths(p, loc.style, &child_dir, &opts.path_maps) {
        match try_candidate(child, &linkage, &cand, &child_canon, opts) {
            Ok(_) => return Ok(true),
            Err(r @ Rejected::Unreadable(_)) => unsure = Some(r),
            Err(Rejected::NotParent(_)) => {}
        }
    }
    match unsure {
        Some(r) => Err(r),
        None => Ok(false),
    }
}

/// The VHD parent time stamp is written inconsistently (Windows writes 0, blktap the parent
/// file's mtime, others the parent's creation stamp); warn only when it matches neither.
fn vhd_timestamp_warning(ts: u32, parent: &Disk, parent_path: &Path) -> Option<String> {
    const VHD_EPOCH: u64 = 946_684_800;
    let creation = match parent.info().details {
        crate::disk::FormatInfo::Vhd(v) => Some(v.timestamp),
        _ => None,
    };
    if creation == Some(ts) {
        return None;
    }
    let mtime = std::fs::metadata(parent_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs().saturating_sub(VHD_EPOCH));
    if mtime == Some(u64::from(ts)) {
        return None;
    }
    Some(format!(
        "parent time stamp {ts} matches neither the parent's creation stamp nor its file time"
    ))
}

/// Candidate local paths for a parent, in the order to try them.
fn candidates(
    locators: &[ParentLocator],
    child_dir: &Path,
    opts: &ChainOptions,
) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut names = Vec::new();
    for loc in locators {
        let Some(p) = loc.path.as_deref().filter(|p| !p.is_empty()) else {
            continue;
        };
        for c in local_paths(p, loc.style, child_dir, &opts.path_maps) {
            out.push((c, loc.kind.clone()));
        }
        if let Some(name) = file_name_of(p, loc.style) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in &names {
        out.push((child_dir.join(name), "name in child folder".to_string()));
    }
    for dir in &opts.search_dirs {
        for name in &names {
            out.push((dir.join(name), "search".to_string()));
        }
    }
    out
}

/// Path components of a Windows path, split on either separator, empty and `.` parts dropped.
fn win_components(p: &str) -> Vec<&str> {
    p.split(['\\', '/'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// Strip the `\\?\` (or `\\.\`) verbatim prefix, and `UNC\` after it.
fn strip_verbatim(p: &str) -> &str {
    let p = p
        .strip_prefix(r"\\?\")
        .or_else(|| p.strip_prefix(r"\\.\"))
        .unwrap_or(p);
    p.strip_prefix(r"UNC\").unwrap_or(p)
}

fn file_name_of(p: &str, style: PathStyle) -> Option<String> {
    match style {
        PathStyle::Opaque => None,
        PathStyle::FileUrl => file_url_path(p)
            .as_deref()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        _ => win_components(p)
            .last()
            .filter(|n| **n != "..")
            .map(|n| n.to_string()),
    }
}

fn file_url_path(p: &str) -> Option<String> {
    let rest = p.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    Some(percent_decode(rest))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b.get(i),
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (Some(b'%'), Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (Some(&c), _, _) => {
                out.push(c);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_windows_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with(r"\\") || (b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':')
}

/// What a locator string holds, judged by the string, not by its slot: writers put absolute
/// POSIX paths in relative slots (VirtualBox 2.x), relative paths in absolute slots and in
/// `MacX` URLs (blktap), and Windows paths anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held {
    /// `C:\...`, `\\server\...`, `\\?\...`: usable as it is only on Windows, elsewhere
    /// through a prefix map.
    WindowsAbsolute(String),
    /// `/...`: a local path on this host (or another POSIX host).
    PosixAbsolute(String),
    /// Relative to the child's folder, whatever the working directory.
    Relative(String),
}

/// Read what `p` holds; `None` for paths vhdkit cannot use (alias records, a URL that is not a
/// `file://` URL).
pub(crate) fn held(p: &str, style: PathStyle) -> Option<Held> {
    let text = match style {
        PathStyle::Opaque => return None,
        PathStyle::FileUrl => file_url_path(p)?,
        _ => p.to_string(),
    };
    if text.is_empty() {
        None
    } else if is_windows_absolute(&text) {
        Some(Held::WindowsAbsolute(text))
    } else if text.starts_with('/') {
        Some(Held::PosixAbsolute(text))
    } else {
        Some(Held::Relative(text))
    }
}

/// Local paths a locator path may stand for.
fn local_paths(p: &str, style: PathStyle, child_dir: &Path, maps: &[PathMap]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mapped = |out: &mut Vec<PathBuf>, p: &str| {
        let mut sorted: Vec<&PathMap> = maps.iter().collect();
        sorted.sort_by_key(|m| std::cmp::Reverse(m.windows_prefix.len()));
        for m in sorted {
            if let Some(l) = m.apply(p) {
                out.push(l);
            }
        }
    };
    match held(p, style) {
        Some(Held::Relative(r)) => out.push(join_relative(child_dir, &r)),
        Some(Held::WindowsAbsolute(a)) => {
            mapped(&mut out, &a);
            if cfg!(windows) {
                out.push(PathBuf::from(a));
            }
        }
        Some(Held::PosixAbsolute(a)) => {
            mapped(&mut out, &a);
            out.push(PathBuf::from(a));
        }
        None => {}
    }
    out
}

/// `rel` under `child_dir`, with `\` or `/` separators. Windows resolves `..` lexically, so
/// vhdkit does too (it also keeps displayed paths tidy).
fn join_relative(child_dir: &Path, rel: &str) -> PathBuf {
    let mut q = child_dir.to_path_buf();
    for c in win_components(rel) {
        let can_pop = matches!(
            q.components().next_back(),
            Some(std::path::Component::Normal(_))
        );
        if c == ".." && can_pop {
            q.pop();
        } else {
            q.push(c);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_applies_at_component_boundary_case_insensitively() {
        let m = PathMap::parse(r"C:\Lab=/srv/lab").unwrap();
        assert_eq!(
            m.apply(r"c:\lab\Ref\base.vhdx"),
            Some(PathBuf::from("/srv/lab/Ref/base.vhdx"))
        );
        assert_eq!(m.apply(r"C:\Labs\base.vhdx"), None);
        assert_eq!(
            m.apply(r"\\?\C:\Lab\x.vhd"),
            Some(PathBuf::from("/srv/lab/x.vhd"))
        );
    }

    #[test]
    fn volume_map() {
        let m =
            PathMap::parse(r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\=/mnt/x").unwrap();
        assert_eq!(
            m.apply(r"\\?\Volume{0EBA351E-5634-46d6-a8cf-4ddc2d6ac0b9}\Users\p.avhdx"),
            Some(PathBuf::from("/mnt/x/Users/p.avhdx"))
        );
    }

    #[test]
    fn map_parse_errors() {
        assert!(PathMap::parse("nomap").is_err());
        assert!(PathMap::parse("=x").is_err());
    }

    #[test]
    fn relative_windows_paths() {
        let got = local_paths(
            r".\fat-parent.vhd",
            PathStyle::Relative,
            Path::new("/a/b"),
            &[],
        );
        assert_eq!(got, vec![PathBuf::from("/a/b/fat-parent.vhd")]);
        let got = local_paths(
            r"..\ref\p.vhdx",
            PathStyle::Relative,
            Path::new("/a/b"),
            &[],
        );
        assert_eq!(got, vec![PathBuf::from("/a/ref/p.vhdx")]);
        let got = local_paths(r"..\..\p.vhdx", PathStyle::Relative, Path::new("b"), &[]);
        assert_eq!(got, vec![PathBuf::from("../p.vhdx")]);
    }

    #[test]
    fn names_of_locators() {
        assert_eq!(
            file_name_of(r"C:\Projects\x\fat-parent.vhd", PathStyle::AbsoluteWindows),
            Some("fat-parent.vhd".into())
        );
        assert_eq!(
            file_name_of("file://localhost/Users/me/p%20q.vhd", PathStyle::FileUrl),
            Some("p q.vhd".into())
        );
        assert_eq!(file_name_of("..", PathStyle::Relative), None);
    }

    #[test]
    fn locators_are_read_by_what_they_hold() {
        let dir = Path::new("/lab/vm");
        let got = |p: &str, style| local_paths(p, style, dir, &[]);
        // blktap: a relative MacX URL is relative to the child's folder.
        assert_eq!(
            got("file://./base.vhd", PathStyle::FileUrl),
            vec![PathBuf::from("/lab/vm/base.vhd")]
        );
        assert_eq!(
            got("file://../ref/base.vhd", PathStyle::FileUrl),
            vec![PathBuf::from("/lab/ref/base.vhd")]
        );
        assert_eq!(
            got("file:///srv/base.vhd", PathStyle::FileUrl),
            vec![PathBuf::from("/srv/base.vhd")]
        );
        // VirtualBox 2.x: an absolute POSIX path in a relative slot is used as it is.
        assert_eq!(
            got("/srv/vbox/base.vhd", PathStyle::Relative),
            vec![PathBuf::from("/srv/vbox/base.vhd")]
        );
        // blktap, Xen Orchestra: a relative path in an absolute slot joins the child's folder.
        assert_eq!(
            got("./base.vhd", PathStyle::AbsoluteWindows),
            vec![PathBuf::from("/lab/vm/base.vhd")]
        );
        // A Windows absolute path in a relative slot is absolute: never joined.
        let w = got(r"C:\Lab\base.vhd", PathStyle::Relative);
        assert!(w.iter().all(|p| !p.starts_with(dir)), "{w:?}");
        let m = PathMap::parse(r"C:\Lab=/srv/lab").unwrap();
        assert_eq!(
            local_paths(r"C:\Lab\base.vhd", PathStyle::Relative, dir, &[m]),
            vec![PathBuf::from("/srv/lab/base.vhd")]
        );
    }

    #[test]
    fn windows_absolute_detection() {
        assert!(is_windows_absolute(r"C:\x"));
        assert!(is_windows_absolute(r"\\server\share\x"));
        assert!(!is_windows_absolute(r".\x"));
        assert!(!is_windows_absolute("x.vhd"));
    }
}
