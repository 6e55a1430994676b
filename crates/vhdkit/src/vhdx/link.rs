//! The VHDX link editor: the one writer of the parent locator metadata item (MS-VHDX 2.6.2.6,
//! FORMAT.md B.6, B.7, B.9), used by reparent (`vhdx::reparent`) and by dead-locator repair
//! (`repair::deadloc`). The caller says what the locator should say ([`LinkEdit`]); [`plan`]
//! reads the open file and returns the new item and the metadata writes for one log entry
//! ([`LinkPlan`]). It writes nothing.
//!
//! Rules, whoever the caller:
//! - A key the edit does not name is kept byte for byte, in file order (unknown keys and
//!   undecodable values included). A path key to set that was missing is added after
//!   `parent_linkage` and the path keys Windows writes before it (`absolute_win32_path`,
//!   `relative_path`, `volume_path`, in that order).
//! - A new `parent_linkage` is written braced and lower case; `parent_linkage2` is then dropped
//!   (it described the old parent).
//! - The item is re-serialised compactly ([`encode_locator`]: header, entries, then each key
//!   and its value, as Windows lays it out).
//! - Placement ([`Placement`]): in place when it fits there (it may grow into free space right
//!   after it); otherwise, when the caller allows it, the first free 8-byte aligned space after
//!   the 64 KiB table that overlaps no other item. No room is a refusal: the metadata region is
//!   never grown.
//! - Bytes of the old item not covered by the new one are zeroed (no stale path remains), and
//!   the table entry's offset and length are rewritten when they change. Nothing else is
//!   written, and a write whose bytes are already on disk is left out.

use std::ops::Range;

use uuid::Uuid;

use super::{encode_locator, raw_pairs, LocatorPair};
use super::{
    KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE, KEY_PARENT_LINKAGE2, KEY_RELATIVE_PATH,
    KEY_VOLUME_PATH,
};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::source::{read_struct, Source};
use crate::txn::{FieldChange, WriteOp};
use crate::util::{braced, from_utf16le, overlaps, utf16le};
use crate::vhdx::format::{
    self, MetadataItemPlace, MetadataTableEntry, KIB64, MAX_METADATA_ITEM_BYTES,
    METADATA_ENTRY_PLACE_OFFSET, METADATA_TABLE_ENTRY_SIZE, METADATA_TABLE_HEADER_SIZE,
    META_IS_USER, PARENT_LOCATOR_GUID,
};
use crate::vhdx::VhdxFile;

/// Longest path written (UTF-16 code units): Windows' limit, which also fits the 16-bit value
/// length of a locator entry (65 534 bytes).
pub const MAX_PATH_UNITS: usize = 32_767;

/// A moved item starts on this boundary, as Windows places items.
const ITEM_ALIGNMENT: u64 = 8;

const PL: &str = "vhdx parent locator";
const TABLE: &str = "vhdx metadata table";
const ABSENT: &str = "(absent)";
const REMOVED: &str = "(removed)";

/// The path keys in the order Windows writes them after `parent_linkage`.
const PATH_KEYS: [&str; 3] = [KEY_ABSOLUTE_WIN32_PATH, KEY_RELATIVE_PATH, KEY_VOLUME_PATH];

/// What happens to one path key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyEdit {
    /// Left as it is (absent stays absent).
    Keep,
    /// Given this value (added when absent).
    Set(String),
    /// Removed when present.
    Drop,
}

/// Where the new item may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// At the old offset, never longer than the old item.
    InPlace,
    /// In place when it fits there, else moved to free space in the metadata region.
    Anywhere,
}

/// What the new locator should say; every key not named here is kept.
#[derive(Debug, Clone)]
pub(crate) struct LinkEdit {
    /// `relative_path`.
    pub relative: KeyEdit,
    /// `absolute_win32_path`.
    pub absolute: KeyEdit,
    /// `volume_path`.
    pub volume: KeyEdit,
    /// A new `parent_linkage` (the new parent's DataWriteGuid); `parent_linkage2` is then
    /// dropped.
    pub linkage: Option<Uuid>,
    /// A new `parent_linkage2` (a merge: the parent's DataWriteGuid to come), set in place or
    /// added last, where Windows writes it; `parent_linkage` is kept.
    pub linkage2: Option<Uuid>,
    /// Where the new item may go.
    pub placement: Placement,
}

impl LinkEdit {
    /// An edit that keeps every key.
    pub(crate) fn keep_all(placement: Placement) -> LinkEdit {
        LinkEdit {
            relative: KeyEdit::Keep,
            absolute: KeyEdit::Keep,
            volume: KeyEdit::Keep,
            linkage: None,
            linkage2: None,
            placement,
        }
    }

    /// Drop the path key named `key` (`relative_path`, `absolute_win32_path`, `volume_path`).
    pub(crate) fn drop_key(&mut self, key: &str) -> Result<()> {
        match key {
            KEY_RELATIVE_PATH => self.relative = KeyEdit::Drop,
            KEY_ABSOLUTE_WIN32_PATH => self.absolute = KeyEdit::Drop,
            KEY_VOLUME_PATH => self.volume = KeyEdit::Drop,
            _ => {
                return Err(Error::Internal(format!(
                    "{key} is not a vhdx parent locator path key"
                )))
            }
        }
        Ok(())
    }

    /// The edit of `key`, one of [`PATH_KEYS`].
    fn path(&self, key: &str) -> &KeyEdit {
        match key {
            KEY_RELATIVE_PATH => &self.relative,
            KEY_ABSOLUTE_WIN32_PATH => &self.absolute,
            KEY_VOLUME_PATH => &self.volume,
            _ => &KeyEdit::Keep,
        }
    }

    /// New paths must be non-empty and within Windows' length.
    fn check_paths(&self) -> Result<()> {
        let named = [
            ("relative", &self.relative),
            ("absolute", &self.absolute),
            ("volume", &self.volume),
        ];
        for (what, edit) in named {
            let KeyEdit::Set(p) = edit else { continue };
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
        Ok(())
    }
}

/// A key the edit removed, with its old value as shown to people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub key: String,
    pub old: String,
}

/// The edit, planned.
#[derive(Debug, Clone)]
pub(crate) struct LinkPlan {
    /// The new item bytes.
    pub item: Vec<u8>,
    /// File offset of the new item.
    pub item_file_offset: u64,
    /// Offset of the new item in the metadata region.
    pub new_offset: u64,
    /// Offset and length of the old item in the metadata region.
    pub old_offset: u64,
    /// See [`LinkPlan::old_offset`].
    pub old_length: u64,
    /// The writes, each with the bytes it replaces.
    pub writes: Vec<WriteOp>,
    /// Every field changed, in file order, then the table entry.
    pub changes: Vec<FieldChange>,
    /// The keys removed, in file order.
    pub dropped: Vec<Dropped>,
}

impl LinkPlan {
    /// The writes as the log commits them.
    pub(crate) fn into_log_writes(self) -> Vec<(u64, Vec<u8>)> {
        self.writes
            .into_iter()
            .map(|w| (w.offset, w.data))
            .collect()
    }
}

/// Where the locator item lives, from the open file's checked metadata table.
#[derive(Debug, Clone)]
struct Site {
    /// File offset and length of the metadata region.
    region_offset: u64,
    region_length: u64,
    /// File offset of the item's table entry.
    entry_file_offset: u64,
    /// Offset (in the region) and length of the item.
    offset: u64,
    length: u64,
    /// Every other non-empty item, as ranges in the region.
    others: Vec<Range<u64>>,
}

impl Site {
    fn of(file: &VhdxFile) -> Result<Site> {
        let region = &file.metadata_region;
        // The items are the table's entries in table order: the position is the entry index.
        let (index, item) = file
            .metadata_items
            .iter()
            .enumerate()
            .find(|(_, i)| i.raw_id == PARENT_LOCATOR_GUID && !i.is_user())
            .ok_or_else(|| {
                Error::corrupt(TABLE, region.file_offset, "no parent locator item")
                    .with_code("vhdx.metadata.missing_item")
            })?;
        let entry_file_offset = u64::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(METADATA_TABLE_ENTRY_SIZE))
            .and_then(|x| x.checked_add(METADATA_TABLE_HEADER_SIZE))
            .and_then(|x| x.checked_add(region.file_offset))
            .ok_or_else(|| {
                Error::corrupt(TABLE, region.file_offset, "entry offset overflow")
                    .with_code("vhdx.metadata.item_bounds")
            })?;
        let others = file
            .metadata_items
            .iter()
            .enumerate()
            .filter(|(i, e)| *i != index && e.length > 0)
            .map(|(_, e)| u64::from(e.offset)..u64::from(e.offset) + u64::from(e.length))
            .collect();
        Ok(Site {
            region_offset: region.file_offset,
            region_length: region.length,
            entry_file_offset,
            offset: u64::from(item.offset),
            length: u64::from(item.length),
            others,
        })
    }

    /// File offset of `rel` in the metadata region.
    fn at(&self, rel: u64) -> Result<u64> {
        self.region_offset.checked_add(rel).ok_or_else(|| {
            Error::corrupt(TABLE, self.region_offset, "offset overflow")
                .with_code("vhdx.metadata.item_bounds")
        })
    }

    /// The table entry on disk is the one the model describes (it is about to be rewritten).
    fn check_entry(&self, src: &dyn Source) -> Result<()> {
        let mut b = vec![0u8; METADATA_TABLE_ENTRY_SIZE as usize];
        read_struct(src, self.entry_file_offset, &mut b, TABLE)?;
        let e: MetadataTableEntry = format::parse(&b, TABLE, self.entry_file_offset)?;
        let same = e.item_id == PARENT_LOCATOR_GUID
            && e.flags & META_IS_USER == 0
            && (u64::from(e.offset), u64::from(e.length)) == (self.offset, self.length);
        if same {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "the metadata table entry at {:#x} is not the parent locator the \
                 file was opened with",
                self.entry_file_offset
            )))
        }
    }

    fn read(&self, src: &dyn Source, rel: u64, len: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_struct(src, self.at(rel)?, &mut b, PL)?;
        Ok(b)
    }
}

/// A value as shown to people.
fn show(b: &[u8]) -> String {
    from_utf16le(b).unwrap_or_else(|| format!("({} bytes, not valid UTF-16)", b.len()))
}

/// Plan `edit` on the parent locator of `file`, as opened (a dirty log replayed in memory):
/// the old item is read and parsed once, nothing is written.
pub(crate) fn plan(file: &VhdxFile, edit: &LinkEdit, limits: &Limits) -> Result<LinkPlan> {
    let site = Site::of(file)?;
    let src = &*file.src;
    site.check_entry(src)?;
    let old_bytes = site.read(src, site.offset, site.length)?;
    let old = raw_pairs(&old_bytes, site.at(site.offset)?)?;
    edit.check_paths()?;
    let Rewrite {
        pairs,
        mut changes,
        dropped,
    } = rewrite(old, edit);
    let item = encode_locator(&pairs)?;
    let new_len = item.len() as u64;
    check_size(new_len, &site, edit.placement, limits)?;
    let new_offset = place(&site, new_len, edit.placement)?;
    let writes = writes(src, &site, &item, new_offset, &mut changes)?;
    Ok(LinkPlan {
        item_file_offset: site.at(new_offset)?,
        item,
        new_offset,
        old_offset: site.offset,
        old_length: site.length,
        writes,
        changes,
        dropped,
    })
}

/// The new pairs and what changed.
#[derive(Debug, Default)]
struct Rewrite {
    pairs: Vec<LocatorPair>,
    changes: Vec<FieldChange>,
    dropped: Vec<Dropped>,
}

impl Rewrite {
    fn change(&mut self, field: &str, old: String, new: String) {
        if old != new {
            self.changes.push(FieldChange {
                structure: PL.to_string(),
                field: field.to_string(),
                old,
                new,
            });
        }
    }

    fn set(&mut self, p: LocatorPair, new: &str) {
        self.change(&p.key, show(&p.value), new.to_string());
        self.pairs.push(LocatorPair {
            key: p.key,
            value: utf16le(new),
        });
    }

    fn drop(&mut self, p: LocatorPair) {
        let old = show(&p.value);
        self.change(&p.key, old.clone(), REMOVED.into());
        self.dropped.push(Dropped { key: p.key, old });
    }

    /// Add `key` after `parent_linkage` and the path keys in `before`.
    fn insert(&mut self, key: &str, value: &str, before: &[&str]) {
        let at = self
            .pairs
            .iter()
            .rposition(|p| {
                p.key.eq_ignore_ascii_case(KEY_PARENT_LINKAGE)
                    || before.iter().any(|k| p.key.eq_ignore_ascii_case(k))
            })
            .map_or(0, |i| i + 1);
        self.pairs.insert(
            at,
            LocatorPair {
                key: key.to_string(),
                value: utf16le(value),
            },
        );
        self.change(key, ABSENT.into(), value.to_string());
    }
}

/// Apply `edit` to the old pairs.
fn rewrite(old: Vec<LocatorPair>, edit: &LinkEdit) -> Rewrite {
    let mut r = Rewrite::default();
    let mut present = [false; PATH_KEYS.len()];
    let mut linkage2_seen = false;
    for p in old {
        let lower = p.key.to_ascii_lowercase();
        let path = PATH_KEYS.iter().position(|k| *k == p.key);
        if lower == KEY_PARENT_LINKAGE {
            match edit.linkage {
                Some(id) => r.set(p, &braced(&id)),
                None => r.pairs.push(p),
            }
        } else if lower == KEY_PARENT_LINKAGE2 && edit.linkage2.is_some() {
            linkage2_seen = true;
            if let Some(id) = edit.linkage2 {
                r.set(p, &braced(&id));
            }
        } else if lower == KEY_PARENT_LINKAGE2 && edit.linkage.is_some() {
            r.drop(p);
        } else if let Some(i) = path {
            if let Some(seen) = present.get_mut(i) {
                *seen = true;
            }
            match edit.path(&p.key) {
                KeyEdit::Keep => r.pairs.push(p),
                KeyEdit::Set(v) => r.set(p, v),
                KeyEdit::Drop => r.drop(p),
            }
        } else {
            r.pairs.push(p);
        }
    }
    for (i, key) in PATH_KEYS.iter().enumerate() {
        if let (Some(false), KeyEdit::Set(v)) = (present.get(i), edit.path(key)) {
            r.insert(key, v, PATH_KEYS.get(..i).unwrap_or(&[]));
        }
    }
    if let (false, Some(id)) = (linkage2_seen, edit.linkage2) {
        let v = braced(&id);
        r.pairs.push(LocatorPair {
            key: KEY_PARENT_LINKAGE2.to_string(),
            value: utf16le(&v),
        });
        r.change(KEY_PARENT_LINKAGE2, ABSENT.into(), v);
    }
    r
}

/// The new item must respect the caller's limits and, in place, the old length.
fn check_size(new_len: u64, site: &Site, placement: Placement, limits: &Limits) -> Result<()> {
    if placement == Placement::InPlace && new_len > site.length {
        return Err(Error::refused(
            "the re-encoded parent locator would be longer",
        ));
    }
    let item_limit = limits
        .max_locator_bytes
        .min(limits.max_metadata_item_bytes)
        .min(MAX_METADATA_ITEM_BYTES);
    if new_len > u64::from(item_limit) {
        return Err(Error::refused(format!(
            "the new parent locator would be {new_len} bytes, above the {item_limit}-byte limit \
             for a locator item (Limits::max_locator_bytes)"
        )));
    }
    Ok(())
}

/// Region offset of the new item.
fn place(site: &Site, new_len: u64, placement: Placement) -> Result<u64> {
    let fits = |start: u64| {
        let r = start..start.saturating_add(new_len);
        start >= KIB64
            && r.end <= site.region_length
            && !site.others.iter().any(|o| overlaps(o, &r))
    };
    // In place, the item is never longer than before ([`check_size`]), so it fits.
    if fits(site.offset) || placement == Placement::InPlace {
        return Ok(site.offset);
    }
    let mut cands: Vec<u64> = std::iter::once(KIB64)
        .chain(site.others.iter().map(|r| r.end))
        .filter_map(|x| x.checked_next_multiple_of(ITEM_ALIGNMENT))
        .collect();
    cands.sort_unstable();
    cands.into_iter().find(|&c| fits(c)).ok_or_else(|| {
        Error::refused(format!(
            "the new parent locator ({new_len} bytes) does not fit anywhere in the metadata \
             region ({} bytes, items after its 64 KiB table); growing the metadata region is \
             not supported",
            site.region_length
        ))
    })
}

/// The item at `new_offset`, the old bytes it no longer covers zeroed, and the table entry;
/// each left out when the bytes are already there. A changed entry adds its field change.
fn writes(
    src: &dyn Source,
    site: &Site,
    item: &[u8],
    new_offset: u64,
    changes: &mut Vec<FieldChange>,
) -> Result<Vec<WriteOp>> {
    let new_len = item.len() as u64;
    let mut writes = Vec::new();
    let old_at_new = site.read(src, new_offset, new_len)?;
    if old_at_new != item {
        writes.push(WriteOp {
            offset: site.at(new_offset)?,
            data: item.to_vec(),
            old: old_at_new,
            what: if new_offset == site.offset {
                "parent locator item, in place".into()
            } else {
                "parent locator item, moved".into()
            },
        });
    }
    let new_r = new_offset..new_offset.saturating_add(new_len);
    let old_r = site.offset..site.offset.saturating_add(site.length);
    for piece in [
        old_r.start..old_r.end.min(new_r.start),
        old_r.start.max(new_r.end)..old_r.end,
    ] {
        if piece.start >= piece.end {
            continue;
        }
        let old = site.read(src, piece.start, piece.end - piece.start)?;
        if old.iter().any(|&b| b != 0) {
            writes.push(WriteOp {
                offset: site.at(piece.start)?,
                data: vec![0; old.len()],
                old,
                what: "stale parent locator bytes, zeroed".into(),
            });
        }
    }
    writes.extend(entry_write(src, site, new_offset, new_len, changes)?);
    Ok(writes)
}

/// The table entry's new offset and length, when they change.
fn entry_write(
    src: &dyn Source,
    site: &Site,
    new_offset: u64,
    new_len: u64,
    changes: &mut Vec<FieldChange>,
) -> Result<Option<WriteOp>> {
    let place = MetadataItemPlace {
        offset: u32::try_from(new_offset).map_err(|_| Error::refused("offset overflow"))?,
        length: u32::try_from(new_len).map_err(|_| Error::refused("length overflow"))?,
    };
    if (u64::from(place.offset), u64::from(place.length)) == (site.offset, site.length) {
        return Ok(None);
    }
    let at = site
        .entry_file_offset
        .checked_add(METADATA_ENTRY_PLACE_OFFSET)
        .ok_or_else(|| {
            Error::corrupt(TABLE, site.entry_file_offset, "offset overflow")
                .with_code("vhdx.metadata.item_bounds")
        })?;
    let data = super::le_bytes(&place, TABLE)?;
    let mut old = vec![0u8; data.len()];
    read_struct(src, at, &mut old, PL)?;
    changes.push(FieldChange {
        structure: TABLE.into(),
        field: "parent locator entry".into(),
        old: format!("offset {:#x}, length {}", site.offset, site.length),
        new: format!("offset {new_offset:#x}, length {new_len}"),
    });
    Ok(Some(WriteOp {
        offset: at,
        data,
        old,
        what: "metadata table entry of the parent locator (offset, length)".into(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn pair(k: &str, v: &str) -> LocatorPair {
        LocatorPair {
            key: k.into(),
            value: utf16le(v),
        }
    }

    fn keys(r: &Rewrite) -> Vec<&str> {
        r.pairs.iter().map(|p| p.key.as_str()).collect()
    }

    fn old() -> Vec<LocatorPair> {
        vec![
            pair("parent_linkage", "{aaaa0000-0000-4000-8000-000000000001}"),
            pair("parent_linkage2", "{bbbb0000-0000-4000-8000-000000000002}"),
            pair(
                "volume_path",
                r"\\?\Volume{0eba351e-5634-46d6-a8cf-4ddc2d6ac0b9}\b.vhdx",
            ),
            LocatorPair {
                key: "vendor_key".into(),
                value: vec![0x00, 0xD8, 0x41, 0x00],
            },
        ]
    }

    #[test]
    fn missing_paths_go_after_the_linkage_in_windows_order() {
        let mut e = LinkEdit::keep_all(Placement::Anywhere);
        e.relative = KeyEdit::Set(r"..\b.vhdx".into());
        e.absolute = KeyEdit::Set(r"C:\b.vhdx".into());
        e.volume = KeyEdit::Drop;
        let r = rewrite(old(), &e);
        assert_eq!(
            keys(&r),
            [
                "parent_linkage",
                "absolute_win32_path",
                "relative_path",
                "parent_linkage2",
                "vendor_key"
            ]
        );
        // The undecodable vendor value is kept byte for byte.
        assert_eq!(r.pairs[4].value, [0x00, 0xD8, 0x41, 0x00]);
        assert_eq!(r.dropped.len(), 1);
        assert_eq!(r.dropped[0].key, "volume_path");
        let fields: Vec<_> = r.changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["volume_path", "absolute_win32_path", "relative_path"]
        );
        assert_eq!(r.changes[1].old, ABSENT);
    }

    #[test]
    fn a_new_linkage_drops_linkage2_and_keep_all_changes_nothing() {
        let mut e = LinkEdit::keep_all(Placement::InPlace);
        let r = rewrite(old(), &e);
        assert_eq!(r.pairs, old());
        assert!(r.changes.is_empty() && r.dropped.is_empty());
        e.linkage = Some(Uuid::from_u128(0xABC));
        let r = rewrite(old(), &e);
        assert_eq!(keys(&r), ["parent_linkage", "volume_path", "vendor_key"]);
        assert_eq!(
            from_utf16le(&r.pairs[0].value).unwrap(),
            "{00000000-0000-0000-0000-000000000abc}"
        );
        assert_eq!(r.dropped[0].key, "parent_linkage2");
        assert!(e.drop_key("parent_linkage").is_err());
        e.drop_key("volume_path").unwrap();
        assert_eq!(e.volume, KeyEdit::Drop);
    }

    #[test]
    fn a_new_linkage2_is_set_in_place_or_added_last_and_keeps_the_linkage() {
        let mut e = LinkEdit::keep_all(Placement::Anywhere);
        e.linkage2 = Some(Uuid::from_u128(0xDEF));
        let want = "{00000000-0000-0000-0000-000000000def}";
        let r = rewrite(old(), &e);
        assert_eq!(
            keys(&r),
            keys(&rewrite(old(), &LinkEdit::keep_all(Placement::Anywhere)))
        );
        assert_eq!(from_utf16le(&r.pairs[1].value).unwrap(), want);
        assert_eq!(r.pairs[0], old()[0]);
        assert_eq!(r.changes.len(), 1);
        let without: Vec<_> = old()
            .into_iter()
            .filter(|p| p.key != "parent_linkage2")
            .collect();
        let r = rewrite(without, &e);
        assert_eq!(
            keys(&r),
            [
                "parent_linkage",
                "volume_path",
                "vendor_key",
                "parent_linkage2"
            ]
        );
        assert_eq!(from_utf16le(&r.pairs[3].value).unwrap(), want);
        assert_eq!(r.changes[0].old, ABSENT);
    }

    #[test]
    fn new_paths_are_checked() {
        let mut e = LinkEdit::keep_all(Placement::Anywhere);
        e.absolute = KeyEdit::Set(String::new());
        assert!(e
            .check_paths()
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        e.absolute = KeyEdit::Set("x".repeat(MAX_PATH_UNITS + 1));
        assert!(e.check_paths().is_err());
        e.absolute = KeyEdit::Set("x".repeat(MAX_PATH_UNITS));
        e.check_paths().unwrap();
    }

    #[test]
    fn placement_moves_only_when_allowed() {
        let site = Site {
            region_offset: 2 << 20,
            region_length: 1 << 20,
            entry_file_offset: (2 << 20) + 0xd0 - 16,
            offset: 0x10000,
            length: 100,
            others: vec![0x10064..0x10100, 0x10200..0x10300],
        };
        assert_eq!(place(&site, 100, Placement::Anywhere).unwrap(), 0x10000);
        // Too long for its place: the first aligned gap that holds it.
        assert_eq!(place(&site, 200, Placement::Anywhere).unwrap(), 0x10100);
        assert_eq!(place(&site, 0x100, Placement::Anywhere).unwrap(), 0x10100);
        assert_eq!(place(&site, 0x101, Placement::Anywhere).unwrap(), 0x10300);
        assert!(place(&site, 2 << 20, Placement::Anywhere).is_err());
        let l = Limits::default();
        assert!(check_size(101, &site, Placement::InPlace, &l).is_err());
        check_size(100, &site, Placement::InPlace, &l).unwrap();
    }
}
