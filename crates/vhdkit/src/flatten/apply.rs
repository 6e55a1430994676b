//! `apply` (a path: lock, recover, open the chain) and `apply_to` (any sink and journal
//! store: the fault-injection tests), the copy and the final step. The copy reads and writes
//! at most 1 MiB at once (`merge::copy::buffered_len`): it holds one such buffer.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use super::walk::{self, Need, Totals};
use super::{FlattenPlan, FlattenReport};
use crate::chain::{Chain, ChainOptions};
use crate::disk::{detect, Disk, DiskFormat, DiskType};
use crate::error::{Error, Result, ResultExt};
use crate::fsx::SharedFile;
use crate::progress::{self, Progress};
use crate::txn::journal::{self, FileJournal, JournalStore};
use crate::txn::{FieldChange, Sink};
use crate::view::ChainView;
use crate::write::{WritableDisk, WritableImage};

/// Flatten the plan's child: under its exclusive lock, finish an interrupted change, copy
/// what it lacks from its chain (opened again with the plan's options), then remove its
/// parent linkage in one crash-safe step. `progress` hears one `"flatten"` phase in bytes and
/// may cancel between blocks (what was copied is committed; the child stays a differencing
/// disk with the same contents, and a rerun finishes).
pub(super) fn apply(plan: &FlattenPlan, progress: &mut dyn Progress) -> Result<FlattenReport> {
    let path = plan.child.as_path();
    let (lock, file) = crate::lock::locked_file(path)?;
    let sink = SharedFile(Arc::new(file));
    let store = FileJournal::for_disk(path);
    let recovered = journal::recover_or_refuse(&sink, &store).with_path(path)?;
    // The writer opens first: it replays a dirty VHDX log into the file, so the chain below
    // reads the file as it now is.
    let image = open_image(&sink, &plan.chain).with_path(path)?;
    let (child, parents) = split(Chain::open(path, &plan.chain)?.into_view())?;
    let (_, writer_parents) = split(Chain::open(path, &plan.chain)?.into_view())?;
    let views = Views {
        child,
        parents,
        writer_parents,
    };
    let space = |t: &Totals| enough_space(lock.file(), t, plan.block_size);
    let kernel = KernelCopy::new(&sink.0);
    let env = Env {
        opts: &plan.chain,
        space: &space,
        kernel: Some(kernel),
    };
    let mut r = run(&sink, &store, image, views, env, progress).with_path(path)?;
    r.recovered = recovered;
    drop(lock);
    Ok(r)
}

/// The child (first layer) and the chain below it.
fn split(view: ChainView) -> Result<(Disk, ChainView)> {
    let mut layers = view.into_layers();
    if layers.is_empty() {
        return Err(Error::internal("a chain without disks"));
    }
    let child = layers.remove(0);
    Ok((child, ChainView::new(layers)))
}

/// The child as parsed before the copy (its map says what it lacks), and two views of the
/// chain below it: one the walk asks what it stores, one the writer reads through.
struct Views {
    child: Disk,
    parents: ChainView,
    writer_parents: ChainView,
}

/// `apply` on any target and journal store (the repository's fault-injection tests), with
/// `parents` opening the chain below the child (called twice).
#[cfg_attr(not(feature = "test-support"), allow(dead_code))]
pub fn apply_to<S: Sink + Clone + 'static>(
    sink: &S,
    store: &dyn JournalStore,
    parents: &dyn Fn() -> Result<ChainView>,
    opts: &ChainOptions,
    progress: &mut dyn Progress,
) -> Result<FlattenReport> {
    let recovered = journal::recover_or_refuse(sink, store)?;
    let image = open_image(sink, opts)?;
    let views = Views {
        child: Disk::from_source(Box::new(sink.clone()), &opts.open)?,
        parents: parents()?,
        writer_parents: parents()?,
    };
    let env = Env {
        opts,
        space: &|_| Ok(()),
        kernel: None,
    };
    let mut r = run(sink, store, image, views, env, progress)?;
    r.recovered = recovered;
    Ok(r)
}

fn open_image<S: Sink + Clone + 'static>(
    sink: &S,
    opts: &ChainOptions,
) -> Result<Box<dyn WritableImage>> {
    Ok(match detect(sink)? {
        DiskFormat::Vhd => Box::new(crate::vhd::write::VhdWriter::open(
            sink.clone(),
            &opts.open,
        )?),
        // Flatten writes what the child already reads: its own children stay valid.
        DiskFormat::Vhdx => Box::new(
            crate::vhdx::write::VhdxWriter::open(sink.clone(), &opts.open)?.preserving_contents(),
        ),
    })
}

/// What a run works with besides the file: the options, the free-space check before the
/// first write, and the kernel copy into the child's file (none for an in-memory file).
struct Env<'a> {
    opts: &'a ChainOptions,
    space: &'a dyn Fn(&Totals) -> Result<()>,
    kernel: Option<KernelCopy<'a>>,
}

/// The copy, then the final step.
fn run<S: Sink + Clone + 'static>(
    sink: &S,
    store: &dyn JournalStore,
    image: Box<dyn WritableImage>,
    views: Views,
    env: Env<'_>,
    progress: &mut dyn Progress,
) -> Result<FlattenReport> {
    let Env {
        opts,
        space,
        mut kernel,
    } = env;
    if image.disk_type() != DiskType::Differencing {
        return Ok(FlattenReport {
            already_standalone: true,
            ..FlattenReport::default()
        });
    }
    let format = image.format();
    let Views {
        child,
        parents,
        writer_parents,
    } = views;
    let mut disk = WritableDisk::from_parts(image, Some(writer_parents));
    let t = copy(
        &mut disk,
        &child,
        &parents,
        space,
        kernel.as_mut(),
        progress,
    )?;
    disk.close()?;
    drop((child, parents));
    let unlink_bytes = unlink(sink, store, format, opts)?;
    Ok(FlattenReport {
        recovered: false,
        already_standalone: false,
        whole_blocks: t.whole_blocks,
        partial_blocks: t.partial_blocks,
        bytes_copied: t.bytes,
        bytes_kernel_copied: kernel.map_or(0, |k| k.moved),
        unlink_bytes,
    })
}

/// Copy every range the child lacks, reading it through the child itself: the bytes written
/// are the bytes the child reads there now, so its contents never change.
fn copy(
    disk: &mut WritableDisk,
    child: &Disk,
    parents: &ChainView,
    space: &dyn Fn(&Totals) -> Result<()>,
    mut kernel: Option<&mut KernelCopy<'_>>,
    progress: &mut dyn Progress,
) -> Result<Totals> {
    // The totals first (maps only, no data read), for the progress bar.
    let bs = child.block_size().unwrap_or(0);
    let size = child.virtual_size();
    let mut needs_total = Totals::default();
    for (start, len) in walk::blocks(size, bs) {
        needs_total.add(&walk::need(child, parents, start, len)?);
    }
    space(&needs_total)?;
    progress.start("flatten", Some(needs_total.bytes));
    let mut done = Totals::default();
    let mut buf = Vec::new();
    for (start, len) in walk::blocks(size, bs) {
        if progress.cancelled() {
            disk.flush()?;
            return Err(progress::cancelled());
        }
        let need = walk::need(child, parents, start, len)?;
        if need == Need::Nothing {
            continue;
        }
        for (mut at, len) in need.ranges() {
            let end = at + len;
            while at < end {
                let sector = u64::from(child.logical_sector_size()).max(1);
                if let Some(n) = kernel.as_deref_mut().map_or(Ok(None), |k| {
                    k.piece(disk, parents.layers(), sector, at, end)
                })? {
                    progress.advance(n);
                    at += n;
                    continue;
                }
                let clones = kernel.as_deref().is_some_and(|k| k.clones);
                let n = crate::merge::copy::buffered_len(at, end, clones);
                let n = usize::try_from(n).unwrap_or(0);
                buf.resize(n, 0);
                disk.read_exact_at(&mut buf, at)?;
                disk.write_at(at, &buf)?;
                progress.advance(n as u64);
                at += n as u64;
            }
        }
        done.add(&need);
    }
    progress.finish();
    Ok(done)
}

/// Payload a parent stores contiguously, copied by the kernel file to file into the place
/// the writer gives in the child (a reflink on XFS and btrfs, an in-kernel copy elsewhere):
/// the same bytes the child reads there, without passing through vhdkit.
struct KernelCopy<'a> {
    file: &'a File,
    copier: crate::fsx::RangeCopier,
    /// The file system clones: only 4 KiB-aligned pieces go to the kernel.
    clones: bool,
    moved: u64,
}

impl<'a> KernelCopy<'a> {
    fn new(file: &'a File) -> KernelCopy<'a> {
        KernelCopy {
            file,
            copier: crate::fsx::RangeCopier::new(),
            clones: crate::fsx::RangeCopier::for_sparse_output(file).uses_kernel(),
            moved: 0,
        }
    }

    /// Copy the piece at `at` (before `end`, in one block) when a parent stores it
    /// contiguously and the writer takes it whole; its length, or `None` for the writer.
    fn piece(
        &mut self,
        disk: &mut WritableDisk,
        parents: &[Disk],
        sector: u64,
        at: u64,
        end: u64,
    ) -> Result<Option<u64>> {
        use crate::merge::copy::{stored_run, CLONE_ALIGN};
        let Some((src, from, n)) = stored_run(parents, at, end - at)? else {
            return Ok(None);
        };
        let unit = if self.clones { CLONE_ALIGN } else { sector };
        let n = n / unit * unit;
        if n == 0 || (self.clones && (at % CLONE_ALIGN != 0 || from % CLONE_ALIGN != 0)) {
            return Ok(None);
        }
        let Some(dst) = disk.place_for_copy(at, n)? else {
            return Ok(None);
        };
        if self.clones && dst % CLONE_ALIGN != 0 {
            // Placed (and marked) already: the writer writes the same bytes there.
            return Ok(None);
        }
        let moved = match self.copier.copy(src, from, self.file, dst, n, false) {
            Ok(m) => m,
            Err(e) => {
                // The sectors are marked: committing now would expose what is not there.
                disk.abandon();
                return Err(Error::io(
                    format!(
                        "copying {n} bytes from a parent at {from:#x} into the child at {dst:#x}"
                    ),
                    e,
                ));
            }
        };
        self.moved += moved;
        Ok(Some(n))
    }
}

/// The final step, planned on the file as the copy left it: returns the bytes written.
fn unlink<S: Sink + Clone + 'static>(
    sink: &S,
    store: &dyn JournalStore,
    f: DiskFormat,
    o: &ChainOptions,
) -> Result<u64> {
    match f {
        DiskFormat::Vhd => {
            let file = crate::vhd::VhdFile::open(Box::new(sink.clone()), &o.open)?;
            let p = crate::vhd::link::plan_unlink(file, &o.open)?;
            journal::apply(sink, store, &p.plan)?;
            Ok(p.plan.bytes_written())
        }
        DiskFormat::Vhdx => {
            let file = crate::vhdx::VhdxFile::open(Box::new(sink.clone()), &o.open)?;
            let p = crate::vhdx::unlink::plan_unlink(file, &o.open, false)?;
            let a = crate::vhdx::reparent::apply(sink, &p.guard, &p.plan, &o.open.limits)?;
            Ok(a.total_bytes())
        }
    }
}

/// The field changes of the final step on the child as it is now (for the plan).
pub(super) fn preview_unlink(path: &Path, o: &ChainOptions) -> Result<Vec<FieldChange>> {
    let f = crate::fsx::open_disk(path)
        .map_err(|e| Error::io("opening the file", e))
        .with_path(path)?;
    let changes = match detect(&f).with_path(path)? {
        DiskFormat::Vhd => {
            let file = crate::vhd::VhdFile::open(Box::new(f), &o.open)?;
            crate::vhd::link::plan_unlink(file, &o.open)?.plan.changes
        }
        DiskFormat::Vhdx => {
            let file = crate::vhdx::VhdxFile::open(Box::new(f), &o.open)?;
            crate::vhdx::unlink::plan_unlink(file, &o.open, true)?
                .plan
                .changes
        }
    };
    Ok(changes)
}

/// Refuse before the first write when the child's file system lacks room for the blocks to
/// allocate (partial blocks are allocated already): `fsx::ensure_room`.
fn enough_space(file: &File, t: &Totals, block_size: u64) -> Result<()> {
    crate::fsx::ensure_room(file, t.whole_blocks, block_size, "the copy")
}
