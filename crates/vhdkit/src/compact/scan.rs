//! Which allocated blocks stop using space: each is read through the chain (what the disk
//! reads there) and, where it matters, through its parent chain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::layout::{Alloc, Change, FileMap};
use crate::aligned::Aligned;
use crate::disk::{DiskFormat, DiskType};
use crate::error::Result;
use crate::progress::{self, Progress};
use crate::share::digest::is_zero;
use crate::view::ChainView;

/// Most bytes read at once (one such buffer for the disk, one for its parent).
const CHUNK: u64 = 1 << 20;

/// How the blocks of one disk are judged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub format: DiskFormat,
    pub disk_type: DiskType,
    /// Drop blocks equal to what the parent chain reads, zeros or not.
    pub against_parent: bool,
}

/// The decisions of a scan.
#[derive(Debug, Default, Clone)]
pub(crate) struct Decisions {
    /// Table changes that free blocks (drops and clears).
    pub drops: Vec<Change>,
    /// Blocks that stay allocated.
    pub kept: Vec<Alloc>,
    /// Drops that read as zeros on their own.
    pub zero_blocks: u64,
    /// Drops that read through to the parent.
    pub parent_blocks: u64,
}

/// What the disk reads in one block compared with zeros and with its parent.
struct Seen {
    zero: bool,
    equals_parent: bool,
}

/// Judge every allocated block of `map`: `disk` is the chain from the disk itself, `parent`
/// the chain below it (`None` for a standalone disk). Progress in bytes read.
///
/// The blocks are read in file order, the first half here and the second on a helper thread:
/// on a warm cache the scan is mostly the kernel's copy out of the page cache, which then runs
/// on two cores (each half is still one sequential sweep of the file).
pub(crate) fn decide(
    map: &FileMap,
    rules: Rules,
    disk: &ChainView,
    parent: Option<&ChainView>,
    progress: &mut dyn Progress,
) -> Result<Decisions> {
    let mut d = Decisions::default();
    d.drops.extend(map.stale.iter().copied().map(Change::Clear));
    let mut blocks = map.blocks.clone();
    blocks.sort_unstable_by_key(|b| b.at);
    let (first, second) = blocks.split_at(blocks.len() / 2);
    let judge_one = |b: &Alloc, bufs: &mut (Aligned, Aligned)| -> Result<Verdict> {
        let size = disk.virtual_size();
        let start = b.block.saturating_mul(map.block_size);
        let len = map.block_size.min(size.saturating_sub(start));
        let seen = look(disk, parent, &rules, start, len, bufs)?;
        Ok(Verdict {
            block: *b,
            len,
            change: judge(&rules, &seen),
        })
    };
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let tx = tx;
            let mut bufs = (Aligned::default(), Aligned::default());
            for b in second {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let v = judge_one(b, &mut bufs);
                let failed = v.is_err();
                if tx.send(v).is_err() || failed {
                    return;
                }
            }
        });
        let r = judge_all(first, second.len(), &rx, &judge_one, progress, &mut d);
        // The helper stops at its next block when this side failed or was cancelled.
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        r
    })?;
    Ok(d)
}

/// Reads one block (into the two buffers) and judges it.
type JudgeOne<'a> = dyn Fn(&Alloc, &mut (Aligned, Aligned)) -> Result<Verdict> + 'a;

/// What `judge` said of one block.
struct Verdict {
    block: Alloc,
    len: u64,
    change: Option<Change>,
}

/// Judge `first` here while taking the helper's `helped` verdicts from `rx` as they come
/// (progress counts both), then record them all in file order.
fn judge_all(
    first: &[Alloc],
    helped: usize,
    rx: &mpsc::Receiver<Result<Verdict>>,
    judge_one: &JudgeOne<'_>,
    progress: &mut dyn Progress,
    d: &mut Decisions,
) -> Result<()> {
    let mut bufs = (Aligned::default(), Aligned::default());
    let mut theirs: Vec<Verdict> = Vec::with_capacity(helped);
    for b in first {
        if progress.cancelled() {
            return Err(progress::cancelled());
        }
        let v = judge_one(b, &mut bufs)?;
        progress.advance(v.len);
        record(d, v);
        while let Ok(v) = rx.try_recv() {
            take(v, &mut theirs, progress)?;
        }
    }
    while theirs.len() < helped {
        if progress.cancelled() {
            return Err(progress::cancelled());
        }
        let v = rx.recv().map_err(|_| {
            crate::error::Error::internal("the compaction's reading thread stopped")
        })?;
        take(v, &mut theirs, progress)?;
    }
    for v in theirs {
        record(d, v);
    }
    Ok(())
}

/// Keep one of the helper's verdicts for later (counted in the progress now).
fn take(v: Result<Verdict>, theirs: &mut Vec<Verdict>, progress: &mut dyn Progress) -> Result<()> {
    let v = v?;
    progress.advance(v.len);
    theirs.push(v);
    Ok(())
}

fn record(d: &mut Decisions, v: Verdict) {
    match v.change {
        Some(c @ Change::DropZero(_)) | Some(c @ Change::DropToParent(_)) => {
            let c = with_alloc(c, v.block);
            if matches!(c, Change::DropZero(_)) {
                d.zero_blocks += 1;
            } else {
                d.parent_blocks += 1;
            }
            d.drops.push(c);
        }
        _ => d.kept.push(v.block),
    }
}

fn with_alloc(c: Change, b: Alloc) -> Change {
    match c {
        Change::DropZero(_) => Change::DropZero(b),
        Change::DropToParent(_) => Change::DropToParent(b),
        other => other,
    }
}

/// The rules of issue 14, per format. `None`: the block stays.
fn judge(r: &Rules, s: &Seen) -> Option<Change> {
    let placeholder = Alloc {
        block: 0,
        at: 0,
        raw: 0,
    };
    let differencing = r.disk_type == DiskType::Differencing;
    if !differencing {
        // Unallocated reads as zeros.
        return s.zero.then_some(Change::DropZero(placeholder));
    }
    match r.format {
        // The ZERO state reads zeros whatever the parent holds.
        DiskFormat::Vhdx if s.zero => Some(Change::DropZero(placeholder)),
        DiskFormat::Vhdx => {
            (r.against_parent && s.equals_parent).then_some(Change::DropToParent(placeholder))
        }
        // VHD cannot say "zeros" in a differencing disk: an unallocated block reads the
        // parent, so only a block equal to the parent may go.
        DiskFormat::Vhd => (s.equals_parent && (s.zero || r.against_parent))
            .then_some(Change::DropToParent(placeholder)),
    }
}

/// Read `len` bytes at `start` through the disk (and its parent when the rules need it).
fn look(
    disk: &ChainView,
    parent: Option<&ChainView>,
    r: &Rules,
    start: u64,
    len: u64,
    bufs: &mut (Aligned, Aligned),
) -> Result<Seen> {
    let differencing = r.disk_type == DiskType::Differencing;
    let mut seen = Seen {
        zero: true,
        equals_parent: differencing && parent.is_some(),
    };
    let mut at = start;
    let end = start.saturating_add(len);
    while at < end && (seen.zero || (seen.equals_parent && r.against_parent)) {
        let n = usize::try_from((end - at).min(CHUNK)).unwrap_or(0);
        disk.read_exact_at(bufs.0.window(n), at)?;
        let zero = seen.zero && is_zero(bufs.0.data());
        // The parent is read only where its answer can still change the outcome.
        let want_parent = differencing
            && seen.equals_parent
            && (r.against_parent || (zero && r.format == DiskFormat::Vhd));
        if want_parent {
            if let Some(p) = parent {
                read_parent(p, bufs.1.window(n), at)?;
                seen.equals_parent = bufs.0.data() == bufs.1.data();
            }
        } else if differencing {
            seen.equals_parent = false;
        }
        seen.zero = zero;
        at += n as u64;
    }
    if at < end {
        // Stopped early: neither test can pass any more.
        seen.zero = false;
        seen.equals_parent = false;
    }
    Ok(seen)
}

/// A parent smaller than the child reads zeros past its end.
fn read_parent(p: &ChainView, buf: &mut [u8], at: u64) -> Result<()> {
    let size = p.virtual_size();
    buf.fill(0);
    if at >= size {
        return Ok(());
    }
    let n = usize::try_from(size - at)
        .unwrap_or(usize::MAX)
        .min(buf.len());
    p.read_exact_at(&mut buf[..n], at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(format: DiskFormat, disk_type: DiskType, against_parent: bool) -> Rules {
        Rules {
            format,
            disk_type,
            against_parent,
        }
    }

    fn kind(c: Option<Change>) -> &'static str {
        match c {
            Some(Change::DropZero(_)) => "zero",
            Some(Change::DropToParent(_)) => "parent",
            _ => "keep",
        }
    }

    #[test]
    fn the_rules_of_the_issue() {
        use DiskFormat::{Vhd, Vhdx};
        use DiskType::{Differencing as Diff, Dynamic};
        let s = |zero, equals_parent| Seen {
            zero,
            equals_parent,
        };
        // Dynamic: zero blocks go, whatever the flag.
        for f in [Vhd, Vhdx] {
            assert_eq!(
                kind(judge(&rules(f, Dynamic, false), &s(true, true))),
                "zero"
            );
            assert_eq!(
                kind(judge(&rules(f, Dynamic, true), &s(false, true))),
                "keep"
            );
        }
        // VHDX differencing: zero -> ZERO state, parent's data kept; equal -> only with the flag.
        assert_eq!(
            kind(judge(&rules(Vhdx, Diff, false), &s(true, false))),
            "zero"
        );
        assert_eq!(
            kind(judge(&rules(Vhdx, Diff, false), &s(false, true))),
            "keep"
        );
        assert_eq!(
            kind(judge(&rules(Vhdx, Diff, true), &s(false, true))),
            "parent"
        );
        // VHD differencing: a zero block goes only over a parent reading zeros.
        assert_eq!(
            kind(judge(&rules(Vhd, Diff, false), &s(true, false))),
            "keep"
        );
        assert_eq!(
            kind(judge(&rules(Vhd, Diff, false), &s(true, true))),
            "parent"
        );
        assert_eq!(
            kind(judge(&rules(Vhd, Diff, false), &s(false, true))),
            "keep"
        );
        assert_eq!(
            kind(judge(&rules(Vhd, Diff, true), &s(false, true))),
            "parent"
        );
    }
}
