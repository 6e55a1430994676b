//! Locator strings to candidate local paths, without touching any file: what a string holds
//! (Windows absolute, POSIX absolute, relative, `file://` URL), prefix maps, relative joins.

use std::path::{Path, PathBuf};

use super::{ChainOptions, PathMap, Via};
use crate::disk::{ParentLocator, PathStyle};
use crate::winpath::{components_below, has_windows_root, win_components};

impl PathMap {
    /// If `win_path` starts with this prefix (at a component boundary), the local path.
    pub(super) fn apply(&self, win_path: &str) -> Option<PathBuf> {
        let mut out = self.local.clone();
        for c in components_below(win_path, &self.windows_prefix)? {
            out.push(c);
        }
        Some(out)
    }
}

/// Candidate local paths for a parent, in the order to try them.
pub(super) fn candidates(
    locators: &[ParentLocator],
    child_dir: &Path,
    opts: &ChainOptions,
) -> Vec<(PathBuf, Via)> {
    let mut out = Vec::new();
    let mut names = Vec::new();
    for loc in locators {
        let Some(p) = loc.path.as_deref().filter(|p| !p.is_empty()) else {
            continue;
        };
        for c in local_paths(p, loc.style, child_dir, &opts.path_maps) {
            out.push((c, Via::Locator(loc.kind.clone())));
        }
        if let Some(name) = file_name_of(p, loc.style) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in &names {
        out.push((child_dir.join(name), Via::NameInChildFolder));
    }
    for dir in &opts.search_dirs {
        for name in &names {
            out.push((dir.join(name), Via::Search));
        }
    }
    out
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
    } else if has_windows_root(&text) {
        Some(Held::WindowsAbsolute(text))
    } else if text.starts_with('/') {
        Some(Held::PosixAbsolute(text))
    } else {
        Some(Held::Relative(text))
    }
}

/// Local paths a locator path may stand for.
pub(super) fn local_paths(
    p: &str,
    style: PathStyle,
    child_dir: &Path,
    maps: &[PathMap],
) -> Vec<PathBuf> {
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
        for (p, style, want) in [
            // blktap: a relative MacX URL is relative to the child's folder.
            ("file://./base.vhd", PathStyle::FileUrl, "/lab/vm/base.vhd"),
            (
                "file://../ref/base.vhd",
                PathStyle::FileUrl,
                "/lab/ref/base.vhd",
            ),
            ("file:///srv/base.vhd", PathStyle::FileUrl, "/srv/base.vhd"),
            // VirtualBox 2.x: an absolute POSIX path in a relative slot is used as it is.
            (
                "/srv/vbox/base.vhd",
                PathStyle::Relative,
                "/srv/vbox/base.vhd",
            ),
            // blktap, Xen Orchestra: a relative path in an absolute slot joins the child's
            // folder.
            ("./base.vhd", PathStyle::AbsoluteWindows, "/lab/vm/base.vhd"),
        ] {
            assert_eq!(got(p, style), vec![PathBuf::from(want)], "{p}");
        }
        // A Windows absolute path in a relative slot is absolute: never joined.
        let w = got(r"C:\Lab\base.vhd", PathStyle::Relative);
        assert!(w.iter().all(|p| !p.starts_with(dir)), "{w:?}");
        let m = PathMap::parse(r"C:\Lab=/srv/lab").unwrap();
        assert_eq!(
            local_paths(r"C:\Lab\base.vhd", PathStyle::Relative, dir, &[m]),
            vec![PathBuf::from("/srv/lab/base.vhd")]
        );
    }
}
