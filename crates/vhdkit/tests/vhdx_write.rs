//! VHDX creation and writing: every file is read back by vhdkit, by qemu-img (fixed, dynamic,
//! 512-byte logical sectors, which is all qemu supports: `check` and `convert`), by libvhdi
//! (every type and sector size, differencing chains included) and compared with an in-memory
//! model; all types x 512/4096 logical sectors; random writes across a 3-deep chain; fault
//! injection at every mutating operation of the write path (log commits included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use vhdkit::txn::fault::{FaultPlan, FaultyFile};
use vhdkit::vhdx::create::{self as vc, NewKind, NewParent, NewVhdx};
use vhdkit::vhdx::write::VhdxWriter;
use vhdkit::{ChainOptions, ChainView, CreateParams, Disk, DiskType, OpenOptions};
use vhdkit::{DiskFormat, WritableDisk};
use vhdkit_testkit::through::{apply, disk_of, pattern_writes, qemu_raw, read_chain, tmp};
use vhdkit_testkit::writes::{
    assert_overwrite_refused, assert_reads_model, fail_each_operation, make_chain,
    random_writes_on_top, raw_input, read_image, write_through, FaultBatch,
};
use vhdkit_testkit::{sha256, Rng};

const MIB: u64 = 1 << 20;

fn vhdx_info(p: &Path) -> vhdkit::vhdx::VhdxInfo {
    match Disk::open(p).unwrap().info().details {
        vhdkit::FormatInfo::Vhdx(v) => v,
        _ => panic!("not a vhdx"),
    }
}

fn write_all(p: &Path, writes: &[(u64, Vec<u8>)]) {
    let mut w = WritableDisk::open(p, &ChainOptions::default()).unwrap();
    for (o, data) in writes {
        w.write_at(*o, data).unwrap();
    }
    w.close().unwrap();
}

fn check_standalone(fixed: bool, size: u64, logical: u32) {
    let d = tmp();
    let p = d.path().join("disk.vhdx");
    let params = if fixed {
        CreateParams::fixed(size)
    } else {
        CreateParams::dynamic(size)
    }
    .logical_sector_size(logical);
    let c = vhdkit::create(&p, &params).unwrap();
    assert_eq!(c.format, DiskFormat::Vhdx);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), c.file_size);
    let before = vhdx_info(&p);
    let mut model = vec![0u8; size as usize];
    assert_eq!(read_chain(&p), model);
    if logical == 512 {
        if let Some(q) = qemu_raw("vhdx", &p, d.path()) {
            assert_eq!(q, model, "qemu: empty {size}");
        }
    }
    write_through(&p, &mut model, &pattern_writes(size));
    // qemu-img supports only 512-byte logical sectors (its vhdx driver returns ENOTSUP
    // otherwise); libvhdi reads both.
    let qemu = (logical == 512).then_some("vhdx");
    let disk = assert_reads_model(&p, &model, qemu, d.path());
    assert_eq!(disk.logical_sector_size(), logical);
    assert_eq!(
        disk.disk_type(),
        if fixed {
            DiskType::Fixed
        } else {
            DiskType::Dynamic
        }
    );
    if let Some((h, n)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&[&p]) {
        assert_eq!(n, size);
        assert_eq!(
            h,
            sha256(&model),
            "libvhdi read-back fixed={fixed} {logical}"
        );
    }
    // GUID rules: a new FileWriteGuid and DataWriteGuid, clean log, both headers current-ish.
    let after = vhdx_info(&p);
    assert_ne!(after.file_write_guid, before.file_write_guid);
    assert_ne!(after.data_write_guid, before.data_write_guid);
    assert!(after.log_guid.is_nil());
    assert_eq!(after.virtual_disk_id, before.virtual_disk_id);
    let seqs: Vec<u64> = after
        .headers
        .iter()
        .map(|h| h.sequence_number.unwrap())
        .collect();
    assert_eq!(seqs[0].abs_diff(seqs[1]), 1, "{seqs:?}");
    if fixed {
        // Fixed files never grow.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), c.file_size);
    } else {
        assert_eq!(std::fs::metadata(&p).unwrap().len() % MIB, 0);
    }
}

#[test]
fn dynamic_read_back_in_vhdkit_and_qemu() {
    for logical in [512, 4096] {
        for size in [MIB, 70 * MIB + 4096, 5 * MIB] {
            check_standalone(false, size, logical);
        }
    }
}

#[test]
fn fixed_read_back_in_vhdkit_and_qemu() {
    for logical in [512, 4096] {
        for size in [MIB, 9 * MIB + 4096, 40 * MIB] {
            check_standalone(true, size, logical);
        }
    }
}

#[test]
fn differencing_both_sector_sizes_match_libvhdi() {
    for logical in [512u32, 4096] {
        let d = tmp();
        let base = d.path().join("base.vhdx");
        let child = d.path().join("child.avhdx");
        let size = 12 * MIB;
        vhdkit::create(
            &base,
            &CreateParams::dynamic(size)
                .block_size(1 << 20)
                .logical_sector_size(logical),
        )
        .unwrap();
        let mut model = vec![0u8; size as usize];
        let mut base_data = vec![0u8; size as usize];
        Rng::new(5).fill(&mut base_data);
        let bw = vec![(0u64, base_data.clone())];
        write_all(&base, &bw);
        apply(&mut model, &bw);
        let parent_info = vhdx_info(&base);
        vhdkit::create(&child, &CreateParams::differencing(&base)).unwrap();
        let ci = vhdx_info(&child);
        assert!(ci.has_parent);
        assert_eq!(ci.virtual_disk_id, parent_info.virtual_disk_id);
        let keys: Vec<String> = ci
            .parent_locator
            .as_ref()
            .unwrap()
            .entries
            .iter()
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(
            keys,
            ["parent_linkage", "absolute_win32_path", "relative_path"]
        );
        let loc = &ci.parent_locator.as_ref().unwrap().entries;
        assert_eq!(
            loc[0].value.as_deref().unwrap(),
            format!("{{{}}}", parent_info.data_write_guid)
        );
        assert_eq!(loc[2].value.as_deref(), Some(r".\base.vhdx"));
        let c = Disk::open(&child).unwrap();
        assert_eq!(c.logical_sector_size(), logical);
        assert_eq!(c.physical_sector_size(), 4096);
        assert_eq!(c.block_size(), Some(2 * MIB));
        let writes = pattern_writes(size);
        write_all(&child, &writes);
        apply(&mut model, &writes);
        assert!(read_chain(&child) == model, "logical {logical}");
        // The parent was only read.
        assert!(read_chain(&base) == base_data);
        if let Some((h, n)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&[&child, &base]) {
            assert_eq!(n, size);
            assert_eq!(h, sha256(&model), "libvhdi disagrees (logical {logical})");
        }
    }
}

fn random_writes_depth_3(size: u64, block: u32, logical: u32, seed: u64, writes: usize) {
    let d = tmp();
    let mut rng = Rng::new(seed);
    let names = ("base.vhdx", "mid.avhdx", "top.avhdx");
    let params = CreateParams::dynamic(size)
        .block_size(block)
        .logical_sector_size(logical);
    let (paths, model) = make_chain(d.path(), names, &params, block, &mut rng);
    let model = random_writes_on_top(&paths, model, (block, logical), &mut rng, writes);
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    if let Some((h, n)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&refs) {
        assert_eq!(n, size);
        assert_eq!(h, sha256(&model), "libvhdi disagrees");
    }
}

#[test]
fn random_writes_chain_of_3_512() {
    random_writes_depth_3(9 * MIB + 3 * 512, 1 << 20, 512, 0xC0FFEE, 3000);
}

#[test]
fn random_writes_chain_of_3_4096() {
    random_writes_depth_3(6 * MIB, 1 << 20, 4096, 42, 2000);
}

#[test]
fn writes_past_the_end_are_refused() {
    let d = tmp();
    let p = d.path().join("d.vhdx");
    vhdkit::create(&p, &CreateParams::dynamic(MIB)).unwrap();
    let mut w = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
    assert!(w.write_at(MIB - 1, &[1, 2]).is_err());
    w.seek(SeekFrom::Start(MIB - 1)).unwrap();
    assert_eq!(w.write(&[7, 8, 9]).unwrap(), 1);
    w.close().unwrap();
    assert_eq!(*read_chain(&p).last().unwrap(), 7);
}

#[test]
fn opening_a_dirty_log_for_write_replays_it_into_the_file() {
    let Some(real) = vhdkit_testkit::real_data_dir("replaying a dirty VHDX log on write") else {
        return;
    };
    let d = tmp();
    let p = vhdkit_testkit::unpack_real(
        &real,
        "qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2",
        d.path(),
    );
    let mut probe = vec![0u8; 4096];
    {
        let mut w = WritableDisk::open(&p, &ChainOptions::default()).unwrap();
        // Replayed: block 17 (17..18 MiB) holds 0xa5.
        w.read_exact_at(&mut probe, 17 * MIB + 8192).unwrap();
        assert!(probe.iter().all(|&b| b == 0xa5));
        w.write_at(20 * MIB, &[0x42; 4096]).unwrap();
        w.close().unwrap();
    }
    let v = vhdx_info(&p);
    assert!(v.log_guid.is_nil());
    assert_eq!(v.log.state, vhdkit::vhdx::LogState::Clean);
    let disk = Disk::open(&p).unwrap();
    assert!(disk.warnings().is_empty(), "{:?}", disk.warnings());
    let view = disk.view();
    view.read_exact_at(&mut probe, 17 * MIB + 8192).unwrap();
    assert!(probe.iter().all(|&b| b == 0xa5));
    view.read_exact_at(&mut probe, 20 * MIB).unwrap();
    assert!(probe.iter().all(|&b| b == 0x42));
}

#[test]
fn writes_into_real_windows_vhdx() {
    let Some(real) = vhdkit_testkit::real_data_dir("writing into Windows-made VHDXs") else {
        return;
    };
    for rel in [
        "dissect.hypervisor/dynamic.vhdx.gz",
        "dissect.hypervisor/fixed.vhdx.gz",
        "qemu-iotests/iotest-dynamic-1G.vhdx.bz2",
    ] {
        let d = tmp();
        let p = vhdkit_testkit::unpack_real(&real, rel, d.path());
        let mut model = read_chain(&p);
        let size = model.len() as u64;
        write_through(&p, &mut model, &pattern_writes(size));
        assert_reads_model(&p, &model, Some("vhdx"), d.path());
    }
}

#[test]
fn convert_raw_to_vhdx_and_back() {
    let d = tmp();
    let (raw, padded) = raw_input(d.path(), 70 * MIB + 1000, 65 * MIB);
    for fixed in [false, true] {
        let out = d.path().join(format!("out-{fixed}.vhdx"));
        let src = vhdkit::convert::RawSource::open(&raw).unwrap();
        let opts = vhdkit::convert::ConvertOptions::default().fixed(fixed);
        vhdkit::convert::to_path(&src, &out, vhdkit::convert::Target::Vhdx, &opts, ()).unwrap();
        assert!(read_chain(&out) == padded, "fixed={fixed}");
        if let Some(q) = qemu_raw("vhdx", &out, d.path()) {
            assert_eq!(sha256(&q), sha256(&padded), "qemu fixed={fixed}");
        }
        let disk = Disk::open(&out).unwrap();
        if !fixed {
            // 32 MiB blocks 0 and 2 hold data, block 1 is all zeros: never allocated.
            assert_eq!(
                disk.map(40 * MIB, 1).unwrap().0,
                vhdkit::Extent::Unallocated
            );
            let len = std::fs::metadata(&out).unwrap().len();
            assert_eq!(len, 4 * MIB + 2 * 32 * MIB);
        } else {
            assert_eq!(disk.disk_type(), DiskType::Fixed);
        }
        assert_overwrite_refused(
            &out,
            || vhdkit::convert::to_path(&src, &out, vhdkit::convert::Target::Vhdx, &opts, ()),
            &format!("fixed={fixed}"),
        );
    }
}

// ---- fault injection ----

fn new_image(p: &NewVhdx) -> Vec<u8> {
    let f = FaultyFile::new(Vec::new(), FaultPlan::new(None));
    vc::write_new(&f, p).unwrap();
    f.contents_all_written()
}

fn writable(
    file: FaultyFile,
    parent: Option<&[u8]>,
    limit: Option<usize>,
) -> Result<WritableDisk, vhdkit::Error> {
    let mut w = VhdxWriter::open(file, &OpenOptions::default())?;
    if let Some(n) = limit {
        w.limit_sectors_per_commit(n);
    }
    let pv = match parent {
        Some(p) => Some(ChainView::new(vec![disk_of(p.to_vec())?])),
        None => None,
    };
    Ok(WritableDisk::from_parts(Box::new(w), pv))
}

fn run_batch(
    file: FaultyFile,
    parent: Option<&[u8]>,
    batch: &[(u64, Vec<u8>)],
    limit: Option<usize>,
) -> Result<(), vhdkit::Error> {
    let mut w = writable(file, parent, limit)?;
    for (o, d) in batch {
        w.write_at(*o, d)?;
    }
    let r = w.flush();
    std::mem::forget(w); // no second flush from Drop: the "process" died here
    r
}

fn fault_injection(diff: bool, logical: u32, limit: Option<usize>) {
    let size = 6 * MIB;
    let block = 1u32 << 20;
    let mut rng = Rng::new(u64::from(diff) * 10 + u64::from(logical));
    let mut base = NewVhdx::new(NewKind::Dynamic, size, block);
    base.logical_sector_size = logical;
    let parent = if diff {
        let f = FaultyFile::new(new_image(&base), FaultPlan::new(None));
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data);
        let mut w = writable(f.clone(), None, None).unwrap();
        w.write_at(0, &data).unwrap();
        w.close().unwrap();
        Some(f.contents_all_written())
    } else {
        None
    };
    let parent = parent.as_deref();
    let image = if let Some(p) = parent {
        let pd = disk_of(p.to_vec()).unwrap();
        let mut n = base.clone();
        n.kind = NewKind::Differencing(NewParent {
            linkage: pd.identity(),
            absolute_path: "/x/p.vhdx".into(),
            relative_path: Some(r".\p.vhdx".into()),
        });
        new_image(&n)
    } else {
        new_image(&base)
    };
    // The "before" state: some blocks already allocated and flushed.
    let f = FaultyFile::new(image, FaultPlan::new(None));
    let pre: Vec<(u64, Vec<u8>)> = (0..6)
        .map(|i| {
            let mut d = vec![0u8; 1500];
            rng.fill(&mut d);
            (i * 600_000 + 100, d)
        })
        .collect();
    run_batch(f.clone(), parent, &pre, None).unwrap();
    let before = f.contents_all_written();
    // In-place writes, partial sectors, new blocks, a whole block, a cross-block write.
    let mut batch = Vec::new();
    for (o, len) in [
        (150u64, 300u64),
        (600_050, 4000),
        (2 * MIB + 7, 900),
        (3 * MIB - 100, 5000),
        (4 * MIB, MIB),
        (size - 10, 10),
    ] {
        let mut d = vec![0u8; len as usize];
        rng.fill(&mut d);
        batch.push((o, d));
    }
    let mut new = read_image(before.clone(), parent).unwrap();
    apply(&mut new, &batch);
    let what = format!("vhdx, differencing={diff}, logical={logical}, limit={limit:?}");
    let ops = fail_each_operation(
        &FaultBatch {
            before,
            parent,
            new,
            sector: logical as usize,
            run: &|f| run_batch(f, parent, &batch, limit),
            writable: &|f| writable(f, parent, None),
        },
        &what,
    );
    eprintln!("fault injection ({what}): {ops} mutating operations, each failed in turn");
}

#[test]
fn fault_at_every_operation_dynamic() {
    fault_injection(false, 512, None);
}

#[test]
fn fault_at_every_operation_differencing() {
    fault_injection(true, 512, None);
}

#[test]
fn fault_at_every_operation_differencing_4096_in_one_sector_batches() {
    fault_injection(true, 4096, Some(1));
}

// ---- bounded metadata between flushes ----

/// A writer holds at most a bound of allocations before it commits them by itself: with the
/// bound lowered to 3, the first 9 of 10 new blocks are on disk before any flush, the 10th
/// only after the close; the table it reads back on demand agrees all along.
#[test]
fn a_writer_flushes_by_itself_at_its_allocation_bound() {
    let size = 16 * MIB;
    let f = FaultyFile::new(
        new_image(&NewVhdx::new(NewKind::Dynamic, size, 1 << 20)),
        FaultPlan::new(None),
    );
    let mut w = VhdxWriter::open(f.clone(), &OpenOptions::default()).unwrap();
    w.limit_unflushed(3);
    let mut w = WritableDisk::from_parts(Box::new(w), None);
    for i in 0..10u64 {
        w.write_at(i * MIB + 5, &[i as u8 + 1]).unwrap();
    }
    let on_disk = |bytes: Vec<u8>| {
        let v = ChainView::new(vec![disk_of(bytes).unwrap()]);
        (0..10u64)
            .map(|i| {
                let mut b = [0u8; 1];
                v.read_exact_at(&mut b, i * MIB + 5).unwrap();
                b[0]
            })
            .collect::<Vec<u8>>()
    };
    assert_eq!(
        on_disk(f.contents_all_written()),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    );
    let mut all = vec![0u8; 10];
    for i in 0..10u64 {
        w.read_exact_at(&mut all[i as usize..=i as usize], i * MIB + 5)
            .unwrap();
    }
    assert_eq!(all, (1..=10).collect::<Vec<u8>>());
    w.close().unwrap();
    assert_eq!(
        on_disk(f.contents_all_written()),
        (1..=10).collect::<Vec<u8>>()
    );
}
