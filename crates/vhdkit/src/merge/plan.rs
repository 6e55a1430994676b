//! [`MergePlan::new`]: the chain, ANCESTOR, the refusals, the record and the counts.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::copy::Walk;
use super::record::{self, Member, Phase, Record};
use super::{siblings, MergePlan};
use crate::chain::{Chain, ChainOptions};
use crate::disk::{Disk, DiskFormat, DiskType};
use crate::error::{Error, Result};
use crate::txn::FieldChange;
use crate::util::braced;
use crate::view::ChainView;

/// CHILD's chain opened, ANCESTOR found in it and checked.
pub(super) struct Opened {
    /// CHILD's whole chain.
    pub view: ChainView,
    /// ANCESTOR's index in it (1 or more): the layers before it are merged.
    pub k: usize,
    /// Every layer's path as the chain found it, CHILD first.
    pub paths: Vec<PathBuf>,
}

impl Opened {
    pub(super) fn ancestor(&self) -> Result<&Disk> {
        self.view
            .layers()
            .get(self.k)
            .ok_or_else(|| Error::internal("the ancestor is not in the chain"))
    }

    /// The record this merge writes (phase copying), for a VHDX with DataWriteGuid `new_id`.
    pub(super) fn record(&self, new_id: Option<Uuid>) -> Result<Record> {
        let a = self.ancestor()?;
        let mut merged = Vec::new();
        for (d, p) in self.view.layers().iter().zip(&self.paths).take(self.k) {
            merged.push(Member {
                path: std::fs::canonicalize(p)
                    .map_err(|e| Error::io("resolving the path", e).with_path(p))?,
                id: d.identity(),
                linkage: d.parent_linkage().map_or(Uuid::nil(), |l| l.id),
            });
        }
        Ok(Record {
            phase: Phase::Copying,
            format: a.format(),
            ancestor_id: a.identity(),
            new_id: (a.format() == DiskFormat::Vhdx).then(|| new_id.unwrap_or_else(Uuid::new_v4)),
            merged,
        })
    }
}

/// Open CHILD's chain, find ANCESTOR and check everything but siblings and the record.
pub(super) fn open(child: &Path, into: Option<&Path>, opts: &ChainOptions) -> Result<Opened> {
    let chain = Chain::open(child, opts)?;
    let paths: Vec<PathBuf> = chain
        .report()
        .links
        .iter()
        .map(|l| l.path.clone())
        .collect();
    let view = chain.into_view();
    let layers = view.layers();
    let first = layers
        .first()
        .ok_or_else(|| Error::internal("a chain without disks"))?;
    if first.disk_type() != DiskType::Differencing || layers.len() < 2 {
        return Err(Error::refused(format!(
            "{} is not a differencing disk: there is nothing to merge",
            child.display()
        )));
    }
    let k = match into {
        None => 1,
        Some(a) => find(&paths, a)?,
    };
    let o = Opened { view, k, paths };
    check(&o)?;
    Ok(o)
}

/// ANCESTOR's index in the chain, by file identity.
fn find(paths: &[PathBuf], into: &Path) -> Result<usize> {
    let want = siblings::key_of(into)?;
    for (i, p) in paths.iter().enumerate().skip(1) {
        if siblings::key_of(p)? == want {
            return Ok(i);
        }
    }
    if paths
        .first()
        .is_some_and(|p| siblings::key_of(p).ok() == Some(want))
    {
        return Err(Error::refused(
            "--into names the child itself: nothing to merge",
        ));
    }
    Err(Error::refused(format!(
        "{} is not in the chain of {} (its members: {}); nothing was written",
        into.display(),
        paths
            .first()
            .map_or_else(String::new, |p| p.display().to_string()),
        paths
            .iter()
            .skip(1)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The refusals on sizes and formats.
fn check(o: &Opened) -> Result<()> {
    let a = o.ancestor()?;
    let layers = o.view.layers();
    let child = layers.first().ok_or_else(|| Error::internal("no child"))?;
    if child.virtual_size() > a.virtual_size() {
        return Err(Error::refused(format!(
            "the child ({} bytes) is larger than the ancestor ({} bytes): growing the ancestor \
             is a resize (issue #14), not done by merge; nothing was written",
            child.virtual_size(),
            a.virtual_size()
        )));
    }
    for d in layers.iter().take(o.k) {
        if d.logical_sector_size() != a.logical_sector_size() {
            return Err(Error::refused(format!(
                "logical sector sizes differ ({} bytes above the ancestor, {} in it); nothing \
                 was written",
                d.logical_sector_size(),
                a.logical_sector_size()
            )));
        }
        if d.format() != a.format() {
            return Err(Error::refused(
                "the chain mixes VHD and VHDX: the disk above a VHDX ancestor must be a VHDX \
                 to record its new DataWriteGuid; nothing was written",
            ));
        }
    }
    Ok(())
}

/// The record beside ANCESTOR, when it describes this merge (then it is resumed); a record of
/// another merge is a refusal.
pub(super) fn matching_record(o: &Opened, ancestor: &Path) -> Result<Option<Record>> {
    let loaded = record::load(ancestor).map_err(|e| {
        Error::refused(format!(
            "a merge record beside {} cannot be used ({e}): a merge into it was \
             interrupted; see `vhdkit check {}` (nothing was written)",
            ancestor.display(),
            ancestor.display()
        ))
    })?;
    let Some(r) = loaded else {
        return Ok(None);
    };
    let mine = o.record(r.new_id)?;
    let a = o.ancestor()?;
    if r.is_ancestor(a.identity()) && r.format == mine.format && r.merged == mine.merged {
        return Ok(Some(r));
    }
    let top = r
        .merged
        .first()
        .map_or_else(String::new, |m| m.path.display().to_string());
    Err(Error::refused(format!(
        "an unfinished merge of {top} into {} is recorded: rerun `vhdkit merge {top}` or \
         `vhdkit repair {}`; nothing was written",
        ancestor.display(),
        ancestor.display()
    )))
}

/// See [`MergePlan::new`].
pub(super) fn plan(child: &Path, into: Option<&Path>, opts: &ChainOptions) -> Result<MergePlan> {
    if !crate::fsx::entry_exists(child) {
        if let Some(p) = finishing(child, into, opts)? {
            return Ok(p);
        }
    }
    let o = open(child, into, opts)?;
    let ancestor = o
        .paths
        .get(o.k)
        .cloned()
        .ok_or_else(|| Error::internal("no ancestor path"))?;
    siblings::refuse_siblings(&o.paths, o.k, opts)?;
    let found = matching_record(&o, &ancestor)?;
    let resuming = found.is_some();
    let rec = match found {
        Some(r) => r,
        None => o.record(None)?,
    };
    let walk = Walk::of(&o.view, o.k)?;
    let t = walk.count(&o.view)?;
    let a = o.ancestor()?;
    let mut notes: Vec<String> = o.view.layers().iter().flat_map(Disk::warnings).collect();
    if let (true, Some(r)) = (resuming, Some(&rec)) {
        notes.push(match r.phase {
            Phase::Copying => "an unfinished merge of these disks is recorded: it is resumed \
                               (the copy is done again)"
                .into(),
            Phase::Deleting => "an unfinished merge of these disks is recorded: its copy \
                                verified, only the deletion of the merged files is left"
                .into(),
        });
    }
    Ok(MergePlan {
        child: child.to_path_buf(),
        ancestor,
        format: a.format(),
        merged: o.paths.iter().take(o.k).cloned().collect(),
        changes: changes(&o, &rec)?,
        blocks: t.blocks,
        bytes_to_copy: t.bytes,
        block_size: a.block_size().unwrap_or(0),
        resuming,
        notes,
        chain: opts.clone(),
        new_id: rec.new_id,
    })
}

/// The VHDX field changes before the copy: D's `parent_linkage2`, then ANCESTOR's
/// DataWriteGuid (none for VHD).
fn changes(o: &Opened, rec: &Record) -> Result<Vec<FieldChange>> {
    let Some(g) = rec.new_id else {
        return Ok(Vec::new());
    };
    let d = o
        .view
        .layers()
        .get(o.k - 1)
        .ok_or_else(|| Error::internal("no disk above the ancestor"))?;
    let name = |i: usize| {
        o.paths
            .get(i)
            .map_or_else(String::new, |p| p.display().to_string())
    };
    let old2 = d
        .parent_linkage()
        .and_then(|l| l.alternate_id)
        .map_or_else(|| "(absent)".to_string(), |u| braced(&u));
    let mut out = vec![
        FieldChange {
            structure: format!("{}: vhdx parent locator", name(o.k - 1)),
            field: "parent_linkage2".into(),
            old: old2,
            new: braced(&g),
        },
        FieldChange {
            structure: format!("{}: vhdx header", name(o.k)),
            field: "DataWriteGuid".into(),
            old: braced(&o.ancestor()?.identity()),
            new: braced(&g),
        },
    ];
    let ids = o
        .view
        .layers()
        .first()
        .and_then(super::apply::virtual_disk_id);
    let now = super::apply::virtual_disk_id(o.ancestor()?);
    if let (Some(id), Some(now)) = (ids, now) {
        if id != now {
            out.push(FieldChange {
                structure: format!("{}: vhdx metadata", name(o.k)),
                field: "Virtual Disk ID".into(),
                old: braced(&now),
                new: braced(&id),
            });
        }
    }
    Ok(out)
}

/// CHILD is gone: a merge that was deleting the merged files (CHILD first) stopped. Its
/// record lies beside ANCESTOR, looked for in CHILD's folder, `into`'s and the search folders;
/// when one names CHILD in phase deleting, the plan is to finish it.
fn finishing(child: &Path, into: Option<&Path>, opts: &ChainOptions) -> Result<Option<MergePlan>> {
    let folder = crate::sidefile::folder_of(child);
    let Some(name) = child.file_name() else {
        return Ok(None);
    };
    let Ok(want) = std::fs::canonicalize(folder).map(|f| f.join(name)) else {
        return Ok(None);
    };
    let mut dirs = vec![folder.to_path_buf()];
    dirs.extend(into.map(|i| crate::sidefile::folder_of(i).to_path_buf()));
    dirs.extend(opts.search_dirs.iter().cloned());
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten().take(100_000) {
            let path = e.path();
            let Some(ancestor) = record_owner(&path) else {
                continue;
            };
            let Ok(Some(r)) = record::load(&ancestor) else {
                continue;
            };
            if r.phase == Phase::Deleting && r.merged.iter().any(|m| m.path == want) {
                return Ok(Some(finishing_plan(child, ancestor, &r, opts)));
            }
        }
    }
    Ok(None)
}

/// The disk a merge record at `path` belongs to (its name without the record's suffix).
fn record_owner(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let disk = name.strip_suffix(".vhdkit-merge")?;
    (!disk.is_empty()).then(|| path.with_file_name(disk))
}

fn finishing_plan(child: &Path, ancestor: PathBuf, r: &Record, opts: &ChainOptions) -> MergePlan {
    MergePlan {
        child: child.to_path_buf(),
        ancestor,
        format: r.format,
        merged: r.merged.iter().map(|m| m.path.clone()).collect(),
        changes: Vec::new(),
        blocks: 0,
        bytes_to_copy: 0,
        block_size: 0,
        resuming: true,
        notes: vec![
            "an unfinished merge of these disks is recorded: its copy verified, only the \
             deletion of the merged files is left (the child is gone already)"
                .into(),
        ],
        chain: opts.clone(),
        new_id: r.new_id,
    }
}
