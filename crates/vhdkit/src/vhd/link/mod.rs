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
//! The child is parsed twice: once as it is, once as the simulated result, which must parse,
//! keep its blocks, size and identity, and carry exactly the planned locators, parent name and
//! linkage before the plan is returned.

mod edit;
mod verify;

use std::path::Path;

use uuid::Uuid;

use crate::disk::OpenOptions;
use crate::error::{Error, Result};
use crate::source::Source;
use crate::txn::Plan;

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
}

/// Plan `edit` on the differencing VHD that `open` yields. `open` is called twice: once to
/// read the file as it is, once as the base of the simulated result.
pub fn plan_edit(
    open: &dyn Fn() -> Result<Box<dyn Source>>,
    opts: &OpenOptions,
    edit: &LinkEdit,
) -> Result<Planned> {
    let file = open_differencing(open()?, opts)?;
    let mut built = edit::build(&file, opts, edit)?;
    verify::simulate(open, opts, &file, &built.plan, &built.expect)?;
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
    })
}

/// Plan the removal of the locators in `slots` from the VHD at `path` (dead-locator repair).
pub(crate) fn drop_locators(path: &Path, slots: Vec<usize>) -> Result<Plan> {
    let open = || -> Result<Box<dyn Source>> {
        let f = crate::fsx::open_disk(path)
            .map_err(|e| Error::io("opening the file", e).with_path(path))?;
        Ok(Box::new(f))
    };
    plan_edit(&open, &OpenOptions::default(), &LinkEdit::drop_only(slots)).map(|p| p.plan)
}

/// Open `src` and require a differencing disk.
fn open_differencing(src: Box<dyn Source>, opts: &OpenOptions) -> Result<VhdFile> {
    let file = VhdFile::open(src, opts)?;
    if file.header.is_none() {
        return Err(Error::refused(
            "not a differencing disk (no dynamic header)",
        ));
    }
    if file.disk_type != crate::DiskType::Differencing {
        return Err(Error::refused(format!(
            "not a differencing disk (footer disk type {})",
            file.footer.raw.disk_type
        )));
    }
    Ok(file)
}
