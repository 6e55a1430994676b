//! Windows path forms written into parent locators: the relative path of a parent as Hyper-V
//! writes it (`.\base.vhd`, `..\ref\base.vhd`), and the absolute path to record for it
//! (given, a path map read in reverse, or the local path as it is).
//!
//! Local paths are split into components and joined with `\`; a component that holds a `\`
//! cannot be written (Windows would read it as two), nor one that is not valid Unicode.
//!
//! It also reads Windows paths found in locators and `--map` prefixes (roots, components, a
//! prefix match without regard to case) for [`crate::chain`].

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::chain::PathMap;

/// How the absolute path was formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "source", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum AbsoluteSource {
    /// Given by the caller (`--windows-path`).
    Given,
    /// A path map read in reverse: the new parent lies under `local`, which stands for `prefix`.
    Map {
        /// The Windows prefix.
        prefix: String,
        /// The local folder.
        local: PathBuf,
    },
    /// The real absolute path (on Windows).
    Native,
    /// The local POSIX path as it is: Windows hosts will not resolve it.
    LocalPosix,
}

/// The absolute path written, and how it was formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AbsolutePath {
    /// The path.
    pub value: String,
    /// Where it came from.
    #[cfg_attr(feature = "serde", serde(flatten))]
    pub source: AbsoluteSource,
    /// One line for people.
    pub how: String,
}

/// `p` with links resolved, or `p` itself when it cannot be resolved (it is then compared as
/// given).
pub(crate) fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Path components as UTF-8 strings usable in a Windows path.
fn win_parts(p: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                let s = s
                    .to_str()
                    .ok_or_else(|| format!("{} is not valid Unicode", p.display()))?;
                if s.contains('\\') {
                    return Err(format!(
                        "the name {s:?} contains a backslash, which Windows reads as a separator"
                    ));
                }
                out.push(s.to_string());
            }
            Component::CurDir => {}
            other => {
                return Err(format!(
                    "unexpected path component {:?} in {}",
                    other.as_os_str(),
                    p.display()
                ))
            }
        }
    }
    Ok(out)
}

/// Split an absolute path into its root (prefix and root dir) and the rest.
fn split_root(p: &Path) -> (PathBuf, PathBuf) {
    let mut root = PathBuf::new();
    let mut rest = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => root.push(c.as_os_str()),
            other => rest.push(other.as_os_str()),
        }
    }
    (root, rest)
}

/// The path of `target` relative to `dir` in Hyper-V's form: `.\file.vhd`, `.\sub\file.vhd`,
/// `..\ref\file.vhd`. Both must be absolute and normalised (canonical).
pub fn relative_windows_path(dir: &Path, target: &Path) -> Result<String, String> {
    let (dr, drest) = split_root(dir);
    let (tr, trest) = split_root(target);
    if dr != tr {
        return Err(format!(
            "{} and {} are on different roots",
            dir.display(),
            target.display()
        ));
    }
    let d = win_parts(&drest)?;
    let t = win_parts(&trest)?;
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == t.len() {
        return Err("the new parent is a folder above the child".into());
    }
    let ups = d.len() - common;
    let mut s = if ups == 0 {
        ".\\".to_string()
    } else {
        "..\\".repeat(ups)
    };
    s.push_str(&t[common..].join("\\"));
    Ok(s)
}

/// What follows a drive letter and colon (`C:`) at the start of `p`, if it has one.
fn after_drive(p: &str) -> Option<&str> {
    let mut c = p.chars();
    match (c.next(), c.next()) {
        (Some(d), Some(':')) if d.is_ascii_alphabetic() => Some(c.as_str()),
        _ => None,
    }
}

/// True for `C:\...` and `\\server\share\...`; a drive-relative `C:x` is not absolute.
pub(crate) fn is_windows_absolute(p: &str) -> bool {
    p.starts_with(r"\\") || after_drive(p).is_some_and(|rest| rest.starts_with('\\'))
}

/// True for anything that names a drive (`C:\...`, also a drive-relative `C:x`) or starts with
/// `\\` (UNC, `\\?\`, `\\.\`): a path that has no meaning relative to a child's folder.
pub(crate) fn has_windows_root(p: &str) -> bool {
    p.starts_with(r"\\") || after_drive(p).is_some()
}

/// Path components of a Windows path, split on either separator, empty and `.` parts dropped.
pub(crate) fn win_components(p: &str) -> Vec<&str> {
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

/// Windows compares names without regard to case.
fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
}

/// The components of `win_path` below `prefix` (both Windows paths, verbatim prefixes
/// ignored), when `prefix` names whole leading components of it, without regard to case.
pub(crate) fn components_below<'a>(win_path: &'a str, prefix: &str) -> Option<Vec<&'a str>> {
    let prefix = win_components(strip_verbatim(prefix));
    let path = win_components(strip_verbatim(win_path));
    if prefix.is_empty() || path.len() < prefix.len() {
        return None;
    }
    if !prefix.iter().zip(&path).all(|(a, b)| same_name(a, b)) {
        return None;
    }
    path.get(prefix.len()..).map(<[&str]>::to_vec)
}

/// The absolute path to record for `np` (canonical, file name `file_name`), and how it was
/// formed: `given` when there is one, else the longest path map whose local side holds `np`,
/// read in reverse, else the path as it is.
pub(crate) fn absolute_windows_path(
    np: &Path,
    file_name: &str,
    given: Option<&str>,
    maps: &[PathMap],
) -> Result<AbsolutePath, String> {
    if let Some(w) = given {
        return given_path(w, file_name);
    }
    if let Some(a) = mapped_path(np, maps)? {
        return Ok(a);
    }
    let s = np
        .to_str()
        .ok_or_else(|| format!("{} is not valid Unicode", np.display()))?;
    if cfg!(windows) {
        let s = if let Some(unc) = s.strip_prefix(r"\\?\UNC\") {
            format!(r"\\{unc}")
        } else {
            s.strip_prefix(r"\\?\").unwrap_or(s).to_string()
        };
        return Ok(AbsolutePath {
            value: s,
            source: AbsoluteSource::Native,
            how: "the new parent's real absolute path".into(),
        });
    }
    Ok(AbsolutePath {
        value: s.to_string(),
        source: AbsoluteSource::LocalPosix,
        how: "the local absolute path as it is (no Windows path given, no path map \
              containing it); Windows hosts will not resolve it"
            .into(),
    })
}

/// The path the caller gave (`ReparentOptions::windows_path`), checked to be an absolute
/// Windows path.
fn given_path(w: &str, file_name: &str) -> Result<AbsolutePath, String> {
    if !is_windows_absolute(w) {
        return Err(format!(
            "the given Windows path {w:?} is not an absolute Windows path (C:\\dir\\file.vhd or \
             \\\\server\\share\\file.vhd)"
        ));
    }
    let mut how = "given as the Windows path".to_string();
    let last = w.rsplit('\\').next().unwrap_or_default();
    if !same_name(last, file_name) {
        how.push_str(&format!(
            " (its file name {last:?} differs from the local {file_name:?})"
        ));
    }
    Ok(AbsolutePath {
        value: w.to_string(),
        source: AbsoluteSource::Given,
        how,
    })
}

/// A path map whose local side contains `np` (longest local side first), read in reverse.
fn mapped_path(np: &Path, maps: &[PathMap]) -> Result<Option<AbsolutePath>, String> {
    let mut maps: Vec<_> = maps.iter().collect();
    maps.sort_by_key(|m| std::cmp::Reverse(m.local.components().count()));
    for m in maps {
        for local in [canonical(&m.local), m.local.clone()] {
            let Ok(rest) = np.strip_prefix(&local) else {
                continue;
            };
            let parts = win_parts(rest)?;
            let prefix = m.windows_prefix.trim_end_matches(['\\', '/']);
            let value = if parts.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}\\{}", parts.join("\\"))
            };
            return Ok(Some(AbsolutePath {
                how: format!(
                    "from the path map '{}={}' read in reverse",
                    m.windows_prefix,
                    m.local.display()
                ),
                value,
                source: AbsoluteSource::Map {
                    prefix: m.windows_prefix.clone(),
                    local: m.local.clone(),
                },
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_forms() {
        let r = |d: &str, t: &str| relative_windows_path(Path::new(d), Path::new(t));
        assert_eq!(r("/a/vm", "/a/vm/p.vhd").unwrap(), r".\p.vhd");
        assert_eq!(r("/a/vm", "/a/vm/sub/p.vhd").unwrap(), r".\sub\p.vhd");
        assert_eq!(r("/a/vm", "/a/ref/p.vhd").unwrap(), r"..\ref\p.vhd");
        assert_eq!(r("/a/b/c", "/x/p q.vhd").unwrap(), r"..\..\..\x\p q.vhd");
        assert!(r("/a/vm", "/a").is_err());
        assert!(r("/a/vm", "/a/vm/x\\y.vhd").is_err());
    }

    #[test]
    fn windows_absolute() {
        assert!(is_windows_absolute(r"C:\x.vhd"));
        assert!(is_windows_absolute(r"\\server\share\x.vhd"));
        assert!(!is_windows_absolute("C:x.vhd"));
        assert!(!is_windows_absolute("/srv/x.vhd"));
    }

    #[test]
    fn windows_root() {
        assert!(has_windows_root(r"C:\x"));
        assert!(has_windows_root("C:x"));
        assert!(has_windows_root(r"\\server\share\x"));
        assert!(has_windows_root(
            r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\x"
        ));
        assert!(!has_windows_root(r".\x"));
        assert!(!has_windows_root("x.vhd"));
        assert!(!has_windows_root("/srv/x.vhd"));
    }

    #[test]
    fn components_below_a_prefix() {
        assert_eq!(
            components_below(r"c:\lab\Ref\base.vhdx", r"C:\Lab"),
            Some(vec!["Ref", "base.vhdx"])
        );
        assert_eq!(components_below(r"C:\Labs\base.vhdx", r"C:\Lab"), None);
        assert_eq!(
            components_below(r"\\?\UNC\srv\share\x.vhd", r"\\srv\share\"),
            Some(vec!["x.vhd"])
        );
        assert_eq!(components_below(r"C:\x.vhd", ""), None);
        assert_eq!(components_below(r"C:\Lab", r"C:\Lab"), Some(vec![]));
    }

    #[test]
    fn given_is_checked() {
        let a = absolute_windows_path(
            Path::new("/x/base.vhd"),
            "base.vhd",
            Some(r"C:\BASE.VHD"),
            &[],
        )
        .unwrap();
        assert_eq!(a.source, AbsoluteSource::Given);
        assert_eq!(a.how, "given as the Windows path");
        let a = absolute_windows_path(Path::new("/x/base.vhd"), "base.vhd", Some(r"C:\o.vhd"), &[])
            .unwrap();
        assert!(a.how.contains("differs from the local"), "{}", a.how);
        assert!(absolute_windows_path(Path::new("/x/b.vhd"), "b.vhd", Some("b.vhd"), &[]).is_err());
    }

    #[test]
    fn map_in_reverse() {
        let d = tempfile::tempdir().unwrap();
        let lab = d.path().join("lab");
        std::fs::create_dir_all(lab.join("Ref")).unwrap();
        let np = canonical(&lab).join("Ref").join("base.vhd");
        let maps = [PathMap::parse(&format!(r"C:\Lab\={}", lab.display())).unwrap()];
        let a = absolute_windows_path(&np, "base.vhd", None, &maps).unwrap();
        assert_eq!(a.value, r"C:\Lab\Ref\base.vhd");
        assert!(matches!(a.source, AbsoluteSource::Map { .. }));
        let none = absolute_windows_path(&np, "base.vhd", None, &[]).unwrap();
        if !cfg!(windows) {
            assert_eq!(none.source, AbsoluteSource::LocalPosix);
            assert_eq!(none.value, np.to_str().unwrap());
        }
    }
}
