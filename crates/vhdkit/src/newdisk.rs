//! What a new disk is before a format lays it out, shared by [`crate::create`],
//! [`crate::convert`] and the per-format layouts ([`crate::vhd::create`],
//! [`crate::vhdx::create`]).

use crate::disk::DiskType;

/// The kind of disk to create. `P` is what a differencing disk records about its parent, which
/// each format defines ([`crate::vhd::create::NewParent`], [`crate::vhdx::create::NewParent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewKind<P> {
    /// Every block allocated up front.
    Fixed,
    /// Blocks allocated on write.
    Dynamic,
    /// Differencing over the parent described.
    Differencing(P),
}

impl<P> NewKind<P> {
    /// A disk without parent: fixed or dynamic.
    pub fn without_parent(fixed: bool) -> Self {
        if fixed {
            NewKind::Fixed
        } else {
            NewKind::Dynamic
        }
    }

    /// The type of the disk made.
    pub fn disk_type(&self) -> DiskType {
        match self {
            NewKind::Fixed => DiskType::Fixed,
            NewKind::Dynamic => DiskType::Dynamic,
            NewKind::Differencing(_) => DiskType::Differencing,
        }
    }
}
