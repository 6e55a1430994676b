//! Random writes through vhdkit's `WritableDisk` checked against an in-memory model: the
//! 3-deep chain and the write loop that the VHD and the VHDX write tests share, so the two
//! formats are held to one rule (including "the parents are untouched by writes to the top").

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vhdkit::{ChainOptions, CreateParams, Disk, WritableDisk};

use crate::snapshot::Snapshot;
use crate::through::{apply, read_chain};
use crate::Rng;

/// File names of the 3-deep chain, base first: `("base.vhd", "mid.avhd", "top.avhd")`.
pub type ChainNames<'a> = (&'a str, &'a str, &'a str);

/// base (made with `base_params`, dynamic) <- mid <- top (differencing, `block`-byte blocks),
/// made and written by vhdkit: 40 writes of up to 64 KiB into base, 40 of up to 20 000 bytes
/// into mid, top empty. Returns the paths (top first) and the model of what top reads.
pub fn make_chain(
    dir: &Path,
    names: ChainNames<'_>,
    base_params: &CreateParams,
    block: u32,
    rng: &mut Rng,
) -> (Vec<PathBuf>, Vec<u8>) {
    let (base, mid, top) = (dir.join(names.0), dir.join(names.1), dir.join(names.2));
    let size = base_params.size.expect("the base needs a size");
    vhdkit::create(&base, base_params).expect("create the base");
    let mut model = vec![0u8; usize::try_from(size).expect("model size")];
    let mut batch = |p: &Path, n: usize, max: u64, model: &mut Vec<u8>| {
        let mut w = WritableDisk::open(p, &ChainOptions::default()).expect("open for write");
        for i in 0..n {
            let off = rng.below(size);
            let len = (rng.below(max) + 1).min(size - off);
            let mut data = vec![0u8; len as usize];
            rng.fill(&mut data);
            data[0] = i as u8 + 1;
            w.write_at(off, &data).expect("write");
            apply(model, &[(off, data)]);
        }
        w.close().expect("close");
    };
    batch(&base, 40, 64 << 10, &mut model);
    let diff = |p: &Path, parent: &Path| {
        vhdkit::create(p, &CreateParams::differencing(parent).block_size(block))
            .expect("create a differencing level");
    };
    diff(&mid, &base);
    batch(&mid, 40, 20_000, &mut model);
    diff(&top, &mid);
    assert!(read_chain(&top) == model, "the fresh chain reads its model");
    (vec![top, mid, base], model)
}

/// `writes` random writes into `paths[0]` (the top of a chain; `paths[1..]` its parents) of
/// sub-sector, whole-sector (`logical`), cross-block and other lengths, half through
/// `write_at`, half through `Write + Seek`, aligned a third of the time. Checked against
/// `model`: spot reads through the writer, the whole view and a fresh chain every 500 writes,
/// after close and after reopening; the parents keep their bytes and mtimes; the top opens
/// without warnings. Returns the final model.
pub fn random_writes_on_top(
    paths: &[PathBuf],
    mut model: Vec<u8>,
    (block, logical): (u32, u32),
    rng: &mut Rng,
    writes: usize,
) -> Vec<u8> {
    let top = &paths[0];
    let size = model.len() as u64;
    let parents = Snapshot::files(&paths[1..]);
    let mut w = WritableDisk::open(top, &ChainOptions::default()).expect("open the top");
    let mut all = vec![0u8; model.len()];
    let ls = u64::from(logical);
    for i in 0..writes {
        let off = rng.below(size);
        let len = match rng.below(4) {
            0 => rng.below(ls) + 1,                   // sub-sector
            1 => (rng.below(16) + 1) * ls,            // whole sectors
            2 => rng.below(3 * u64::from(block)) + 1, // across blocks
            _ => rng.below(8192) + 1,
        };
        let off = if rng.below(3) == 0 {
            off / ls * ls
        } else {
            off
        };
        let len = len.min(size - off);
        let mut data = vec![0u8; len as usize];
        rng.fill(&mut data);
        if i % 2 == 0 {
            w.write_at(off, &data).expect("write_at");
        } else {
            w.seek(SeekFrom::Start(off)).expect("seek");
            w.write_all(&data).expect("write_all");
        }
        apply(&mut model, &[(off, data)]);
        if i % 97 == 0 {
            // Spot check through the writer's own read path.
            let o = rng.below(size);
            let n = (rng.below(9000) + 1).min(size - o) as usize;
            let mut b = vec![0u8; n];
            w.seek(SeekFrom::Start(o)).expect("seek");
            w.read_exact(&mut b).expect("read back");
            assert_eq!(b, model[o as usize..o as usize + n], "write {i}");
        }
        if i % 500 == 499 {
            w.flush().expect("flush");
            w.read_exact_at(&mut all, 0).expect("read all");
            assert!(all == model, "writer view after flush {i}");
            assert!(read_chain(top) == model, "fresh chain after flush {i}");
        }
    }
    w.close().expect("close");
    assert!(read_chain(top) == model, "after close");
    let mut w = WritableDisk::open(top, &ChainOptions::default()).expect("reopen");
    w.read_exact_at(&mut all, 0).expect("read all");
    assert!(all == model, "after reopen");
    drop(w);
    parents.assert_unchanged("parents after writes to the top");
    let disk = Disk::open(top).expect("open the top read-only");
    assert!(disk.warnings().is_empty(), "{:?}", disk.warnings());
    model
}

/// A raw input `in.img` in `dir` of `size` bytes (not a multiple of 512, so the conversion
/// pads it) with random data in its first MiB and from `tail_at` on, zeros between. Returns
/// its path and its contents padded with zeros to whole sectors: what a conversion must read.
pub fn raw_input(dir: &Path, size: u64, tail_at: u64) -> (PathBuf, Vec<u8>) {
    let raw = dir.join("in.img");
    let mut data = vec![0u8; usize::try_from(size).expect("raw size")];
    let at = |o: u64| usize::try_from(o).expect("offset");
    Rng::new(3).fill(&mut data[..at(1 << 20)]);
    Rng::new(4).fill(&mut data[at(tail_at)..]);
    std::fs::write(&raw, &data).expect("write the raw input");
    data.resize(at(size.div_ceil(512) * 512), 0);
    (raw, data)
}

/// `convert` (a conversion to the existing `out`) is refused as "already exists" and leaves
/// `out` as it was: bytes, length and modification time.
#[track_caller]
pub fn assert_overwrite_refused<T: std::fmt::Debug>(
    out: &Path,
    convert: impl FnOnce() -> Result<T, vhdkit::Error>,
    what: &str,
) {
    let before = Snapshot::files(&[out]);
    let e = convert().expect_err("converting onto an existing file");
    assert!(e.to_string().contains("already exists"), "{what}: {e}");
    before.assert_unchanged(&format!("{what}: a refused overwrite"));
}

/// The whole virtual disk of an in-memory image over an optional in-memory parent.
pub fn read_image(bytes: Vec<u8>, parent: Option<&[u8]>) -> Result<Vec<u8>, vhdkit::Error> {
    let mut layers = vec![crate::through::disk_of(bytes)?];
    if let Some(p) = parent {
        layers.push(crate::through::disk_of(p.to_vec())?);
    }
    let v = vhdkit::ChainView::new(layers);
    let mut out = vec![0u8; usize::try_from(v.virtual_size()).expect("virtual size")];
    v.read_exact_at(&mut out, 0)?;
    Ok(out)
}

/// A batch of writes to fail at each of its mutating operations in turn (the fault-injection
/// test of both write paths).
pub struct FaultBatch<'a> {
    /// The image file before the batch (flushed).
    pub before: Vec<u8>,
    /// Its in-memory parent, for a differencing image.
    pub parent: Option<&'a [u8]>,
    /// Virtual contents after the batch (before it: read from `before`).
    pub new: Vec<u8>,
    /// Logical sector size: after a failure every sector reads its old or its new contents.
    pub sector: usize,
    /// Runs the batch on a file: open, write, one flush, and the "process" dies (no drop).
    pub run: &'a dyn Fn(vhdkit::txn::fault::FaultyFile) -> Result<(), vhdkit::Error>,
    /// A writable disk over an image file (over `parent`), as a later session opens it.
    pub writable: &'a dyn Fn(vhdkit::txn::fault::FaultyFile) -> Result<WritableDisk, vhdkit::Error>,
}

/// Count the batch's mutating operations in a clean run, then fail each in turn. After each
/// failure, both what was written and what was synced open; every sector reads old or new;
/// reopened for write (a VHDX replays its log) it reads the same and takes a new write that
/// reads back. Some late failure leaves the whole new contents. Returns the operation count.
pub fn fail_each_operation(b: &FaultBatch<'_>, what: &str) -> usize {
    use vhdkit::txn::fault::{FaultPlan, FaultyFile};
    let old = read_image(b.before.clone(), b.parent).expect("read the image before");
    let plan = FaultPlan::new(None);
    let clean = FaultyFile::new(b.before.clone(), plan.clone());
    (b.run)(clean.clone()).expect("the batch without a fault");
    let after = read_image(clean.contents_all_written(), b.parent).expect("read the clean run");
    assert!(after == b.new, "{what}: the clean run");
    let ops = plan.count();
    assert!(ops > 10, "{what}: only {ops} operations");
    let size = b.new.len();
    let mut saw_new = false;
    for k in 1..=ops {
        let f = FaultyFile::new(b.before.clone(), FaultPlan::new(Some(k)));
        assert!((b.run)(f.clone()).is_err(), "{what}: op {k} did not fail");
        for (which, img) in [
            ("all written", f.contents_all_written()),
            ("synced only", f.contents_synced()),
        ] {
            let ctx = format!("{what}: fail at op {k}/{ops} ({which})");
            let got = read_image(img.clone(), b.parent)
                .unwrap_or_else(|e| panic!("{ctx}: does not open: {e}"));
            for s in 0..size / b.sector {
                let r = s * b.sector..(s + 1) * b.sector;
                assert!(
                    got[r.clone()] == old[r.clone()] || got[r.clone()] == b.new[r],
                    "{ctx}: sector {s} is neither old nor new"
                );
            }
            saw_new |= got == b.new;
            let again = FaultyFile::new(img, FaultPlan::new(None));
            let mut w = (b.writable)(again.clone()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let mut via_writer = vec![0u8; size];
            w.read_exact_at(&mut via_writer, 0)
                .expect("read through the writer");
            assert!(
                via_writer == got,
                "{ctx}: reopened for write, it reads differently"
            );
            let tail = size - 4096;
            w.write_at(tail as u64, &[0x5A; 4096])
                .expect("a later write");
            w.close().expect("close after the later write");
            let v = read_image(again.contents_synced(), b.parent).expect("read the later write");
            assert!(
                v[..tail] == got[..tail],
                "{ctx}: the later write changed other data"
            );
            assert!(
                v[tail..] == [0x5A; 4096],
                "{ctx}: the later write is not durable"
            );
        }
    }
    assert!(
        saw_new,
        "{what}: a late failure should leave the committed change"
    );
    ops
}

/// Write `writes` into `p` through a `WritableDisk` (default chain options) and apply them to
/// `model`; before closing, the writer's own read of the whole disk must equal the model.
pub fn write_through(p: &Path, model: &mut [u8], writes: &[(u64, Vec<u8>)]) {
    let mut w = WritableDisk::open(p, &ChainOptions::default())
        .unwrap_or_else(|e| panic!("open {} for write: {e}", p.display()));
    for (o, data) in writes {
        w.write_at(*o, data).expect("write");
    }
    apply(model, writes);
    let mut all = vec![0u8; model.len()];
    w.read_exact_at(&mut all, 0)
        .expect("read through the writer");
    assert!(
        all == model,
        "{}: writer's own read before close",
        p.display()
    );
    w.close().expect("close");
}

/// `p` opens without warnings and reads `model` through vhdkit and, when `qemu_fmt` is given
/// and qemu-img is there, through qemu (read-back in `scratch`). Returns the open disk.
pub fn assert_reads_model(p: &Path, model: &[u8], qemu_fmt: Option<&str>, scratch: &Path) -> Disk {
    let what = p.display();
    let disk = Disk::open(p).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(disk.warnings().is_empty(), "{what}: {:?}", disk.warnings());
    assert!(read_chain(p) == model, "{what}: vhdkit read-back");
    if let Some(q) = qemu_fmt.and_then(|f| crate::through::qemu_raw(f, p, scratch)) {
        assert!(q == model, "{what}: qemu read-back");
    }
    disk
}
