//! Windows path forms written into parent locators: the relative path of a parent as Hyper-V
//! writes it (`.\base.vhd`, `..\ref\base.vhd`), and the absolute path to record for it
//! (given, a path map read in reverse, or the local path as it is).
//!
//! Local paths are split into components and joined with `\`; a component that holds a `\`
//! cannot be written (Windows would read it as two), nor one that is not valid Unicode.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::chain::PathMap;

/// How the absolute path was formed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "source", rename_all = "snake_case"))]
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

/// True for `C:\...` and `\\server\share\...`; a drive-relative `C:x` is not absolute.
pub(crate) fn is_windows_absolute(p: &str) -> bool {
    let b = p.as_bytes();
    p.starts_with(r"\\")
        || (b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && b[2] == b'\\')
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
        how: "the local absolute path as it is (no --windows-path, no --map containing it); \
              Windows hosts will not resolve it"
            .into(),
    })
}

/// The path the caller gave (`--windows-path`), checked to be an absolute Windows path.
fn given_path(w: &str, file_name: &str) -> Result<AbsolutePath, String> {
    if !is_windows_absolute(w) {
        return Err(format!(
            "--windows-path {w:?} is not an absolute Windows path (C:\\dir\\file.vhd or \
             \\\\server\\share\\file.vhd)"
        ));
    }
    let mut how = "given with --windows-path".to_string();
    let last = w.rsplit('\\').next().unwrap_or_default();
    if !last.eq_ignore_ascii_case(file_name) && last.to_lowercase() != file_name.to_lowercase() {
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
                    "from --map '{}={}' read in reverse",
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
    fn given_is_checked() {
        let a = absolute_windows_path(
            Path::new("/x/base.vhd"),
            "base.vhd",
            Some(r"C:\BASE.VHD"),
            &[],
        )
        .unwrap();
        assert_eq!(a.source, AbsoluteSource::Given);
        assert_eq!(a.how, "given with --windows-path");
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
