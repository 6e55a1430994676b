//! Rewriting a differencing VHD's parent linkage for `reparent`: new `W2ku` / `W2ru` paths,
//! every other locator cleared so that none still points at the old parent, the new parent
//! unicode name, and (optionally) the new parent unique id and time stamp. The edit itself, its
//! rules and its checks are the link editor's ([`super::link`]), shared with dead-locator repair.

use crate::disk::OpenOptions;
use crate::error::Result;

use super::link::{self, DropLocators, LinkEdit};

pub use super::link::{Planned, MAX_PARENT_NAME_UNITS};

/// What the new linkage should say.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `W2ru` value; `None` clears every `W2ru`.
    pub relative: Option<String>,
    /// `W2ku` value; `None` clears every `W2ku`.
    pub absolute: Option<String>,
    /// The parent unicode name (at most 256 UTF-16 code units).
    pub parent_name: String,
    /// New parent unique id (raw bytes) and parent time stamp, when the linkage is rewritten.
    pub linkage: Option<([u8; 16], u32)>,
}

/// Plan the rewrite of `file`, a differencing VHD already parsed with `opts`; only the simulated
/// result is parsed again.
pub fn plan(file: super::VhdFile, opts: &OpenOptions, t: &Targets) -> Result<Planned> {
    let edit = LinkEdit {
        absolute: t.absolute.clone(),
        relative: t.relative.clone(),
        drop: DropLocators::AllOthers,
        parent_name: Some(t.parent_name.clone()),
        linkage: t.linkage,
        sync_footers: true,
    };
    link::plan_edit(file, opts, &edit)
}
