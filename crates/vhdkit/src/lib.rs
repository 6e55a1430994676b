//! vhdkit: read, check and repoint Microsoft virtual hard disks (VHD and VHDX) and their
//! differencing chains.
//!
//! ```no_run
//! use std::io::Read;
//! use vhdkit::{Chain, ChainOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let chain = Chain::open("child.avhdx", &ChainOptions::default())?;
//! for link in &chain.report().links {
//!     println!("{} {} {}", link.path.display(), link.format, link.disk_type);
//! }
//! let mut view = chain.into_view();
//! let mut first_sector = [0u8; 512];
//! view.read_exact(&mut first_sector)?;
//! # Ok(())
//! # }
//! ```
//!
//! Every file is untrusted: each field is checked before use, allocations are bounded by the
//! file's size and by [`Limits`], and errors name the file, the structure and the offset.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod chain;
pub mod check;
pub mod convert;
pub mod create;
pub mod disk;
pub mod error;
pub mod guid;
pub mod limits;
pub mod repair;
pub mod reparent;
pub(crate) mod sectors;
pub mod share;
pub mod source;
pub mod tree;
pub mod txn;
pub mod vhd;
pub mod vhdx;
pub mod view;
pub mod write;

pub use chain::{Chain, ChainOptions, ChainReport, PathMap};
pub use create::{create, CreateParams, Created};
pub use disk::{
    detect, Disk, DiskFormat, DiskInfo, DiskType, Extent, OpenOptions, ParentLinkage,
    ParentLocator, PathStyle,
};
pub use error::{Error, Result};
pub use limits::Limits;
pub use reparent::{LocatorMode, ReparentOptions, ReparentPlan};
pub use source::{SeekSource, Source};
pub use view::{Allocation, ChainView};
pub use write::{WritableDisk, WritableImage};
