//! The first steps of a share plan: which disks are whose children, which identities are
//! parents (the groups), their order by level, and the content digests of groups with more
//! than one file.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use super::scan::{FileKey, Scan, ScannedDisk};
use super::{prove, ContentDigest, NoteReason, PathNote, Progress, ShareOptions};
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
    /// File key -> the file as it was proved, for the members proved.
    pub stamps: HashMap<FileKey, prove::Stamp>,
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

/// Prove the members of every group with more than one file equal or not (`prove`: each copy
/// read once, side by side), as one "hash" phase of `progress` over their virtual sizes.
pub(super) fn hash_members(
    sc: &Scan,
    groups: &BTreeMap<GKey, Vec<usize>>,
    opts: &ShareOptions,
    progress: &mut dyn Progress,
) -> Result<Hashed> {
    let to_hash: Vec<(u64, &Vec<usize>)> = groups
        .iter()
        .filter(|(_, m)| m.len() > 1)
        .map(|(k, m)| (k.2, m))
        .collect();
    let total: u64 = to_hash
        .iter()
        .flat_map(|(_, m)| m.iter())
        .filter_map(|&i| sc.disks.get(i))
        .map(|d| d.virtual_size)
        .sum();
    progress.start("hash", Some(total));
    let mut out = Hashed {
        digests: HashMap::new(),
        bytes_hashed: 0,
        bytes_read: 0,
        stamps: HashMap::new(),
    };
    for (size, members) in to_hash {
        let (ids, paths): (Vec<usize>, Vec<&std::path::Path>) = members
            .iter()
            .filter_map(|&i| sc.disks.get(i).map(|d| (i, d.path.as_path())))
            .unzip();
        let proved = match prove::prove(&paths, size, &opts.chain, progress) {
            Ok(p) => p,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        // Every byte read enters the proof: compared with the other copies, or hashed.
        out.bytes_read += proved.read;
        out.bytes_hashed += proved.read;
        for ((i, d), s) in ids.into_iter().zip(proved.digests).zip(proved.stamps) {
            if let (Ok(_), Some(s), Some(disk)) = (&d, s, sc.disks.get(i)) {
                out.stamps.insert(disk.key.clone(), s);
            }
            out.digests.insert(i, d);
        }
    }
    progress.finish();
    Ok(out)
}
