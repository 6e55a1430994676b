//! Parent locators that point nowhere while another one leads to the parent (issue 7):
//! finding them (`vhd.locator.dead`, `vhdx.locator.dead`) and dropping them (`repair`).
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

use crate::chain::{held, locator_leads_to_parent, resolve_parent, ChainOptions, Held, Rejected};
use crate::disk::{Disk, DiskFormat, FormatInfo, ParentLocator, PathStyle};
use crate::error::{Error, Result};
use crate::source::Source;
use crate::txn::Plan;
use crate::vhd::format as vfmt;

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
        let what = match self.slot {
            Some(i) => format!("locator {i} ({})", self.kind),
            None => format!("key {}", self.kind),
        };
        match &self.path {
            Some(p) => format!("{what} \"{p}\": {}", self.why),
            None => format!("{what}: {}", self.why),
        }
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
    use crate::vhdx::format::{METADATA_REGION_GUID, PARENT_LOCATOR_GUID, REGION_TABLE_OFFSETS};
    let mut unsure = false;
    for rt in REGION_TABLE_OFFSETS {
        let mut t = vec![0u8; 16 + 32 * 2047];
        if f.read_exact_at(&mut t, rt).is_err() || &t[..4] != b"regi" {
            unsure = true;
            continue;
        }
        let n = (super::le32(&t, 8) as usize).min(2047);
        let Some(meta_off) = (0..n)
            .map(|i| 16 + 32 * i)
            .find(|&at| t.get(at..at + 16) == Some(&METADATA_REGION_GUID[..]))
            .map(|at| super::le64(&t, at + 16))
        else {
            unsure = true;
            continue;
        };
        let mut m = vec![0u8; crate::vhdx::format::METADATA_TABLE_SIZE];
        if f.read_exact_at(&mut m, meta_off).is_err() || &m[..8] != b"metadata" {
            unsure = true;
            continue;
        }
        let n = usize::from(super::le16(&m, 10)).min(2047);
        return (0..n).any(|i| {
            let at = 32 + 32 * i;
            m.get(at..at + 16) == Some(&PARENT_LOCATOR_GUID[..])
        });
    }
    unsure
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
        Ok(DiskFormat::Vhd) => [len.saturating_sub(512), len.saturating_sub(511), 0]
            .iter()
            .any(|&at| {
                let mut b = [0u8; 64];
                f.read_exact_at(&mut b, at).is_ok()
                    && &b[..8] == vfmt::FOOTER_COOKIE
                    && super::be32(&b, 60) == vfmt::DISK_TYPE_DIFFERENCING
            }),
        Err(_) => false,
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
    let format = disk.format();
    // (locator, VHD slot, entry offset, raw data was read)
    let mut locs: Vec<(ParentLocator, Option<usize>, Option<u64>, bool)> = Vec::new();
    match disk.info().details {
        FormatInfo::Vhd(v) => {
            let dynamic = v.dynamic?;
            for s in &dynamic.locators {
                let entry_at = dynamic.header_offset
                    + (vfmt::LOCATOR_TABLE_OFFSET + s.index * vfmt::LOCATOR_ENTRY_BYTES) as u64;
                locs.push((
                    s.to_parent_locator(),
                    Some(s.index),
                    Some(entry_at),
                    !s.raw.is_empty() || s.data_length == 0,
                ));
            }
        }
        _ => {
            for l in disk.parent_locators() {
                let off = l.file_offset;
                locs.push((l, None, off, true));
            }
        }
    }
    let mut a = Analysis {
        format,
        resolved_via: None,
        dead: Vec::new(),
        kept: Vec::new(),
    };
    let mut working: Vec<String> = Vec::new();
    for (loc, slot, offset, read) in &locs {
        let name = match slot {
            Some(i) => format!("locator {i} ({})", loc.kind),
            None => format!("key {}", loc.kind),
        };
        if format == DiskFormat::Vhd && !VHD_PATH_CODES.contains(&loc.kind.as_str()) {
            a.kept
                .push(format!("{name}: not a path vhdkit can use; kept"));
            continue;
        }
        let dead = |why: String| Dead {
            kind: loc.kind.clone(),
            slot: *slot,
            path: loc.path.clone(),
            why,
            offset: *offset,
        };
        let eight_bit = matches!(loc.kind.as_str(), "Wi2r" | "Wi2k");
        if loc.path.is_none() {
            let why = loc.error.clone().unwrap_or_else(|| "no path".to_string());
            if eight_bit && *read {
                a.kept.push(format!(
                    "{name}: 8-bit path in an unknown code page ({why}); kept"
                ));
            } else {
                a.dead
                    .push(dead(format!("its data cannot be used ({why})")));
            }
            continue;
        }
        if matches!(loc.style, PathStyle::Name | PathStyle::Opaque) {
            a.kept.push(format!("{name}: not a locator path; kept"));
            continue;
        }
        // Judged by what the locator holds, not by its slot. Only a relative path is certain
        // anywhere (it depends on the child's folder alone); an absolute path counts when it
        // leads to the parent and is kept otherwise: it may be right on another host (a
        // Windows path anywhere off Windows, a POSIX path on the host that wrote it).
        let held = loc.path.as_deref().and_then(|p| held(p, loc.style));
        let certain = match held {
            Some(Held::Relative(_)) => true,
            Some(Held::WindowsAbsolute(_)) => cfg!(windows),
            Some(Held::PosixAbsolute(_)) => false,
            None => {
                a.dead
                    .push(dead("it is not a file path vhdkit can use".to_string()));
                continue;
            }
        };
        match locator_leads_to_parent(&disk, path, loc, &opts) {
            Ok(true) => working.push(loc.kind.clone()),
            Ok(false) if certain => a.dead.push(dead(
                "it does not lead to a file with the parent's identity".to_string(),
            )),
            Ok(false) => a.kept.push(format!(
                "{name}: an absolute path, which may be right on another host; kept"
            )),
            Err(Rejected::Unreadable(why) | Rejected::NotParent(why)) => {
                a.kept.push(format!("{name}: cannot tell ({why}); kept"));
            }
        }
    }
    if working.is_empty() {
        return Some(a);
    }
    // The resolver's own verdict, with default options: it must resolve through a locator
    // entry that was verified above, and that locator is never dropped.
    if let Ok((res, Some(_))) = resolve_parent(&disk, path, &opts) {
        if let Some(via) = res.via.filter(|v| working.contains(v)) {
            a.resolved_via = Some(via);
        }
    }
    Some(a)
}

/// Offsets of the VHD locator entries that repair would drop (for its dry-run report).
pub(crate) fn droppable_vhd_entries(path: &Path, confine: &[PathBuf]) -> Vec<u64> {
    analyse(path, confine)
        .filter(|a| a.format == DiskFormat::Vhd)
        .map(|a| a.droppable().iter().filter_map(|d| d.offset).collect())
        .unwrap_or_default()
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

/// Plan the removal of `dead` (VHD slots) from the VHD at `path` through the VHD link editor:
/// the entries zeroed, the dynamic header checksum recomputed, and each dead locator's data
/// zeroed where that is safe (see [`crate::vhd::link`]).
pub(crate) fn vhd_plan(path: &Path, dead: &[Dead]) -> Result<Plan> {
    crate::vhd::link::drop_locators(path, dead.iter().filter_map(|d| d.slot).collect())
}

/// Plan the removal of the `dead` keys from the VHDX parent locator item at `path` through the
/// link editor: every other key (`parent_linkage`/`parent_linkage2` and unknown ones included)
/// kept byte for byte, the item re-encoded at the same offset with its freed tail zeroed, and
/// the metadata table entry's length updated. Returns the writes for one `Session::commit`.
pub(crate) fn vhdx_writes(path: &Path, dead: &[Dead]) -> Result<Vec<(u64, Vec<u8>)>> {
    use crate::error::ResultExt;
    use crate::vhdx::locator::link::{self, LinkEdit, Placement};
    let opts = crate::disk::OpenOptions::default();
    let (src, _) = crate::disk::open_source(path)?;
    if crate::disk::detect(&*src).with_path(path)? != DiskFormat::Vhdx {
        return Err(Error::InvalidArgument("not a VHDX".into()));
    }
    let file = crate::vhdx::VhdxFile::open(src, &opts).with_path(path)?;
    let mut edit = LinkEdit::keep_all(Placement::InPlace);
    for d in dead {
        edit.drop_key(&d.kind)?;
    }
    Ok(link::plan(&file, &edit, &opts.limits)?.into_log_writes())
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::txn::fault::{FaultPlan, FaultyFile, MemJournal};
    use crate::txn::journal::{self, JournalStore, Recovery};
    use vhdkit_testkit::vhd::{Locator, VhdBuilder};

    const PID: [u8; 16] = *b"parent-identity!";

    fn chain_sha(child: &[u8], parent: &Path) -> String {
        let c = Disk::from_source(Box::new(child.to_vec()), &Default::default()).unwrap();
        let p = Disk::open(parent).unwrap();
        vhdkit_testkit::sha256_reader(crate::ChainView::new(vec![c, p]))
    }

    /// A crash at every mutating operation of the VHD drop leaves the old or the new file
    /// (after journal recovery), and the chain reads the same either way.
    #[test]
    fn vhd_drop_is_crash_safe() {
        let t = tempfile::tempdir().unwrap();
        let mut p = VhdBuilder::dynamic(4 << 20).unique_id(PID);
        p.write(0, &[0x11; 4096]);
        let parent = t.path().join("parent.vhd");
        p.build().write_to(&parent);
        let mut c = VhdBuilder::differencing(4 << 20, PID)
            .locator(Locator::w2ru(r".\parent.vhd"))
            .locator(Locator::wi2r(r".\nowhere.vhd"));
        c.write(512, &[0x22; 512]);
        let child = t.path().join("child.vhd");
        c.build().write_to(&child);
        let a = analyse(&child, &[]).unwrap();
        assert_eq!(a.resolved_via.as_deref(), Some("W2ru"));
        assert_eq!(a.droppable().len(), 1);
        let plan = vhd_plan(&child, a.droppable()).unwrap();
        let old = std::fs::read(&child).unwrap();
        let want = chain_sha(&old, &parent);
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(old.clone(), fp.clone());
        journal::apply(&f, &MemJournal::new(fp.clone()), &plan).unwrap();
        let new = f.contents_synced();
        assert_ne!(new, old);
        let total = fp.count();
        assert!(total >= 4, "{total}");
        for k in 1..=total {
            let fp = FaultPlan::new(Some(k));
            let f = FaultyFile::new(old.clone(), fp.clone());
            let j = MemJournal::new(fp.clone());
            assert!(journal::apply(&f, &j, &plan).is_err(), "k={k}");
            for image in [f.contents_all_written(), f.contents_synced()] {
                let fp2 = FaultPlan::new(None);
                let f2 = FaultyFile::new(image, fp2.clone());
                let j2 = MemJournal::new(fp2);
                if let Some(b) = j.load().unwrap() {
                    j2.store(&b).unwrap();
                }
                let r = journal::recover(&f2, &j2).unwrap();
                assert!(!matches!(r, Recovery::Foreign { .. }), "k={k}: {r:?}");
                let got = f2.contents_all_written();
                assert!(got == old || got == new, "k={k}: neither old nor new");
                assert_eq!(chain_sha(&got, &parent), want, "k={k}");
            }
        }
    }

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
    }
}
