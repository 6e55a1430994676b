//! Proof that a refused or failed command changed nothing: every entry of a tree (or a list of
//! files) with its kind, bytes and modification time, compared before and after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What one path looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File {
        sha256: String,
        len: u64,
        mtime: SystemTime,
    },
    Dir,
    Symlink(PathBuf),
    Other,
    Missing,
}

/// The state of some paths at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    roots: Vec<PathBuf>,
    tree: bool,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Snapshot {
    /// Every entry under `dir` (links not followed).
    pub fn tree(dir: &Path) -> Snapshot {
        Snapshot::take(vec![dir.to_path_buf()], true)
    }

    /// Exactly these paths (a missing one is recorded as missing).
    pub fn files<P: AsRef<Path>>(paths: &[P]) -> Snapshot {
        Snapshot::take(
            paths.iter().map(|p| p.as_ref().to_path_buf()).collect(),
            false,
        )
    }

    fn take(roots: Vec<PathBuf>, tree: bool) -> Snapshot {
        let mut entries = BTreeMap::new();
        for r in &roots {
            record(r, tree, &mut entries);
        }
        Snapshot {
            roots,
            tree,
            entries,
        }
    }

    /// Panics, naming every difference, unless the same paths look exactly as they did: same
    /// entries, same bytes, same lengths, same modification times.
    #[track_caller]
    pub fn assert_unchanged(&self, context: &str) {
        let now = Snapshot::take(self.roots.clone(), self.tree);
        let mut diffs = Vec::new();
        for (p, before) in &self.entries {
            match now.entries.get(p) {
                Some(after) if after == before => {}
                Some(after) => diffs.push(format!("{}: {before:?} -> {after:?}", p.display())),
                None => diffs.push(format!("{}: gone", p.display())),
            }
        }
        for p in now
            .entries
            .keys()
            .filter(|p| !self.entries.contains_key(*p))
        {
            diffs.push(format!("{}: appeared", p.display()));
        }
        assert!(
            diffs.is_empty(),
            "{context}: files changed:\n{}",
            diffs.join("\n")
        );
    }
}

fn record(p: &Path, recurse: bool, out: &mut BTreeMap<PathBuf, Entry>) {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        out.insert(p.to_path_buf(), Entry::Missing);
        return;
    };
    let ft = md.file_type();
    let entry = if ft.is_file() {
        Entry::File {
            sha256: crate::sha256_file(p),
            len: md.len(),
            mtime: md.modified().expect("mtime"),
        }
    } else if ft.is_dir() {
        Entry::Dir
    } else if ft.is_symlink() {
        Entry::Symlink(std::fs::read_link(p).expect("read_link"))
    } else {
        Entry::Other
    };
    out.insert(p.to_path_buf(), entry);
    if recurse && ft.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)
            .expect("read_dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        names.sort();
        for n in names {
            record(&n, true, out);
        }
    }
}
