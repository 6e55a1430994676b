//! Repointing a differencing VHDX at another copy of its parent: the parent locator metadata
//! item is rewritten through the log, in one atomic commit (`update::Session::commit`).
//! Produces a [`crate::txn::Plan`] ([`plan`]) and applies it ([`apply`]).
//!
//! What changes (FORMAT.md B.6, B.7, B.9):
//! - `relative_path` and `absolute_win32_path` get the new paths (UTF-16LE); a key the caller
//!   does not want (`--relative-only` / `--absolute-only`) is removed; a wanted key that was
//!   missing is added (after `parent_linkage`, in Windows' order).
//! - `volume_path` is removed: a `\\?\Volume{GUID}\` path can only be learnt on Windows, and a
//!   stale one would still point at the old parent.
//! - `parent_linkage` is kept, unless the caller rewrites the linkage (identity mismatch
//!   ignored or contents verified): then it becomes the new parent's DataWriteGuid (braced,
//!   lowercase) and `parent_linkage2` is removed (it described the old parent).
//! - Every other key is kept byte for byte. The item is re-serialised compactly (header,
//!   entries, then key and value strings in order, as Windows lays it out).
//! - Placement: the item stays at its offset when it fits there (it may grow into free space
//!   right after it); otherwise it moves to the first free, 8-byte aligned space after the 64 KiB
//!   table that overlaps no other item. Bytes of the old item not covered by the new one are
//!   zeroed (no stale path remains). The metadata table entry gets the new offset and length.
//!   No room in the region is a refusal: growing the metadata region is not supported.
//!
//! Never written: payload blocks, the BAT, sector bitmaps, the region tables, any other item.
//! The header DataWriteGuid stays (the child's own children link to it); the session gives the
//! file a new FileWriteGuid (MS-VHDX 2.2.2).
//!
//! [`apply`] refuses when the current header is no longer the one the plan was made on
//! (sequence number, FileWriteGuid, DataWriteGuid), replays a dirty log to the file first
//! (MS-VHDX requires it before any other change), checks that every byte the plan replaces is
//! still what the plan read, then commits all writes through the log.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use uuid::Uuid;

use super::format::{
    HEADER_OFFSETS, HEADER_SIZE, KIB4, KIB64, MAX_METADATA_ITEM_BYTES, METADATA_TABLE_SIZE,
    META_IS_USER, PARENT_LOCATOR_GUID,
};
use super::header::{self, ParsedHeader};
use super::locator::{self, utf16le};
pub use super::log::LogReplay;
pub(crate) use super::log::{inspect_log, replay_log};
use super::log::{log_entry_bytes, summary, Counting};
use super::update::{self, Session};
use super::VhdxFile;
use crate::disk::{DiskType, OpenOptions};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::{read_struct, source_len, OverlaySource, Source};
use crate::txn::{FieldChange, Plan, Sink, WriteOp};

/// Longest path written (UTF-16 code units): Windows' limit, which also fits the 16-bit value
/// length of a locator entry (65 534 bytes).
pub const MAX_PATH_UNITS: usize = 32_767;

const PL: &str = "vhdx parent locator";
const TABLE: &str = "vhdx metadata table";
const K_LINKAGE: &str = "parent_linkage";
const K_LINKAGE2: &str = "parent_linkage2";
const K_RELATIVE: &str = "relative_path";
const K_ABSOLUTE: &str = "absolute_win32_path";
const K_VOLUME: &str = "volume_path";

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
}

/// What [`apply`] wrote, by structure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

use crate::util::from_utf16le as decode;

fn show(b: &[u8]) -> String {
    decode(b).unwrap_or_else(|| format!("({} bytes, not valid UTF-16)", b.len()))
}

use crate::util::braced;

use crate::util::le_u32;

use crate::util::overlaps;

/// One metadata table entry, raw.
struct TableEntry {
    index: usize,
    id: [u8; 16],
    offset: u32,
    length: u32,
    flags: u32,
}

/// Plan the locator rewrite of the differencing VHDX that `open` yields (called once).
pub fn plan(
    open: &dyn Fn() -> Result<Box<dyn Source>>,
    opts: &OpenOptions,
    t: &Targets,
) -> Result<Planned> {
    let src = open()?;
    let headers = header::read_headers(&*src)?;
    let cur: ParsedHeader = headers.current.clone();
    let guard = HeaderGuard {
        sequence_number: cur.sequence_number,
        file_write_guid: cur.file_write_guid,
        data_write_guid: cur.data_write_guid,
        log_dirty: !cur.log_guid.is_nil(),
    };
    // Opening replays a dirty log in memory: the plan is made on the file as it will be once
    // apply has replayed it to disk.
    let file = VhdxFile::open(src, opts)?;
    if file.disk_type != DiskType::Differencing {
        return Err(Error::refused(
            "not a differencing disk (file parameters HasParent is clear)",
        ));
    }
    let mut notes = Vec::new();
    let warnings = Vec::new();
    if guard.log_dirty {
        notes.push(
            "the child's log is dirty (an earlier writer stopped before finishing); it is \
             replayed to the file first, as MS-VHDX requires before any change, and the plan is \
             made on the replayed contents"
                .to_string(),
        );
    }
    let file_len = source_len(&*file.src)?;

    // The metadata region and its table.
    let region = file
        .info
        .region_tables
        .iter()
        .filter(|r| r.valid)
        .flat_map(|r| r.entries.iter())
        .find(|r| r.name.as_deref() == Some("metadata"))
        .ok_or_else(|| Error::corrupt(TABLE, 0, "no metadata region"))?;
    let (region_off, region_len) = (region.offset, region.length);
    let mut table = vec![0u8; METADATA_TABLE_SIZE];
    read_struct(&*file.src, region_off, &mut table, TABLE)?;
    let count = usize::from(u16::from_le_bytes([
        table.get(10).copied().unwrap_or(0),
        table.get(11).copied().unwrap_or(0),
    ]));
    let mut entries = Vec::new();
    for i in 0..count {
        let at = 32 + 32 * i;
        let Some(e) = table.get(at..at + 32) else {
            return Err(Error::corrupt(TABLE, region_off, "entry outside the table"));
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&e[..16]);
        entries.push(TableEntry {
            index: i,
            id,
            offset: le_u32(e, 16),
            length: le_u32(e, 20),
            flags: le_u32(e, 24),
        });
    }
    let loc = entries
        .iter()
        .find(|e| e.id == PARENT_LOCATOR_GUID && e.flags & META_IS_USER == 0)
        .ok_or_else(|| Error::corrupt(TABLE, region_off, "no parent locator item"))?;
    let old_off = u64::from(loc.offset);
    let old_len = u64::from(loc.length);
    let old_abs = region_off + old_off;
    let mut old_item = vec![0u8; usize::try_from(loc.length).unwrap_or(0)];
    read_struct(&*file.src, old_abs, &mut old_item, PL)?;
    let old_pairs = locator::raw_pairs(&old_item, old_abs)?;

    // The new key/value pairs.
    for (what, v) in [("relative", &t.relative), ("absolute", &t.absolute)] {
        if let Some(p) = v {
            let units = p.encode_utf16().count();
            if units > MAX_PATH_UNITS {
                return Err(Error::refused(format!(
                    "the new {what} path is {units} UTF-16 code units, longer than Windows \
                     allows ({MAX_PATH_UNITS})"
                )));
            }
            if units == 0 {
                return Err(Error::refused(format!("the new {what} path is empty")));
            }
        }
    }
    let mut changes = Vec::new();
    let mut change = |field: &str, old: String, new: String| {
        if old != new {
            changes.push(FieldChange {
                structure: PL.to_string(),
                field: field.to_string(),
                old,
                new,
            });
        }
    };
    const ABSENT: &str = "(absent)";
    const REMOVED: &str = "(removed)";
    let mut new_pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let (mut had_rel, mut had_abs) = (false, false);
    for (k, v) in &old_pairs {
        let key = decode(k).unwrap_or_default();
        let lower = key.to_ascii_lowercase();
        if lower == K_LINKAGE {
            match &t.linkage {
                Some(id) => {
                    let nv = braced(id);
                    change(&key, show(v), nv.clone());
                    new_pairs.push((k.clone(), utf16le(&nv)));
                }
                None => new_pairs.push((k.clone(), v.clone())),
            }
        } else if lower == K_LINKAGE2 && t.linkage.is_some() {
            change(&key, show(v), REMOVED.into());
            notes.push(format!(
                "{key} ({}) is removed: it described the old parent, and the linkage is \
                 rewritten to the new one",
                show(v)
            ));
        } else if key == K_RELATIVE || key == K_ABSOLUTE {
            let want = if key == K_RELATIVE {
                had_rel = true;
                &t.relative
            } else {
                had_abs = true;
                &t.absolute
            };
            match want {
                Some(p) => {
                    change(&key, show(v), p.clone());
                    new_pairs.push((k.clone(), utf16le(p)));
                }
                None => change(&key, show(v), REMOVED.into()),
            }
        } else if key == K_VOLUME {
            change(&key, show(v), REMOVED.into());
            notes.push(
                "volume_path is removed: it names the old parent by volume GUID, and a volume \
                 GUID path for the new parent can only be learnt on Windows (--windows-path \
                 gives a drive or UNC path, which goes into absolute_win32_path)"
                    .to_string(),
            );
        } else {
            new_pairs.push((k.clone(), v.clone()));
        }
    }
    let after_linkage = |pairs: &Vec<(Vec<u8>, Vec<u8>)>, keys: &[&str]| {
        pairs
            .iter()
            .rposition(|(k, _)| {
                let d = decode(k).unwrap_or_default();
                keys.iter().any(|x| d.eq_ignore_ascii_case(x))
            })
            .map_or(0, |i| i + 1)
    };
    if !had_abs {
        if let Some(p) = &t.absolute {
            let at = after_linkage(&new_pairs, &[K_LINKAGE]);
            new_pairs.insert(at, (utf16le(K_ABSOLUTE), utf16le(p)));
            change(K_ABSOLUTE, ABSENT.into(), p.clone());
        }
    }
    if !had_rel {
        if let Some(p) = &t.relative {
            let at = after_linkage(&new_pairs, &[K_LINKAGE, K_ABSOLUTE]);
            new_pairs.insert(at, (utf16le(K_RELATIVE), utf16le(p)));
            change(K_RELATIVE, ABSENT.into(), p.clone());
        }
    }
    let new_item = locator::encode_locator(&new_pairs)?;
    let new_len = new_item.len() as u64;
    let item_limit = opts
        .limits
        .max_locator_bytes
        .min(opts.limits.max_metadata_item_bytes)
        .min(MAX_METADATA_ITEM_BYTES);
    if new_len > u64::from(item_limit) {
        return Err(Error::refused(format!(
            "the new parent locator would be {new_len} bytes, above the {item_limit}-byte limit \
             for a locator item (Limits::max_locator_bytes)"
        )));
    }

    // Where it goes.
    let others: Vec<Range<u64>> = entries
        .iter()
        .filter(|e| e.index != loc.index && e.length > 0)
        .map(|e| u64::from(e.offset)..u64::from(e.offset) + u64::from(e.length))
        .collect();
    let fits = |start: u64| {
        let r = start..start + new_len;
        start >= KIB64 && r.end <= region_len && !others.iter().any(|o| overlaps(o, &r))
    };
    let new_off = if fits(old_off) {
        Some(old_off)
    } else {
        let mut cands: Vec<u64> = std::iter::once(KIB64)
            .chain(others.iter().map(|r| r.end))
            .map(|x| x.next_multiple_of(8))
            .collect();
        cands.sort_unstable();
        cands.into_iter().find(|&c| fits(c))
    };
    let Some(new_off) = new_off else {
        return Err(Error::refused(format!(
            "the new parent locator ({new_len} bytes) does not fit anywhere in the metadata \
             region ({region_len} bytes, items after its 64 KiB table); growing the metadata \
             region is not supported"
        )));
    };
    if new_off != old_off {
        notes.push(format!(
            "the new parent locator ({new_len} bytes) does not fit in its old place ({old_len} \
             bytes at metadata offset {old_off:#x}): it moves to metadata offset {new_off:#x}, \
             and its old bytes are zeroed"
        ));
    }

    // The writes.
    let read_old = |at: u64, len: u64| -> Result<Vec<u8>> {
        let mut b = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_struct(&*file.src, at, &mut b, PL)?;
        Ok(b)
    };
    let mut writes = Vec::new();
    let new_abs = region_off + new_off;
    let old_at_new = read_old(new_abs, new_len)?;
    if old_at_new != new_item {
        writes.push(WriteOp {
            offset: new_abs,
            data: new_item.clone(),
            old: old_at_new,
            what: if new_off == old_off {
                "parent locator item, in place".into()
            } else {
                "parent locator item, moved".into()
            },
        });
    }
    let new_r = new_off..new_off + new_len;
    let old_r = old_off..old_off + old_len;
    for piece in [
        old_r.start..old_r.end.min(new_r.start),
        old_r.start.max(new_r.end)..old_r.end,
    ] {
        if piece.start >= piece.end {
            continue;
        }
        let at = region_off + piece.start;
        let old = read_old(at, piece.end - piece.start)?;
        if old.iter().any(|&b| b != 0) {
            writes.push(WriteOp {
                offset: at,
                data: vec![0; old.len()],
                old,
                what: "stale parent locator bytes, zeroed".into(),
            });
        }
    }
    let entry_at = region_off + 32 + 32 * loc.index as u64 + 16;
    let new_off32 = u32::try_from(new_off).map_err(|_| Error::refused("offset overflow"))?;
    let new_len32 = u32::try_from(new_len).map_err(|_| Error::refused("length overflow"))?;
    if (new_off32, new_len32) != (loc.offset, loc.length) {
        let mut data = new_off32.to_le_bytes().to_vec();
        data.extend_from_slice(&new_len32.to_le_bytes());
        writes.push(WriteOp {
            offset: entry_at,
            old: read_old(entry_at, 8)?,
            data,
            what: "metadata table entry of the parent locator (offset, length)".into(),
        });
        changes.push(FieldChange {
            structure: TABLE.into(),
            field: "parent locator entry".into(),
            old: format!("offset {old_off:#x}, length {old_len}"),
            new: format!("offset {new_off:#x}, length {new_len}"),
        });
    }

    // One log entry carries everything; it must fit the ring with a sector to spare.
    let (sectors, entry_bytes) = log_entry_bytes(&writes);
    let ring = u64::from(cur.log_length);
    if entry_bytes + KIB4 > ring {
        return Err(Error::refused(format!(
            "the change needs a {entry_bytes}-byte log entry ({sectors} sectors), but the log \
             is {ring} bytes"
        )));
    }
    let predicted_bytes = if writes.is_empty() {
        0
    } else {
        4 * HEADER_SIZE as u64 + entry_bytes + sectors * KIB4
    };
    let plan = Plan {
        changes,
        writes,
        old_len: file_len,
        new_len: file_len,
    };

    // Simulate and re-open: the result must parse, carry the new item, and keep everything a
    // reader of the virtual disk sees.
    let mut sim: Vec<(u64, Vec<u8>)> = plan
        .writes
        .iter()
        .map(|w| (w.offset, w.data.clone()))
        .collect();
    if guard.log_dirty {
        let mut h = cur.clone();
        h.log_guid = Uuid::nil();
        let b = update::encode_header(&h);
        sim.extend(HEADER_OFFSETS.iter().map(|&o| (o, b.clone())));
    }
    let check = |ok: bool, what: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "internal: the planned file would have a different {what}"
            )))
        }
    };
    let old_items: Vec<_> = file
        .info
        .metadata_items
        .iter()
        .filter(|i| i.guid != crate::guid::from_vhdx_bytes(PARENT_LOCATOR_GUID) || i.is_user)
        .map(|i| (i.guid, i.offset, i.length, i.flags))
        .collect();
    let old_linkage = file.linkage.clone();
    let VhdxFile {
        src,
        bat,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        data_write_guid,
        ..
    } = file;
    // Only a digest of the table is kept: the file before and the simulated file after are
    // never both held whole (a 64 TiB disk's table is tens of MiB).
    let bat_digest = table_digest(&bat.entries);
    drop(bat);
    let overlay = OverlaySource::new(src, sim, file_len)
        .map_err(|(_, e)| Error::io("simulating the plan", e))?;
    let after = VhdxFile::open(Box::new(overlay), opts).map_err(|e| {
        Error::InvalidArgument(format!("internal: the planned file would not open: {e}"))
    })?;
    check(
        table_digest(&after.bat.entries) == bat_digest,
        "block allocation table",
    )?;
    check(
        (
            after.virtual_size,
            after.logical_sector_size,
            after.physical_sector_size,
        ) == (virtual_size, logical_sector_size, physical_sector_size),
        "geometry",
    )?;
    check(after.data_write_guid == data_write_guid, "DataWriteGuid")?;
    let new_items: Vec<_> = after
        .info
        .metadata_items
        .iter()
        .filter(|i| i.guid != crate::guid::from_vhdx_bytes(PARENT_LOCATOR_GUID) || i.is_user)
        .map(|i| (i.guid, i.offset, i.length, i.flags))
        .collect();
    check(new_items == old_items, "set of other metadata items")?;
    let mut got = vec![0u8; new_item.len()];
    read_struct(&*after.src, new_abs, &mut got, PL)?;
    check(got == new_item, "parent locator item")?;
    let want_id = t.linkage.or(old_linkage.as_ref().map(|l| l.id));
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
    check(path(K_RELATIVE) == t.relative, "relative_path")?;
    check(path(K_ABSOLUTE) == t.absolute, "absolute_win32_path")?;
    check(path(K_VOLUME).is_none(), "volume_path")?;
    Ok(Planned {
        plan,
        guard,
        predicted_bytes,
        notes,
        warnings,
    })
}

/// SHA-256 of a BAT's entries.
fn table_digest(entries: &[u64]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for e in entries {
        h.update(e.to_le_bytes());
    }
    h.finalize().into()
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
    let counting = Counting {
        inner: sink,
        log: cur.log_offset..cur.log_offset.saturating_add(u64::from(cur.log_length)),
        writes: AtomicUsize::new(0),
        syncs: AtomicUsize::new(0),
        header_bytes: AtomicU64::new(0),
        log_bytes: AtomicU64::new(0),
        other_bytes: AtomicU64::new(0),
    };
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
    let writes: Vec<(u64, Vec<u8>)> = plan
        .writes
        .iter()
        .map(|w| (w.offset, w.data.clone()))
        .collect();
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
