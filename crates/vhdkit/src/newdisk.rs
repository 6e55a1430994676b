//! What a new disk is before a format lays it out, shared by
//! [`crate::create`](mod@crate::create), [`crate::convert`] and the per-format layouts
//! ([`crate::vhd::create`], [`crate::vhdx::create`]).

use crate::disk::DiskType;
use crate::error::{Error, Result};
use crate::txn::Sink;

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

/// Write a new disk's layout into an empty `sink` and make it durable: size it to `len` (the
/// rest is holes of zeros), let `tables` write what is streamed through a bounded buffer (the
/// BAT), write `writes` in order, sync. `what` names the format in errors (`"vhd"`).
pub(crate) fn write_layout<S: Sink + ?Sized>(
    sink: &S,
    what: &str,
    len: u64,
    tables: impl FnOnce(&S) -> Result<()>,
    writes: &[(u64, Vec<u8>)],
) -> Result<()> {
    sink.set_len(len)
        .map_err(|e| Error::io(format!("sizing the new {what}"), e))?;
    tables(sink)?;
    for (at, data) in writes {
        sink.write_all_at(data, *at)
            .map_err(|e| Error::io(format!("writing the new {what} at offset {at:#x}"), e))?;
    }
    sink.sync()
        .map_err(|e| Error::io(format!("flushing the new {what}"), e))
}

/// A format's laid-out new disk, as [`write_built`] writes it.
pub(crate) trait Built {
    /// The format's name in errors (`"vhd"`).
    const FORMAT: &'static str;
    /// File length, and the writes in order.
    fn bytes(&self) -> (u64, &[(u64, Vec<u8>)]);
    /// Write what is streamed through a bounded buffer (the BAT), before the writes.
    fn write_streamed<S: Sink + ?Sized>(&self, sink: &S) -> Result<()>;
}

/// Write `layout` into an empty `sink` and make it durable (see [`write_layout`]); returns
/// the layout.
pub(crate) fn write_built<S: Sink + ?Sized, L: Built>(sink: &S, layout: L) -> Result<L> {
    let (len, writes) = layout.bytes();
    write_layout(sink, L::FORMAT, len, |s| layout.write_streamed(s), writes)?;
    Ok(layout)
}
