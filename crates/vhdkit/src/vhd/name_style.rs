//! The style of a VHD parent unicode name, kept through a reparent.
//!
//! Writers disagree on what the field holds, and some read it back to find the parent:
//! - Windows and Virtual PC: the parent's absolute path (`C:\Lab\base.vhd`);
//! - Xen Orchestra's vhd-lib: the path relative to the child's folder with `/` separators and
//!   no `./` (`base.vhd`, `../ref/base.vhd`), and it finds the parent **only** through this
//!   field, resolved from the child's folder;
//! - blktap's vhd-util, DiscUtils, VirtualBox: the parent's file name alone.
//!
//! A reparent therefore writes the new parent in the style the field already has, so the
//! child's own tool still finds it; the plan reports the style before and after, and why it
//! changed when it did.

use std::path::Path;

use crate::reparent::LocatorMode;

/// What a parent unicode name holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum NameStyle {
    /// An absolute path (`C:\...`, `\\server\...`, `/srv/...`).
    Absolute,
    /// A path relative to the child's folder (`./base.vhd`, `..\ref\base.vhd`, `ref/base.vhd`).
    Relative,
    /// A file name alone (`base.vhd`), which readers look for in the child's folder.
    Bare,
    /// Empty or undecodable: no style to keep.
    None,
}

/// The parent name style before and after a reparent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ParentNameStyle {
    /// The style the child's name had.
    pub before: NameStyle,
    /// The style written.
    pub written: NameStyle,
    /// True when the child's style was kept.
    pub kept: bool,
    /// Why the style changed (or, when kept, how the relative form was chosen).
    pub why: Option<String>,
}

impl ParentNameStyle {
    /// One line for the user: the style kept or changed, and why.
    pub fn describe(&self) -> String {
        let name = |n: NameStyle| match n {
            NameStyle::Absolute => "absolute path",
            NameStyle::Relative => "relative path",
            NameStyle::Bare => "bare file name",
            NameStyle::None => "nothing usable",
        };
        match (&self.why, self.kept) {
            (None, true) => format!("parent name style kept: {}", name(self.written)),
            (Some(why), true) => format!("parent name style kept: {} ({why})", name(self.written)),
            (why, false) => format!(
                "parent name style changed: {} -> {}{}",
                name(self.before),
                name(self.written),
                why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
            ),
        }
    }
}

/// A relative form: which separator and whether a same-folder path starts with `./`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RelForm {
    sep: char,
    dot: bool,
}

/// vhd-lib's form (`path.posix.relative`): `/`, no `./`.
const POSIX: RelForm = RelForm {
    sep: '/',
    dot: false,
};

fn is_absolute(name: &str) -> bool {
    let b = name.as_bytes();
    name.starts_with('/')
        || name.starts_with(r"\\")
        || (b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/'))
}

/// The style of `name` and, for a relative one, its form.
fn detect(name: Option<&str>) -> (NameStyle, Option<RelForm>) {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return (NameStyle::None, None);
    };
    if is_absolute(name) {
        return (NameStyle::Absolute, None);
    }
    match name.find(['/', '\\']) {
        Some(i) => {
            let sep = name.get(i..).and_then(|r| r.chars().next()).unwrap_or('/');
            let dot = name.starts_with("./") || name.starts_with(".\\");
            (NameStyle::Relative, Some(RelForm { sep, dot }))
        }
        None => (NameStyle::Bare, None),
    }
}

/// The path of `target` relative to `dir` in form `f`.
fn relative(dir: &Path, target: &Path, f: RelForm) -> Result<String, String> {
    let win = crate::winpath::relative_windows_path(dir, target)?;
    let body = win.strip_prefix(".\\").unwrap_or(&win);
    let same_folder = !win.starts_with("..");
    let mut s = String::new();
    if same_folder && f.dot {
        s.push('.');
        s.push(f.sep);
    }
    s.push_str(&body.replace('\\', &f.sep.to_string()));
    Ok(s)
}

/// What the reparent knows when it chooses the parent name.
#[derive(Debug, Clone, Copy)]
pub struct NameInputs<'a> {
    /// The child's current parent name, decoded.
    pub old: Option<&'a str>,
    /// The locator mode.
    pub mode: LocatorMode,
    /// The absolute path written to `W2ku` (none in relative-only mode).
    pub absolute: Option<&'a str>,
    /// The child's folder (canonical).
    pub child_dir: &'a Path,
    /// The new parent (canonical).
    pub new_parent: &'a Path,
    /// The new parent's file name.
    pub file_name: &'a str,
    /// The most UTF-16 code units the field holds.
    pub max_units: usize,
}

/// Choose the parent name to write and report its style.
pub fn choose(i: &NameInputs<'_>) -> (String, ParentNameStyle) {
    let (before, form) = detect(i.old);
    let in_child_dir = i.new_parent.parent() == Some(i.child_dir);
    let rel = |f: RelForm| relative(i.child_dir, i.new_parent, f);
    let (name, why) = match (i.mode, before) {
        (LocatorMode::AbsoluteOnly, NameStyle::Relative) => (
            i.absolute.map(str::to_string),
            Some("absolute only: the absolute path is written".to_string()),
        ),
        (_, NameStyle::Relative) => match rel(form.unwrap_or(POSIX)) {
            Ok(r) => (Some(r), None),
            Err(e) => (
                i.absolute.map(str::to_string),
                Some(format!("no relative path to the new parent ({e})")),
            ),
        },
        (_, NameStyle::Bare) if in_child_dir => (Some(i.file_name.to_string()), None),
        (LocatorMode::AbsoluteOnly, NameStyle::Bare) => (
            i.absolute.map(str::to_string),
            Some(
                "the new parent is not in the child's folder and only the absolute path is wanted"
                    .into(),
            ),
        ),
        (_, NameStyle::Bare) => (
            rel(POSIX).ok().or_else(|| i.absolute.map(str::to_string)),
            Some(
                "the new parent is not in the child's folder, where a bare name is looked for; \
                 the path relative to the child's folder is written"
                    .into(),
            ),
        ),
        (LocatorMode::RelativeOnly, _) => (
            rel(RelForm {
                sep: '/',
                dot: true,
            })
            .ok(),
            Some(
                "relative only: the path relative to the child's folder is written (not a \
                 bare name, which readers would look for in the child's folder only)"
                    .into(),
            ),
        ),
        (_, NameStyle::Absolute) => (i.absolute.map(str::to_string), None),
        (_, NameStyle::None) => (
            i.absolute.map(str::to_string),
            Some("the child has no usable parent name; the absolute path is written".into()),
        ),
    };
    let (name, why) = match name {
        Some(n) if n.encode_utf16().count() <= i.max_units => (n, why),
        Some(n) => (
            i.file_name.to_string(),
            Some(format!(
                "{} ({} UTF-16 code units) does not fit the {}-unit parent name; the file name \
                 alone is written",
                n,
                n.encode_utf16().count(),
                i.max_units
            )),
        ),
        None => (
            i.file_name.to_string(),
            Some(why.unwrap_or_else(|| "no path to write; the file name alone is written".into())),
        ),
    };
    let written = detect(Some(&name)).0;
    let kept = written == before;
    let style = ParentNameStyle {
        before,
        written,
        kept,
        why,
    };
    (name, style)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(old: Option<&str>, mode: LocatorMode, np: &str) -> (String, ParentNameStyle) {
        choose(&NameInputs {
            old,
            mode,
            absolute: (mode != LocatorMode::RelativeOnly).then_some(r"C:\Lab\ref\base.vhd"),
            child_dir: Path::new("/lab/vm"),
            new_parent: Path::new(np),
            file_name: "base.vhd",
            max_units: 256,
        })
    }

    #[test]
    fn each_style_is_kept() {
        let both = LocatorMode::Both;
        // Windows: absolute stays absolute.
        let (n, s) = pick(Some(r"C:\old\base.vhd"), both, "/lab/ref/base.vhd");
        assert_eq!(n, r"C:\Lab\ref\base.vhd");
        assert!(s.kept && s.before == NameStyle::Absolute, "{s:?}");
        // Xen Orchestra: relative, `/`, no `./`.
        let (n, s) = pick(Some("old/base.vhd"), both, "/lab/ref/base.vhd");
        assert_eq!(n, "../ref/base.vhd");
        assert!(s.kept, "{s:?}");
        let (n, _) = pick(Some("../x/base.vhd"), both, "/lab/vm/base.vhd");
        assert_eq!(n, "base.vhd");
        // `./` and `\` habits.
        let (n, _) = pick(Some("./old.vhd"), both, "/lab/vm/base.vhd");
        assert_eq!(n, "./base.vhd");
        let (n, _) = pick(Some(r".\old.vhd"), both, "/lab/ref/base.vhd");
        assert_eq!(n, r"..\ref\base.vhd");
        // blktap, DiscUtils: a bare name stays bare in the child's folder...
        let (n, s) = pick(Some("old.vhd"), both, "/lab/vm/base.vhd");
        assert_eq!(n, "base.vhd");
        assert!(s.kept && s.why.is_none(), "{s:?}");
        // ...and becomes a relative path elsewhere, saying why.
        let (n, s) = pick(Some("old.vhd"), both, "/lab/ref/base.vhd");
        assert_eq!(n, "../ref/base.vhd");
        assert!(!s.kept && s.why.unwrap().contains("not in the child's folder"));
    }

    #[test]
    fn relative_only_never_writes_a_misleading_bare_name() {
        for (np, want) in [
            ("/lab/ref/base.vhd", "../ref/base.vhd"),
            ("/lab/vm/base.vhd", "./base.vhd"),
        ] {
            let (n, s) = pick(Some(r"C:\old\base.vhd"), LocatorMode::RelativeOnly, np);
            assert_eq!(n, want);
            assert_eq!(s.written, NameStyle::Relative);
            assert!(!s.kept && s.why.unwrap().contains("relative only"));
        }
    }

    #[test]
    fn too_long_falls_back_to_the_file_name() {
        let (n, s) = choose(&NameInputs {
            old: Some(r"C:\old\base.vhd"),
            mode: LocatorMode::Both,
            absolute: Some(r"C:\Lab\ref\base.vhd"),
            child_dir: Path::new("/lab/vm"),
            new_parent: Path::new("/lab/ref/base.vhd"),
            file_name: "base.vhd",
            max_units: 10,
        });
        assert_eq!(n, "base.vhd");
        assert!(!s.kept && s.why.unwrap().contains("does not fit"));
    }
}
