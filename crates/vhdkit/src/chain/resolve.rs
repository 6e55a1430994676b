//! Trying candidate paths for a parent: confinement, opening, identity, format and sector
//! checks, and the per-locator questions dead-locator repair asks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::confined::confined_path;

use super::locate::{candidates, local_paths};
use super::{canonical, Attempt, AttemptOutcome, ChainOptions, IdMatch, ParentResolution, Via};
use crate::disk::{Disk, ParentLocator};
use crate::error::{Error, Result};
use crate::sidefile::folder_of;
use crate::winpath::has_windows_root;

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
    let candidates = candidates(&child.parent_locators(), folder_of(child_path), opts);
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
        let ((parent, mtime), id_match) =
            match try_candidate(child, &linkage, &cand, &child_canon, opts) {
                Ok(x) => x,
                Err(why) => {
                    res.tried.push(Attempt {
                        path: cand,
                        via,
                        outcome: why.into_outcome(),
                    });
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
            if let Some(w) = vhd_timestamp_warning(ts, &parent, mtime) {
                res.warnings.push(w);
            }
        }
        res.tried.push(Attempt {
            path: cand.clone(),
            via: via.clone(),
            outcome: AttemptOutcome::Accepted,
        });
        res.path = Some(cand);
        res.via = Some(via);
        res.id_match = Some(id_match);
        return Ok((res, Some(parent)));
    }
    note_unmapped_windows_paths(&child.parent_locators(), opts, &mut res);
    Ok((res, None))
}

/// When no parent was found, name every absolute Windows locator that gave no local path (off
/// Windows, without a matching path map), so the error shows it and how to use it.
fn note_unmapped_windows_paths(
    locators: &[ParentLocator],
    opts: &ChainOptions,
    res: &mut ParentResolution,
) {
    if cfg!(windows) {
        return;
    }
    for loc in locators {
        let Some(p) = loc.path.as_deref().filter(|p| has_windows_root(p)) else {
            continue;
        };
        if opts.path_maps.iter().any(|m| m.apply(p).is_some()) {
            continue;
        }
        res.tried.push(Attempt {
            path: PathBuf::from(p),
            via: Via::Locator(loc.kind.clone()),
            outcome: AttemptOutcome::UnmappedWindowsPath,
        });
    }
}

/// Why a candidate path was not accepted as the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Certain: the path does not lead to a file with the parent's identity.
    NotParent(AttemptOutcome),
    /// Uncertain: the file exists but could not be opened (or confinement forbids a look).
    Unreadable(AttemptOutcome),
}

impl Rejected {
    fn into_outcome(self) -> AttemptOutcome {
        match self {
            Rejected::NotParent(o) | Rejected::Unreadable(o) => o,
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::NotParent(o) | Rejected::Unreadable(o) => o.fmt(f),
        }
    }
}

/// A parent candidate opened, and its file time (from the open descriptor).
type Candidate = (Disk, Option<SystemTime>);

/// Open the candidate `cand` (not the child itself): confined, beneath its confining folder
/// and judged on the descriptor only; otherwise by path.
fn open_candidate(
    cand: &Path,
    child_canon: &Path,
    opts: &ChainOptions,
) -> std::result::Result<Candidate, Rejected> {
    let cannot = |e: Error| Rejected::Unreadable(AttemptOutcome::CannotOpen(e.to_string()));
    let is_child = Err(Rejected::NotParent(AttemptOutcome::IsChild));
    if let Some(c) = confined_path(cand, &opts.confine)? {
        if c.real == child_canon {
            return is_child;
        }
        let file = c.open_file()?;
        let mtime = file.metadata().and_then(|m| m.modified()).ok();
        let disk = Disk::open_file_with(&c.real, file, &c.journal(), &opts.open).map_err(cannot)?;
        return Ok((disk, mtime));
    }
    if !cand.is_file() {
        return Err(Rejected::NotParent(if cand.exists() {
            AttemptOutcome::NotRegularFile
        } else {
            AttemptOutcome::NotFound
        }));
    }
    if canonical(cand) == child_canon {
        return is_child;
    }
    let file = crate::fsx::open_disk(cand)
        .map_err(|e| cannot(Error::io("opening the file", e).with_path(cand)))?;
    let mtime = file.metadata().and_then(|m| m.modified()).ok();
    let journal = crate::txn::journal::FileJournal::for_disk(cand);
    let disk = Disk::open_file_with(cand, file, &journal, &opts.open).map_err(cannot)?;
    Ok((disk, mtime))
}

/// Open `cand` and accept it as the parent of `child` when it carries the recorded identity,
/// the same format and sector sizes the one rule in [`crate::sectors`] accepts.
fn try_candidate(
    child: &Disk,
    linkage: &crate::disk::ParentLinkage,
    cand: &Path,
    child_canon: &Path,
    opts: &ChainOptions,
) -> std::result::Result<(Candidate, IdMatch), Rejected> {
    let (parent, mtime) = open_candidate(cand, child_canon, opts)?;
    let pid = parent.identity();
    let id_match = if pid == linkage.id {
        IdMatch::Primary
    } else if linkage.alternate_id == Some(pid) {
        IdMatch::Alternate
    } else {
        return Err(Rejected::NotParent(AttemptOutcome::IdMismatch {
            found: pid,
        }));
    };
    if parent.format() != child.format() {
        return Err(Rejected::NotParent(AttemptOutcome::FormatMismatch {
            child: child.format(),
            parent: parent.format(),
        }));
    }
    if let crate::sectors::Verdict::LogicalDiffers { child, parent } =
        crate::sectors::compare(child, &parent)
    {
        return Err(Rejected::NotParent(
            AttemptOutcome::LogicalSectorSizeMismatch { child, parent },
        ));
    }
    Ok(((parent, mtime), id_match))
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
    let child_canon = canonical(child_path);
    let mut unsure = None;
    for cand in local_paths(p, loc.style, folder_of(child_path), &opts.path_maps) {
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

/// The existing file (canonical path) the locator `loc` of the child at `child_path` leads to
/// first, through the candidates [`resolve_parent`] tries for it (no name or search fallbacks,
/// confinement respected); `None` when it leads to no file. Only stats: nothing is opened.
pub(crate) fn locator_target(
    child_path: &Path,
    loc: &ParentLocator,
    opts: &ChainOptions,
) -> Option<PathBuf> {
    let p = loc.path.as_deref().filter(|p| !p.is_empty())?;
    let child_canon = canonical(child_path);
    local_paths(p, loc.style, folder_of(child_path), &opts.path_maps)
        .into_iter()
        .filter(|c| confined_path(c, &opts.confine).is_ok())
        .filter(|c| c.is_file())
        .map(|c| canonical(&c))
        .find(|c| *c != child_canon)
}

/// The VHD parent time stamp is written inconsistently (Windows writes 0, blktap the parent
/// file's mtime, others the parent's creation stamp); warn only when it matches neither. The
/// file time is the open parent's (`fstat`), never looked up again by path: under confinement
/// the name may lead elsewhere by now.
fn vhd_timestamp_warning(ts: u32, parent: &Disk, mtime: Option<SystemTime>) -> Option<String> {
    let creation = match parent.info().details {
        crate::disk::FormatInfo::Vhd(v) => Some(v.timestamp),
        _ => None,
    };
    if creation == Some(ts) {
        return None;
    }
    let mtime = mtime
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            d.as_secs()
                .saturating_sub(crate::vhd::format::TIME_STAMP_EPOCH_UNIX_SECS)
        });
    if mtime == Some(u64::from(ts)) {
        return None;
    }
    Some(format!(
        "parent time stamp {ts} matches neither the parent's creation stamp nor its file time"
    ))
}
