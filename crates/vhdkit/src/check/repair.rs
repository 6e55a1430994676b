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
//!   to the parent now (see `check::deadloc` for what counts as dead and what is always kept);
//!   VHD through the redo journal, VHDX through the log (DataWriteGuid unchanged).
//!
//! Anything else that `check` finds is listed as needing a person and left alone.

use std::path::{Path, PathBuf};

use super::vhdx::{header_status, region_status};
use super::{be32, Bytes};
use crate::error::{Error, Result};
use crate::source::Source;
use crate::txn::{journal, FieldChange, Plan, WriteOp};
use crate::vhd::format::{self as vfmt, DISK_TYPE_DIFFERENCING, DISK_TYPE_DYNAMIC, FOOTER_COOKIE};
use crate::vhdx::format::{HEADER_OFFSETS, REGION_TABLE_OFFSETS};
use crate::vhdx::log::{find_active_sequence, LogPlace};

/// One structural repair, done or (dry run) planned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
    done.extend(dead_locators(path, dry_run, confine)?);
    Ok(done)
}

/// Differencing disks: drop the locators that point nowhere when another one leads to the
/// parent (see [`super::deadloc`]). VHD through the redo journal, VHDX through the log.
fn dead_locators(path: &Path, dry_run: bool, confine: &[PathBuf]) -> Result<Vec<StructureRepair>> {
    let Some(a) = super::deadloc::analyse(path, confine) else {
        return Ok(Vec::new());
    };
    let dead = a.droppable();
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let verb = if dry_run { "would" } else { "did" };
    let via = a.resolved_via.clone().unwrap_or_default();
    let mut out = Vec::new();
    match a.format {
        crate::DiskFormat::Vhd => {
            let plan = super::deadloc::vhd_plan(path, dead).map_err(|e| e.with_path(path))?;
            if !dry_run {
                let (_lock, w) = crate::lock::locked_file(path)?;
                journal::apply(&w, &journal::FileJournal::for_disk(path), &plan)
                    .map_err(|e| e.with_path(path))?;
            }
        }
        crate::DiskFormat::Vhdx => {
            let writes = super::deadloc::vhdx_writes(path, dead).map_err(|e| e.with_path(path))?;
            if !dry_run {
                let (_lock, w) = crate::lock::locked_file(path)?;
                let headers =
                    crate::vhdx::header::read_headers(&w).map_err(|e| e.with_path(path))?;
                if !headers.current.log_guid.is_nil() {
                    return Ok(out); // a log still to replay: not now
                }
                crate::vhdx::update::Session::new(
                    &w,
                    headers.current.clone(),
                    headers.current_index,
                )
                .commit(&writes)
                .map_err(|e| e.with_path(path))?;
            }
        }
    }
    let code = match a.format {
        crate::DiskFormat::Vhd => "vhd.locator.dead",
        crate::DiskFormat::Vhdx => "vhdx.locator.dead",
    };
    for d in dead {
        out.push(StructureRepair {
            code,
            action: format!(
                "{verb} drop {} (the parent resolves through {via})",
                d.describe()
            ),
        });
    }
    Ok(out)
}

/// A finding for a person when dead-looking locators exist but no locator entry leads to the
/// parent now (nothing is dropped then).
pub(crate) fn unresolved_finding(path: &Path, confine: &[PathBuf]) -> Option<super::Finding> {
    let a = super::deadloc::analyse(path, confine)?;
    if a.resolved_via.is_some() || a.dead.is_empty() {
        return None;
    }
    let list: Vec<String> = a.dead.iter().map(super::deadloc::Dead::describe).collect();
    Some(super::Finding::new(
        "chain.parent_missing",
        "chain link",
        None,
        format!(
            "no locator leads to the parent now, so none is dropped: {}",
            list.join("; ")
        ),
    ))
}

fn footer_ok(b: &[u8]) -> bool {
    b.len() == 512 && b.get(..8) == Some(&FOOTER_COOKIE[..]) && vfmt::checksum(b, 64) == be32(b, 64)
}

fn vhd_footer(path: &Path, len: u64, dry_run: bool) -> Result<Vec<StructureRepair>> {
    if len < 1024 {
        return Ok(Vec::new());
    }
    let f = crate::fsx::open_disk(path).map_err(|e| io("opening the file", e).with_path(path))?;
    let b = Bytes::new(&f, len);
    let (Some(front), Some(end)) = (b.get(0, 512), b.get(len - 512, 512)) else {
        return Ok(Vec::new());
    };
    let sparse = |x: &[u8]| matches!(be32(x, 60), DISK_TYPE_DYNAMIC | DISK_TYPE_DIFFERENCING);
    // Which copy is good, which is damaged, and where the damaged one goes.
    let (offset, good, old, what, code) = if footer_ok(&end) && sparse(&end) && front != end {
        (
            0,
            end.clone(),
            front.clone(),
            "footer copy at offset 0, from the end footer",
            "vhd.footer_copy.checksum",
        )
    } else if footer_ok(&front) && sparse(&front) && !footer_ok(&end) {
        // The end footer is damaged in place (its slot is the last 512 bytes): only when that
        // slot holds a footer-like cookie or the data area provably ends before it.
        if end.get(..8) != Some(&FOOTER_COOKIE[..]) && !data_ends_before(&b, &front, len - 512) {
            return Ok(Vec::new());
        }
        (
            len - 512,
            front.clone(),
            end.clone(),
            "end footer, from the copy at offset 0",
            "vhd.footer.checksum",
        )
    } else {
        return Ok(Vec::new());
    };
    drop(b);
    drop(f);
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
        journal::apply(&w, &journal::FileJournal::for_disk(path), &plan)
            .map_err(|e| e.with_path(path))?;
    }
    Ok(vec![StructureRepair { code, action }])
}

/// True when every structure the good footer describes (dynamic header, BAT, blocks) ends at or
/// before `end_slot`, so the last 512 bytes are the footer's and nothing else's.
fn data_ends_before(b: &Bytes, footer: &[u8], end_slot: u64) -> bool {
    let hdr = super::be64(footer, 16);
    let Some(h) = b.get(hdr, 1024) else {
        return false;
    };
    let bat = super::be64(&h, 16);
    let n = u64::from(be32(&h, 28));
    let bs = u64::from(be32(&h, 32));
    let Some(raw) = usize::try_from(n * 4)
        .ok()
        .filter(|&k| k <= 64 << 20)
        .and_then(|k| b.get(bat, k))
    else {
        return false;
    };
    let span = vfmt::bitmap_bytes(bs as u32) + bs;
    let mut max_end = (bat + n * 4).max(hdr + 1024);
    for c in raw.chunks_exact(4) {
        let e = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        if e != vfmt::BAT_UNALLOCATED {
            max_end = max_end.max(u64::from(e) * 512 + span);
        }
    }
    max_end <= end_slot
}

fn vhdx_twins(path: &Path, dry_run: bool) -> Result<Vec<StructureRepair>> {
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
    let mut session =
        crate::vhdx::update::Session::new(&w, headers.current.clone(), headers.current_index);
    // 1. A dirty log: replay it (this also rewrites both headers).
    let mut headers_rewritten = false;
    if !headers.current.log_guid.is_nil() {
        let place = LogPlace {
            offset: headers.current.log_offset,
            length: u64::from(headers.current.log_length),
            guid: headers.current.log_guid,
        };
        if let Ok(seq) =
            find_active_sequence(&w, &place, crate::Limits::default().max_log_replay_bytes)
        {
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
        } else {
            return Ok(done); // a corrupt log: leave it for a person
        }
    }
    let len = w.len().map_err(|e| io("reading the length", e))?;
    let b = Bytes::new(&w, len);
    // 2. A damaged header next to a good one: one header update writes the damaged slot.
    let bad: Vec<usize> = (0..2).filter(|&s| header_status(&b, s).is_err()).collect();
    if bad.len() == 1 && !headers_rewritten {
        if !dry_run {
            session.begin().map_err(|e| e.with_path(path))?;
        }
        done.push(StructureRepair {
            code: "vhdx.header.checksum",
            action: format!(
                "{verb} rewrite header {} at {:#x} from its good twin (header update)",
                bad[0] + 1,
                HEADER_OFFSETS[bad[0]]
            ),
        });
    }
    // 3. A damaged region table next to a good one: copy it through the log.
    let r: Vec<_> = (0..2).map(|s| region_status(&b, s)).collect();
    if let [a, c] = r.as_slice() {
        let fix = match (a, c) {
            (Ok(good), Err(_)) => Some((1usize, good.clone())),
            (Err(_), Ok(good)) => Some((0usize, good.clone())),
            _ => None,
        };
        if let Some((slot, good)) = fix {
            if !dry_run {
                session
                    .commit(&[(REGION_TABLE_OFFSETS[slot], good)])
                    .map_err(|e| e.with_path(path))?;
            }
            done.push(StructureRepair {
                code: "vhdx.region.checksum",
                action: format!(
                    "{verb} rewrite region table {} at {:#x} from its good twin (through the log)",
                    slot + 1,
                    REGION_TABLE_OFFSETS[slot]
                ),
            });
        }
    }
    Ok(done)
}
