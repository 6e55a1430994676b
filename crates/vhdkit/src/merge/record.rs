//! The merge record beside ANCESTOR (`<ancestor>.vhdkit-merge`): what a merge is doing, so
//! that a crash at any point is finished by a rerun or by `vhdkit repair`.
//!
//! Text, one field a line, ending with a CRC-32C of every byte before the `crc32c` line:
//!
//! ```text
//! vhdkit-merge 1
//! phase copying                 (or deleting)
//! format vhdx                   (or vhd)
//! ancestor-id <uuid>            (ANCESTOR's identity before the merge)
//! new-id <uuid>                 (VHDX: the DataWriteGuid ANCESTOR takes; `-` for VHD)
//! merged <id> <linkage> <path>  (one per merged file, CHILD first; path as hex bytes)
//! crc32c <8 hex digits>
//! ```
//!
//! Identities are those children record (VHD unique id, VHDX DataWriteGuid), the linkage the
//! identity a merged file records of its parent. Written to `<ancestor>.vhdkit-merge.tmp`,
//! synced, renamed into place and the folder synced: a reader sees the old record or the new
//! one, never a mix, and a torn temporary file is never read.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::io::Io;
use crate::disk::DiskFormat;
use crate::error::{Error, Result};
use crate::sidefile;

/// Largest record read (a record of a few hundred merged files is a few tens of KiB).
const MAX_RECORD_BYTES: u64 = 1 << 20;
const MAGIC: &str = "vhdkit-merge 1";
const WHAT: &str = "merge record";

/// Where the merge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum Phase {
    /// Copying into ANCESTOR: nothing is deleted yet.
    Copying,
    /// The merged chain verified: deleting the merged files.
    Deleting,
}

/// One merged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its canonical path.
    pub path: PathBuf,
    /// Its identity (VHD unique id, VHDX DataWriteGuid).
    pub id: Uuid,
    /// The identity it records of its parent.
    pub linkage: Uuid,
}

/// A merge record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the merge stands.
    pub phase: Phase,
    /// The chain's format.
    pub format: DiskFormat,
    /// ANCESTOR's identity before the merge.
    pub ancestor_id: Uuid,
    /// VHDX: the DataWriteGuid ANCESTOR takes.
    pub new_id: Option<Uuid>,
    /// The merged files, CHILD first.
    pub merged: Vec<Member>,
}

impl Record {
    /// Whether `id` is ANCESTOR's identity before or after the merge.
    pub fn is_ancestor(&self, id: Uuid) -> bool {
        id == self.ancestor_id || Some(id) == self.new_id
    }

    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{MAGIC}\n");
        let phase = match self.phase {
            Phase::Copying => "copying",
            Phase::Deleting => "deleting",
        };
        let format = match self.format {
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
        };
        s.push_str(&format!("phase {phase}\nformat {format}\n"));
        s.push_str(&format!("ancestor-id {}\n", self.ancestor_id));
        match self.new_id {
            Some(g) => s.push_str(&format!("new-id {g}\n")),
            None => s.push_str("new-id -\n"),
        }
        for m in &self.merged {
            s.push_str(&format!(
                "merged {} {} {}\n",
                m.id,
                m.linkage,
                hex(&path_bytes(&m.path))
            ));
        }
        let crc = crc32c::crc32c(s.as_bytes());
        s.push_str(&format!("crc32c {crc:08x}\n"));
        s.into_bytes()
    }

    /// Parse a stored record; anything but a whole, well-formed record with a matching CRC is
    /// an error.
    pub fn decode(b: &[u8]) -> Result<Record> {
        let text = std::str::from_utf8(b).map_err(|_| bad(0, "not UTF-8 text"))?;
        let body_end = text
            .rfind("crc32c ")
            .filter(|&i| i == 0 || text.as_bytes().get(i - 1) == Some(&b'\n'))
            .ok_or_else(|| bad(0, "no crc32c line"))?;
        let (body, tail) = text.split_at(body_end);
        let want = tail
            .strip_prefix("crc32c ")
            .and_then(|t| t.strip_suffix('\n'))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| bad(body_end, "a bad crc32c line"))?;
        if crc32c::crc32c(body.as_bytes()) != want {
            return Err(bad(
                body_end,
                "checksum mismatch (a torn or altered record)",
            ));
        }
        parse_body(body)
    }
}

fn bad(offset: usize, detail: &str) -> Error {
    Error::corrupt(WHAT, offset as u64, detail).with_code(super::finish::CORRUPT)
}

/// The fields of a record whose checksum matched.
fn parse_body(body: &str) -> Result<Record> {
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad(0, "not a vhdkit merge record (or a newer version)"));
    }
    let mut field = |name: &str| -> Result<String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .map(str::to_string)
            .ok_or_else(|| bad(0, &format!("no {name} line")))
    };
    let phase = match field("phase")?.as_str() {
        "copying" => Phase::Copying,
        "deleting" => Phase::Deleting,
        _ => return Err(bad(0, "unknown phase")),
    };
    let format = match field("format")?.as_str() {
        "vhd" => DiskFormat::Vhd,
        "vhdx" => DiskFormat::Vhdx,
        _ => return Err(bad(0, "unknown format")),
    };
    let ancestor_id = uuid(&field("ancestor-id")?)?;
    let new_id = match field("new-id")?.as_str() {
        "-" => None,
        g => Some(uuid(g)?),
    };
    let mut merged = Vec::new();
    for l in lines {
        merged.push(member(l)?);
    }
    if merged.is_empty() {
        return Err(bad(0, "no merged file"));
    }
    Ok(Record {
        phase,
        format,
        ancestor_id,
        new_id,
        merged,
    })
}

fn member(l: &str) -> Result<Member> {
    let mut w = l
        .strip_prefix("merged ")
        .ok_or_else(|| bad(0, "an unknown line"))?
        .split(' ');
    let (Some(id), Some(linkage), Some(path), None) = (w.next(), w.next(), w.next(), w.next())
    else {
        return Err(bad(0, "a bad merged line"));
    };
    Ok(Member {
        id: uuid(id)?,
        linkage: uuid(linkage)?,
        path: path_from_bytes(unhex(path).ok_or_else(|| bad(0, "a bad path"))?)?,
    })
}

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| bad(0, "a bad GUID"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_bytes(b: Vec<u8>) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    Ok(PathBuf::from(std::ffi::OsString::from_vec(b)))
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Vec<u8> {
    p.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_bytes(b: Vec<u8>) -> Result<PathBuf> {
    String::from_utf8(b)
        .map(PathBuf::from)
        .map_err(|_| bad(0, "a path that is not UTF-8"))
}

/// The record beside `ancestor`, if any.
pub fn load(ancestor: &Path) -> Result<Option<Record>> {
    let at = sidefile::merge_record(ancestor);
    let bytes = crate::fsx::read_side(&at, MAX_RECORD_BYTES)
        .map_err(|e| Error::io("reading the merge record", e).with_path(&at))?;
    bytes
        .map(|b| Record::decode(&b).map_err(|e| e.with_path(&at)))
        .transpose()
}

/// Store `r` beside `ancestor`, durably and atomically (temporary name, sync, rename, sync
/// of the folder).
#[cfg(any(test, feature = "test-support"))]
pub fn store(ancestor: &Path, r: &Record) -> Result<()> {
    store_with(&Io::default(), ancestor, r)
}

/// [`store`] through `io`.
pub(crate) fn store_with(io: &Io, ancestor: &Path, r: &Record) -> Result<()> {
    let at = sidefile::merge_record(ancestor);
    let tmp = sidefile::merge_record_tmp(ancestor);
    let write = || -> io::Result<()> {
        let mut f = io.create_new(&tmp)?;
        let written = io.write_all(&mut f, &r.encode()).and_then(|()| io.sync(&f));
        drop(f);
        if let Err(e) = written.and_then(|()| io.rename(&tmp, &at)) {
            let _ = io.remove(&tmp);
            return Err(e);
        }
        sync_folder_with(io, &at)
    };
    write().map_err(|e| Error::io("writing the merge record", e).with_path(&at))
}

/// Remove the record beside `ancestor` durably (nothing there is fine), through `io`.
pub(crate) fn remove_with(io: &Io, ancestor: &Path) -> Result<()> {
    let at = sidefile::merge_record(ancestor);
    io.remove(&at)
        .and_then(|()| io.remove(&sidefile::merge_record_tmp(ancestor)))
        .and_then(|()| sync_folder_with(io, &at))
        .map_err(|e| Error::io("removing the merge record", e).with_path(&at))
}

/// Sync the folder holding `p` (a rename or unlink in it is then durable), through `io`.
pub(crate) fn sync_folder_with(io: &Io, p: &Path) -> io::Result<()> {
    #[cfg(unix)]
    io.sync(&File::open(sidefile::folder_of(p))?)?;
    #[cfg(not(unix))]
    let _ = (io, p, File::open);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn sample() -> Record {
        Record {
            phase: Phase::Copying,
            format: DiskFormat::Vhdx,
            ancestor_id: Uuid::from_u128(1),
            new_id: Some(Uuid::from_u128(2)),
            merged: vec![
                Member {
                    path: PathBuf::from("/srv/lab/child one.avhdx"),
                    id: Uuid::from_u128(3),
                    linkage: Uuid::from_u128(4),
                },
                Member {
                    path: PathBuf::from("/srv/lab/mid.avhdx"),
                    id: Uuid::from_u128(4),
                    linkage: Uuid::from_u128(1),
                },
            ],
        }
    }

    #[test]
    fn a_record_round_trips_in_both_phases_and_formats() {
        let mut r = sample();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
        r.phase = Phase::Deleting;
        r.format = DiskFormat::Vhd;
        r.new_id = None;
        let b = r.encode();
        assert!(std::str::from_utf8(&b).unwrap().contains("new-id -\n"));
        assert_eq!(Record::decode(&b).unwrap(), r);
        assert!(r.is_ancestor(Uuid::from_u128(1)) && !r.is_ancestor(Uuid::from_u128(2)));
        assert!(sample().is_ancestor(Uuid::from_u128(2)));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let b = sample().encode();
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x01;
            assert!(Record::decode(&c).is_err(), "byte {i} flipped");
        }
        for n in 0..b.len() {
            let e = Record::decode(&b[..n]).unwrap_err();
            assert_eq!(e.code(), Some(super::super::finish::CORRUPT), "cut at {n}");
        }
    }

    #[test]
    fn a_wellformed_crc_over_bad_fields_is_still_refused() {
        let body = "vhdkit-merge 1\nphase halfway\nformat vhd\nancestor-id \
                    00000000-0000-0000-0000-000000000001\nnew-id -\n";
        let crc = crc32c::crc32c(body.as_bytes());
        let e = Record::decode(format!("{body}crc32c {crc:08x}\n").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("unknown phase"), "{e}");
        let body = "vhdkit-merge 1\nphase copying\nformat vhd\nancestor-id \
                    00000000-0000-0000-0000-000000000001\nnew-id -\n";
        let crc = crc32c::crc32c(body.as_bytes());
        let e = Record::decode(format!("{body}crc32c {crc:08x}\n").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("no merged file"), "{e}");
    }

    #[test]
    fn store_load_remove_beside_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("base.vhdx");
        assert_eq!(load(&disk).unwrap(), None);
        store(&disk, &sample()).unwrap();
        assert_eq!(load(&disk).unwrap(), Some(sample()));
        assert!(!sidefile::merge_record_tmp(&disk).exists());
        let mut r = sample();
        r.phase = Phase::Deleting;
        store(&disk, &r).unwrap();
        assert_eq!(load(&disk).unwrap().unwrap().phase, Phase::Deleting);
        remove_with(&Io::default(), &disk).unwrap();
        assert_eq!(load(&disk).unwrap(), None);
        remove_with(&Io::default(), &disk).unwrap();
    }
}
