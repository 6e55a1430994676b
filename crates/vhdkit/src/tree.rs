//! Walking folders for disk files without ever mistaking a partial view for the whole tree.
//!
//! `share`, `relink` and `check DIR` decide from what a walk finds: a copy is deleted when no
//! child is left that uses it, a tree is clean when no disk in it has findings. A file the walk
//! could not open, a folder it could not list or a link it could not follow may hold exactly the
//! child that makes the decision wrong, so the walk never drops such a path silently: each one is
//! an [`Uninspected`] with its reason, and callers treat any of them as a finding.
//!
//! Symlinked folders are never followed (no loops, and no walking out of the tree): they are
//! reported too. Other non-regular files (FIFOs, sockets, devices) are not disk files and are
//! passed over without being opened.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Why a path in a walked tree could not be inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum UninspectedKind {
    /// A file that could not be opened to read its signature.
    Unreadable,
    /// A folder that could not be listed.
    Unlistable,
    /// A symlink whose target could not be examined (dangling, or behind a closed folder).
    LinkUnresolved,
    /// A symlink to a folder: not followed.
    SymlinkedFolder,
    /// A folder below the depth bound: not walked.
    TooDeep,
    /// The entry bound was reached: the rest of the tree was not walked.
    EntryLimit,
}

impl UninspectedKind {
    /// The `check` finding code for it.
    pub fn code(self) -> &'static str {
        match self {
            UninspectedKind::Unreadable => "tree.unreadable",
            UninspectedKind::Unlistable => "tree.unlistable",
            UninspectedKind::LinkUnresolved => "tree.link_unresolved",
            UninspectedKind::SymlinkedFolder => "tree.symlinked_folder",
            UninspectedKind::TooDeep => "tree.too_deep",
            UninspectedKind::EntryLimit => "tree.entry_limit",
        }
    }
}

/// A path the walk could not look into.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Uninspected {
    /// The path.
    pub path: PathBuf,
    /// What kind of obstacle.
    pub kind: UninspectedKind,
    /// Why, in one line.
    pub reason: String,
}

impl std::fmt::Display for Uninspected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Bounds of a walk.
#[derive(Debug, Clone, Copy)]
pub struct WalkLimits {
    /// Deepest folder level walked below a root.
    pub max_depth: usize,
    /// Most directory entries looked at in all.
    pub max_entries: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits {
            max_depth: 64,
            max_entries: 1_000_000,
        }
    }
}

/// A disk file found (by signature).
#[derive(Debug, Clone)]
pub struct FoundDisk {
    /// The path (a regular file, not a link).
    pub path: PathBuf,
    /// Its metadata (not following links).
    pub meta: fs::Metadata,
}

/// A symlink that leads to a disk file.
#[derive(Debug, Clone)]
pub struct FoundLink {
    /// The link.
    pub path: PathBuf,
    /// The target's metadata.
    pub meta: fs::Metadata,
}

/// Everything a walk found, in walk order (depth first, names sorted).
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Regular files with a VHD or VHDX signature.
    pub disks: Vec<FoundDisk>,
    /// Symlinks to such files.
    pub links: Vec<FoundLink>,
    /// Paths that could not be inspected.
    pub uninspected: Vec<Uninspected>,
    /// Directory entries looked at.
    pub entries: usize,
}

/// Which files a walk yields besides those with a disk signature, and which it passes over.
#[derive(Clone, Copy)]
pub struct Select<'a> {
    /// File names passed over unopened (vhdkit's own side files, for `share`).
    pub ignore: &'a dyn Fn(&str) -> bool,
    /// Regular files yielded as disks even without a signature (e.g. a name that claims a disk
    /// format, so that a lying name is reported rather than passed over).
    pub also: &'a dyn Fn(&Path) -> bool,
}

impl Select<'_> {
    /// Every file with a disk signature, nothing else, nothing passed over.
    #[cfg(test)]
    pub const SIGNATURES: Select<'static> = Select {
        ignore: &|_| false,
        also: &|_| false,
    };
}

impl std::fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Select")
    }
}

/// Whether the file carries a disk signature; `Err` when it cannot be opened at all. The open
/// never blocks (a FIFO swapped in after the type check) and, for a plain entry, never follows
/// a link swapped in; the type is checked again on the open descriptor.
fn probe(path: &Path, follow: bool) -> std::io::Result<bool> {
    let f = crate::fsx::open_nonblocking(path, follow)?;
    if !f.metadata()?.is_file() {
        return Ok(false);
    }
    Ok(crate::disk::detect(&f).is_ok())
}

/// Walk `root` (a folder) recursively. The root itself must be listable (`Err` otherwise: the
/// walk cannot even start); everything below it that cannot be inspected is reported.
pub fn walk(root: &Path, limits: &WalkLimits, select: &Select<'_>) -> Result<Walk> {
    let mut out = Walk::default();
    let first = list(root, limits.max_entries)
        .map_err(|e| Error::io("listing the folder", e).with_path(root))?;
    let mut stack = vec![(first, 0usize)];
    while let Some((entries, depth)) = stack.pop() {
        let mut subdirs = Vec::new();
        for path in entries {
            out.entries += 1;
            if out.entries > limits.max_entries {
                out.uninspected.push(Uninspected {
                    path,
                    kind: UninspectedKind::EntryLimit,
                    reason: format!(
                        "stopped after {} entries (the limit); this and the rest were not scanned",
                        limits.max_entries
                    ),
                });
                return Ok(out);
            }
            if let Some(d) = visit(path, depth, limits, select, &mut out) {
                subdirs.push(d);
            }
        }
        // Depth first, in name order: listed now, so a folder closed later is still seen.
        for (dir, d) in subdirs.into_iter().rev() {
            match list(&dir, limits.max_entries) {
                Ok(e) => stack.push((e, d)),
                Err(e) => out.uninspected.push(Uninspected {
                    path: dir,
                    kind: UninspectedKind::Unlistable,
                    reason: format!("the folder cannot be listed: {e}"),
                }),
            }
        }
    }
    Ok(out)
}

/// The entries of `dir`, sorted; at most `cap + 1` are read (one more than the walk will look
/// at, so the entry bound is still noticed), so a huge folder cannot exhaust memory.
fn list(dir: &Path, cap: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)?.take(cap.saturating_add(1)) {
        v.push(e?.path());
    }
    v.sort();
    Ok(v)
}

/// Look at one entry; returns a subfolder to walk.
fn visit(
    path: PathBuf,
    depth: usize,
    limits: &WalkLimits,
    select: &Select<'_>,
    out: &mut Walk,
) -> Option<(PathBuf, usize)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if (select.ignore)(&name) {
        return None;
    }
    let skip = |out: &mut Walk, path: PathBuf, kind, reason: String| {
        out.uninspected.push(Uninspected { path, kind, reason });
        None
    };
    let lmeta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        // Listed a moment ago: gone now is a race, not a hidden file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            let r = format!("cannot be examined: {e}");
            return skip(out, path, UninspectedKind::Unreadable, r);
        }
    };
    if lmeta.file_type().is_symlink() {
        return visit_link(path, out);
    }
    if lmeta.is_dir() {
        if depth + 1 > limits.max_depth {
            let r = format!(
                "deeper than {} levels below the scanned folder, not scanned",
                limits.max_depth
            );
            return skip(out, path, UninspectedKind::TooDeep, r);
        }
        return Some((path, depth + 1));
    }
    if !lmeta.is_file() {
        return None;
    }
    match probe(&path, false) {
        Ok(true) => out.disks.push(FoundDisk { path, meta: lmeta }),
        Ok(false) if (select.also)(&path) => out.disks.push(FoundDisk { path, meta: lmeta }),
        Ok(false) => {}
        Err(e) => {
            let r = format!("the file cannot be read: {e}");
            return skip(out, path, UninspectedKind::Unreadable, r);
        }
    }
    None
}

fn visit_link(path: PathBuf, out: &mut Walk) -> Option<(PathBuf, usize)> {
    let target = fs::read_link(&path)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            out.uninspected.push(Uninspected {
                path,
                kind: UninspectedKind::LinkUnresolved,
                reason: format!("a symlink to {target} whose target cannot be examined: {e}"),
            });
            return None;
        }
    };
    if meta.is_dir() {
        out.uninspected.push(Uninspected {
            path,
            kind: UninspectedKind::SymlinkedFolder,
            reason: format!("a symlinked folder (to {target}), not followed"),
        });
        return None;
    }
    if !meta.is_file() {
        return None;
    }
    match probe(&path, true) {
        Ok(true) => out.links.push(FoundLink { path, meta }),
        Ok(false) => {}
        Err(e) => out.uninspected.push(Uninspected {
            path,
            kind: UninspectedKind::Unreadable,
            reason: format!("a symlink to {target} whose target cannot be read: {e}"),
        }),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(w: &Walk) -> Vec<UninspectedKind> {
        w.uninspected.iter().map(|u| u.kind).collect()
    }

    #[cfg(unix)]
    #[test]
    fn links_and_depth_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::os::unix::fs::symlink(r.join("nowhere"), r.join("dangling")).unwrap();
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("dirlink")).unwrap();
        let limits = WalkLimits {
            max_depth: 2,
            max_entries: 100,
        };
        let w = walk(r, &limits, &Select::SIGNATURES).unwrap();
        let k = kinds(&w);
        assert!(k.contains(&UninspectedKind::LinkUnresolved), "{w:?}");
        assert!(k.contains(&UninspectedKind::SymlinkedFolder), "{w:?}");
        assert!(k.contains(&UninspectedKind::TooDeep), "{w:?}");
        assert_eq!(w.uninspected.len(), 3, "{w:?}");
    }

    #[test]
    fn entry_limit_is_reported_and_ignored_names_skipped() {
        let d = tempfile::tempdir().unwrap();
        for n in ["a", "b", "c.vhdkit-journal"] {
            fs::write(d.path().join(n), b"x").unwrap();
        }
        let ign = Select {
            ignore: &|n: &str| n.ends_with(".vhdkit-journal"),
            also: &|p: &Path| p.ends_with("b"),
        };
        let w = walk(d.path(), &WalkLimits::default(), &ign).unwrap();
        assert!(w.uninspected.is_empty(), "{w:?}");
        let found: Vec<_> = w.disks.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            found,
            vec![d.path().join("b")],
            "only `also` yields a non-disk"
        );
        let limits = WalkLimits {
            max_depth: 4,
            max_entries: 1,
        };
        let w = walk(d.path(), &limits, &ign).unwrap();
        assert_eq!(kinds(&w), vec![UninspectedKind::EntryLimit]);
    }

    // Its skip path needs the unpublished vhdkit-testkit (see build.rs).
    #[cfg(unix)]
    #[cfg(vhdkit_workspace)]
    #[test]
    fn fifos_are_passed_over_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe.vhd");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            vhdkit_testkit::skip_or_fail("FIFO test: mkfifo is not available");
            return;
        }
        std::os::unix::fs::symlink(&fifo, d.path().join("link.vhd")).unwrap();
        let w = walk(d.path(), &WalkLimits::default(), &Select::SIGNATURES).unwrap();
        assert!(
            w.disks.is_empty() && w.links.is_empty() && w.uninspected.is_empty(),
            "{w:?}"
        );
    }

    #[test]
    fn an_unlistable_root_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(walk(
            &d.path().join("missing"),
            &WalkLimits::default(),
            &Select::SIGNATURES
        )
        .is_err());
    }
}
