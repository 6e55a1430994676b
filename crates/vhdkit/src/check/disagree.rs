//! Locators that disagree about the parent (`vhd.locator.disagree`, `vhdx.locator.disagree`).
//!
//! Each locator of a differencing disk is followed on its own (as the resolver would, without
//! file-name or search-folder fallbacks) to the first existing file it names. When two lead to
//! different files, readers that try locators in another order (Hyper-V, qemu, vhdkit with other
//! options) open another parent: the mark of two writers mixed in one child, or of a hand edit.
//! Only paths are compared, with `stat`; no candidate is opened.

use std::path::{Path, PathBuf};

use super::Finding;
use crate::chain::{locator_target, ChainOptions};
use crate::disk::{Disk, DiskFormat};

/// Findings for `check` on the file at `path` (nothing when it is not a differencing disk).
pub(crate) fn findings(path: &Path, opts: &ChainOptions) -> Vec<Finding> {
    if !super::deadloc::maybe_differencing(path) {
        return Vec::new();
    }
    let Ok(disk) = Disk::open_with(path, &opts.open) else {
        return Vec::new();
    };
    if disk.parent_linkage().is_none() {
        return Vec::new();
    }
    let targets: Vec<(String, Option<u64>, PathBuf)> = disk
        .parent_locators()
        .iter()
        .filter_map(|l| {
            locator_target(path, l, opts).map(|t| (l.kind.to_string(), l.file_offset, t))
        })
        .collect();
    let Some((first_kind, _, first)) = targets.first() else {
        return Vec::new();
    };
    let Some((kind, offset, other)) = targets.iter().find(|(_, _, t)| t != first) else {
        return Vec::new();
    };
    let (code, structure) = match disk.format() {
        DiskFormat::Vhd => ("vhd.locator.disagree", "vhd parent locator"),
        DiskFormat::Vhdx => ("vhdx.locator.disagree", "vhdx parent locator"),
    };
    let all: Vec<String> = targets
        .iter()
        .map(|(k, _, t)| format!("{k} -> {}", t.display()))
        .collect();
    vec![Finding::new(
        code,
        structure,
        *offset,
        format!(
            "{first_kind} and {kind} lead to different files ({} and {}): {}",
            first.display(),
            other.display(),
            all.join(", ")
        ),
    )]
}
