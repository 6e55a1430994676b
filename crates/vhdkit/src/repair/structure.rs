//! Structural repairs that lose nothing and are certain, used by [`crate::repair::repair`]:
//!
//! - VHD: restore a damaged footer copy from the good one, in either direction (the end footer
//!   from the copy at offset 0, or the copy from the end footer), through the redo journal
//!   ([`crate::txn::journal`]), so a crash leaves the old or the new state;
//! - VHDX: replay a dirty log (`vhdx::update::Session::replay_to_disk`); rewrite a damaged
//!   header from its good twin (the header-update procedure: the next sequence number over the
//!   damaged slot); rewrite a damaged region table from its good twin through the log
//!   (`Session::commit`);
//! - differencing disks: drop the parent locators that point nowhere when another locator leads
//!   to the parent now ([`super::deadloc`]).
//!
//! Anything else that `check` finds is listed as needing a person and left alone.

use std::path::{Path, PathBuf};

use crate::check::vhd::{raw_dynamic_header, raw_footer};
use crate::check::vhdx::{header_status, region_status};
use crate::check::Bytes;
use crate::error::{Error, Result};
use crate::source::Source;
use crate::txn::{journal, FieldChange, Plan, WriteOp};
use crate::vhd::format::{
    self as vfmt, DISK_TYPE_DIFFERENCING, DISK_TYPE_DYNAMIC, DYNAMIC_HEADER_BYTES, FOOTER_BYTES,
    FOOTER_CHECKSUM_OFFSET, FOOTER_COOKIE, SECTOR_BYTES,
};
use crate::vhdx::format::{HEADER_OFFSETS, REGION_TABLE_OFFSETS};
use crate::vhdx::log::{find_active_sequence, LogPlace};
use crate::vhdx::update::Session;

/// One structural repair, done or (dry run) planned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct StructureRepair {
    /// Finding code it fixes.
    pub code: &'static str,
    /// What was (or would be) done, in one line.
    pub action: String,
}

fn io(what: &str, e: std::io::Error) -> Error {
    Error::io(what.to_string(), e)
}

/// Plan and (unless `dry_run`) apply the certain repairs of `path`.
///
/// `confine`: the folders parent resolution may open (see [`crate::ChainOptions::confine`]);
/// empty for no confinement.
pub fn repair_structures(
    path: &Path,
    dry_run: bool,
    confine: &[PathBuf],
) -> Result<Vec<StructureRepair>> {
    let f = crate::fsx::open_disk(path).map_err(|e| io("opening the file", e).with_path(path))?;
    let len = f.len().map_err(|e| io("reading the length", e))?;
    let fmt = match crate::disk::detect(&f) {
        Ok(x) => x,
        Err(_) => return Ok(Vec::new()),
    };
    drop(f);
    let mut done = match fmt {
        crate::DiskFormat::Vhd => vhd_footer(path, len, dry_run)?,
        crate::DiskFormat::Vhdx => vhdx_twins(path, dry_run)?,
    };
    done.extend(super::deadloc::dead_locators(path, dry_run, confine)?);
    Ok(done)
}

/// Bytes of a whole footer, as a file length or offset.
const FOOTER: u64 = FOOTER_BYTES as u64;

/// Largest BAT read to decide whether the end footer's slot is free (it is streamed; this
/// bounds the time spent).
const MAX_BAT_READ: usize = 64 << 20;
/// Bytes of the table read at a time.
const BAT_READ_CHUNK: u64 = 1 << 20;

/// A whole 512-byte footer with its cookie and a checksum that matches.
fn footer_ok(b: &[u8]) -> bool {
    b.len() == FOOTER_BYTES
        && b.get(..FOOTER_COOKIE.len()) == Some(&FOOTER_COOKIE[..])
        && raw_footer(b).is_some_and(|f| vfmt::checksum(b, FOOTER_CHECKSUM_OFFSET) == f.checksum)
}

/// A good footer (see [`footer_ok`]) of a dynamic or differencing disk.
fn sparse_footer_ok(b: &[u8]) -> bool {
    footer_ok(b)
        && raw_footer(b)
            .is_some_and(|f| matches!(f.disk_type, DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING))
}

/// The footer to write: its offset, the good bytes, the damaged bytes it replaces, what it is
/// and the finding it fixes.
type FooterFix = (u64, Vec<u8>, Vec<u8>, &'static str, &'static str);

/// Which footer copy is good, which is damaged, and where the damaged one goes (`None` when
/// nothing is certain).
fn footer_fix(b: &Bytes, len: u64) -> Option<FooterFix> {
    let end_at = len.checked_sub(FOOTER)?;
    let (front, end) = (b.get(0, FOOTER_BYTES)?, b.get(end_at, FOOTER_BYTES)?);
    if sparse_footer_ok(&end) && front != end {
        return Some((
            0,
            end,
            front,
            "footer copy at offset 0, from the end footer",
            "vhd.footer_copy.checksum",
        ));
    }
    if !sparse_footer_ok(&front) || footer_ok(&end) {
        return None;
    }
    // The end footer is damaged in place (its slot is the last 512 bytes): only when that slot
    // holds a footer-like cookie or the data area provably ends before it.
    if end.get(..FOOTER_COOKIE.len()) != Some(&FOOTER_COOKIE[..])
        && !data_ends_before(b, &front, end_at)
    {
        return None;
    }
    Some((
        end_at,
        front,
        end,
        "end footer, from the copy at offset 0",
        "vhd.footer.checksum",
    ))
}

fn vhd_footer(path: &Path, len: u64, dry_run: bool) -> Result<Vec<StructureRepair>> {
    if len < 2 * FOOTER {
        return Ok(Vec::new());
    }
    let f = crate::fsx::open_disk(path).map_err(|e| io("opening the file", e).with_path(path))?;
    let fix = footer_fix(&Bytes::new(&f, len), len);
    drop(f);
    let Some((offset, good, old, what, code)) = fix else {
        return Ok(Vec::new());
    };
    let action = format!(
        "{} restore the {what}",
        if dry_run { "would" } else { "did" }
    );
    if !dry_run {
        let plan = Plan {
            changes: vec![FieldChange {
                structure: "vhd footer".into(),
                field: "all".into(),
                old: "damaged copy".into(),
                new: "good copy".into(),
            }],
            writes: vec![WriteOp {
                offset,
                data: good,
                old,
                what: what.to_string(),
            }],
            old_len: len,
            new_len: len,
        };
        let (_lock, w) = crate::lock::locked_file(path)?;
        super::journal_writable(path)?;
        journal::apply(&w, &journal::FileJournal::for_disk(path), &plan)
            .map_err(|e| e.with_path(path))?;
    }
    Ok(vec![StructureRepair { code, action }])
}

/// True when every structure the good footer describes (dynamic header, BAT, blocks) ends at or
/// before `end_slot`, so the last 512 bytes are the footer's and nothing else's.
fn data_ends_before(b: &Bytes, footer: &[u8], end_slot: u64) -> bool {
    let Some(hdr) = raw_footer(footer).map(|f| f.data_offset) else {
        return false;
    };
    let Some(h) = b
        .get(hdr, DYNAMIC_HEADER_BYTES)
        .and_then(|h| raw_dynamic_header(&h))
    else {
        return false;
    };
    let bat = h.table_offset;
    let bat_bytes = u64::from(h.max_table_entries) * vfmt::BAT_ENTRY_BYTES;
    if usize::try_from(bat_bytes).map_or(true, |k| k > MAX_BAT_READ)
        || bat.checked_add(bat_bytes).is_none_or(|e| e > b.len)
    {
        return false;
    }
    // The table lies inside the file (checked above), so these ends do not overflow.
    let span = vfmt::bitmap_bytes(h.block_size) + u64::from(h.block_size);
    let mut max_end = (bat + bat_bytes).max(hdr + DYNAMIC_HEADER_BYTES as u64);
    // Read 1 MiB of the table at a time: it is never held whole.
    let mut done = 0u64;
    while done < bat_bytes {
        let n = (bat_bytes - done).min(BAT_READ_CHUNK);
        let Some(raw) = usize::try_from(n).ok().and_then(|k| b.get(bat + done, k)) else {
            return false;
        };
        for c in raw.chunks_exact(vfmt::BAT_ENTRY_BYTES as usize) {
            let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            if e != vfmt::BAT_UNALLOCATED {
                max_end = max_end.max(u64::from(e) * SECTOR_BYTES + span);
            }
        }
        done += n;
    }
    max_end <= end_slot
}

fn vhdx_twins(path: &Path, dry_run: bool) -> Result<Vec<StructureRepair>> {
    // Decide on the bytes read-only first: a file with nothing to repair needs no lock, so a
    // read-only one is examined, not refused (the dry run says the same).
    if !dry_run && vhdx_twins(path, true)?.is_empty() {
        return Ok(Vec::new());
    }
    let mut done = Vec::new();
    let verb = if dry_run { "would" } else { "did" };
    let (_lock, w) = if dry_run {
        let f =
            crate::fsx::open_disk(path).map_err(|e| io("opening the file", e).with_path(path))?;
        (None, f)
    } else {
        let (l, f) = crate::lock::locked_file(path)?;
        (Some(l), f)
    };
    let Ok(headers) = crate::vhdx::header::read_headers(&w) else {
        return Ok(done); // no valid header (or an undecidable tie): nothing certain to do
    };
    let mut session = Session::new(&w, headers.current.clone(), headers.current_index);
    // 1. A dirty log: replay it (this also rewrites both headers).
    let mut headers_rewritten = false;
    if !headers.current.log_guid.is_nil() {
        let place = LogPlace {
            offset: headers.current.log_offset,
            length: u64::from(headers.current.log_length),
            guid: headers.current.log_guid,
        };
        let limit = crate::Limits::default().max_log_replay_bytes;
        let Ok(seq) = find_active_sequence(&w, &place, limit) else {
            return Ok(done); // a corrupt log: leave it for a person
        };
        if !dry_run {
            session
                .replay_to_disk(&seq)
                .map_err(|e| e.with_path(path))?;
            headers_rewritten = true;
        }
        done.push(StructureRepair {
            code: "vhdx.log.dirty",
            action: format!(
                "{verb} replay {} log entries and mark the log clean",
                seq.entries.len()
            ),
        });
    }
    let len = w.len().map_err(|e| io("reading the length", e))?;
    let b = Bytes::new(&w, len);
    if !headers_rewritten {
        done.extend(header_twin(&b, &mut session, dry_run).map_err(|e| e.with_path(path))?);
    }
    done.extend(region_twin(&b, &mut session, dry_run).map_err(|e| e.with_path(path))?);
    Ok(done)
}

/// A damaged header next to a good one: one header update writes the damaged slot.
fn header_twin(b: &Bytes, session: &mut Session, dry_run: bool) -> Result<Option<StructureRepair>> {
    let bad: Vec<usize> = (0..2).filter(|&s| header_status(b, s).is_err()).collect();
    let [slot] = bad.as_slice() else {
        return Ok(None);
    };
    if !dry_run {
        session.begin()?;
    }
    Ok(Some(StructureRepair {
        code: "vhdx.header.checksum",
        action: format!(
            "{} rewrite header {} at {:#x} from its good twin (header update)",
            if dry_run { "would" } else { "did" },
            slot + 1,
            HEADER_OFFSETS[*slot & 1]
        ),
    }))
}

/// A damaged region table next to a good one: copy the good one over it through the log.
fn region_twin(b: &Bytes, session: &mut Session, dry_run: bool) -> Result<Option<StructureRepair>> {
    let (slot, good) = match (region_status(b, 0), region_status(b, 1)) {
        (Ok((_, good)), Err(_)) => (1usize, good),
        (Err(_), Ok((_, good))) => (0usize, good),
        _ => return Ok(None),
    };
    if !dry_run {
        session.commit(&[(REGION_TABLE_OFFSETS[slot], good)])?;
    }
    Ok(Some(StructureRepair {
        code: "vhdx.region.checksum",
        action: format!(
            "{} rewrite region table {} at {:#x} from its good twin (through the log)",
            if dry_run { "would" } else { "did" },
            slot + 1,
            REGION_TABLE_OFFSETS[slot]
        ),
    }))
}
