//! The plan (read only) and the run: lock, recover, judge, drop, move, cut.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::layout::{self, Alloc, Change, FileMap};
use super::scan::{self, Decisions, Rules};
use super::{CompactPlan, CompactReport};
use crate::chain::ChainOptions;
use crate::disk::{detect, DiskFormat, DiskType};
use crate::error::{Error, Result, ResultExt};
use crate::fsx::{RangeCopier, SharedFile};
use crate::progress::{self, Progress};
use crate::source::Source;
use crate::txn::journal::{self, FileJournal, JournalStore};
use crate::txn::Sink;

/// Blocks moved per table commit, and bytes: a crash loses at most one batch of copying.
const MOVES_PER_COMMIT: usize = 64;
const BYTES_PER_COMMIT: u64 = 256 << 20;

/// See [`CompactPlan::new`].
pub(super) fn plan(path: &Path, opts: &ChainOptions, against_parent: bool) -> Result<CompactPlan> {
    let (disk, parent) = super::views(path, opts)?;
    let first = disk
        .layers()
        .first()
        .ok_or_else(|| Error::internal("a chain without disks"))?;
    let mut p = CompactPlan {
        disk: path.to_path_buf(),
        format: first.format(),
        disk_type: first.disk_type(),
        against_parent,
        nothing_to_do: first.disk_type() == DiskType::Fixed,
        parents: disk
            .layers()
            .iter()
            .skip(1)
            .filter_map(|d| d.path().map(Path::to_path_buf))
            .collect(),
        virtual_size: first.virtual_size(),
        block_size: first.block_size().unwrap_or(0),
        allocated_blocks: 0,
        zero_blocks: 0,
        parent_blocks: 0,
        blocks_to_move: 0,
        bytes_to_move: 0,
        file_size: 0,
        file_size_after: 0,
        bytes_to_reclaim: 0,
        allocated_size: 0,
        notes: first.warnings(),
        chain: opts.clone(),
        scanned: None,
    };
    let f = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e))
        .with_path(path)?;
    let md = f
        .metadata()
        .map_err(|e| Error::io("reading the file's metadata", e))
        .with_path(path)?;
    (p.file_size, p.allocated_size) = (md.len(), du(&md));
    p.file_size_after = p.file_size;
    if p.nothing_to_do {
        p.notes
            .push("a fixed disk has no unused blocks to give back: nothing to do".into());
        return Ok(p);
    }
    if against_parent && p.disk_type != DiskType::Differencing {
        p.notes
            .push("not a differencing disk: --against-parent changes nothing".into());
    }
    let chain_files: Vec<&Path> = std::iter::once(path)
        .chain(p.parents.iter().map(PathBuf::as_path))
        .collect();
    let seen = stamps(&chain_files);
    let map = plan_map(f, opts).with_path(path)?;
    map.check_disjoint().with_path(path)?;
    let rules = Rules {
        format: p.format,
        disk_type: p.disk_type,
        against_parent,
    };
    let d = scan::decide(&map, rules, &disk, parent.as_ref(), &mut ())?;
    let packed = layout::pack(&map, &d.kept)?;
    let (moves, len) = (&packed.moves, packed.len);
    if let (Some(to), Some((from, tlen))) = (packed.table_to, map.table) {
        p.notes.push(format!(
            "the block allocation table ({tlen} bytes) moves down from {from:#x} to {to:#x}, \
             after the blocks"
        ));
    }
    if seen.is_some() && stamps(&chain_files) == seen {
        p.scanned = Some(Arc::new(Scanned {
            stamps: seen,
            blocks: all_blocks(&map),
            decisions: d.clone(),
        }));
    }
    p.allocated_blocks = map.blocks.len() as u64;
    (p.zero_blocks, p.parent_blocks) = (d.zero_blocks, d.parent_blocks);
    p.blocks_to_move = moves.len() as u64;
    p.bytes_to_move = p.blocks_to_move.saturating_mul(map.span);
    p.file_size_after = len.min(p.file_size);
    p.bytes_to_reclaim = p.file_size - p.file_size_after;
    Ok(p)
}

/// What a plan read: the files' stamps, the blocks and the decisions.
#[derive(Debug)]
pub(super) struct Scanned {
    stamps: Option<Vec<Stamp>>,
    blocks: Vec<Alloc>,
    decisions: Decisions,
}

/// What changes when a file is written, replaced or resized: length, modification and change
/// times, inode and device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    node: (u64, u64, i64, i64),
}

/// The stamps of `files`; `None` when one cannot be read (then nothing is reused).
fn stamps(files: &[&Path]) -> Option<Vec<Stamp>> {
    files
        .iter()
        .map(|p| {
            let md = std::fs::metadata(p).ok()?;
            Some(Stamp {
                len: md.len(),
                modified: md.modified().ok(),
                node: node(&md),
            })
        })
        .collect()
}

#[cfg(unix)]
fn node(md: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (md.dev(), md.ino(), md.ctime(), md.ctime_nsec())
}

#[cfg(not(unix))]
fn node(_: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (0, 0, 0, 0)
}

/// Every entry of the map with an offset, in one order.
fn all_blocks(map: &FileMap) -> Vec<Alloc> {
    let mut v: Vec<Alloc> = map.blocks.iter().chain(&map.stale).copied().collect();
    v.sort_unstable_by_key(|a| (a.block, a.at));
    v
}

/// The map of the file as it reads now (a dirty VHDX log replayed in memory).
fn plan_map(f: File, opts: &ChainOptions) -> Result<FileMap> {
    Ok(match detect(&f)? {
        DiskFormat::Vhd => {
            let ro = ReadOnly(f);
            let none = NoJournal;
            crate::vhd::compact::Editor::open(&ro, &none, &opts.open)?.map
        }
        DiskFormat::Vhdx => crate::vhdx::compact::plan_map(Box::new(f), &opts.open)?.1,
    })
}

/// Bytes a file occupies on its file system.
fn du(md: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        md.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        md.len()
    }
}

/// An unfinished merge into `disk` is finished by `merge` or `repair`, never overtaken.
pub(super) fn merge_refusal(disk: &Path) -> Result<()> {
    let rec = crate::sidefile::merge_record(disk);
    if crate::fsx::entry_exists(&rec) {
        return Err(Error::refused(format!(
            "an unfinished merge into this disk is recorded in {} (finish it with `vhdkit \
             repair` or `vhdkit merge`); nothing was written",
            rec.display()
        ))
        .with_path(disk));
    }
    Ok(())
}

/// See [`CompactPlan::apply`].
pub(super) fn apply(plan: &CompactPlan, progress: &mut dyn Progress) -> Result<CompactReport> {
    let path = plan.disk.as_path();
    let (lock, file) = crate::lock::locked_file(path)?;
    merge_refusal(path)?;
    let before = lock
        .file()
        .metadata()
        .map_err(|e| Error::io("reading the file's metadata", e))
        .with_path(path)?;
    let sink = SharedFile(Arc::new(file));
    let store = FileJournal::for_disk(path);
    let mut r = run(&sink, &store, plan, progress).with_path(path)?;
    let after = lock
        .file()
        .metadata()
        .map_err(|e| Error::io("reading the file's metadata", e))
        .with_path(path)?;
    (r.file_size_before, r.allocated_before) = (before.len(), du(&before));
    (r.file_size_after, r.allocated_after) = (after.len(), du(&after));
    drop(lock);
    Ok(r)
}

/// Either format's editor.
enum Editor<'a> {
    Vhd(Box<crate::vhd::compact::Editor<'a>>),
    Vhdx(Box<crate::vhdx::compact::Editor<'a>>),
}

impl Editor<'_> {
    fn map(&self) -> &FileMap {
        match self {
            Editor::Vhd(e) => &e.map,
            Editor::Vhdx(e) => &e.map,
        }
    }
    fn disk_type(&self) -> DiskType {
        match self {
            Editor::Vhd(e) => e.disk_type,
            Editor::Vhdx(e) => e.disk_type,
        }
    }
    fn commit(&mut self, c: &[Change]) -> Result<u64> {
        match self {
            Editor::Vhd(e) => e.commit(c),
            Editor::Vhdx(e) => e.commit(c),
        }
    }
    fn move_table(&mut self, to: u64) -> Result<u64> {
        match self {
            // A VHD's table never moves (`FileMap::table` is `None`).
            Editor::Vhd(_) => Ok(0),
            Editor::Vhdx(e) => e.move_table(to),
        }
    }
    fn trim(&mut self, len: u64) -> Result<()> {
        match self {
            Editor::Vhd(e) => e.trim(len),
            Editor::Vhdx(e) => e.trim(len),
        }
    }
}

/// Recover, open, then drop, move and cut.
fn run(
    sink: &SharedFile,
    store: &dyn JournalStore,
    plan: &CompactPlan,
    progress: &mut dyn Progress,
) -> Result<CompactReport> {
    let mut report = CompactReport {
        recovered: journal::recover_or_refuse(sink, store)?,
        ..CompactReport::default()
    };
    let mut ed = match detect(sink)? {
        DiskFormat::Vhd => Editor::Vhd(Box::new(crate::vhd::compact::Editor::open(
            sink,
            store,
            &plan.chain.open,
        )?)),
        DiskFormat::Vhdx => {
            let e = crate::vhdx::compact::Editor::open(sink, &plan.chain.open)?;
            report.recovered |= e.replayed;
            Editor::Vhdx(Box::new(e))
        }
    };
    if ed.disk_type() == DiskType::Fixed {
        report.nothing_to_do = true;
        return Ok(report);
    }
    ed.map().check_disjoint()?;
    let rules = Rules {
        format: plan.format,
        disk_type: ed.disk_type(),
        against_parent: plan.against_parent,
    };
    // Judged on the files as they are now, under the lock: the plan's decisions only when no
    // file of the chain changed since it read them.
    let files: Vec<&Path> = std::iter::once(plan.disk.as_path())
        .chain(plan.parents.iter().map(PathBuf::as_path))
        .collect();
    let d = match &plan.scanned {
        Some(s)
            if !report.recovered
                && s.stamps.is_some()
                && stamps(&files) == s.stamps
                && all_blocks(ed.map()) == s.blocks =>
        {
            s.decisions.clone()
        }
        _ => judge(&plan.disk, &plan.chain, ed.map(), rules, progress)?,
    };
    report.zero_blocks = d.zero_blocks;
    report.parent_blocks = d.parent_blocks;
    report.table_bytes = ed.commit(&d.drops)?;
    let map = ed.map().clone();
    let packed = layout::pack(&map, &d.kept)?;
    drop(d);
    move_blocks(sink, &mut ed, &map, &packed.moves, &mut report, progress)?;
    if let Some(to) = packed.table_to {
        report.table_bytes = report.table_bytes.saturating_add(ed.move_table(to)?);
    }
    ed.trim(packed.len)?;
    Ok(report)
}

/// The decisions, read through freshly opened chain views (after any recovery).
fn judge(
    path: &Path,
    opts: &ChainOptions,
    map: &FileMap,
    rules: Rules,
    progress: &mut dyn Progress,
) -> Result<Decisions> {
    let (disk, parent) = super::views(path, opts)?;
    let total = (map.blocks.len() as u64).saturating_mul(map.block_size);
    progress.start("compact", Some(total));
    let d = scan::decide(map, rules, &disk, parent.as_ref(), progress)?;
    progress.finish();
    Ok(d)
}

/// Step 2 of the module docs: copy, sync, switch, a batch at a time.
fn move_blocks(
    sink: &SharedFile,
    ed: &mut Editor<'_>,
    map: &FileMap,
    moves: &[(Alloc, u64)],
    report: &mut CompactReport,
    progress: &mut dyn Progress,
) -> Result<()> {
    progress.start("move", Some((moves.len() as u64).saturating_mul(map.span)));
    let mut copier = RangeCopier::new();
    let mut batch: Vec<Change> = Vec::new();
    let mut batch_bytes = 0u64;
    for (i, &(b, to)) in moves.iter().enumerate() {
        if progress.cancelled() {
            commit_moves(sink, ed, &mut batch, report)?;
            return Err(progress::cancelled());
        }
        copy_span(sink, b.at, to, map.span, &mut copier)?;
        progress.advance(map.span);
        batch.push(Change::Move(b, to));
        batch_bytes = batch_bytes.saturating_add(map.span);
        report.blocks_moved += 1;
        report.bytes_moved = report.bytes_moved.saturating_add(map.span);
        let last = i + 1 == moves.len();
        if last || batch.len() >= MOVES_PER_COMMIT || batch_bytes >= BYTES_PER_COMMIT {
            commit_moves(sink, ed, &mut batch, report)?;
            batch_bytes = 0;
        }
    }
    progress.finish();
    Ok(())
}

/// Make the copies durable, then switch their entries.
fn commit_moves(
    sink: &SharedFile,
    ed: &mut Editor<'_>,
    batch: &mut Vec<Change>,
    report: &mut CompactReport,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    sink.sync()
        .map_err(|e| Error::io("flushing the moved blocks", e))?;
    let n = ed.commit(batch)?;
    report.table_bytes = report.table_bytes.saturating_add(n);
    batch.clear();
    Ok(())
}

/// Copy one block (its bitmap and data) to its new place, in the kernel where it can: on XFS
/// and btrfs `copy_file_range` clones the extents and no data moves; on ext4 the copy stays in
/// the page cache. The destination is referenced by nothing until the batch commits.
fn copy_span(
    sink: &SharedFile,
    from: u64,
    to: u64,
    len: u64,
    copier: &mut RangeCopier,
) -> Result<()> {
    copier
        .copy(&sink.0, from, &sink.0, to, len, false)
        .map(drop)
        .map_err(|e| Error::io(format!("copying the block at {from:#x} to {to:#x}"), e))
}

/// A file opened for reading, as a sink that refuses every write: the plan reads the map
/// through the writers' code.
#[derive(Debug)]
struct ReadOnly(File);

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "a plan never writes")
}

impl Source for ReadOnly {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Source::len(&self.0)
    }
}

impl Sink for ReadOnly {
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync(&self) -> io::Result<()> {
        Err(read_only())
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(read_only())
    }
}

/// The journal store of a plan: none is ever written.
struct NoJournal;

impl JournalStore for NoJournal {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn store(&self, _: &[u8]) -> io::Result<()> {
        Err(read_only())
    }
    fn remove(&self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "(none: a plan)".into()
    }
}
