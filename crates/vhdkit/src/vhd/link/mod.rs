//! The VHD link editor: the one place that rewrites how a differencing VHD names its parent
//! (parent locators, parent unicode name, parent unique id and time stamp). `reparent` uses it
//! to write new paths and clear every other locator; dead-locator repair uses it to clear the
//! locators it names and nothing else. It produces a [`crate::txn::Plan`]; it writes nothing.
//!
//! What changes (FORMAT.md A.6, A.7, "Rewriting VHD metadata"):
//! - A new `W2ku` / `W2ru` path (UTF-16 little-endian) goes to the first slot that already has
//!   that code (and is not dropped), else to the first free slot. It keeps the slot's reserved
//!   data space when the path fits there (Windows reserves 4096 and 65536 bytes); otherwise its
//!   data goes to the end of the file: at the old end footer's offset (rounded up to 512), a
//!   space of the data length rounded up to 512, and the end footer after it. The old data is
//!   left where it was (no entry points at it any more). Data blocks, the BAT and the bitmaps
//!   are never written.
//! - A dropped locator's entry is zeroed. Its data is zeroed too, but only when that data was
//!   readable at open (within its data space and `Limits::max_locator_bytes`), lies between the
//!   front and the end footer, and overlaps no structure, no kept locator's space and no space
//!   written by this edit; otherwise the bytes stay (with a warning), since the entry no longer
//!   points at them.
//! - Every locator not dropped and not rewritten keeps its entry and its data byte for byte.
//! - The parent unicode name (UTF-16 big-endian, 512 bytes) when a new one is given.
//! - Parent unique id and time stamp when a new linkage is given.
//! - The dynamic header checksum. Footer content never changes (the child's unique id stays);
//!   the end footer moves when data is relocated, and with `sync_footers` a damaged or
//!   differing copy is rewritten from the copy in use.
//!
//! Writes are ordered as FORMAT.md recommends (new locator data, then the header, then the front
//! and the end footer); the `txn` journal makes the whole plan atomic anyway.
//!
//! The caller parses the child as it is; the editor parses only the simulated result, which must parse,
//! keep its blocks, size and identity, and carry exactly the planned locators, parent name and
//! linkage before the plan is returned. The plan keeps that parse (`Planned::simulated`).

mod edit;
mod tables;
mod verify;

use std::path::Path;

use uuid::Uuid;

use crate::disk::{OpenOptions, Parsed};
use crate::error::{Error, Result};
use crate::simulate::Simulated;
use crate::txn::Plan;

use super::name_style::{NameInputs, ParentNameStyle};
use super::VhdFile;

/// Longest Windows path (UTF-16 code units).
pub const MAX_PATH_UNITS: usize = 32_767;
/// Longest parent unicode name (UTF-16 code units).
pub const MAX_PARENT_NAME_UNITS: usize = super::format::PARENT_NAME_BYTES / 2;

/// The parent time stamp written with a new linkage: 0, as Windows writes it for new links
/// (FORMAT.md A.10).
pub const NEW_LINK_TIME_STAMP: u32 = 0;

/// What the user is told when a new linkage carries [`NEW_LINK_TIME_STAMP`].
pub const NEW_LINK_TIME_STAMP_NOTE: &str =
    "the parent time stamp is set to 0, as Windows writes it for new links (FORMAT.md A.10)";

/// The linkage (parent unique id bytes, parent time stamp) written for a new parent.
pub fn new_linkage(parent_id: &Uuid) -> ([u8; 16], u32) {
    (crate::guid::to_vhd_bytes(parent_id), NEW_LINK_TIME_STAMP)
}

/// The VHD-specific choices of a reparent, made before its plan: the parent unicode name (in
/// the style the child's field already has, see [`super::name_style`]), the new linkage when it
/// is rewritten, and the notes that explain both, in the order they are shown.
#[derive(Debug, Clone)]
pub struct ReparentLink {
    /// The parent unicode name to write.
    pub parent_name: String,
    /// Its style before and after.
    pub name_style: ParentNameStyle,
    /// New parent unique id bytes and time stamp, when the linkage is rewritten.
    pub linkage: Option<([u8; 16], u32)>,
    /// What to tell the user.
    pub notes: Vec<String>,
}

/// Choose the parent name for `names` and, when `new_parent_id` is given, the new linkage.
/// `Err` says why no parent name fits (the caller refuses the reparent).
pub fn reparent_link(
    names: &NameInputs<'_>,
    new_parent_id: Option<&Uuid>,
) -> std::result::Result<ReparentLink, String> {
    let (parent_name, name_style) = super::name_style::choose(names);
    let mut notes = vec![name_style.describe()];
    if parent_name.encode_utf16().count() > MAX_PARENT_NAME_UNITS {
        return Err(format!(
            "the new parent's file name is longer than the {MAX_PARENT_NAME_UNITS} UTF-16 code \
             units of the parent name: {parent_name}"
        ));
    }
    let linkage = new_parent_id.map(new_linkage);
    if linkage.is_some() {
        notes.push(NEW_LINK_TIME_STAMP_NOTE.to_string());
    }
    Ok(ReparentLink {
        parent_name,
        name_style,
        linkage,
        notes,
    })
}

/// Which non-empty locator slots an edit clears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropLocators {
    /// Every slot that does not receive a new path, so that no locator still points at the
    /// old parent (a reparent).
    AllOthers,
    /// These slots only (dead-locator repair); every other slot is kept byte for byte.
    Slots(Vec<usize>),
}

/// The change to a differencing VHD's link to its parent.
#[derive(Debug, Clone)]
pub struct LinkEdit {
    /// New `W2ku` path, if any.
    pub absolute: Option<String>,
    /// New `W2ru` path, if any.
    pub relative: Option<String>,
    /// Which other locators are cleared.
    pub drop: DropLocators,
    /// New parent unicode name (at most 256 UTF-16 code units); `None` keeps the field.
    pub parent_name: Option<String>,
    /// New parent unique id (raw bytes) and parent time stamp; `None` keeps them.
    pub linkage: Option<([u8; 16], u32)>,
    /// Rewrite a footer copy that differs from the copy in use. A reparent does; repair
    /// leaves footers to its own footer step, which has its own rules for which copy wins.
    pub sync_footers: bool,
}

impl LinkEdit {
    /// Clear the locators in `slots`, change nothing else.
    pub fn drop_only(slots: Vec<usize>) -> LinkEdit {
        LinkEdit {
            absolute: None,
            relative: None,
            drop: DropLocators::Slots(slots),
            parent_name: None,
            linkage: None,
            sync_footers: false,
        }
    }
}

/// The plan and what the caller should tell the user.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The writes.
    pub plan: Plan,
    /// Facts worth showing (relocations).
    pub notes: Vec<String>,
    /// Problems that did not stop the plan.
    pub warnings: Vec<String>,
    /// The simulated result, as parsed.
    pub(crate) simulated: Simulated,
}

/// Plan `edit` on `file`, a VHD already parsed (with `opts`); it must be differencing. The
/// simulated result is parsed from an overlay on `file`'s own source, so the file is not parsed
/// again as it is.
pub fn plan_edit(file: VhdFile, opts: &OpenOptions, edit: &LinkEdit) -> Result<Planned> {
    let file = require_differencing(file)?;
    let mut built = edit::build(&file, opts, edit)?;
    let after = verify::simulate(file, opts, &built.plan, &built.expect)?;
    if built.relocated {
        built.notes.push(format!(
            "the file grows from {} to {} bytes; no data block moves",
            built.plan.old_len, built.plan.new_len
        ));
    }
    Ok(Planned {
        plan: built.plan,
        notes: built.notes,
        warnings: built.warnings,
        simulated: Simulated::new(Parsed::Vhd(Box::new(after))),
    })
}

/// Plan the removal of the locators in `slots` from the VHD at `path` (dead-locator repair).
pub(crate) fn drop_locators(path: &Path, slots: Vec<usize>) -> Result<Plan> {
    let f = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e).with_path(path))?;
    let opts = OpenOptions::default();
    let file = VhdFile::open(Box::new(f), &opts)?;
    plan_edit(file, &opts, &LinkEdit::drop_only(slots)).map(|p| p.plan)
}

/// Refuse a VHD that is not a differencing disk.
fn require_differencing(file: VhdFile) -> Result<VhdFile> {
    if file.header.is_none() {
        return Err(Error::refused(
            "not a differencing disk (no dynamic header)",
        ));
    }
    if file.shape.disk_type != crate::DiskType::Differencing {
        return Err(Error::refused(format!(
            "not a differencing disk (footer disk type {})",
            file.footer.raw.disk_type
        )));
    }
    Ok(file)
}

// Flatten: removing the linkage altogether (a differencing disk becomes dynamic).
mod unlink;
pub(crate) use unlink::plan_unlink;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::reparent::LocatorMode;

    fn names(mode: LocatorMode, file_name: &str) -> NameInputs<'_> {
        NameInputs {
            old: Some(r"C:\old\base.vhd"),
            mode,
            absolute: Some(r"C:\Lab\base.vhd"),
            child_dir: Path::new("/lab/vm"),
            new_parent: Path::new("/lab/ref/base.vhd"),
            file_name,
            max_units: MAX_PARENT_NAME_UNITS,
        }
    }

    #[test]
    fn reparent_link_notes_and_time_stamp() {
        let id = Uuid::from_bytes([9; 16]);
        let l = reparent_link(&names(LocatorMode::Both, "base.vhd"), Some(&id)).unwrap();
        assert_eq!(l.parent_name, r"C:\Lab\base.vhd");
        assert_eq!(l.linkage, Some((crate::guid::to_vhd_bytes(&id), 0)));
        assert_eq!(
            l.notes,
            vec![
                "parent name style kept: absolute path".to_string(),
                NEW_LINK_TIME_STAMP_NOTE.to_string()
            ]
        );
        let l = reparent_link(&names(LocatorMode::Both, "base.vhd"), None).unwrap();
        assert_eq!((l.linkage, l.notes.len()), (None, 1));
    }

    #[test]
    fn reparent_link_refuses_a_name_that_cannot_fit() {
        let long = "x".repeat(MAX_PARENT_NAME_UNITS + 1);
        let mut n = names(LocatorMode::Both, &long);
        n.absolute = None;
        n.old = None;
        let e = reparent_link(&n, None).unwrap_err();
        assert!(e.contains("longer than the 256 UTF-16 code units"), "{e}");
    }
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod kit_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::Disk;
    use vhdkit_testkit::vhd::{BuiltVhd, Locator, VhdBuilder};

    const PID: [u8; 16] = *b"parent-identity!";

    /// `W2ru` (slot 0), `Wi2r` (slot 1), and a `Wi2k` (slot 2) whose data space is invalid, so
    /// its data is not readable at open.
    fn child() -> BuiltVhd {
        let mut b = VhdBuilder::differencing(4 << 20, PID)
            .parent_name("p.vhd")
            .locator(Locator::w2ru(r".\p.vhd"))
            .locator(Locator::wi2r(r".\gone.vhd"))
            .locator(Locator::wi2k(r"C:\gone.vhd"))
            .build();
        let e = b.locator_entry(2);
        b.set_u32(e + 4, 513);
        b.fix_header_checksum();
        b
    }

    fn plan_on(bytes: &[u8], edit: &LinkEdit) -> Planned {
        let opts = OpenOptions::default();
        let file = VhdFile::open(Box::new(bytes.to_vec()), &opts).unwrap();
        plan_edit(file, &opts, edit).unwrap()
    }

    fn applied(bytes: &[u8], plan: &Plan) -> Vec<u8> {
        let mut out = bytes.to_vec();
        out.resize(usize::try_from(plan.new_len).unwrap(), 0);
        for w in &plan.writes {
            let at = usize::try_from(w.offset).unwrap();
            out[at..at + w.data.len()].copy_from_slice(&w.data);
        }
        out
    }

    fn data_range(b: &BuiltVhd, slot: usize) -> std::ops::Range<usize> {
        let (_, at) = *b.locator_data.iter().find(|d| d.0 == slot).unwrap();
        let e = b.locator_entry(slot);
        let len = u32::from_be_bytes(b.bytes[e + 8..e + 12].try_into().unwrap());
        at..at + len as usize
    }

    #[test]
    fn drop_clears_only_the_named_slots_and_keeps_unreadable_data() {
        let b = child();
        let p = plan_on(&b.bytes, &LinkEdit::drop_only(vec![1, 2]));
        assert_eq!(p.plan.new_len, p.plan.old_len);
        let after = applied(&b.bytes, &p.plan);
        let e = |s: usize| {
            b.locator_entry(s)..b.locator_entry(s) + super::super::format::LOCATOR_ENTRY_BYTES
        };
        assert_eq!(after[e(0)], b.bytes[e(0)]);
        assert!(after[e(1)].iter().all(|&x| x == 0));
        assert!(after[e(2)].iter().all(|&x| x == 0));
        assert_eq!(after[data_range(&b, 0)], b.bytes[data_range(&b, 0)]);
        assert!(after[data_range(&b, 1)].iter().all(|&x| x == 0));
        // Unreadable at open: the entry goes, the bytes stay.
        assert_eq!(after[data_range(&b, 2)], b.bytes[data_range(&b, 2)]);
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("locator 2") && w.contains("neither")),
            "{p:?}"
        );
        // Footers are not repair's business here.
        assert!(p.plan.writes.iter().all(|w| w.offset != 0));
    }

    #[test]
    fn reparent_edit_clears_every_other_slot() {
        let b = child();
        let edit = LinkEdit {
            absolute: Some(r"C:\Lab\p.vhd".into()),
            relative: Some(r".\p.vhd".into()),
            drop: DropLocators::AllOthers,
            parent_name: Some("p.vhd".into()),
            linkage: None,
            sync_footers: true,
        };
        let p = plan_on(&b.bytes, &edit);
        let after = applied(&b.bytes, &p.plan);
        let d = Disk::from_source(Box::new(after), &OpenOptions::default()).unwrap();
        let locs: Vec<(String, Option<String>)> = d
            .parent_locators()
            .into_iter()
            .filter(|l| l.kind != "parent_name")
            .map(|l| (l.kind.to_string(), l.path))
            .collect();
        assert_eq!(
            locs,
            vec![
                ("W2ru".to_string(), Some(r".\p.vhd".to_string())),
                ("W2ku".to_string(), Some(r"C:\Lab\p.vhd".to_string())),
            ]
        );
    }
}
