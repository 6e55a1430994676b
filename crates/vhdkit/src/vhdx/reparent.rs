//! Repointing a differencing VHDX at another copy of its parent: the parent locator metadata
//! item is rewritten through the log, in one atomic commit (`update::Session::commit`).
//! Produces a [`crate::txn::Plan`] ([`plan`]) and applies it ([`apply`]).
//!
//! What a reparent asks of the link editor (`locator::link`, which holds the rules for
//! placing and re-serialising the item; FORMAT.md B.6, B.7, B.9):
//! - `relative_path` and `absolute_win32_path` get the new paths (UTF-16LE); a key the caller
//!   does not want (`--relative-only` / `--absolute-only`) is removed; a wanted key that was
//!   missing is added (after `parent_linkage`, in Windows' order).
//! - `volume_path` is removed: a `\\?\Volume{GUID}\` path can only be learnt on Windows, and a
//!   stale one would still point at the old parent.
//! - `parent_linkage` is kept, unless the caller rewrites the linkage (identity mismatch
//!   ignored or contents verified): then it becomes the new parent's DataWriteGuid (braced,
//!   lowercase) and `parent_linkage2` is removed (it described the old parent).
//! - Every other key is kept byte for byte. The item may move within the metadata region when
//!   it outgrows its place; no room there is a refusal.
//!
//! Never written: payload blocks, the BAT, sector bitmaps, the region tables, any other item.
//! The header DataWriteGuid stays (the child's own children link to it); the session gives the
//! file a new FileWriteGuid (MS-VHDX 2.2.2).
//!
//! [`apply`] refuses when the current header is no longer the one the plan was made on
//! (sequence number, FileWriteGuid, DataWriteGuid), replays a dirty log to the file first
//! (MS-VHDX requires it before any other change), checks that every byte the plan replaces is
//! still what the plan read, then commits all writes through the log.

use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::format::{HEADER_OFFSETS, HEADER_SIZE, KIB4, PARENT_LOCATOR_GUID};
use super::header;
use super::locator::link::{self, KeyEdit, LinkEdit, LinkPlan, Placement};
use super::locator::{
    KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE2, KEY_RELATIVE_PATH, KEY_VOLUME_PATH,
};
pub use super::log::LogReplay;
pub(crate) use super::log::{inspect_log, replay_log};
use super::log::{log_entry_bytes, summary, Counting};
use super::update::{self, Session};
use super::VhdxFile;
use crate::disk::{DiskType, OpenOptions, Parsed};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::simulate::Simulated;
use crate::source::{read_struct, source_len, Source};
use crate::table::LazyTable;
use crate::txn::{Plan, Sink, WriteOp};

const PL: &str = "vhdx parent locator";

/// What the new locator should say.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// `relative_path`; `None` removes it.
    pub relative: Option<String>,
    /// `absolute_win32_path`; `None` removes it.
    pub absolute: Option<String>,
    /// New `parent_linkage` (the new parent's DataWriteGuid) when the linkage is rewritten;
    /// `parent_linkage2` is then removed.
    pub linkage: Option<Uuid>,
}

/// The child's current header when the plan was made; [`apply`] refuses a file whose current
/// header differs (another writer came in between).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct HeaderGuard {
    /// SequenceNumber of the current header.
    pub sequence_number: u64,
    /// FileWriteGuid (replaced by the apply session).
    pub file_write_guid: Uuid,
    /// DataWriteGuid (never changed by a reparent).
    pub data_write_guid: Uuid,
    /// The log was dirty: it is replayed to the file before the change.
    pub log_dirty: bool,
}

impl HeaderGuard {
    /// The guard of `file` as parsed: its current header and whether its log was dirty.
    pub(crate) fn of(file: &VhdxFile) -> Result<HeaderGuard> {
        let info = file.info();
        let sequence_number = info
            .headers
            .iter()
            .find(|h| h.current)
            .and_then(|h| h.sequence_number)
            .ok_or_else(|| Error::internal("no current vhdx header"))?;
        Ok(HeaderGuard {
            sequence_number,
            file_write_guid: info.file_write_guid,
            data_write_guid: info.data_write_guid,
            log_dirty: !info.log_guid.is_nil(),
        })
    }
}

/// The plan and what the caller should tell the user.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The metadata writes (all committed through the log at once).
    pub plan: Plan,
    /// The header the plan was made on.
    pub guard: HeaderGuard,
    /// Bytes [`apply`] will write to the file on a clean log: four header updates, the log
    /// entry, and the metadata sectors applied from it.
    pub predicted_bytes: u64,
    /// Facts worth showing.
    pub notes: Vec<String>,
    /// Problems that did not stop the plan.
    pub warnings: Vec<String>,
    /// The simulated result, as parsed (headers and log as they were: see
    /// [`Planned::simulation_is`]).
    pub(crate) simulated: Simulated,
}

impl Planned {
    /// Whether the simulated result is exactly `file` after [`apply`]: apply writes the planned
    /// metadata and, besides, only the two header slots and the log, which the simulation left
    /// as they were. So it is when the log was clean (nothing replayed to the file), the
    /// simulated headers were both valid (no header warning a parse of `file` would now lack),
    /// and the headers read back from `file` (only them) are both valid, name no log, and keep
    /// the DataWriteGuid, with the length unchanged.
    pub(crate) fn simulation_is(&self, simulated: &VhdxFile, file: &dyn Source) -> bool {
        if self.guard.log_dirty || !simulated.info.headers.iter().all(|h| h.valid) {
            return false;
        }
        let Ok(now) = header::read_headers(file) else {
            return false;
        };
        now.warnings.is_empty()
            && now.slots.iter().all(|s| s.header.is_some())
            && now.current.log_guid.is_nil()
            && now.current.data_write_guid == self.guard.data_write_guid
            && source_len(file).ok() == Some(self.plan.new_len)
    }
}

/// What `apply` wrote, by structure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Applied {
    /// Write calls made to the file.
    pub writes: usize,
    /// Flushes.
    pub syncs: usize,
    /// Bytes written to the two header slots.
    pub header_bytes: u64,
    /// Bytes written into the log region.
    pub log_bytes: u64,
    /// Bytes written elsewhere (metadata sectors applied from the log, a replayed log's targets).
    pub metadata_bytes: u64,
    /// A dirty log replayed to the file first.
    pub log_replayed: Option<LogReplay>,
}

impl Applied {
    /// Every byte written to the file.
    pub fn total_bytes(&self) -> u64 {
        self.header_bytes + self.log_bytes + self.metadata_bytes
    }
}

/// Plan the locator rewrite of `file`, a differencing VHDX already parsed with `opts` (a dirty
/// log replayed in memory); only the simulated result is parsed again, from an overlay on
/// `file`'s own source.
pub fn plan(file: VhdxFile, opts: &OpenOptions, t: &Targets) -> Result<Planned> {
    let child = child_of(file)?;
    let mut notes = child.notes();
    let link = link::plan(&child.file, &t.edit(), &opts.limits)?;
    notes.extend(link_notes(&link));
    let LinkPlan {
        item,
        item_file_offset,
        writes,
        changes,
        ..
    } = link;
    let predicted_bytes = log_cost(&writes, child.log_length)?;
    let plan = Plan {
        changes,
        writes,
        old_len: child.file_len,
        new_len: child.file_len,
    };
    let guard = child.guard.clone();
    let after = verify(child, &plan, &item, item_file_offset, t, opts)?;
    Ok(Planned {
        plan,
        guard,
        predicted_bytes,
        notes,
        warnings: Vec::new(),
        simulated: Simulated::new(Parsed::Vhdx(Box::new(after))),
    })
}

impl Targets {
    /// The link edit a reparent asks for: both paths as targeted, `volume_path` removed (a
    /// volume GUID path for the new parent can only be learnt on Windows, and a stale one would
    /// still point at the old parent), the linkage when it is rewritten; the item may move.
    fn edit(&self) -> LinkEdit {
        let path = |p: &Option<String>| p.clone().map_or(KeyEdit::Drop, KeyEdit::Set);
        LinkEdit {
            relative: path(&self.relative),
            absolute: path(&self.absolute),
            volume: KeyEdit::Drop,
            linkage: self.linkage,
            linkage2: None,
            placement: Placement::Anywhere,
        }
    }
}

/// The child as the plan sees it: opened once, a dirty log replayed in memory.
pub(super) struct Child {
    pub(super) file: VhdxFile,
    pub(super) guard: HeaderGuard,
    /// Bytes in the log ring (from the current header).
    pub(super) log_length: u64,
    /// Length of the file (as replayed).
    pub(super) file_len: u64,
}

/// The child as parsed (the one parse of the file as it is), checked to be differencing.
/// Parsing replayed a dirty log in memory: the plan is made on the file as it will be once
/// apply has replayed it to disk.
pub(super) fn child_of(file: VhdxFile) -> Result<Child> {
    if file.shape.disk_type != DiskType::Differencing {
        return Err(Error::refused(
            "not a differencing disk (file parameters HasParent is clear)",
        ));
    }
    let guard = HeaderGuard::of(&file)?;
    let log_length = file.info().log.log_length;
    let file_len = source_len(&*file.src)?;
    Ok(Child {
        file,
        guard,
        log_length,
        file_len,
    })
}

impl Child {
    fn notes(&self) -> Vec<String> {
        if !self.guard.log_dirty {
            return Vec::new();
        }
        vec![
            "the child's log is dirty (an earlier writer stopped before finishing); it is \
             replayed to the file first, as MS-VHDX requires before any change, and the plan is \
             made on the replayed contents"
                .to_string(),
        ]
    }
}

/// What the user is told about the keys removed and a moved item.
fn link_notes(link: &LinkPlan) -> Vec<String> {
    let mut notes = Vec::new();
    for d in &link.dropped {
        if d.key.eq_ignore_ascii_case(KEY_PARENT_LINKAGE2) {
            notes.push(format!(
                "{} ({}) is removed: it described the old parent, and the linkage is \
                 rewritten to the new one",
                d.key, d.old
            ));
        } else if d.key == KEY_VOLUME_PATH {
            notes.push(
                "volume_path is removed: it names the old parent by volume GUID, and a volume \
                 GUID path for the new parent can only be learnt on Windows (a given Windows \
                 path is a drive or UNC path, which goes into absolute_win32_path)"
                    .to_string(),
            );
        }
    }
    if link.new_offset != link.old_offset {
        notes.push(format!(
            "the new parent locator ({} bytes) does not fit in its old place ({} bytes at \
             metadata offset {:#x}): it moves to metadata offset {:#x}, and its old bytes are \
             zeroed",
            link.item.len(),
            link.old_length,
            link.old_offset,
            link.new_offset
        ));
    }
    notes
}

/// Bytes apply writes on a clean log: four header updates, the one log entry, and the sectors
/// applied from it. The entry must fit the ring with a sector to spare.
pub(crate) fn log_cost(writes: &[WriteOp], log_length: u64) -> Result<u64> {
    let (sectors, entry_bytes) = log_entry_bytes(writes);
    if entry_bytes.saturating_add(KIB4) > log_length {
        return Err(Error::refused(format!(
            "the change needs a {entry_bytes}-byte log entry ({sectors} sectors), but the log \
             is {log_length} bytes"
        )));
    }
    Ok(if writes.is_empty() {
        0
    } else {
        4 * HEADER_SIZE as u64 + entry_bytes + sectors * KIB4
    })
}

/// Simulate the plan over the child and re-open the result (the second and last parse): it must
/// parse, carry the new item, link as targeted, and keep everything a reader of the virtual
/// disk sees. Returns it as parsed.
fn verify(
    child: Child,
    plan: &Plan,
    item: &[u8],
    item_file_offset: u64,
    t: &Targets,
    opts: &OpenOptions,
) -> Result<VhdxFile> {
    let mut sim: Vec<(u64, Vec<u8>)> = plan.write_pairs();
    if child.guard.log_dirty {
        sim.extend(clean_headers(&*child.file.src)?);
    }
    let before = Kept::of(&child.file)?;
    let old_linkage = child.file.linkage.as_ref().map(|l| l.id);
    // Only the digest of the table is kept: the file before and the simulated file after are
    // never both held whole (a 64 TiB disk's table is tens of MiB).
    let VhdxFile { src, .. } = child.file;
    let src = Box::new(src);
    let after = crate::simulate::reopen(src, sim, child.file_len, |s| VhdxFile::open(s, opts))?;
    before.check_same(&Kept::of(&after)?)?;
    let mut got = vec![0u8; item.len()];
    read_struct(&*after.src, item_file_offset, &mut got, PL)?;
    check(got == item, "parent locator item")?;
    let want_id = t.linkage.or(old_linkage);
    check(
        after.linkage.as_ref().map(|l| l.id) == want_id,
        "parent linkage",
    )?;
    let path = |k: &str| {
        after
            .locators
            .iter()
            .find(|l| l.kind == k)
            .and_then(|l| l.path.clone())
    };
    check(path(KEY_RELATIVE_PATH) == t.relative, "relative_path")?;
    check(
        path(KEY_ABSOLUTE_WIN32_PATH) == t.absolute,
        "absolute_win32_path",
    )?;
    check(path(KEY_VOLUME_PATH).is_none(), "volume_path")?;
    Ok(after)
}

/// Both header slots as apply leaves them once a dirty log is replayed (log GUID cleared), so
/// that the re-open does not replay the log again over the planned writes.
pub(super) fn clean_headers(src: &dyn Source) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut h = header::read_headers(src)?.current;
    h.log_guid = Uuid::nil();
    let b = update::encode_header(&h);
    Ok(HEADER_OFFSETS.iter().map(|&o| (o, b.clone())).collect())
}

use crate::simulate::same as check;

/// What a reparent must not change, apart from the locator item.
struct Kept {
    bat_digest: [u8; 32],
    geometry: (u64, u32, u32),
    data_write_guid: Uuid,
    /// Every other metadata item: (id, offset, length, flags).
    items: Vec<(Uuid, u32, u32, u32)>,
}

impl Kept {
    fn of(f: &VhdxFile) -> Result<Kept> {
        let pl = crate::guid::from_vhdx_bytes(PARENT_LOCATOR_GUID);
        Ok(Kept {
            bat_digest: table_digest(&f.bat.table, &*f.src)?,
            geometry: (
                f.shape.virtual_size,
                f.logical_sector_size,
                f.physical_sector_size,
            ),
            data_write_guid: f.data_write_guid,
            items: f
                .info
                .metadata_items
                .iter()
                .filter(|i| i.guid != pl || i.is_user)
                .map(|i| (i.guid, i.offset, i.length, i.flags))
                .collect(),
        })
    }

    fn check_same(&self, after: &Kept) -> Result<()> {
        check(
            after.bat_digest == self.bat_digest,
            "block allocation table",
        )?;
        check(after.geometry == self.geometry, "geometry")?;
        check(
            after.data_write_guid == self.data_write_guid,
            "DataWriteGuid",
        )?;
        check(after.items == self.items, "set of other metadata items")
    }
}

/// SHA-256 of a BAT's entries, streamed from the file.
fn table_digest(table: &LazyTable, src: &dyn Source) -> Result<[u8; 32]> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    table.scan(src, 0, |_, e| {
        h.update(e.to_le_bytes());
        Ok(())
    })?;
    Ok(h.finalize().into())
}

/// Apply `plan` (made by [`plan`] on the header `guard`) to the VHDX file `sink`.
pub fn apply(
    sink: &dyn Sink,
    guard: &HeaderGuard,
    plan: &Plan,
    limits: &Limits,
) -> Result<Applied> {
    let headers = header::read_headers(sink)?;
    let cur = headers.current.clone();
    if (
        cur.sequence_number,
        cur.file_write_guid,
        cur.data_write_guid,
    ) != (
        guard.sequence_number,
        guard.file_write_guid,
        guard.data_write_guid,
    ) {
        return Err(Error::refused(format!(
            "the file changed since the plan was made (current header: sequence number {}, \
             FileWriteGuid {}; the plan was made on {} and {}); plan again",
            cur.sequence_number, cur.file_write_guid, guard.sequence_number, guard.file_write_guid
        )));
    }
    let seq = update::dirty_log(sink, &cur, limits.max_log_replay_bytes)?;
    let counting = Counting::new(
        sink,
        cur.log_offset..cur.log_offset.saturating_add(u64::from(cur.log_length)),
    );
    let mut session = Session::new(&counting, cur, headers.current_index);
    let mut log_replayed = None;
    if let Some(seq) = &seq {
        session.replay_to_disk(seq)?;
        log_replayed = Some(summary(seq));
    }
    for w in &plan.writes {
        let mut now = vec![0u8; w.old.len()];
        read_struct(sink, w.offset, &mut now, PL)?;
        if now != w.old {
            return Err(Error::refused(format!(
                "the file changed since the plan was made ({} at {:#x} differs); plan again",
                w.what, w.offset
            )));
        }
    }
    let writes: Vec<(u64, Vec<u8>)> = plan.write_pairs();
    session.commit(&writes)?;
    Ok(Applied {
        writes: counting.writes.load(Ordering::SeqCst),
        syncs: counting.syncs.load(Ordering::SeqCst),
        header_bytes: counting.header_bytes.load(Ordering::SeqCst),
        log_bytes: counting.log_bytes.load(Ordering::SeqCst),
        metadata_bytes: counting.other_bytes.load(Ordering::SeqCst),
        log_replayed,
    })
}

/// A merge's first write (issue 12, MS-VHDX footnote 12): set `parent_linkage2` of the
/// differencing VHDX in `file` to `guid`, the DataWriteGuid its parent is about to take,
/// through the file's own log; `parent_linkage`, every other key and the DataWriteGuid are kept
/// (only a new FileWriteGuid is taken). Nothing is written when the key holds `guid` already.
/// Returns the bytes written.
pub(crate) fn set_linkage2<S: Sink + Clone + 'static>(
    file: &S,
    opts: &OpenOptions,
    guid: Uuid,
) -> Result<u64> {
    let child = child_of(VhdxFile::open(Box::new(file.clone()), opts)?)?;
    let mut edit = LinkEdit::keep_all(Placement::Anywhere);
    edit.linkage2 = Some(guid);
    let link = link::plan(&child.file, &edit, &opts.limits)?;
    if link.writes.is_empty() && !child.guard.log_dirty {
        return Ok(0);
    }
    let plan = Plan {
        changes: link.changes,
        writes: link.writes,
        old_len: child.file_len,
        new_len: child.file_len,
    };
    Ok(apply(file, &child.guard, &plan, &opts.limits)?.total_bytes())
}

/// The end of a merge (MS-VHDX 2.6.1: the merged-into parent takes the child's IsVirtualDisk
/// metadata): set the Virtual Disk ID item of the VHDX in `file` to `id`, through the log.
/// The DataWriteGuid is kept (the linkage of the disk above names it); a dirty log is replayed
/// first. Returns whether anything was written (nothing when the item holds `id` already).
pub(crate) fn set_virtual_disk_id(file: &dyn Sink, opts: &OpenOptions, id: Uuid) -> Result<bool> {
    let headers = header::read_headers(file)?;
    let mut session = Session::new(file, headers.current.clone(), headers.current_index);
    if let Some(seq) = update::dirty_log(file, &headers.current, opts.limits.max_log_replay_bytes)?
    {
        session.replay_to_disk(&seq)?;
    }
    let cur = session.current().clone();
    let layout = super::read_layout(file, source_len(file)?, &cur, &opts.limits)?;
    if layout.meta.virtual_disk_id == id {
        return Ok(false);
    }
    let item = layout
        .meta
        .items
        .iter()
        .find(|i| i.name == Some("virtual_disk_id"))
        .ok_or_else(|| Error::internal("a VHDX without a Virtual Disk ID item"))?;
    session.commit(&[(item.file_offset, crate::guid::to_vhdx_bytes(&id).to_vec())])?;
    Ok(true)
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;
    use crate::vhdx::format::HEADER_OFFSETS;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

    /// Counts the reads of the file identifier (one per full parse: only `VhdxFile::open`
    /// reads it) and of the first header slot (one per header parse).
    #[derive(Debug)]
    struct Counted {
        bytes: Vec<u8>,
        opens: Arc<AtomicUsize>,
        headers: Arc<AtomicUsize>,
    }

    impl Source for Counted {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            if offset == 0 {
                self.opens.fetch_add(1, Ordering::SeqCst);
            }
            if offset == HEADER_OFFSETS[0] {
                self.headers.fetch_add(1, Ordering::SeqCst);
            }
            self.bytes.read_exact_at(buf, offset)
        }
        fn len(&self) -> std::io::Result<u64> {
            Source::len(&self.bytes)
        }
    }

    fn counted_plan(bytes: Vec<u8>) -> (Planned, usize, usize) {
        let opens = Arc::new(AtomicUsize::new(0));
        let headers = Arc::new(AtomicUsize::new(0));
        let src = Box::new(Counted {
            bytes,
            opens: opens.clone(),
            headers: headers.clone(),
        });
        let t = Targets {
            relative: Some(r"..\new\base.vhdx".into()),
            absolute: Some(r"D:\new\base.vhdx".into()),
            linkage: None,
        };
        let opts = OpenOptions::default();
        let p = plan(VhdxFile::open(src, &opts).unwrap(), &opts, &t).unwrap();
        (
            p,
            opens.load(Ordering::SeqCst),
            headers.load(Ordering::SeqCst),
        )
    }

    /// The plan parses the child twice: once as it is, once as simulated. The headers are read
    /// once more only to simulate the replay of a dirty log (before the link editor, they were
    /// always read once more, and the metadata table and locator item parsed again by hand).
    #[test]
    fn the_child_is_parsed_twice() {
        let mut c = VhdxBuilder::new(Kind::Differencing, 8 << 20, 1 << 20, 512);
        c.relative_path = Some(r"..\old\base.vhdx".into());
        c.write(4096, &[0x55; 4096]);
        let mut built = c.build();
        let (p, opens, headers) = counted_plan(built.bytes.clone());
        assert!(!p.plan.writes.is_empty());
        assert_eq!((opens, headers), (2, 2));

        let bat = built.layout.bat_offset;
        built.make_dirty(&[bat], &[], &Default::default());
        let (p, opens, headers) = counted_plan(built.bytes);
        assert!(p.guard.log_dirty);
        assert_eq!((opens, headers), (2, 3));
    }
}
