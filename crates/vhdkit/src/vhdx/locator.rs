//! The VHDX parent locator metadata item (MS-VHDX 2.6.2.6): key/value pairs of UTF-16LE
//! strings. The one parser (`parse_locator`, `raw_pairs`) and serialiser
//! (`encode_locator`) of the item; `link` edits it for every writer.

use std::collections::HashSet;
use std::io::Cursor;

use binrw::BinWrite;
use uuid::Uuid;

use super::format::{
    self, ParentLocatorEntry, ParentLocatorHeader, PARENT_LOCATOR_COUNT_OFFSET,
    PARENT_LOCATOR_ENTRY_BYTES, PARENT_LOCATOR_HEADER_BYTES, VHDX_LOCATOR_TYPE_GUID,
};
use crate::disk::{ParentLocator, PathStyle};
use crate::error::{Error, Result};
use crate::guid::from_vhdx_bytes;
use crate::util::utf16le;

// The file sits beside this one (`vhdx/link.rs`); it is declared here because `vhdx/mod.rs`
// belongs to the reader, and the editor is this item's only writer.
#[path = "link.rs"]
pub(crate) mod link;

const PL: &str = "vhdx parent locator";

/// `parent_linkage`: the parent's DataWriteGuid (compared without regard to case).
pub(crate) const KEY_PARENT_LINKAGE: &str = "parent_linkage";
/// `parent_linkage2`: an alternate parent DataWriteGuid.
pub(crate) const KEY_PARENT_LINKAGE2: &str = "parent_linkage2";
/// `relative_path`.
pub(crate) const KEY_RELATIVE_PATH: &str = "relative_path";
/// `volume_path`: `\\?\Volume{GUID}\...`.
pub(crate) const KEY_VOLUME_PATH: &str = "volume_path";
/// `absolute_win32_path`.
pub(crate) const KEY_ABSOLUTE_WIN32_PATH: &str = "absolute_win32_path";

/// One key/value pair, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LocatorEntry {
    /// The key.
    pub key: String,
    /// The value, when it decodes as UTF-16LE.
    pub value: Option<String>,
    /// Absolute file offset of the value.
    pub value_file_offset: u64,
    /// Why the value could not be decoded.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub error: Option<String>,
}

/// The parsed locator.
#[derive(Debug, Clone)]
pub(crate) struct Locator {
    pub locator_type: Uuid,
    pub entries: Vec<LocatorEntry>,
    pub parent_linkage: Uuid,
    pub parent_linkage2: Option<Uuid>,
    pub warnings: Vec<String>,
}

/// One key/value pair as stored, for rewriting: the key (valid UTF-16, so it re-encodes to the
/// same bytes) and the value bytes exactly as they were, decodable or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocatorPair {
    pub key: String,
    pub value: Vec<u8>,
}

fn utf16(bytes: &[u8]) -> std::result::Result<String, String> {
    if bytes.len() % 2 != 0 {
        return Err(format!("odd UTF-16 byte length {}", bytes.len()));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|e| format!("invalid UTF-16LE: {e}"))
}

fn parse_linkage(value: &Option<String>, key: &str, at: u64) -> Result<Uuid> {
    let v = value
        .as_deref()
        .ok_or_else(|| Error::corrupt(PL, at, format!("{key} value is not valid UTF-16")))?;
    Uuid::parse_str(v.trim())
        .map_err(|e| Error::corrupt(PL, at, format!("{key} value {v:?} is not a GUID ({e})")))
}

/// Offset of entry `i` in the item (bounded by the 16-bit entry count).
fn entry_start(i: usize) -> usize {
    PARENT_LOCATOR_HEADER_BYTES + PARENT_LOCATOR_ENTRY_BYTES * i
}

/// The header: the locator type checked, and the entry count that fits the item.
fn read_header(item: &[u8], item_file_offset: u64) -> Result<(Uuid, usize)> {
    let h: ParentLocatorHeader = format::parse(
        item.get(..PARENT_LOCATOR_HEADER_BYTES).unwrap_or(item),
        PL,
        item_file_offset,
    )?;
    let locator_type = from_vhdx_bytes(h.locator_type);
    if h.locator_type != VHDX_LOCATOR_TYPE_GUID {
        return Err(Error::unsupported(format!(
            "vhdx parent locator type {locator_type} (only b04aefb7-d19e-4a81-b789-25b8e9445913 is defined)"
        )));
    }
    let count = usize::from(h.key_value_count);
    let table_end = entry_start(count);
    if table_end > item.len() {
        return Err(Error::corrupt(
            PL,
            item_file_offset.saturating_add(PARENT_LOCATOR_COUNT_OFFSET),
            format!(
                "{count} entries need {table_end} bytes but the item has {}",
                item.len()
            ),
        ));
    }
    Ok((locator_type, count))
}

/// Entry `i`: its decoded key and value, and the value bytes as stored.
fn read_entry(item: &[u8], item_file_offset: u64, i: usize) -> Result<(LocatorEntry, &[u8])> {
    let rel = entry_start(i);
    let at = item_file_offset.saturating_add(u64::try_from(rel).unwrap_or(u64::MAX));
    let raw = item
        .get(rel..rel + PARENT_LOCATOR_ENTRY_BYTES)
        .unwrap_or(&[]);
    let e: ParentLocatorEntry = format::parse(raw, PL, at)?;
    let slice = |off: u32, len: u16, what: &str| -> Result<&[u8]> {
        let start = usize::try_from(off).map_err(|_| Error::corrupt(PL, at, "offset"))?;
        let end = start.checked_add(usize::from(len));
        end.and_then(|end| item.get(start..end)).ok_or_else(|| {
            Error::corrupt(
                PL,
                at,
                format!(
                    "entry {i} {what} at item offset {off}+{len} lies outside the {}-byte item",
                    item.len()
                ),
            )
        })
    };
    let key_bytes = slice(e.key_offset, e.key_length, "key")?;
    let value_bytes = slice(e.value_offset, e.value_length, "value")?;
    if e.key_length == 0 {
        return Err(Error::corrupt(
            PL,
            at,
            format!("entry {i} has an empty key"),
        ));
    }
    let key =
        utf16(key_bytes).map_err(|m| Error::corrupt(PL, at, format!("entry {i} key: {m}")))?;
    let (value, error) = match utf16(value_bytes) {
        Ok(v) => (Some(v), None),
        Err(m) => (None, Some(m)),
    };
    let entry = LocatorEntry {
        key,
        value,
        value_file_offset: item_file_offset.saturating_add(u64::from(e.value_offset)),
        error,
    };
    Ok((entry, value_bytes))
}

/// `parent_linkage` (required) and `parent_linkage2` (a nil or bad one is dropped, with a
/// warning for a bad one).
fn linkages(
    entries: &[LocatorEntry],
    item_file_offset: u64,
    warnings: &mut Vec<String>,
) -> Result<(Uuid, Option<Uuid>)> {
    let find = |k: &str| entries.iter().find(|e| e.key.eq_ignore_ascii_case(k));
    let linkage = find(KEY_PARENT_LINKAGE)
        .ok_or_else(|| Error::corrupt(PL, item_file_offset, "no parent_linkage key"))?;
    let parent_linkage = parse_linkage(
        &linkage.value,
        KEY_PARENT_LINKAGE,
        linkage.value_file_offset,
    )?;
    let mut parent_linkage2 = None;
    if let Some(l2) = find(KEY_PARENT_LINKAGE2) {
        match parse_linkage(&l2.value, KEY_PARENT_LINKAGE2, l2.value_file_offset) {
            Ok(u) if u.is_nil() => {}
            Ok(u) => parent_linkage2 = Some(u),
            Err(e) => warnings.push(format!("parent_linkage2 ignored: {e}")),
        }
    }
    Ok((parent_linkage, parent_linkage2))
}

/// The one parse of an item: the checked locator and each entry's value bytes as stored.
fn parse(item: &[u8], item_file_offset: u64) -> Result<(Locator, Vec<&[u8]>)> {
    let (locator_type, count) = read_header(item, item_file_offset)?;
    let mut entries = Vec::with_capacity(count);
    let mut values = Vec::with_capacity(count);
    let mut seen = HashSet::new();
    for i in 0..count {
        let (entry, value) = read_entry(item, item_file_offset, i)?;
        if !seen.insert(entry.key.clone()) {
            let at = item_file_offset.saturating_add(entry_start(i) as u64);
            return Err(Error::corrupt(
                PL,
                at,
                format!("duplicate key {:?}", entry.key),
            ));
        }
        entries.push(entry);
        values.push(value);
    }
    let mut warnings = Vec::new();
    let (parent_linkage, parent_linkage2) = linkages(&entries, item_file_offset, &mut warnings)?;
    if !entries.iter().any(|e| {
        matches!(
            e.key.as_str(),
            KEY_RELATIVE_PATH | KEY_VOLUME_PATH | KEY_ABSOLUTE_WIN32_PATH
        )
    }) {
        warnings.push("the parent locator has no path key".to_string());
    }
    let locator = Locator {
        locator_type,
        entries,
        parent_linkage,
        parent_linkage2,
        warnings,
    };
    Ok((locator, values))
}

/// Parse the item bytes; `item_file_offset` is where the item starts in the file.
pub(crate) fn parse_locator(item: &[u8], item_file_offset: u64) -> Result<Locator> {
    parse(item, item_file_offset).map(|(l, _)| l)
}

/// The key/value pairs of a locator item, in file order, for rewriting: unknown keys and
/// undecodable values are carried over byte for byte. The item is checked as
/// `parse_locator` checks it (same parse, same errors).
pub(crate) fn raw_pairs(item: &[u8], item_file_offset: u64) -> Result<Vec<LocatorPair>> {
    let (locator, values) = parse(item, item_file_offset)?;
    Ok(locator
        .entries
        .into_iter()
        .zip(values)
        .map(|(e, v)| LocatorPair {
            key: e.key,
            value: v.to_vec(),
        })
        .collect())
}

/// Little-endian bytes of an on-disk struct from `format`.
pub(crate) fn le_bytes<T>(v: &T, structure: &str) -> Result<Vec<u8>>
where
    T: for<'a> BinWrite<Args<'a> = ()>,
{
    let mut c = Cursor::new(Vec::new());
    v.write_le(&mut c)
        .map_err(|e| Error::InvalidArgument(format!("{structure}: {e}")))?;
    Ok(c.into_inner())
}

/// Serialise a locator item compactly, as Windows lays it out: the 20-byte header, the 12-byte
/// entries, then each key followed by its value, in order. Fails when a key or value is longer
/// than the 16-bit length field allows or has an odd byte count.
pub(crate) fn encode_locator(pairs: &[LocatorPair]) -> Result<Vec<u8>> {
    let bad = |m: String| Error::InvalidArgument(format!("vhdx parent locator: {m}"));
    let count = u16::try_from(pairs.len()).map_err(|_| bad("too many keys".into()))?;
    let table_end = entry_start(pairs.len());
    let mut item = le_bytes(
        &ParentLocatorHeader {
            locator_type: VHDX_LOCATOR_TYPE_GUID,
            reserved: 0,
            key_value_count: count,
        },
        PL,
    )?;
    let mut data: Vec<u8> = Vec::new();
    for p in pairs {
        let k = utf16le(&p.key);
        let v = &p.value;
        if v.len() % 2 != 0 {
            return Err(bad(format!("a value has an odd byte length {}", v.len())));
        }
        if k.is_empty() {
            return Err(bad("an empty key".into()));
        }
        let key_length = u16::try_from(k.len())
            .map_err(|_| bad(format!("a key of {} bytes does not fit", k.len())))?;
        let value_length = u16::try_from(v.len()).map_err(|_| {
            bad(format!(
                "a value of {} bytes does not fit the 65535-byte length field",
                v.len()
            ))
        })?;
        let at = |n: usize| u32::try_from(table_end + n).map_err(|_| bad("too large".into()));
        let key_offset = at(data.len())?;
        data.extend_from_slice(&k);
        let value_offset = at(data.len())?;
        data.extend_from_slice(v);
        let entry = ParentLocatorEntry {
            key_offset,
            value_offset,
            key_length,
            value_length,
        };
        item.extend_from_slice(&le_bytes(&entry, PL)?);
    }
    item.extend_from_slice(&data);
    Ok(item)
}

impl Locator {
    /// Path locators in the order SX says to try them.
    pub(crate) fn parent_locators(&self) -> Vec<ParentLocator> {
        [
            (KEY_RELATIVE_PATH, PathStyle::Relative),
            (KEY_VOLUME_PATH, PathStyle::Volume),
            (KEY_ABSOLUTE_WIN32_PATH, PathStyle::AbsoluteWindows),
        ]
        .iter()
        .filter_map(|(k, style)| {
            self.entries
                .iter()
                .find(|e| e.key == *k)
                .map(|e| ParentLocator {
                    kind: crate::chain::LocatorKind::from_name(k),
                    path: e.value.clone(),
                    style: *style,
                    file_offset: Some(e.value_file_offset),
                    error: e.error.clone(),
                })
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut item = Vec::new();
        item.extend_from_slice(&VHDX_LOCATOR_TYPE_GUID);
        item.extend_from_slice(&0u16.to_le_bytes());
        item.extend_from_slice(&u16::try_from(pairs.len()).unwrap().to_le_bytes());
        let mut data = Vec::new();
        let base = 20 + 12 * pairs.len();
        let mut table = Vec::new();
        for (k, v) in pairs {
            let kb: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let ko = base + data.len();
            data.extend_from_slice(&kb);
            let vo = base + data.len();
            data.extend_from_slice(v);
            table.extend_from_slice(&u32::try_from(ko).unwrap().to_le_bytes());
            table.extend_from_slice(&u32::try_from(vo).unwrap().to_le_bytes());
            table.extend_from_slice(&u16::try_from(kb.len()).unwrap().to_le_bytes());
            table.extend_from_slice(&u16::try_from(v.len()).unwrap().to_le_bytes());
        }
        item.extend_from_slice(&table);
        item.extend_from_slice(&data);
        item
    }

    fn u16s(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn parses_windows_shape() {
        let l = u16s("{FF34003B-11ED-4CF8-A166-B2BE05E20B80}");
        let z = u16s("{00000000-0000-0000-0000-000000000000}");
        let a = u16s(r"C:\x\p.avhdx");
        let r = u16s(r".\p.avhdx");
        let item = build(&[
            ("parent_linkage", &l),
            ("absolute_win32_path", &a),
            ("relative_path", &r),
            ("parent_linkage2", &z),
        ]);
        let loc = parse_locator(&item, 0x1000).unwrap();
        assert_eq!(
            loc.parent_linkage.to_string(),
            "ff34003b-11ed-4cf8-a166-b2be05e20b80"
        );
        assert_eq!(loc.parent_linkage2, None);
        let p = loc.parent_locators();
        assert_eq!(p[0].kind, "relative_path");
        assert_eq!(p[1].kind, "absolute_win32_path");
        assert_eq!(p[0].path.as_deref(), Some(r".\p.avhdx"));
    }

    #[test]
    fn raw_pairs_and_encode_round_trip() {
        let l = u16s("{FF34003B-11ED-4CF8-A166-B2BE05E20B80}");
        let bad = [0x00u8, 0xD8, 0x41, 0x00];
        let a = u16s(r"C:\x\p.avhdx");
        let item = build(&[
            ("parent_linkage", &l),
            ("absolute_win32_path", &a),
            ("odd_key", &bad),
        ]);
        let pairs = raw_pairs(&item, 0).unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[2].key, "odd_key");
        assert_eq!(pairs[2].value, bad);
        // The testkit-style builder and ours lay items out identically.
        assert_eq!(encode_locator(&pairs).unwrap(), item);
        let pair = |k: &str, v: Vec<u8>| LocatorPair {
            key: k.into(),
            value: v,
        };
        let long = vec![0x41u8; 65536];
        assert!(encode_locator(&[pair("k", long)]).is_err());
        assert!(encode_locator(&[pair("k", vec![0x41])]).is_err());
        assert!(encode_locator(&[pair("", vec![])]).is_err());
        let max = vec![0x41u8; 65534];
        let it = encode_locator(&[pair("parent_linkage", l.clone()), pair("k", max)]).unwrap();
        assert_eq!(raw_pairs(&it, 0).unwrap()[1].value.len(), 65534);
    }

    #[test]
    fn invalid_utf16_value_is_recorded() {
        let l = u16s("{ff34003b-11ed-4cf8-a166-b2be05e20b80}");
        let bad = [0x00u8, 0xD8, 0x41, 0x00]; // unpaired high surrogate
        let item = build(&[("parent_linkage", &l), ("relative_path", &bad)]);
        let loc = parse_locator(&item, 0).unwrap();
        let p = loc.parent_locators();
        assert!(p[0].path.is_none());
        assert!(p[0].error.as_deref().unwrap().contains("UTF-16"));
    }

    #[test]
    fn offsets_past_item_and_duplicates_are_corrupt() {
        let l = u16s("{ff34003b-11ed-4cf8-a166-b2be05e20b80}");
        let mut item = build(&[("parent_linkage", &l)]);
        item[24..28].copy_from_slice(&5000u32.to_le_bytes());
        let e = parse_locator(&item, 0x2000).unwrap_err();
        assert!(
            e.to_string()
                .contains("vhdx parent locator at offset 0x2014"),
            "{e}"
        );
        let item = build(&[("parent_linkage", &l), ("parent_linkage", &l)]);
        assert!(parse_locator(&item, 0)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let item = build(&[("relative_path", &l)]);
        assert!(parse_locator(&item, 0).is_err());
        // Truncated tables and bad types never panic.
        for n in 0..item.len() {
            let _ = parse_locator(&item[..n], 0);
        }
        let mut t = build(&[("parent_linkage", &l)]);
        t[0] ^= 1;
        assert!(matches!(
            parse_locator(&t, 0),
            Err(Error::Unsupported { .. })
        ));
    }
}
