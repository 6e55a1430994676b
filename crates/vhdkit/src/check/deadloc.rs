//! Parent locators that point nowhere while another one leads to the parent (issue 7): which
//! ones they are, for the `vhd.locator.dead` / `vhdx.locator.dead` findings and for
//! [`crate::repair`], which drops them. Only reads.
//!
//! Conservative by design: a locator is *dead* only when it is certain that it cannot find the
//! parent:
//! - its data cannot be read or decoded (out of bounds, bad UTF-16 in `W2ru`/`W2ku` or a VHDX
//!   value, bad UTF-8 in `MacX`); the 8-bit `Wi2r`/`Wi2k` paths are kept when they merely fail
//!   to decode as UTF-8, since their code page is unknown;
//! - it is a relative path (VHD `W2ru`/`Wi2r`, VHDX `relative_path`) or a `MacX` file URL, and
//!   every local path it stands for is missing or is a disk without the parent's identity.
//!
//! Absolute Windows paths (`W2ku`, `Wi2k`, `absolute_win32_path`, `volume_path`) cannot be
//! verified off Windows and are kept unless undecodable (on Windows they are verified like the
//! others). `Mac ` alias records and unknown codes are kept. The VHD parent unicode name is not a
//! locator entry and is never touched. Nothing is dead unless the parent resolves *now* through
//! another locator entry (not merely by its file name or a search folder).

use std::path::{Path, PathBuf};

use super::vhd::raw_footer;
use crate::chain::{held, locator_leads_to_parent, resolve_parent, ChainOptions, Held, Rejected};
use crate::disk::{Disk, DiskFormat, FormatInfo, ParentLocator, PathStyle};
use crate::source::Source;
use crate::vhd::format::{self as vfmt, FOOTER_BYTES, OLD_FOOTER_BYTES};
use crate::vhdx::format::{
    parse, MetadataTableEntry, MetadataTableHeader, RegionTableEntry, RegionTableHeader,
    MAX_METADATA_ENTRIES, MAX_REGION_ENTRIES, METADATA_REGION_GUID, METADATA_TABLE_ENTRY_SIZE,
    METADATA_TABLE_HEADER_SIZE, METADATA_TABLE_SIGNATURE, METADATA_TABLE_SIZE, PARENT_LOCATOR_GUID,
    REGION_TABLE_ENTRY_SIZE, REGION_TABLE_HEADER_SIZE, REGION_TABLE_OFFSETS,
    REGION_TABLE_SIGNATURE,
};

/// One locator that points nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dead {
    /// `W2ru`, `relative_path`...
    pub kind: String,
    /// VHD slot number.
    pub slot: Option<usize>,
    /// The decoded path, when it decodes.
    pub path: Option<String>,
    /// Why it is dead.
    pub why: String,
    /// Offset of the locator entry (VHD) or of its value (VHDX).
    pub offset: Option<u64>,
}

impl Dead {
    pub fn describe(&self) -> String {
        let what = entry_name(&self.kind, self.slot);
        match &self.path {
            Some(p) => format!("{what} \"{p}\": {}", self.why),
            None => format!("{what}: {}", self.why),
        }
    }
}

/// How findings name a locator entry: a VHD slot with its code, or a VHDX key.
fn entry_name(kind: &str, slot: Option<usize>) -> String {
    match slot {
        Some(i) => format!("locator {i} ({kind})"),
        None => format!("key {kind}"),
    }
}

/// What was found about a differencing disk's locators.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    pub format: DiskFormat,
    /// The locator entry through which the parent resolves now, if any.
    pub resolved_via: Option<String>,
    /// Locators that point nowhere.
    pub dead: Vec<Dead>,
    /// Locators kept although not verified, and why.
    pub kept: Vec<String>,
}

impl Analysis {
    /// Dead locators that may be dropped: only when the parent resolves through another one.
    pub fn droppable(&self) -> &[Dead] {
        if self.resolved_via.is_some() {
            &self.dead
        } else {
            &[]
        }
    }
}

/// VHD locator codes that hold paths.
const VHD_PATH_CODES: [&str; 5] = ["W2ru", "W2ku", "Wi2r", "Wi2k", "MacX"];

/// VHDX: does a metadata table (found through either region table) list a parent locator item?
/// `true` when that cannot be told (a damaged structure), so the full analysis decides.
fn vhdx_may_have_parent(f: &std::fs::File) -> bool {
    REGION_TABLE_OFFSETS
        .iter()
        .find_map(|&at| metadata_table_at(f, at))
        .is_none_or(|m| lists_parent_locator(&m))
}

/// The metadata table that the region table at `rt` points to, read whole; `None` when either
/// table cannot be read or lacks its signature. Checksums are not looked at: this only decides
/// whether the full analysis is worth running.
fn metadata_table_at(f: &std::fs::File, rt: u64) -> Option<Vec<u8>> {
    let mut t = vec![
        0u8;
        REGION_TABLE_HEADER_SIZE as usize
            + REGION_TABLE_ENTRY_SIZE as usize * MAX_REGION_ENTRIES as usize
    ];
    f.read_exact_at(&mut t, rt).ok()?;
    let header: RegionTableHeader = parse(&t, "region table", rt).ok()?;
    if header.signature != REGION_TABLE_SIGNATURE {
        return None;
    }
    let n = header.entry_count.min(MAX_REGION_ENTRIES) as usize;
    let meta_at = t
        .get(REGION_TABLE_HEADER_SIZE as usize..)?
        .chunks_exact(REGION_TABLE_ENTRY_SIZE as usize)
        .take(n)
        .filter_map(|e| parse::<RegionTableEntry>(e, "region table entry", rt).ok())
        .find(|e| e.guid == METADATA_REGION_GUID)?
        .file_offset;
    let mut m = vec![0u8; METADATA_TABLE_SIZE];
    f.read_exact_at(&mut m, meta_at).ok()?;
    (m.get(..METADATA_TABLE_SIGNATURE.len()) == Some(&METADATA_TABLE_SIGNATURE[..])).then_some(m)
}

/// Whether the metadata table `m` lists the parent locator item.
fn lists_parent_locator(m: &[u8]) -> bool {
    let Ok(header) = parse::<MetadataTableHeader>(m, "metadata table", 0) else {
        return false;
    };
    let n = usize::from(header.entry_count.min(MAX_METADATA_ENTRIES));
    m.get(METADATA_TABLE_HEADER_SIZE as usize..)
        .unwrap_or_default()
        .chunks_exact(METADATA_TABLE_ENTRY_SIZE as usize)
        .take(n)
        .filter_map(|e| parse::<MetadataTableEntry>(e, "metadata table entry", 0).ok())
        .any(|e| e.item_id == PARENT_LOCATOR_GUID)
}

/// The footer's fields up to and including `disk_type`.
const FOOTER_HEAD: usize = vfmt::FOOTER_CHECKSUM_OFFSET;

/// VHD: does a footer (at the end, a 511-byte one at the end, or the copy at offset 0) say
/// the disk is differencing? Only the fields up to the disk type are read.
fn vhd_may_have_parent(f: &std::fs::File, len: u64) -> bool {
    [
        len.saturating_sub(FOOTER_BYTES as u64),
        len.saturating_sub(OLD_FOOTER_BYTES as u64),
        0,
    ]
    .iter()
    .any(|&at| {
        let mut b = [0u8; FOOTER_BYTES];
        f.read_exact_at(&mut b[..FOOTER_HEAD], at).is_ok()
            && b.starts_with(vfmt::FOOTER_COOKIE)
            && raw_footer(&b).is_some_and(|ft| ft.disk_type == vfmt::DISK_TYPE_DIFFERENCING)
    })
}

/// Cheap pre-filter: could `path` be a differencing disk? (VHD: a footer says so; VHDX: a
/// metadata table lists a parent locator, or the tables cannot be read.) Keeps `check` of
/// large non-differencing disks from opening them a second time.
pub(crate) fn maybe_differencing(path: &Path) -> bool {
    let Ok(f) = crate::fsx::open_disk(path) else {
        return false;
    };
    let Ok(len) = f.len() else { return false };
    match crate::disk::detect(&f) {
        Ok(DiskFormat::Vhdx) => vhdx_may_have_parent(&f),
        Ok(DiskFormat::Vhd) => vhd_may_have_parent(&f, len),
        Err(_) => false,
    }
}

/// One locator entry to judge.
struct Entry {
    loc: ParentLocator,
    /// VHD slot number.
    slot: Option<usize>,
    /// Offset of the VHD locator entry, or of the VHDX value.
    offset: Option<u64>,
    /// Whether its raw data could be read (VHD; always true for VHDX).
    read: bool,
}

impl Entry {
    fn dead(&self, why: impl Into<String>) -> Verdict {
        Verdict::Dead(Dead {
            kind: self.loc.kind.to_string(),
            slot: self.slot,
            path: self.loc.path.clone(),
            why: why.into(),
            offset: self.offset,
        })
    }

    fn kept(&self, why: &str) -> Verdict {
        Verdict::Kept(format!(
            "{}: {why}; kept",
            entry_name(self.loc.kind.as_str(), self.slot)
        ))
    }
}

/// What one locator entry turned out to be.
enum Verdict {
    Dead(Dead),
    Kept(String),
    /// It leads to the parent now.
    Leads,
}

/// The locator entries of `disk`, with the positions the findings name. `None` for a VHD
/// without a dynamic header.
fn entries(disk: &Disk) -> Option<Vec<Entry>> {
    match disk.info().details {
        FormatInfo::Vhd(v) => {
            let dynamic = v.dynamic?;
            let entry_bytes = vfmt::LOCATOR_ENTRY_BYTES as u64;
            Some(
                dynamic
                    .locators
                    .iter()
                    .map(|s| Entry {
                        loc: s.to_parent_locator(),
                        slot: Some(s.index),
                        offset: (s.index as u64)
                            .checked_mul(entry_bytes)
                            .and_then(|o| o.checked_add(vfmt::LOCATOR_TABLE_OFFSET as u64))
                            .and_then(|o| o.checked_add(dynamic.header_offset)),
                        read: !s.raw.is_empty() || s.data_length == 0,
                    })
                    .collect(),
            )
        }
        _ => Some(
            disk.parent_locators()
                .into_iter()
                .map(|l| Entry {
                    offset: l.file_offset,
                    loc: l,
                    slot: None,
                    read: true,
                })
                .collect(),
        ),
    }
}

/// Judge one locator entry of the differencing disk `disk` at `path` (see the module docs).
fn judge(disk: &Disk, path: &Path, opts: &ChainOptions, e: &Entry) -> Verdict {
    let loc = &e.loc;
    if disk.format() == DiskFormat::Vhd && !VHD_PATH_CODES.contains(&loc.kind.as_str()) {
        return e.kept("not a path vhdkit can use");
    }
    let Some(p) = loc.path.as_deref() else {
        let why = loc.error.clone().unwrap_or_else(|| "no path".to_string());
        let eight_bit = matches!(loc.kind.as_str(), "Wi2r" | "Wi2k");
        return if eight_bit && e.read {
            e.kept(&format!("8-bit path in an unknown code page ({why})"))
        } else {
            e.dead(format!("its data cannot be used ({why})"))
        };
    };
    if matches!(loc.style, PathStyle::Name | PathStyle::Opaque) {
        return e.kept("not a locator path");
    }
    // Judged by what the locator holds, not by its slot. Only a relative path is certain
    // anywhere (it depends on the child's folder alone); an absolute path counts when it
    // leads to the parent and is kept otherwise: it may be right on another host (a
    // Windows path anywhere off Windows, a POSIX path on the host that wrote it).
    let certain = match held(p, loc.style) {
        Some(Held::Relative(_)) => true,
        Some(Held::WindowsAbsolute(_)) => cfg!(windows),
        Some(Held::PosixAbsolute(_)) => false,
        None => return e.dead("it is not a file path vhdkit can use"),
    };
    match locator_leads_to_parent(disk, path, loc, opts) {
        Ok(true) => Verdict::Leads,
        Ok(false) if certain => e.dead("it does not lead to a file with the parent's identity"),
        Ok(false) => e.kept("an absolute path, which may be right on another host"),
        Err(Rejected::Unreadable(why) | Rejected::NotParent(why)) => {
            e.kept(&format!("cannot tell ({why})"))
        }
    }
}

/// Analyse the locators of the differencing disk at `path`. `None` when it is not a
/// differencing disk or does not open.
pub(crate) fn analyse(path: &Path, confine: &[PathBuf]) -> Option<Analysis> {
    if !maybe_differencing(path) {
        return None;
    }
    let opts = ChainOptions {
        confine: confine.to_vec(),
        ..ChainOptions::default()
    };
    let disk = Disk::open_with(path, &opts.open).ok()?;
    disk.parent_linkage()?;
    let mut a = Analysis {
        format: disk.format(),
        resolved_via: None,
        dead: Vec::new(),
        kept: Vec::new(),
    };
    let mut working: Vec<String> = Vec::new();
    for e in entries(&disk)? {
        match judge(&disk, path, &opts, &e) {
            Verdict::Dead(d) => a.dead.push(d),
            Verdict::Kept(why) => a.kept.push(why),
            Verdict::Leads => working.push(e.loc.kind.to_string()),
        }
    }
    if working.is_empty() {
        return Some(a);
    }
    // The resolver's own verdict, with default options: it must resolve through a locator
    // entry that was verified above, and that locator is never dropped.
    if let Ok((res, Some(_))) = resolve_parent(&disk, path, &opts) {
        a.resolved_via = res
            .via
            .and_then(|v| v.locator().map(ToString::to_string))
            .filter(|v| working.contains(v));
    }
    Some(a)
}

/// Findings for `check`: dead locators, only when the parent resolves through another one.
pub(crate) fn findings(path: &Path, confine: &[PathBuf]) -> Vec<super::Finding> {
    let Some(a) = analyse(path, confine) else {
        return Vec::new();
    };
    let (code, structure) = match a.format {
        DiskFormat::Vhd => ("vhd.locator.dead", "vhd parent locator"),
        DiskFormat::Vhdx => ("vhdx.locator.dead", "vhdx parent locator"),
    };
    let via = a.resolved_via.clone().unwrap_or_default();
    a.droppable()
        .iter()
        .map(|d| {
            super::Finding::new(
                code,
                structure,
                d.offset,
                format!(
                    "{}; the parent resolves through {via} (`vhdkit repair` drops it)",
                    d.describe()
                ),
            )
        })
        .collect()
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use vhdkit_testkit::vhd::VhdBuilder;

    const PID: [u8; 16] = *b"parent-identity!";

    #[test]
    fn prefilter_skips_disks_without_a_parent() {
        use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
        let t = tempfile::tempdir().unwrap();
        for (kind, want) in [
            (Kind::Dynamic, false),
            (Kind::Fixed, false),
            (Kind::Differencing, true),
        ] {
            let p = t.path().join("x.vhdx");
            let b = VhdxBuilder::new(kind, 8 << 20, 1 << 20, 512).build();
            std::fs::write(&p, &b.bytes).unwrap();
            assert_eq!(maybe_differencing(&p), want, "{kind:?}");
            // Both region tables damaged: cannot tell, so the full analysis decides.
            let mut bad = b.bytes.clone();
            bad[0x30000] ^= 0xff;
            bad[0x40000] ^= 0xff;
            std::fs::write(&p, &bad).unwrap();
            assert!(maybe_differencing(&p), "{kind:?}");
        }
        let p = t.path().join("x.vhd");
        VhdBuilder::dynamic(4 << 20).build().write_to(&p);
        assert!(!maybe_differencing(&p));
        VhdBuilder::differencing(4 << 20, PID).build().write_to(&p);
        assert!(maybe_differencing(&p));
        // Each footer place tells on its own: the copy at offset 0 behind a damaged end
        // footer, and a 511-byte end footer behind a damaged copy.
        let good = std::fs::read(&p).unwrap();
        let mut b = good.clone();
        let end = b.len() - 512;
        b[end] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        assert!(maybe_differencing(&p));
        let mut b = good;
        b[0] ^= 0xff;
        b.pop();
        std::fs::write(&p, &b).unwrap();
        assert!(maybe_differencing(&p));
    }
}
