//! The metadata write path: every change vhdkit makes to the *metadata* of an existing disk
//! file (parent linkage and locators, footers, headers, region and metadata tables) is first
//! computed as a [`Plan`] (validated, touching nothing), then applied crash-safely.
//!
//! - VHD has no log, so a plan's writes are made durable first in a sidecar journal
//!   (`<file>.vhdkit-journal`, see [`journal`]), then applied, then the journal is removed. The
//!   next vhdkit open of the file finishes an interrupted change ([`journal::recover`]). Used by
//!   `reparent` (and the relinks of `share`), `repair` and dead-locator repair.
//! - VHDX metadata changes go through the file's own log (`vhdx::update::Session` builds and
//!   commits the entry); header updates use the two-slot procedure. Both write through [`Sink`]
//!   so the same fault injection tests them.
//!
//! # Who else writes to an existing disk file, and why not through a plan
//! - **Virtual-disk data** ([`crate::write::WritableDisk`] over `vhd::write::VhdWriter` and
//!   `vhdx::write::VhdxWriter`): guest data is written in place, directly through [`Sink`]. It is
//!   not journaled: a data write is what a guest's write to a real disk is (each sector old or
//!   new after a crash), and journaling every byte would double the I/O. What those writes
//!   allocate is ordered instead: VHD writes data, syncs, then BAT entries and bitmaps, syncs
//!   (the footer moves to the new end first); VHDX commits BAT entries and sector bitmaps
//!   through the log (`Session::commit`) after the data is synced, and changes the
//!   FileWriteGuid/DataWriteGuid by header updates before the first write.
//! - **Recovery on open for write** (and `repair`): an interrupted VHD journal is rolled forward
//!   ([`journal::recover`]); a dirty VHDX log is replayed into the file
//!   (`Session::replay_to_disk`). Both only finish a change that was already durable.
//! - **Locking** (`crate::lock`) opens a disk for writing to take its lock, and the non-Linux
//!   [`barrier::FsBarrier`] opens one to sync it; neither writes a byte.
//!
//! New files (`create`, `convert`, the keeper copies of `share`) are never written at an
//! existing file's name: they are built under a partial name ([`crate::sidefile`]) and linked
//! into place once complete and synced (`convert --force` renames over the old file instead of
//! writing into it). No other module writes to a disk file.

pub mod barrier;
#[cfg(any(test, feature = "test-support"))]
pub mod fault;
pub mod journal;

use std::fs::File;
use std::io;

use crate::source::Source;

/// Positional writes, flush and resize: what applying a plan needs from a file.
pub trait Sink: Source {
    /// Write all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every write so far durable (`fsync`).
    fn sync(&self) -> io::Result<()>;
    /// Truncate or extend the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl Sink for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        file_write_all_at(self, buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

#[cfg(unix)]
fn file_write_all_at(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
}

#[cfg(windows)]
fn file_write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match f.seek_write(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One field that a plan changes, for display (`--dry-run`, `--json`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FieldChange {
    /// The structure (`"vhd dynamic header"`, `"vhdx parent locator"`).
    pub structure: String,
    /// The field (`"parent unicode name"`, `"relative_path"`).
    pub field: String,
    /// The value before.
    pub old: String,
    /// The value after.
    pub new: String,
}

/// One positional write of a plan. Serialized (for `--json`) as its offset, length and
/// description; the bytes themselves stay out of reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// Absolute file offset.
    pub offset: u64,
    /// The bytes to write there.
    pub data: Vec<u8>,
    /// The bytes there before (same length), for journals and verification.
    pub old: Vec<u8>,
    /// What is being written, for reports.
    pub what: String,
}

#[cfg(feature = "serde")]
impl serde::Serialize for WriteOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("WriteOp", 3)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("length", &self.data.len())?;
        st.serialize_field("what", &self.what)?;
        st.end()
    }
}

/// A computed change to one file: the fields that change (for people) and the writes that do
/// it (for the machine). Building a plan reads the file; only applying it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Plan {
    /// Field-level description.
    pub changes: Vec<FieldChange>,
    /// Byte-level writes, in the order to apply them.
    pub writes: Vec<WriteOp>,
    /// File length before.
    pub old_len: u64,
    /// File length after (larger when data is relocated to the end).
    pub new_len: u64,
}

impl Plan {
    /// The writes as (offset, bytes) pairs: what `crate::simulate` lays over a file to parse
    /// the result before anything is written.
    pub(crate) fn write_pairs(&self) -> Vec<(u64, Vec<u8>)> {
        self.writes.iter().map(|w| (w.offset, w.data.clone())).collect()
    }

    /// True when the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.old_len == self.new_len
    }

    /// Total bytes the plan writes to the file (journal not counted).
    pub fn bytes_written(&self) -> u64 {
        self.writes.iter().map(|w| w.data.len() as u64).sum()
    }
}
