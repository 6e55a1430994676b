//! Siblings: a disk outside the merge whose parent is ANCESTOR or a merged disk. Merging would
//! change what it reads (ANCESTOR's contents change) or delete its parent (a merged disk), so
//! the merge is refused and the sibling named. Seen are the disks in the folders of every
//! chain member (not their subfolders) and in the search folders.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::chain::ChainOptions;
use crate::error::{Error, Result};
use crate::share::scan::{self, FileKey};
use crate::tree::WalkLimits;

/// The file identity of `p` (symlinks followed).
pub(super) fn key_of(p: &Path) -> Result<FileKey> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io("examining the file", e).with_path(p))?;
    Ok(scan::file_key(p, &meta))
}

/// Refuse when a disk other than the chain's own member above it has ANCESTOR or a merged
/// disk as its parent. `chain` is CHILD's chain (CHILD first), `k` ANCESTOR's index in it.
pub(super) fn refuse_siblings(chain: &[PathBuf], k: usize, opts: &ChainOptions) -> Result<()> {
    let mut roots: BTreeSet<PathBuf> = chain
        .iter()
        .map(|p| crate::sidefile::folder_of(p).to_path_buf())
        .collect();
    roots.extend(opts.search_dirs.iter().filter(|d| d.is_dir()).cloned());
    let roots: Vec<PathBuf> = roots.into_iter().collect();
    let wl = WalkLimits {
        max_depth: 0,
        ..WalkLimits::default()
    };
    let found = scan::scan(&roots, opts, &wl, &mut |_| {})?;
    let keys = chain
        .iter()
        .take(k.saturating_add(1))
        .map(|p| key_of(p))
        .collect::<Result<Vec<_>>>()?;
    for d in &found.disks {
        let Some(parent) = d.parent.as_ref().and_then(|p| p.resolved_key.as_ref()) else {
            continue;
        };
        let Some(j) = keys.iter().position(|k| k == parent) else {
            continue;
        };
        // Member j's own child in the chain is member j - 1 (CHILD has none).
        let own = j.checked_sub(1).and_then(|i| keys.get(i));
        if own == Some(&d.key) {
            continue;
        }
        let member = chain
            .get(j)
            .map_or_else(String::new, |p| p.display().to_string());
        let why = if j == 0 {
            "CHILD would be deleted under it".to_string()
        } else if j == k {
            "merging changes the ancestor's contents under it".to_string()
        } else {
            "the intermediate disk would be deleted under it".to_string()
        };
        return Err(Error::refused(format!(
            "{} is another child of {member}: {why}; merge or remove it first (nothing was \
             written)",
            d.path.display()
        )));
    }
    Ok(())
}
