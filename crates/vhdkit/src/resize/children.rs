//! Children: a disk whose parent is the disk resized. Hyper-V refuses a child whose parent's
//! size changed (0xC03A0017), so the resize is refused and the child named. Seen are the disks
//! in the folders of every member of the disk's chain (not their subfolders) and in the search
//! folders, as `merge` looks for siblings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::chain::ChainOptions;
use crate::error::{Error, Result};
use crate::share::scan;
use crate::tree::WalkLimits;

/// Refuse when a disk found has `disk` (the first of `chain`) as its parent.
pub(super) fn refuse_children(disk: &Path, chain: &[PathBuf], opts: &ChainOptions) -> Result<()> {
    let mut roots: BTreeSet<PathBuf> = chain
        .iter()
        .map(|p| crate::sidefile::folder_of(p).to_path_buf())
        .collect();
    roots.insert(crate::sidefile::folder_of(disk).to_path_buf());
    roots.extend(opts.search_dirs.iter().filter(|d| d.is_dir()).cloned());
    let roots: Vec<PathBuf> = roots.into_iter().collect();
    let wl = WalkLimits {
        max_depth: 0,
        ..WalkLimits::default()
    };
    let found = scan::scan(&roots, opts, &wl, &mut |_| {})?;
    let meta =
        std::fs::metadata(disk).map_err(|e| Error::io("examining the file", e).with_path(disk))?;
    let key = scan::file_key(disk, &meta);
    let child = found
        .disks
        .iter()
        .find(|d| d.parent.as_ref().and_then(|p| p.resolved_key.as_ref()) == Some(&key));
    match child {
        Some(c) => Err(Error::refused(format!(
            "{} is a child of this disk: Hyper-V fails a child whose parent changed size \
             (0xC03A0017); merge, flatten or remove it first (nothing was written)",
            c.path.display()
        ))),
        None => Ok(()),
    }
}
