//! vhdkit: read, check and repoint Microsoft virtual hard disks (VHD and VHDX) and their
//! differencing chains.
//!
//! # The model
//!
//! - A **disk** ([`Disk`]) is one file of either format: fixed, dynamic, or differencing (it
//!   holds only the sectors written to it and records its parent's identity and paths, the
//!   *locators*). [`Disk::open`] reads and checks its structures; [`Disk::info`] tells
//!   everything about it; [`Disk::map`] says which ranges the file itself holds.
//! - A **chain** ([`Chain`]) is a differencing disk and its parents, child first, down to a
//!   base. [`Chain::open`] finds each parent through the locators (and [`ChainOptions`]: search
//!   folders, [`PathMap`]s for Windows paths) and accepts it only when it has the identity the
//!   child records; [`Chain::inspect`] reports a broken chain instead of failing.
//! - A **view** ([`ChainView`]) is the virtual disk the chain stands for: `Read + Seek` (and
//!   [`ChainView::read_exact_at`]) through every layer, one file read per run of sectors.
//! - **Writing**: [`create()`] makes new disks (VHD or VHDX, dynamic, fixed, differencing);
//!   [`WritableDisk`] is `Read + Write + Seek` over one disk, its parents read-only;
//!   [`convert`] copies a view into a raw image, a VHD or a VHDX.
//! - **Plan, then apply**: a change to a disk's own metadata is first a *plan* that touches
//!   nothing and shows every field old → new ([`reparent::plan`] gives a
//!   [`reparent::ReparentPlan`]), then is *applied* crash-safely ([`reparent::apply`]): a VHD
//!   through a redo journal beside the file, a VHDX through its own log. After a crash the file is the old one or the new one.
//!   [`share`] (one shared parent for many children) and [`repair`] work the same way.
//! - **Check**: [`check::check_file`] reports every broken rule of a file (and, if asked, of
//!   its chain) as [`check::Finding`]s with a stable code, the structure and the offset; it
//!   only reads. [`repair::repair`] fixes what is certain and loses nothing.
//!
//! The whole model in one run (on disks made in a temporary folder):
//!
//! ```
//! use std::io::{Read, Seek, SeekFrom, Write};
//! use vhdkit::check::{check_file, CheckOptions};
//! use vhdkit::reparent::{self, ReparentOptions};
//! use vhdkit::{create, Chain, ChainOptions, CreateParams, WritableDisk};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let base = dir.path().join("base.vhdx");
//! let child = dir.path().join("child.avhdx");
//!
//! // Disks: a dynamic base and a differencing child over it.
//! create(&base, &CreateParams::dynamic(16 << 20))?;
//! create(&child, &CreateParams::differencing(&base))?;
//!
//! // Writing through the child leaves the base as it is.
//! let mut disk = WritableDisk::open(&child, &ChainOptions::default())?;
//! disk.seek(SeekFrom::Start(1 << 20))?;
//! disk.write_all(b"only in the child")?;
//! disk.close()?;
//!
//! // The chain: the child, then the parent its locators lead to, identity checked.
//! let chain = Chain::open(&child, &ChainOptions::default())?;
//! assert_eq!(chain.report().links.len(), 2);
//!
//! // The view: the virtual disk through both layers.
//! let mut view = chain.into_view();
//! let mut buf = [0u8; 17];
//! view.seek(SeekFrom::Start(1 << 20))?;
//! view.read_exact(&mut buf)?;
//! assert_eq!(&buf, b"only in the child");
//!
//! // Plan, then apply: repoint the child at a copy of its parent.
//! std::fs::create_dir(dir.path().join("shared"))?;
//! let copy = dir.path().join("shared").join("base.vhdx");
//! std::fs::copy(&base, &copy)?;
//! let opts = ReparentOptions { new_parent: copy.clone(), ..ReparentOptions::default() };
//! let plan = reparent::plan(&child, &opts)?;
//! for c in plan.changes() {
//!     println!("{} {}: {} -> {}", c.structure, c.field, c.old, c.new);
//! }
//! reparent::apply(&plan)?;
//! let chain = Chain::open(&child, &ChainOptions::default())?;
//! assert_eq!(chain.disks()[1].path(), Some(copy.as_path()));
//!
//! // Check: every structural rule of the child and of its chain.
//! let report = check_file(&child, &CheckOptions::default().chain(true))?;
//! assert!(!report.has_problems(), "{:?}", report.findings);
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every fallible function returns `Result<T, Error>`; its [`Error`] names the file, the structure and
//! the absolute offset where that applies ([`Error::Corrupt`], [`Error::NotADisk`],
//! [`Error::Chain`], [`Error::Refused`], [`Error::LimitExceeded`], [`Error::Io`], ...). A
//! program acts on it through [`Error::kind`]: an [`ErrorKind`] to `match` (not a disk, corrupt
//! with the `check` code, parent not found with every path tried, parent mismatch, loop, too
//! deep, already exists, locked, refused, limit exceeded, I/O, internal...), and
//! [`Error::code`] gives the stable `check` finding code where one applies.
//!
//! # Untrusted input
//!
//! Every file is untrusted: each field is checked before use, arithmetic on file values is
//! checked, allocations are bounded by the file's size and by [`Limits`], and the crate has no
//! `unsafe` code. Locator paths are only opened by an explicit chain walk, which checks
//! identity, depth and loops.
//!
//! # Examples
//!
//! `crates/vhdkit/examples/` in the repository, each runnable on its bundled test data:
//! `inspect_chain` (links and a hash of the contents through the view), `repoint` (plan, show,
//! apply a reparent), `check_folder_json` (findings of a folder as JSON; needs the `serde`
//! feature) and `create_and_write` (a new dynamic VHDX written through [`WritableDisk`]).
//!
//! # Features
//!
//! - `serde`: `Serialize` for the reports ([`DiskInfo`], [`ChainReport`],
//!   [`reparent::ReparentPlan`], [`check::FileReport`], ...), as the `vhdkit` command prints them
//!   with `--json`.
//! - `test-support`: the repository's test machinery (fault injection, in-memory journals, image
//!   internals), public but hidden and unstable; for vhdkit's own tests and fuzz targets only.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// Declare a module that is public (hidden, unstable) with the `test-support` feature and
/// crate-private without: the repository's integration tests, fuzz targets and testkit reach
/// image internals and fault injection through it; it is no part of the API.
macro_rules! support_mod {
    ($name:ident) => {
        #[cfg(feature = "test-support")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "test-support"))]
        pub(crate) mod $name;
    };
}

pub(crate) mod aligned;
pub(crate) mod bitmap;
pub(crate) mod chain;
pub mod check;
pub mod convert;
pub(crate) mod create;
pub(crate) mod disjoint;
support_mod!(disk);
pub(crate) mod error;
pub(crate) mod fsx;
// The modules below are public, hidden and unstable with the `test-support` feature only: the
// repository's integration tests, fuzz targets and testkit build images and inject faults
// through them. They are no part of the API.
support_mod!(guid);
#[cfg(test)]
mod layout_lint;
pub(crate) mod limits;
pub(crate) mod lock;
pub(crate) mod newdisk;
#[cfg(test)]
pub(crate) mod parse_count;
pub(crate) mod piecemap;
pub(crate) mod readset;
pub mod repair;
pub mod reparent;
pub(crate) mod sectors;
pub mod share;
support_mod!(sidefile);
pub(crate) mod simulate;
pub(crate) mod source;
pub(crate) mod table;
pub(crate) mod tree;
support_mod!(txn);
pub(crate) mod util;
pub mod vhd;
pub mod vhdx;
pub(crate) mod view;
pub(crate) mod winpath;
pub(crate) mod write;

pub use chain::{
    Attempt, AttemptOutcome, Chain, ChainOptions, ChainReport, IdMatch, Link, LocatorKind,
    ParentResolution, PathMap, Via,
};
pub use create::{create, create_into, CreateParams, Created};
pub use disk::{
    Disk, DiskFormat, DiskInfo, DiskType, Extent, FormatInfo, OpenOptions, ParentLinkage,
    ParentLocator, PathStyle,
};
pub(crate) use error::Result;
pub use error::{ChainBroken, Error, ErrorKind, Location};
pub use limits::Limits;
pub use source::Source;
pub use view::{Allocation, ChainView};
pub use write::WritableDisk;

// Generic outputs and progress (issue 19, point 3).
pub(crate) mod progress;
pub use newdisk::OutputSink;
pub use progress::Progress;

// What only the `vhdkit` command needs (its size syntax, the format check before a raw
// conversion, the dry run's lock prediction): public for it, hidden, not part of the API.
#[doc(hidden)]
pub use create::parse_size;

/// Detect the format of the file at `path` by its signature, opening it as a disk is opened
/// (read-only, never blocking, regular files only): [`Error::NotADisk`] when it is neither a
/// VHD nor a VHDX.
#[doc(hidden)]
pub fn detect_file(path: impl AsRef<std::path::Path>) -> Result<DiskFormat> {
    let path = path.as_ref();
    let f = fsx::open_disk(path).map_err(|e| Error::io("opening the source", e).with_path(path))?;
    disk::detect(&f).map_err(|e| e.with_path(path))
}

// Flatten (issue 12): a differencing disk becomes standalone in place. The module is public
// for the command's hidden helpers only; its API is the two types re-exported here.
#[doc(hidden)]
pub mod flatten;
pub use flatten::{FlattenPlan, FlattenReport};

// Merge (issue 12): a differencing disk and the disks between it and an ancestor are written
// into the ancestor and deleted. The module is public for the command's hidden helpers only;
// its API is the two types re-exported here.
#[doc(hidden)]
pub mod merge;
pub use merge::{MergePlan, MergeReport};
// Map and serve (issue 13): which layer holds each run of a chain, for `vhdkit map` and the
// NBD server's block status.
pub(crate) mod extents;
pub use extents::MapExtent;
pub mod nbd;

// Compact (issue 14): zero blocks (or blocks equal to the parent) stop using space and the
// file shrinks. The module is public for the command's hidden helpers only; its API is the two
// types re-exported here.
#[doc(hidden)]
pub mod compact;
pub use compact::{CompactPlan, CompactReport};
// Resize (issue 14): the virtual size of a disk changes in place, crash-safely. The module is
// public for the command's hidden helpers only; its API is the types re-exported here.
#[doc(hidden)]
pub mod resize;
pub use resize::{Relocation, ResizePlan, ResizeReport};
