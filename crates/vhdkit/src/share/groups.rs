//! The first steps of a share plan: which disks are whose children, which identities are
//! parents (the groups), their order by level, and the content digests of groups with more
//! than one file.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::scan::{FileKey, Scan, ScannedDisk};
use super::{digest, ContentDigest, NoteReason, PathNote, Progress, ShareOptions};
use crate::disk::DiskFormat;
use crate::error::Result;

/// A group's identity: format (0 VHD, 1 VHDX), the id children record, virtual size.
pub(super) type GKey = (u8, Uuid, u64);

fn gkey(d: &ScannedDisk) -> GKey {
    (u8::from(d.format == DiskFormat::Vhdx), d.id, d.virtual_size)
}

/// Parent key -> its children (disks under the roots), and the children whose parent does not
/// resolve.
pub(super) fn children_of(sc: &Scan) -> (HashMap<FileKey, Vec<usize>>, Vec<PathNote>) {
    let mut children_of: HashMap<FileKey, Vec<usize>> = HashMap::new();
    let mut unresolved = Vec::new();
    for (i, d) in sc.disks.iter().enumerate() {
        if d.outside {
            continue;
        }
        let Some(p) = &d.parent else { continue };
        match &p.resolved_key {
            Some(k) => children_of.entry(k.clone()).or_default().push(i),
            None => unresolved.push(PathNote::new(
                &d.path,
                NoteReason::ParentUnresolved {
                    id: p.expected_id,
                    failure: p.failure.clone().unwrap_or_default(),
                },
            )),
        }
    }
    (children_of, unresolved)
}

/// Every disk grouped by identity, for the identities that are some child's parent.
pub(super) fn group_identities(
    sc: &Scan,
    children_of: &HashMap<FileKey, Vec<usize>>,
) -> BTreeMap<GKey, Vec<usize>> {
    let idx = sc.by_key();
    let parent_gkeys: HashSet<GKey> = children_of
        .keys()
        .filter_map(|k| idx.get(k))
        .filter_map(|&i| sc.disks.get(i))
        .map(gkey)
        .collect();
    let mut groups: BTreeMap<GKey, Vec<usize>> = BTreeMap::new();
    for (i, d) in sc.disks.iter().enumerate() {
        let k = gkey(d);
        if parent_gkeys.contains(&k) {
            groups.entry(k).or_default().push(i);
        }
    }
    groups
}

/// Groups ordered by level (the deepest member's number of ancestors), then identity.
pub(super) fn by_level(
    sc: &Scan,
    groups: BTreeMap<GKey, Vec<usize>>,
) -> Vec<(usize, GKey, Vec<usize>)> {
    let mut ordered: Vec<(usize, GKey, Vec<usize>)> = groups
        .into_iter()
        .map(|(k, m)| {
            let level = m.iter().map(|&i| sc.ancestors(i)).max().unwrap_or(0);
            (level, k, m)
        })
        .collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    ordered
}

/// Content digests of the members of groups with more than one file.
pub(super) struct Hashed {
    /// Disk index -> digest, or why its chain could not be read.
    pub digests: HashMap<usize, ContentDigest>,
    pub bytes_hashed: u64,
    pub bytes_read: u64,
}

impl Hashed {
    /// The members that could not be read through their chains, as skipped disks.
    pub fn unreadable<'a>(&'a self, sc: &'a Scan) -> impl Iterator<Item = PathNote> + 'a {
        self.digests
            .iter()
            .filter_map(|(&i, r)| match (r, sc.disks.get(i)) {
                (Err(e), Some(d)) => Some(PathNote::new(
                    d.path.clone(),
                    NoteReason::UnreadableThroughChain(e.clone()),
                )),
                _ => None,
            })
    }
}

pub(super) fn hash_members(
    sc: &Scan,
    groups: &BTreeMap<GKey, Vec<usize>>,
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<Hashed> {
    let to_hash: Vec<usize> = groups
        .values()
        .filter(|m| m.len() > 1)
        .flatten()
        .copied()
        .collect();
    let total: u64 = to_hash
        .iter()
        .filter_map(|&i| sc.disks.get(i))
        .map(|d| d.virtual_size)
        .sum();
    progress.start("hash", Some(total));
    let mut out = Hashed {
        digests: HashMap::new(),
        bytes_hashed: 0,
        bytes_read: 0,
    };
    for &i in &to_hash {
        // Hashing is the long part of a plan: a cancel stops it between disks.
        if progress.cancelled() {
            progress.finish();
            return Err(crate::progress::cancelled());
        }
        let Some(d) = sc.disks.get(i) else { continue };
        let r = digest::chain_digest(&d.path, &opts.chain, &mut |n| progress.advance(n));
        let r = match r {
            Ok((h, read)) => {
                out.bytes_hashed += d.virtual_size;
                out.bytes_read += read;
                Ok(h)
            }
            Err(e) => Err(e.to_string()),
        };
        out.digests.insert(i, r);
    }
    progress.finish();
    Ok(out)
}
