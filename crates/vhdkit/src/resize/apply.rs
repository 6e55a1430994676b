//! Planning (`plan`: reads only) and applying (`apply`: under the lock) a resize.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::{children, ResizePlan, ResizeReport};
use crate::chain::{Chain, ChainOptions};
use crate::disk::DiskFormat;
use crate::error::{Error, Result, ResultExt};
use crate::progress::Progress;
use crate::source::Source;
use crate::txn::journal::{self, FileJournal};
use crate::txn::Sink;
use crate::vhd::resize::{self as vhd, VhdResize};
use crate::vhdx::resize as vhdx;
use crate::view::ChainView;

/// Bytes read and compared or copied at once.
const CHUNK: u64 = 1 << 20;

/// See [`ResizePlan::new`].
pub(super) fn plan(disk: &Path, new_size: u64, opts: &ChainOptions) -> Result<ResizePlan> {
    let view = Chain::open(disk, opts)?.into_view();
    let first = view
        .layers()
        .first()
        .ok_or_else(|| Error::internal("a chain without disks"))?;
    let old_size = first.virtual_size();
    let mut p = ResizePlan {
        disk: disk.to_path_buf(),
        format: first.format(),
        disk_type: first.disk_type(),
        old_size,
        new_size,
        old_file_len: 0,
        new_file_len: 0,
        moves: Vec::new(),
        changes: Vec::new(),
        notes: first.warnings(),
        chain: opts.clone(),
    };
    let block_size = first.block_size().unwrap_or(0);
    let parent_size = view.layers().get(1).map(|d| d.virtual_size());
    let members: Vec<PathBuf> = view
        .layers()
        .iter()
        .filter_map(|d| d.path().map(Path::to_path_buf))
        .collect();
    preview(&mut p).with_path(disk)?;
    if new_size == old_size {
        p.notes
            .push("the disk has this size already: nothing to do".into());
        return Ok(p);
    }
    if let Some(ps) = parent_size.filter(|&ps| new_size > old_size && ps > old_size) {
        return Err(Error::refused(format!(
            "its parent is larger ({ps} bytes): the grown range would read the parent's data, \
             not zeros; nothing was written"
        ))
        .with_path(disk));
    }
    if new_size < old_size {
        let end = if block_size == 0 {
            old_size
        } else {
            crate::util::round_up(new_size, block_size)
                .unwrap_or(old_size)
                .min(old_size)
        };
        tail_is_zero(&view, new_size, end).with_path(disk)?;
    }
    drop(view);
    children::refuse_children(disk, &members, opts).with_path(disk)?;
    Ok(p)
}

/// The format's plan on the file as it is now (a pending VHD journal laid over it), for show.
fn preview(p: &mut ResizePlan) -> Result<()> {
    let f = crate::fsx::open_disk(&p.disk).map_err(|e| Error::io("opening the file", e))?;
    match p.format {
        DiskFormat::Vhd => {
            let store = FileJournal::for_disk(&p.disk);
            let (src, warning) = journal::overlay_pending(Box::new(f), &store);
            p.notes.extend(warning);
            let r = vhd::plan(&*src, p.new_size, &p.chain.open)?;
            p.old_file_len = r.plan.old_len.min(src.len().unwrap_or(r.plan.old_len));
            p.new_file_len = r.plan.new_len;
            p.moves = r.moves;
            p.changes = r.plan.changes;
        }
        DiskFormat::Vhdx => {
            p.old_file_len = crate::source::source_len(&f)?;
            let file = crate::vhdx::VhdxFile::open(Box::new(f), &p.chain.open)?;
            let r = vhdx::plan(&file, p.new_size, &p.chain.open)?;
            p.new_file_len = r.plan.new_len.max(p.old_file_len);
            p.changes = r.plan.changes;
            if let Some((at, len)) = r.zero_tail {
                p.notes.push(format!(
                    "the block the old end splits holds data past that end: its {len} bytes at \
                     {at:#x} are zeroed first, so the grown range reads as zeros"
                ));
            }
            if let Some(mv) = r.bat_move {
                p.notes.push(format!(
                    "the BAT outgrows its region: it is written whole to a new {}-byte region \
                     at {:#x}, which the region tables then name; the old region becomes free \
                     space",
                    mv.region.len(),
                    mv.to
                ));
                p.moves.push(super::Relocation {
                    what: "BAT region".into(),
                    from: mv.from,
                    to: mv.to,
                    length: mv.old_length,
                });
            }
        }
    }
    Ok(())
}

/// Refuse a shrink whose cut range `start..end` (of the block it splits, or of a fixed disk)
/// holds data that does not read as zeros: it would come back after a later grow.
fn tail_is_zero(view: &ChainView, start: u64, end: u64) -> Result<()> {
    let mut buf = Vec::new();
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        buf.resize(usize::try_from(n).unwrap_or(0), 0);
        view.read_exact_at(&mut buf, at)?;
        if let Some(i) = buf.iter().position(|&b| b != 0) {
            return Err(Error::refused(format!(
                "the range cut off holds data (virtual offset {:#x} does not read as zero); \
                 nothing was written",
                at + i as u64
            )));
        }
        at += n;
    }
    Ok(())
}

/// See [`ResizePlan::apply`].
pub(super) fn apply(plan: &ResizePlan, progress: &mut dyn Progress) -> Result<ResizeReport> {
    let path = plan.disk.as_path();
    let mut report = ResizeReport {
        old_size: plan.old_size,
        new_size: plan.new_size,
        ..ResizeReport::default()
    };
    // Even with nothing to do, an interrupted change is finished (a rerun completes it).
    let (lock, file) = crate::lock::locked_file(path)?;
    match plan.format {
        DiskFormat::Vhd => apply_vhd(plan, &file, &mut report, progress).with_path(path)?,
        DiskFormat::Vhdx => apply_vhdx(plan, &file, &mut report).with_path(path)?,
    }
    drop(lock);
    Ok(report)
}

/// Whether the disk (now `size` bytes) still has the planned size; `Ok(false)` when it has the
/// new one already (a finished earlier run).
fn still_planned(size: u64, plan: &ResizePlan) -> Result<bool> {
    if size == plan.new_size {
        Ok(false)
    } else if size == plan.old_size {
        Ok(true)
    } else {
        Err(Error::refused(format!(
            "the disk's size changed since the plan was made ({size} bytes, planned on {}); plan \
             again (nothing was written)",
            plan.old_size
        )))
    }
}

fn apply_vhd(
    plan: &ResizePlan,
    file: &File,
    report: &mut ResizeReport,
    progress: &mut dyn Progress,
) -> Result<()> {
    let store = FileJournal::for_disk(&plan.disk);
    report.recovered = journal::recover_or_refuse(file, &store)?;
    let r = vhd::plan(file, plan.new_size, &plan.chain.open)?;
    if !still_planned(r.old_size, plan)? {
        report.already_done = true;
        report.new_file_len = r.plan.old_len;
        return Ok(());
    }
    let largest = r.moves.iter().map(|m| m.length).max().unwrap_or(0);
    crate::fsx::ensure_room(file, r.moves.len() as u64, largest, "the resize")?;
    report.bytes_moved = copy_moves(file, &r, progress)?;
    journal::apply(file, &store, &r.plan)?;
    report.metadata_bytes = r.plan.bytes_written();
    report.new_file_len = r.plan.new_len;
    Ok(())
}

fn apply_vhdx(plan: &ResizePlan, file: &File, report: &mut ResizeReport) -> Result<()> {
    let src = file
        .try_clone()
        .map_err(|e| Error::io("duplicating the locked descriptor", e))?;
    let vf = crate::vhdx::VhdxFile::open(Box::new(src), &plan.chain.open)?;
    let r = vhdx::plan(&vf, plan.new_size, &plan.chain.open)?;
    drop(vf);
    if !still_planned(r.old_size, plan)? {
        report.already_done = true;
        if r.guard.log_dirty {
            // An earlier run stopped after its log entry was committed: replay it to the
            // file, as any writer does first, so the file is left clean.
            let none = crate::txn::Plan::default();
            crate::vhdx::reparent::apply(file, &r.guard, &none, &plan.chain.open.limits)?;
            report.recovered = true;
        }
        return Ok(());
    }
    if let Some(len) = r.extend_to {
        // Past everything the file holds, and pointed at only by the log entry below.
        Sink::set_len(file, len).map_err(|e| Error::io("extending the file", e))?;
    }
    if let Some((at, len)) = r.zero_tail {
        // Past the virtual end: nothing reads these bytes until the entry below grows it.
        zero_range(file, at, len)?;
    }
    if let Some(mv) = &r.bat_move {
        // Nothing points here until the log entry below; the log's first flush makes it stable
        // before the region tables name it.
        file.write_all_at(&mv.region, mv.to)
            .map_err(|e| Error::io("writing the moved BAT", e))?;
        report.bytes_moved = mv.region.len() as u64;
    }
    let a = crate::vhdx::reparent::apply(file, &r.guard, &r.plan, &plan.chain.open.limits)?;
    report.metadata_bytes = a.total_bytes();
    report.recovered = a.log_replayed.is_some();
    report.new_file_len = crate::source::source_len(file)?;
    Ok(())
}

/// Write `len` zero bytes at `at`, a chunk at a time.
fn zero_range(file: &File, at: u64, len: u64) -> Result<()> {
    let zeros = vec![0u8; usize::try_from(len.min(CHUNK)).unwrap_or(0)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK);
        let z = zeros
            .get(..usize::try_from(n).unwrap_or(0))
            .unwrap_or_default();
        file.write_all_at(z, at + done)
            .map_err(|e| Error::io("zeroing the block past the old end", e))?;
        done += n;
    }
    Ok(())
}

/// The copies before the journaled plan: the current footer at the new end first (the file
/// always ends in one), then each moved structure, then a sync. Nothing points at the copies
/// until the plan is applied. Returns the bytes copied.
fn copy_moves(file: &File, r: &VhdResize, progress: &mut dyn Progress) -> Result<u64> {
    let Some((at, footer)) = &r.footer_first else {
        return Ok(0);
    };
    let total: u64 = r.moves.iter().map(|m| m.length).sum();
    progress.start("resize", Some(total));
    let io = |what: &str| {
        let what = what.to_string();
        move |e| Error::io(what, e)
    };
    file.write_all_at(footer, *at)
        .map_err(io("writing the footer at the new end"))?;
    Sink::sync(file).map_err(io("flushing the file"))?;
    let footer_sector = r.old_footer_at
        ..r.old_footer_at
            .saturating_add(crate::vhd::format::FOOTER_BYTES as u64);
    let mut buf = Vec::new();
    for m in &r.moves {
        let mut off = 0u64;
        while off < m.length {
            let n = (m.length - off).min(CHUNK);
            buf.resize(usize::try_from(n).unwrap_or(0), 0);
            file.read_exact_at(&mut buf, m.from + off)
                .map_err(io(&format!("reading {}", m.what)))?;
            let to = m.to + off;
            // Past the old end the file is a hole: zeros need no write, except over the old
            // footer's sector.
            let over_footer = to < footer_sector.end && footer_sector.start < to + n;
            if over_footer || buf.iter().any(|&b| b != 0) {
                file.write_all_at(&buf, to)
                    .map_err(io(&format!("copying {} to {to:#x}", m.what)))?;
            }
            progress.advance(n);
            off += n;
        }
    }
    Sink::sync(file).map_err(io("flushing the copies"))?;
    progress.finish();
    Ok(total)
}
